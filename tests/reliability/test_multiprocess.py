"""``nlp.pipe(..., n_process=2)`` works and equals one process; the pipelines pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy
import pytest

from .checks import check_fill_mask, check_shared_doc

CORPUS = json.loads((Path(__file__).parent / "corpus.json").read_text(encoding="utf8"))["texts"]


def _summary(doc):
    return [(e.start, e.end, e.label_) for e in doc.ents], [doc.cats[k] for k in sorted(doc.cats)]


def test_pipe_with_two_processes_equals_one(shared_nlp):
    texts = CORPUS * 2
    single = [_summary(doc) for doc in shared_nlp.pipe(texts)]
    multi = list(shared_nlp.pipe(texts, n_process=2, batch_size=8))
    assert [d.text for d in multi] == texts  # nothing lost, order kept
    for doc, (ents, cats) in zip(multi, single):
        assert _summary(doc)[0] == ents
        numpy.testing.assert_allclose(_summary(doc)[1], cats, atol=1e-5)


def test_fill_mask_with_two_processes_equals_one(fill_pipeline):
    texts = [f"{t} <mask>" for t in CORPUS[:12]]
    single = [[[f["token_id"] for f in m] for m in d._.fill_mask] for d in fill_pipeline.pipe(texts)]
    multi = list(fill_pipeline.pipe(texts, n_process=2, batch_size=4))
    for doc in multi:
        check_fill_mask(doc, len(doc._.fill_mask[0]))
    assert [[[f["token_id"] for f in m] for m in d._.fill_mask] for d in multi] == single


@pytest.mark.parametrize("fixture", ["shared_nlp", "qa_pipeline", "fill_pipeline"])
def test_pipelines_pickle_and_predict_the_same(fixture, request):
    nlp = request.getfixturevalue(fixture)
    clone = pickle.loads(pickle.dumps(nlp))
    text = "Anna lives in Paris . <mask>" if fixture == "fill_pipeline" else "Anna lives in Paris ."
    a, b = nlp(text), clone(text)
    if fixture == "shared_nlp":
        check_shared_doc(clone, b)
        numpy.testing.assert_array_equal(a._.xlmrxl.tokvecs["mean"], b._.xlmrxl.tokvecs["mean"])
        assert _summary(a) == _summary(b)
    elif fixture == "fill_pipeline":
        assert a._.fill_mask == b._.fill_mask
    else:
        assert a._.answers == b._.answers
