"""Scorers of the spacy_xlmrxl components, registered in ``spacy.registry.scorers``.

Owns ``spacy-xlmrxl.ner_scorer.v1`` (``ents_p``, ``ents_r``, ``ents_f``, ``ents_per_type``, as
spaCy's ``ner``) and ``spacy-xlmrxl.textcat_scorer.v1`` (as spaCy's ``textcat`` /
``textcat_multilabel``: ``cats_score``, ``cats_macro_f``, ``cats_macro_auc``, per-type scores;
multi-label when the component's ``exclusive_classes`` is false). The QA scorer
``spacy-xlmrxl.qa_scorer.v1`` lives with the QA conventions in `spacy_xlmrxl.scorers_qa`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

from spacy.scorer import Scorer, get_ner_prf
from spacy.training import Example
from spacy.util import registry


def score_ner(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """Entity micro P/R/F and per-type scores (``kwargs`` from the component cfg are ignored)."""
    return get_ner_prf(examples)


@registry.scorers("spacy-xlmrxl.ner_scorer.v1")
def make_ner_scorer() -> Callable[..., Dict[str, Any]]:
    return score_ner


def score_textcat(examples: Iterable[Example], *, labels: Iterable[str] = (), exclusive_classes: bool = True,
                  threshold: Optional[float] = None, positive_label: Optional[str] = None,
                  **kwargs: Any) -> Dict[str, Any]:
    """spaCy's ``Scorer.score_cats`` on ``doc.cats`` with the component's settings."""
    return Scorer.score_cats(examples, "cats", labels=labels, multi_label=not exclusive_classes,
                             threshold=threshold, positive_label=positive_label)


@registry.scorers("spacy-xlmrxl.textcat_scorer.v1")
def make_textcat_scorer() -> Callable[..., Dict[str, Any]]:
    return score_textcat
