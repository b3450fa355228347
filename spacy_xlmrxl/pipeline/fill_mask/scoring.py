"""Fill-mask scoring: ``spacy-xlmrxl.fill_mask_scorer.v1`` (``fill_mask_acc`` / ``fill_mask_top5``:
masked-word top-1 / top-5 accuracy, `score_fill_mask`) and `masked_word_accuracy`, the counting
that it and the CLI's ``evaluate-fill-mask`` share.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import registry

from .masking import MASK

WORD_START = "\u2581"  # sentencepiece's word-start mark


def masked_word_accuracy(pairs: Iterable[Tuple[Optional[Sequence[Dict[str, Any]]], Any]], *, key: str = "piece",
                         empty: Optional[float] = None) -> Dict[str, Optional[float]]:
    """Top-1 / top-5 accuracy of fill-mask predictions.

    ``pairs``: one ``(fillers, gold)`` per masked word, ``fillers`` the component's fillers of
    that ``<mask>`` (dicts, best first; ``None`` or ``[]`` when there are none) and ``gold`` the
    value their ``key`` (``"piece"``, ``"token_id"``, ``"token"``) must equal. A word counts for
    top-5 when it is among the first five fillers (so with ``top_k < 5``, among all of them).
    Returns ``fill_mask_acc`` and ``fill_mask_top5``; both are ``empty`` when there are no pairs.
    """
    n = top1 = top5 = 0
    for fillers, gold in pairs:
        values = [filler[key] for filler in (fillers or [])]
        n += 1
        top1 += bool(values) and values[0] == gold
        top5 += gold in values[:5]
    if n == 0:
        return {"fill_mask_acc": empty, "fill_mask_top5": empty}
    return {"fill_mask_acc": top1 / n, "fill_mask_top5": top5 / n}


def masked_words(masked_text: str, original_text: str, *, mask: str = MASK) -> List[Tuple[int, int]]:
    """The ``(start, end)`` character spans of ``original_text`` that the ``mask`` occurrences of
    ``masked_text`` stand for, in order (``[]`` without a mask). Raise `ValueError` when
    ``original_text`` does not equal ``masked_text`` outside its masks. Where the split is
    ambiguous the earlier masks take the shortest words."""
    parts = masked_text.split(mask)
    if len(parts) == 1:
        return []
    match = re.fullmatch("(.*?)".join(re.escape(part) for part in parts), original_text, flags=re.DOTALL)
    if match is None:
        raise ValueError(
            f"the reference text {original_text[:80]!r} is not the predicted text {masked_text[:80]!r} with its "
            f"{mask} filled in: a fill-mask example needs the masked text as predicted doc and the original "
            "text as reference doc"
        )
    return [match.span(i) for i in range(1, len(parts))]


def gold_piece(text: str, start: int, end: int) -> str:
    """The sentencepiece piece a single ``<mask>`` must be filled with to restore ``text[start:end]``:
    the word (NFKC, as the XLM-R tokenizer normalises), with ``▁`` when it starts a word (at the
    start of the text or after whitespace, which the masked span may include)."""
    span = text[start:end]
    word = unicodedata.normalize("NFKC", span.strip())
    starts_word = start == 0 or span[:1].isspace() or text[start - 1].isspace()
    return (WORD_START if starts_word else "") + word


def score_fill_mask(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """Masked-word accuracy of ``xlmrxl_fill_mask`` predictions.

    Each example's predicted doc is the masked text as the component annotated it
    (``doc._.fill_mask``: the fillers of each ``<mask>``, in text order), its reference doc the
    original text. Every mask's gold is the piece that restores the original word (`gold_piece`),
    compared with the fillers' ``piece``; a word of several pieces, which one mask cannot
    restore, counts as missed, as it does in ``spacy-xlmrxl evaluate-fill-mask`` (which masks
    single-piece words only). ``fill_mask_acc`` / ``fill_mask_top5`` are None when the examples
    hold no mask. ``kwargs`` (the component's cfg) are ignored.

    spaCy's ``nlp.evaluate`` cannot score such examples (its tokenization scorer needs the two
    texts to be equal): call the component's ``score(examples)`` or this function.
    """
    pairs = []
    for eg in examples:
        predicted, reference = eg.predicted, eg.reference
        spans = masked_words(predicted.text, reference.text)
        fillers = (predicted._.fill_mask if Doc.has_extension("fill_mask") else None) or []
        for i, (start, end) in enumerate(spans):
            pairs.append((fillers[i] if i < len(fillers) else [], gold_piece(reference.text, start, end)))
    return masked_word_accuracy(pairs, key="piece")


@registry.scorers("spacy-xlmrxl.fill_mask_scorer.v1")
def make_fill_mask_scorer() -> Callable[..., Dict[str, Any]]:
    return score_fill_mask
