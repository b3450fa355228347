"""What every component must leave on a doc, whatever its text: the invariants of the suite."""

from __future__ import annotations

import math
from typing import Sequence

import numpy
from spacy.language import Language
from spacy.tokens import Doc

from .conftest import CAT_LABELS, NER_LABELS

MASK = "<mask>"


def check_shared_doc(nlp: Language, doc: Doc) -> None:
    """Backbone output, alignment, token scores, entities and categories of one doc of the
    transformer + ner + textcat pipeline."""
    data = doc._.xlmrxl
    assert data is not None
    n_pieces = data.n_pieces
    assert data.hidden is None  # listeners only need pooled token vectors: no per-piece states kept
    vectors = data.tokvecs["mean"]
    assert vectors.shape == (len(doc), data.width) and vectors.dtype == numpy.float32
    assert numpy.isfinite(vectors).all()
    assert data.cls.shape[0] == len(data.windows) >= 1 and numpy.isfinite(data.cls).all()
    lengths = numpy.asarray(data.align.lengths)
    assert lengths.shape == (len(doc),)
    pieces = numpy.asarray(data.align.dataXd)
    assert ((pieces >= 0) & (pieces < max(n_pieces, 1))).all()
    for token, length in zip(doc, lengths):
        if token.is_space:
            assert length == 0, token.text
        elif n_pieces:
            assert length >= 1, f"token {token.i} {token.text!r} of {doc.text!r} has no piece"
    (probs,) = nlp.get_pipe("xlmrxl_ner").model.predict([doc])
    assert probs.shape[0] == len(doc) and numpy.isfinite(probs).all()
    for ent in doc.ents:
        assert ent.label_ in NER_LABELS and 0 <= ent.start < ent.end <= len(doc)
        assert not ent[0].is_space and not ent[-1].is_space
        assert doc.text[ent.start_char:ent.end_char] == ent.text
    assert sorted(doc.cats) == CAT_LABELS
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in doc.cats.values())
    assert math.isclose(sum(doc.cats.values()), 1.0, abs_tol=1e-4)


def check_answers(doc: Doc, n_questions: int) -> None:
    assert len(doc._.answers) == n_questions
    for answers in doc._.answers:
        for answer in answers:
            assert 0 <= answer["start"] < answer["end"] <= len(doc.text)
            assert answer["text"] == doc.text[answer["start"]:answer["end"]]
            assert 0.0 <= answer["score"] <= 1.0
    for span in doc.spans["answers"]:
        assert 0 <= span.start < span.end <= len(doc)


def check_fill_mask(doc: Doc, top_k: int) -> None:
    n_masks = sum(token.text == MASK for token in doc)
    assert len(doc._.fill_mask) == n_masks, doc.text
    for fillers in doc._.fill_mask:
        assert len(fillers) == top_k
        assert all(math.isfinite(f["score"]) and 0.0 <= f["score"] <= 1.0 for f in fillers)
    if n_masks == 0:
        assert doc._.filled_text == doc.text
    else:
        assert MASK not in doc._.filled_text


def masked_variants(text: str) -> Sequence[str]:
    """``text`` as is, with a mask at both ends, and with a mask in the middle."""
    middle = len(text) // 2
    return [text, f"{MASK}{text}{MASK}", f"{text[:middle]} {MASK} {text[middle:]}"]
