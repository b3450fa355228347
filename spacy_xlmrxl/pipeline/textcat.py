"""``xlmrxl_textcat``: document classification on the ``<s>`` states of XLM-R-XL windows.

Owns the `XLMRTextcat` pipe: exclusive classes (softmax, cross-entropy) or multi-label (sigmoid,
binary cross-entropy), chosen by ``exclusive_classes`` in ``spacy-xlmrxl.TextcatHead.v1``;
labels from the examples' ``doc.cats`` or given; ``doc.cats`` gets a score for every label.
A long doc is classified by averaging its windows' logits. An empty or whitespace-only doc is
classified from ``<s></s>``, as HF does for the empty text, so it too gets every label.

Also owns ``spacy-xlmrxl.TextcatHead.v2``: ``TextcatHead.v1`` with its backbone argument named
``tok2vec`` instead of ``transformer``. Use it when the textcat listens to a shared
``xlmrxl_transformer`` (``[components.textcat.model.tok2vec]`` =
``spacy-xlmrxl.DocDataListener.v1``): spaCy's ``nlp.replace_listeners(transformer, textcat,
["model.tok2vec"])`` reads the listener's config at ``model.tok2vec`` whatever path it is given
(``Language.replace_listeners`` passes ``pipe_cfg["model"]["tok2vec"]`` to the transformer's
``replace_listener_cfg``), so with ``TextcatHead.v1`` (listener at ``model.transformer``) it
fails with ``KeyError: 'tok2vec'``. After the replacement the textcat owns a copy of the
backbone (config: the transformer's ``Transformer.v2`` block), saved and loaded with it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example, validate_examples
from spacy.util import registry
from spacy.vocab import Vocab
from thinc.api import Model
from thinc.types import Floats2d

from ..ml.transformer import transformer_model_config
from .labelled_pipe import LabelledPipe
from .update import check_finite_loss

DEFAULT_TEXTCAT_MODEL = {"@architectures": "spacy-xlmrxl.TextcatHead.v1", "nO": None, "exclusive_classes": True,
                         "dropout": 0.1, "transformer": transformer_model_config()}


@Language.factory(
    "xlmrxl_textcat",
    assigns=["doc.cats"],
    default_config={"model": DEFAULT_TEXTCAT_MODEL, "threshold": 0.5,
                    "scorer": {"@scorers": "spacy-xlmrxl.textcat_scorer.v1"}},
    default_score_weights={"cats_score": 1.0, "cats_score_desc": None, "cats_micro_p": None,
                           "cats_micro_r": None, "cats_micro_f": None, "cats_macro_p": None,
                           "cats_macro_r": None, "cats_macro_f": None, "cats_macro_auc": None,
                           "cats_f_per_type": None},
)
def make_textcat(nlp: Language, name: str, model: Model[List[Doc], Floats2d], threshold: float,
                 scorer: Optional[Callable]) -> "XLMRTextcat":
    """Text classifier; by default with its own backbone; to share an ``xlmrxl_transformer``, use
    ``spacy-xlmrxl.TextcatHead.v2`` with ``spacy-xlmrxl.DocDataListener.v1`` as ``tok2vec`` (then
    ``nlp.replace_listeners(..., ["model.tok2vec"])`` works), or v1 with it as ``transformer``."""
    return XLMRTextcat(nlp.vocab, model, name=name, threshold=threshold, scorer=scorer)


class XLMRTextcat(LabelledPipe):
    """Document classifier; see the module docstring."""

    def __init__(self, vocab: Vocab, model: Model, name: str = "xlmrxl_textcat", *, threshold: float = 0.5,
                 scorer: Optional[Callable] = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, object] = {"labels": [], "threshold": threshold, "positive_label": None,
                                       "exclusive_classes": bool(model.attrs.get("exclusive_classes", True))}

    @property
    def exclusive_classes(self) -> bool:
        return bool(self.cfg["exclusive_classes"])

    @property
    def min_labels(self) -> int:  # type: ignore[override]
        return 2 if self.exclusive_classes else 1

    def labels_in(self, examples: Iterable[Example]) -> Iterable[str]:
        return (label for eg in examples for label in eg.reference.cats)

    # -- prediction
    def predict(self, docs: Iterable[Doc]) -> Floats2d:
        docs = list(docs)
        if not docs:
            return self.model.ops.alloc2f(0, len(self.labels))
        return self.model.predict(docs)

    def set_annotations(self, docs: Sequence[Doc], scores: Floats2d) -> None:
        scores = self.model.ops.to_numpy(scores)
        for doc, row in zip(docs, scores):
            for label, score in zip(self.labels, row):
                doc.cats[label] = float(score)

    # -- training
    def get_loss(self, examples: Iterable[Example], scores: Floats2d) -> Tuple[float, Floats2d]:
        """Cross-entropy (exclusive) or binary cross-entropy (multi-label) summed over docs;
        labels missing from a doc's ``cats`` are ignored (exclusive: the whole doc)."""
        examples = list(examples)
        validate_examples(examples, "XLMRTextcat.get_loss")
        truths, known = self._truths(examples)
        probs = self.model.ops.to_numpy(scores).astype("float64")
        clipped = numpy.clip(probs, 1e-12, 1 - 1e-12)
        if self.exclusive_classes:
            loss = -(truths * numpy.log(clipped) * known).sum()
        else:
            loss = -((truths * numpy.log(clipped) + (1 - truths) * numpy.log(1 - clipped)) * known).sum()
        d_scores = (probs - truths) * known
        check_finite_loss(self.name, float(loss), examples)
        return float(loss), self.model.ops.asarray2f(d_scores.astype("float32"))

    def _truths(self, examples: List[Example]) -> Tuple[numpy.ndarray, numpy.ndarray]:
        truths = numpy.zeros((len(examples), len(self.labels)), dtype="float64")
        known = numpy.zeros_like(truths)
        index = {label: i for i, label in enumerate(self.labels)}
        for row, eg in enumerate(examples):
            cats = eg.reference.cats
            unknown = [label for label in cats if label not in index]
            if unknown:
                raise self.unknown_label(unknown[0])
            for label, value in cats.items():
                truths[row, index[label]] = float(value)
                known[row, index[label]] = 1.0
            if self.exclusive_classes:
                positives = truths[row].sum()
                if cats and positives != 1.0:
                    raise ValueError(f"[{self.name}] exclusive classes need exactly one positive label per "
                                     f"doc, got {dict(cats)}")
                known[row] = 1.0 if cats else 0.0
        return truths, known


def score_textcat(examples: Iterable[Example], *, labels: Iterable[str] = (), exclusive_classes: bool = True,
                  threshold: Optional[float] = None, positive_label: Optional[str] = None,
                  **kwargs: Any) -> Dict[str, Any]:
    """spaCy's ``Scorer.score_cats`` on ``doc.cats`` with the component's settings."""
    return Scorer.score_cats(examples, "cats", labels=labels, multi_label=not exclusive_classes,
                             threshold=threshold, positive_label=positive_label)


@registry.scorers("spacy-xlmrxl.textcat_scorer.v1")
def make_textcat_scorer() -> Callable[..., Dict[str, Any]]:
    return score_textcat
