"""The big cases (run by ``bench/reliability_big.py``, skipped otherwise): one doc of 1 M
characters and 10 k tiny docs in one ``nlp.pipe`` call, every token and doc accounted for."""

from __future__ import annotations

import pytest

from .checks import check_shared_doc
from .test_long_docs import long_text

pytestmark = pytest.mark.slow


def test_one_million_characters_in_one_doc(shared_nlp):
    doc = shared_nlp(long_text(1_000_000))
    assert len(doc.text) == 1_000_000
    check_shared_doc(shared_nlp, doc)


def test_ten_thousand_tiny_docs_in_one_pipe_call(shared_nlp):
    texts = [f"Doc {i} \u05e9\u05dc\u05d5\u05dd {chr(0x4e00 + i % 500)}" if i % 7 else "" for i in range(10_000)]
    docs = list(shared_nlp.pipe(texts, batch_size=256))
    assert [d.text for d in docs] == texts
    for doc in docs[:: 97]:
        check_shared_doc(shared_nlp, doc)
