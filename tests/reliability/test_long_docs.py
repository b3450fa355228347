"""A long document (~30 k characters, hundreds of windows) through every component: every
token gets an output, every mask a filler, every answer lies inside the context."""

from __future__ import annotations

import json
from pathlib import Path

from ..spacy_xlmrxl.test_qa import ask
from .checks import check_answers, check_fill_mask, check_shared_doc

CORPUS = json.loads((Path(__file__).parent / "corpus.json").read_text(encoding="utf8"))["texts"]


def long_text(n_chars: int = 30_000) -> str:
    """Every corpus text in turn, separated by a space, until ``n_chars``."""
    parts, size, i = [], 0, 0
    while size < n_chars:
        text = CORPUS[i % len(CORPUS)] or "."
        parts.append(text)
        size += len(text) + 1
        i += 1
    return " ".join(parts)[:n_chars]


def test_long_doc_through_transformer_ner_textcat(shared_nlp):
    doc = shared_nlp(long_text())
    check_shared_doc(shared_nlp, doc)
    assert len(doc._.xlmrxl.windows) > 100
    assert len(doc) > 3000


def test_long_context_through_qa(qa_pipeline):
    doc = qa_pipeline(ask(qa_pipeline, long_text(), ["Who is it?", "\u0645\u0631\u062d\u0628\u0627?"]))
    check_answers(doc, 2)


def test_long_doc_with_many_masks_through_fill_mask(fill_pipeline):
    words = long_text(20_000).split(" ")
    text = " ".join(w if i % 50 else "<mask>" for i, w in enumerate(words))
    doc = fill_pipeline(text)
    assert len(doc._.fill_mask) > 50
    check_fill_mask(doc, len(doc._.fill_mask[0]))
