"""SQuAD scoring: ``spacy-xlmrxl.qa_scorer.v1`` (``qa_exact``, ``qa_f1`` in [0, 1], averaged over
questions) with the normalisation of the official SQuAD evaluation script (lower case, no
punctuation, no English articles, single spaces).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from spacy.training import Example
from spacy.util import registry

from .annotation import gold_answers_of, register_qa_extensions

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------- SQuAD metrics
def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold (no gold: prediction empty)."""
    golds = list(golds) or [""]
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Best bag-of-tokens F1 against the golds (SQuAD2: empty vs empty is 1, empty vs text 0)."""
    return max(_f1(prediction, g) for g in (list(golds) or [""]))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    n_same = sum(common.values())
    if n_same == 0:
        return 0.0
    precision = n_same / len(pred_tokens)
    recall = n_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def score_qa(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Optional[float]]:
    """``qa_exact`` and ``qa_f1`` averaged over the reference docs' questions (None: no question).

    The prediction of a question is the text of its first answer in ``predicted._.answers``
    (``""`` when it has none); golds come from the reference doc (see `gold_answers_of`).
    """
    register_qa_extensions()
    exact: List[float] = []
    f1: List[float] = []
    for eg in examples:
        reference = eg.reference
        golds = gold_answers_of(reference)
        predicted = eg.predicted._.answers or []
        for q, gold in enumerate(golds):
            answers = predicted[q] if q < len(predicted) else []
            text = answers[0]["text"] if answers else ""
            gold_texts = [reference.text[s:e] for s, e in gold]
            exact.append(exact_match(text, gold_texts))
            f1.append(f1_score(text, gold_texts))
    if not exact:
        return {"qa_exact": None, "qa_f1": None}
    return {"qa_exact": sum(exact) / len(exact), "qa_f1": sum(f1) / len(f1)}


@registry.scorers("spacy-xlmrxl.qa_scorer.v1")
def make_qa_scorer() -> Callable[..., Dict[str, Optional[float]]]:
    return score_qa
