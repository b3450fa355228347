"""``xlmrxl_ner``: named entities from XLM-R-XL token vectors with constrained decoding.

Owns the `XLMRNer` pipe and its tagging scheme logic: labels -> BILUO (default) or IOB tags,
gold entities -> tag ids (missing annotation ignored, unknown labels refused), per-token
softmax cross-entropy, and Viterbi decoding that only allows valid tag sequences (so every
prediction is a set of well-formed, non-overlapping entities) written to ``doc.ents``.
Whitespace tokens take no part in loss or decoding (they have no pieces); they can sit inside
an entity but never start or end one. Predicted ``doc.ents`` replace any existing ones.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Example, validate_examples
from spacy.util import registry
from spacy.vocab import Vocab
from thinc.api import Model
from thinc.types import Floats2d

from ..ml.transformer import transformer_model_config
from .labelled_pipe import LabelledPipe
from .update import check_finite_loss

SCHEMES = ("BILUO", "IOB")
DEFAULT_NER_MODEL = {
    "@architectures": "spacy-xlmrxl.NerHead.v1", "nO": None,
    "tok2vec": {"@architectures": "spacy-xlmrxl.TokenVectors.v1", "pooling": "mean",
                "transformer": transformer_model_config()},
}
Entity = Tuple[int, int, str]


@Language.factory(
    "xlmrxl_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={"model": DEFAULT_NER_MODEL, "scheme": "BILUO",
                    "scorer": {"@scorers": "spacy-xlmrxl.ner_scorer.v1"}},
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_ner(nlp: Language, name: str, model: Model[List[Doc], List[Floats2d]], scheme: str,
             scorer: Optional[Callable]) -> "XLMRNer":
    """Token-classification NER; by default with its own backbone (``checkpoint`` in the model
    config, or given to ``initialize``); use ``spacy-xlmrxl.Listener.v1`` as ``tok2vec`` to
    share an ``xlmrxl_transformer``."""
    return XLMRNer(nlp.vocab, model, name=name, scheme=scheme, scorer=scorer)


# --------------------------------------------------------------------------- tagging scheme
def tag_names(labels: Sequence[str], scheme: str) -> List[str]:
    """``O`` then, per label, ``B- I- L- U-`` (BILUO) or ``B- I-`` (IOB)."""
    prefixes = "BILU" if scheme == "BILUO" else "BI"
    return ["O"] + [f"{p}-{label}" for label in labels for p in prefixes]


def transition_constraints(tags: Sequence[str], scheme: str) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """Which tag may follow which (T, T), may start (T,) and may end (T,) a sequence."""
    parsed = [(t, "") if t == "O" else (t[0], t[2:]) for t in tags]
    n = len(tags)
    allowed = numpy.zeros((n, n), dtype=bool)
    for i, (p1, l1) in enumerate(parsed):
        inside = p1 in ("B", "I")  # an entity is open after this tag
        for j, (p2, l2) in enumerate(parsed):
            if scheme == "BILUO":  # an open entity must continue; a closed one may not
                allowed[i, j] = (p2 in ("I", "L") and l2 == l1) if inside else p2 in ("O", "B", "U")
            else:  # IOB: I-X only continues an X entity
                allowed[i, j] = p2 != "I" or (inside and l2 == l1)
    prefixes = [p for p, _ in parsed]
    if scheme == "BILUO":
        start = numpy.array([p in ("O", "B", "U") for p in prefixes])
        end = numpy.array([p in ("O", "L", "U") for p in prefixes])
    else:
        start = numpy.array([p != "I" for p in prefixes])
        end = numpy.ones(n, dtype=bool)
    return allowed, start, end


def constrained_viterbi(log_probs: numpy.ndarray, allowed: numpy.ndarray, start: numpy.ndarray,
                        end: numpy.ndarray) -> numpy.ndarray:
    """Best tag sequence (n,) for (n, T) log-probabilities under the transition constraints.

    Scores add up in float64 whatever the input dtype; the back-pointers take the smallest
    integer type that holds T (1 byte per token and tag for up to 256 tags), so the transient
    memory is the input plus about T bytes per token."""
    n, n_tags = log_probs.shape
    if n == 0:
        return numpy.zeros((0,), dtype="int64")
    blocked = numpy.where(allowed, 0.0, -numpy.inf)
    score = numpy.where(start, log_probs[0].astype("float64"), -numpy.inf)
    back = numpy.zeros((n, n_tags), dtype=numpy.min_scalar_type(n_tags - 1))
    tags = numpy.arange(n_tags)
    for t in range(1, n):
        candidates = score[:, None] + blocked
        best = candidates.argmax(axis=0)
        back[t] = best
        score = candidates[best, tags] + log_probs[t]
    score = numpy.where(end, score, -numpy.inf)
    path = numpy.zeros((n,), dtype="int64")
    path[-1] = int(score.argmax())
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def tags_to_entities(tags: Sequence[str]) -> List[Entity]:
    """(start, end, label) of a valid BILUO or IOB tag sequence (end exclusive)."""
    entities: List[Entity] = []
    start: Optional[int] = None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, label = (tag, "") if tag == "O" else (tag[0], tag[2:])
        if start is not None and prefix != "I" and prefix != "L":
            entities.append((start, i, tags[start][2:]))
            start = None
        if start is not None and prefix == "L":
            entities.append((start, i + 1, label))
            start = None
        elif prefix in ("B", "U") or (prefix == "I" and start is None):
            if prefix == "U":
                entities.append((i, i + 1, label))
            else:
                start = i
    return entities


def _to_scheme(biluo: str, scheme: str) -> str:
    if scheme == "BILUO" or biluo == "O":
        return biluo
    prefix = {"B": "B", "I": "I", "L": "I", "U": "B"}[biluo[0]]
    return f"{prefix}{biluo[1:]}"


# --------------------------------------------------------------------------- the pipe
class XLMRNer(LabelledPipe):
    """Named entity recogniser over spaCy tokens; see the module docstring."""

    def __init__(self, vocab: Vocab, model: Model, name: str = "xlmrxl_ner", *, scheme: str = "BILUO",
                 scorer: Optional[Callable] = None) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, object] = {"labels": [], "scheme": scheme}
        self._constraints: Optional[Tuple[numpy.ndarray, ...]] = None

    @property
    def scheme(self) -> str:
        return str(self.cfg["scheme"])

    @property
    def tag_names(self) -> List[str]:
        return tag_names(self.labels, self.scheme)

    def labels_in(self, examples: Iterable[Example]) -> Iterable[str]:
        return (ent.label_ for eg in examples for ent in eg.reference.ents)

    def outputs_for(self, cfg: Dict[str, Any]) -> int:
        return len(tag_names(cfg["labels"], cfg["scheme"]))

    def _outputs_detail(self, cfg: Dict[str, Any]) -> str:
        per_label = 4 if cfg["scheme"] == "BILUO" else 2
        return f" ({cfg['scheme']} tags: O plus {per_label} per label)"

    def check_label(self, label: str) -> None:
        if not isinstance(label, str) or not label or label == "O" or label[:2] in ("B-", "I-", "L-", "U-"):
            raise ValueError(f"[{self.name}] invalid entity label {label!r}")

    def _after_load(self) -> None:
        self._constraints = None

    def _get_constraints(self) -> Tuple[numpy.ndarray, ...]:
        if self._constraints is None:
            self._constraints = transition_constraints(self.tag_names, self.scheme)
        return self._constraints

    # -- prediction
    def predict(self, docs: Iterable[Doc]) -> List[List[Entity]]:
        docs = list(docs)
        if not any(len(doc) for doc in docs):
            return [[] for _ in docs]
        scores = self.model.predict(docs)
        return [self._decode(doc, self.model.ops.to_numpy(doc_scores)) for doc, doc_scores in zip(docs, scores)]

    def _decode(self, doc: Doc, probs: numpy.ndarray) -> List[Entity]:
        content = numpy.flatnonzero(doc.to_array("IS_SPACE") == 0)
        if not len(content):
            return []
        with numpy.errstate(divide="ignore"):  # float32 logs; constrained_viterbi sums in float64
            log_probs = numpy.log(probs if len(content) == len(doc) else probs[content])
        path = constrained_viterbi(log_probs, *self._get_constraints())
        names = self.tag_names
        return [(int(content[s]), int(content[e - 1]) + 1, label)
                for s, e, label in tags_to_entities([names[i] for i in path])]

    def set_annotations(self, docs: Iterable[Doc], entities: Sequence[List[Entity]]) -> None:
        for doc, doc_entities in zip(docs, entities):
            doc.ents = [Span(doc, start, end, label=label) for start, end, label in doc_entities]

    # -- training
    def get_loss(self, examples: Iterable[Example], scores: List[Floats2d]) -> Tuple[float, List[Floats2d]]:
        """Cross-entropy of the gold tags (summed over tokens); missing tags are ignored."""
        examples = list(examples)
        validate_examples(examples, "XLMRNer.get_loss")
        index = {tag: i for i, tag in enumerate(self.tag_names)}
        loss = 0.0
        d_scores = []
        for eg, doc_scores in zip(examples, scores):
            truth = self._gold_tags(eg, index)
            probs = self.model.ops.to_numpy(doc_scores)
            d = probs.copy()
            known = numpy.flatnonzero(truth >= 0)
            d[known, truth[known]] -= 1.0
            d[truth < 0] = 0.0
            loss -= float(numpy.log(numpy.clip(probs[known, truth[known]], 1e-12, None)).sum())
            d_scores.append(self.model.ops.asarray2f(d))
        check_finite_loss(self.name, loss, examples)
        return loss, d_scores

    def _gold_tags(self, eg: Example, index: Dict[str, int]) -> numpy.ndarray:
        """Per predicted token: the gold tag id, or -1 (missing, misaligned, whitespace)."""
        truth = numpy.full((len(eg.predicted),), -1, dtype="int64")
        for i, (token, biluo) in enumerate(zip(eg.predicted, eg.get_aligned_ner())):
            if biluo in (None, "-", "") or token.is_space:
                continue
            tag = _to_scheme(biluo, self.scheme)
            if tag not in index:
                raise self.unknown_label(biluo[2:])
            truth[i] = index[tag]
        return truth


def score_ner(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """Entity micro P/R/F and per-type scores (``kwargs`` from the component cfg are ignored)."""
    return get_ner_prf(examples)


@registry.scorers("spacy-xlmrxl.ner_scorer.v1")
def make_ner_scorer() -> Callable[..., Dict[str, Any]]:
    return score_ner
