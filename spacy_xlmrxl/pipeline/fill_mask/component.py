"""``xlmrxl_fill_mask``: fillers for ``<mask>`` in the text, and masked-LM adaptation of the backbone.

Owns
- `add_mask_special_case`: keeps ``<mask>`` one spaCy token (a tokenizer special case, and a
  prefix, suffix and infix rule so that ``the<mask>``, ``<mask><mask>`` or ``(<mask>)`` split
  around it), for any language whose tokenizer is spaCy's rule-based one;
- the `XLMRFillMask` pipe: each literal ``<mask>`` (the tokenizer maps it to ``mask_id``) gets
  its ``top_k`` fillers ``{"token", "token_id", "score", "piece"}`` in ``doc._.fill_mask`` (one
  list per mask, in text order; ``[]`` for a doc without mask) and, with ``fill_text``, the
  text with each mask replaced by its best filler in ``doc._.filled_text``. Long docs go through
  the piece windows of ``spacy-xlmrxl.MaskedLM.v2``; a mask is predicted in the window where it
  has the most context on both sides, and the vocabulary logits exist for a chunk of masks at a
  time (`predict_masked_lm`, `TopK`), so memory does not grow with the number of masks.
  ``nlp.update`` trains the masked-LM objective with fresh 80/10/10 masking of 15 % of the
  pieces of the docs' raw text (`spacy_xlmrxl.masking`);
- `export_fill_mask_to_hf`: the adapted backbone as an HF ``XLMRobertaXLForMaskedLM`` directory
  (config, safetensors, tokenizer) that any component's ``checkpoint`` setting can point to.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokenizer import Tokenizer
from spacy.tokens import Doc
from spacy.training import Example, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer

from ...backbone.nodes import get_tokenizer, set_backbone_source
from ...backbone.settings import default_model_config
from ...export import export_fill_mask_to_hf
from ...ml.task_models import MLMInput, predict_masked_lm
from ...ml.windows import WindowPlan, batch_windows, strided_windows_config
from ..backbone_pipe import BackbonePipe
from ..update import Prepared, update_built_input
from .masking import IGNORE_INDEX, MASK, MaskingConfig, mask_pieces
from .top_k import TopK

DEFAULT_MASKED_LM_MODEL = default_model_config("spacy-xlmrxl.MaskedLM.v2", windows=strided_windows_config())

Filler = Dict[str, Any]

for _name in ("fill_mask", "filled_text"):
    if not Doc.has_extension(_name):
        Doc.set_extension(_name, default=None)


def add_mask_special_case(nlp: Language, mask: str = MASK) -> None:
    """Make ``mask`` one token in ``nlp``'s tokenizer (idempotent; rule-based tokenizers only).

    Adds a special case, and puts ``mask`` first in the prefix, suffix and infix patterns so it
    is split off whatever touches it (``x<mask>y``, ``<mask><mask>``, ``(<mask>).``).
    """
    tokenizer = nlp.tokenizer
    if not isinstance(tokenizer, Tokenizer):
        return
    tokenizer.add_special_case(mask, [{"ORTH": mask}])
    escaped = re.escape(mask)
    for attr, piece in (("prefix_search", "^" + escaped), ("suffix_search", escaped + "$"),
                        ("infix_finditer", escaped)):
        current = getattr(tokenizer, attr)
        pattern = getattr(getattr(current, "__self__", None), "pattern", None)
        if pattern is not None and pattern.startswith(piece + "|"):
            continue
        compiled = re.compile(piece if not pattern else f"{piece}|{pattern}")
        setattr(tokenizer, attr, compiled.finditer if attr == "infix_finditer" else compiled.search)


@Language.factory(
    "xlmrxl_fill_mask",
    assigns=["doc._.fill_mask", "doc._.filled_text"],
    default_config={"model": DEFAULT_MASKED_LM_MODEL, "top_k": 5, "fill_text": True,
                    "mlm_probability": 0.15, "seed": 0,
                    "scorer": {"@scorers": "spacy-xlmrxl.fill_mask_scorer.v1"}},
    default_score_weights={},
)
def make_fill_mask(nlp: Language, name: str, model: Model, top_k: int, fill_text: bool,
                   mlm_probability: float, seed: int, scorer: Optional[Callable] = None) -> "XLMRFillMask":
    """Fill-mask predictions and masked-LM training (``mlm_probability`` of the pieces, masking
    drawn from a generator seeded with ``seed``); adds the ``<mask>`` tokenizer rules. ``scorer``
    (``spacy-xlmrxl.fill_mask_scorer.v1``): masked-word top-1 / top-5 accuracy of examples whose
    predicted doc is the masked text and reference doc the original text."""
    add_mask_special_case(nlp)
    return XLMRFillMask(nlp.vocab, model, name=name, top_k=top_k, fill_text=fill_text,
                        mlm_probability=mlm_probability, seed=seed, scorer=scorer)


class XLMRFillMask(BackbonePipe, TrainablePipe):
    """``<mask>`` fillers and masked-LM training; see the module docstring."""

    def __init__(self, vocab: Vocab, model: Model, name: str = "xlmrxl_fill_mask", *, top_k: int = 5,
                 fill_text: bool = True, mlm_probability: float = 0.15, seed: int = 0,
                 scorer: Optional[Callable] = None) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {"top_k": top_k, "fill_text": fill_text, "mlm_probability": mlm_probability,
                                    "seed": seed}
        self.generator = torch.Generator().manual_seed(int(seed))

    # -- shared
    def _plan(self, texts: Sequence[str]) -> Tuple[List[numpy.ndarray], WindowPlan]:
        """Piece ids (int32 arrays) of ``texts`` and their windows packed into model batches."""
        tokenizer = get_tokenizer(self.model)
        piece_ids = [ids for ids, _ in tokenizer.encode_arrays(list(texts))]
        plan = batch_windows(piece_ids, self.model.attrs["windows"],
                             max_batch_pieces=self.model.attrs["max_batch_pieces"], bos_id=tokenizer.bos_id,
                             eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        return piece_ids, plan

    # -- prediction
    def predict(self, docs: Iterable[Doc]) -> List[List[List[Filler]]]:
        """Per doc, per ``<mask>`` piece (text order), the ``top_k`` fillers, best first."""
        docs = list(docs)
        if not any(MASK in doc.text for doc in docs):
            return [[] for _ in docs]
        tokenizer = get_tokenizer(self.model)
        piece_ids, plan = self._plan([doc.text for doc in docs])
        positions, owners = [], []  # owners: the doc of each mask
        for d, ids in enumerate(piece_ids):
            for p in numpy.flatnonzero(ids == tokenizer.mask_id):
                positions.append(plan.piece_slot(d, int(p)))
                owners.append(d)
        results: List[List[List[Filler]]] = [[] for _ in docs]
        if not positions:
            return results
        for d, row in zip(owners, self._fillers(MLMInput(plan.batches, numpy.asarray(positions)))):
            results[d].append(row)
        return results

    def _fillers(self, inputs: MLMInput) -> List[List[Filler]]:
        """The ``top_k`` fillers of each position of ``inputs``, best first: the model runs
        `predict_masked_lm` (a chunk of positions' vocabulary logits at a time) and only the
        (n_positions, top_k) ids and probabilities are kept."""
        tokenizer = get_tokenizer(self.model)
        best = TopK(len(inputs.positions), top_k=int(self.cfg["top_k"]), n_allowed=len(tokenizer),
                    excluded=tokenizer.all_special_ids)
        predict_masked_lm(self.model, inputs, best.add)
        return [[{"token": tokenizer.decode([i]).strip(), "token_id": i, "score": score,
                  "piece": tokenizer.convert_ids_to_tokens(i)} for i, score in zip(ids, scores)]
                for ids, scores in zip(best.ids.tolist(), best.scores.tolist())]

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[List[List[Filler]]]) -> None:
        for doc, fillers in zip(docs, predictions):
            doc._.fill_mask = fillers
            if self.cfg["fill_text"]:
                doc._.filled_text = fill_text(doc.text, [f[0]["piece"] for f in fillers if f])

    # -- training
    def _masked_input(self, examples: Sequence[Example]) -> Tuple[MLMInput, numpy.ndarray]:
        """The examples' texts in windows with fresh masking; (positions, targets) of the masked."""
        tokenizer = get_tokenizer(self.model)
        _, plan = self._plan([eg.reference.text for eg in examples])
        config = MaskingConfig(mask_id=tokenizer.mask_id, random_low=_first_ordinary_id(tokenizer),
                               mlm_probability=float(self.cfg["mlm_probability"]))
        specials = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.int64)
        batches, positions, targets = [], [], []
        for b, batch in enumerate(plan.batches):
            ids = torch.from_numpy(batch.input_ids)
            maskable = torch.from_numpy(batch.attention_mask).bool() & ~torch.isin(ids, specials)
            masked, labels = mask_pieces(ids, maskable, config, generator=self.generator)
            rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
            batches.append(replace(batch, input_ids=masked.numpy()))
            positions.extend((b, int(r), int(c)) for r, c in zip(rows, cols))
            targets.extend(labels[rows, cols].tolist())
        return MLMInput(batches, numpy.asarray(positions, dtype="int64").reshape(-1, 3)), numpy.asarray(targets)

    def update(self, examples: Iterable[Example], *, drop: float = 0.0, sgd: Optional[Optimizer] = None,
               losses: Optional[Dict[str, float]] = None) -> Dict[str, float]:
        """One masked-LM step on the examples' text (their annotations are not used)."""
        return update_built_input(self, examples, self._prepare_update, drop=drop, sgd=sgd, losses=losses)

    def _prepare_update(self, examples: Sequence[Example]) -> Prepared:
        inputs, targets = self._masked_input(examples)
        if not len(targets):
            return None
        return inputs, lambda logits: self._loss(logits, targets)

    def get_loss(self, examples: Iterable[Example], scores: Any) -> Tuple[float, Any]:
        raise NotImplementedError(
            "xlmrxl_fill_mask draws a fresh masking on every update; its loss is computed in update()"
        )

    def _loss(self, logits: Any, targets: numpy.ndarray) -> Tuple[float, Any]:
        """Mean cross-entropy over the masked positions and its gradient w.r.t. the logits."""
        ops = self.model.ops
        xp = ops.xp
        scores = logits.astype("float32")
        probs = xp.exp(scores - scores.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        rows = xp.arange(len(targets))
        gold = ops.asarray(targets.astype("int64"))
        loss = -float(xp.log(xp.maximum(probs[rows, gold], 1e-30)).mean())
        probs[rows, gold] -= 1.0
        return loss, probs / len(targets)

    # -- initialize / export
    def initialize(self, get_examples: Callable[[], Iterable[Example]], *, nlp: Optional[Language] = None,
                   checkpoint: Optional[str] = None, preset: Optional[str] = None,
                   tokenizer: Optional[str] = None) -> None:
        """Load the masked-LM backbone (``checkpoint`` / ``preset`` / ``tokenizer`` override the
        model config)."""
        validate_get_examples(get_examples, "XLMRFillMask.initialize")
        set_backbone_source(self.model, checkpoint=checkpoint, preset=preset, tokenizer=tokenizer)
        self.model.initialize()

    def save_pretrained(self, out_dir: Any) -> Path:
        """Write the (adapted) masked LM as an HF directory; see `export_fill_mask_to_hf`."""
        return export_fill_mask_to_hf(self, out_dir)

    def add_label(self, label: str) -> int:
        raise NotImplementedError("xlmrxl_fill_mask has no labels")


def fill_text(text: str, pieces: Sequence[str], mask: str = MASK) -> str:
    """``text`` with its ``mask`` occurrences replaced, in order, by the given pieces: a piece
    starting a word (``▁``) is separated by a space, a word-inner piece joins the left word."""
    out, pos = [], 0
    for piece in pieces:
        at = text.find(mask, pos)
        if at < 0:
            break
        before = text[pos:at]
        word = piece.replace("\u2581", " ")
        if word.startswith(" "):
            word = word.lstrip(" ")
            if (out or before) and not (before or out[-1])[-1:].isspace():
                before += " "
        else:
            before = before.rstrip()
        out.append(before + word)
        pos = at + len(mask)
    out.append(text[pos:])
    return "".join(out)


def _first_ordinary_id(tokenizer: Any) -> int:
    """The lowest id that is not a special (random replacements are drawn from there on)."""
    specials = set(tokenizer.all_special_ids)
    return next(i for i in range(len(tokenizer)) if i not in specials)
