"""Fuzzed and hand-picked texts through every component: no exception, every token an output.

The fixed corpus (``corpus.json``, hand-written) holds empty and whitespace-only docs, single
characters, control characters, zero-width joiners, combining marks, RTL + LTR mixes, many
scripts and emoji sequences; hypothesis adds random text (any character but lone surrogates,
which cannot be encoded at all: see the last tests for what happens to them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..spacy_xlmrxl.test_qa import ask
from .checks import check_answers, check_fill_mask, check_shared_doc, masked_variants

CORPUS = json.loads((Path(__file__).parent / "corpus.json").read_text(encoding="utf8"))["texts"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _qa_docs(nlp, texts):
    return [ask(nlp, text, ["Who is it?", text, ""]) for text in texts]


def test_corpus_through_transformer_ner_textcat(shared_nlp):
    docs = list(shared_nlp.pipe(CORPUS, batch_size=7))
    for doc, text in zip(docs, CORPUS):
        assert doc.text == text
        check_shared_doc(shared_nlp, doc)
    single = [shared_nlp(text) for text in CORPUS]
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in docs] == \
           [[(e.start, e.end, e.label_) for e in d.ents] for d in single]
    for a, b in zip(docs, single):
        assert a.cats == pytest.approx(b.cats, abs=1e-5)


def test_corpus_through_qa(qa_pipeline):
    for doc in qa_pipeline.pipe(_qa_docs(qa_pipeline, CORPUS), batch_size=7):
        check_answers(doc, 3)


def test_corpus_through_fill_mask(fill_pipeline):
    texts = [variant for text in CORPUS for variant in masked_variants(text)]
    top_k = fill_pipeline.get_pipe("xlmrxl_fill_mask").cfg.get("top_k", 4)
    for doc in fill_pipeline.pipe(texts, batch_size=9):
        check_fill_mask(doc, top_k)


@FUZZ
@given(st.lists(TEXT, min_size=1, max_size=3))
def test_fuzzed_text_through_transformer_ner_textcat(shared_nlp, texts):
    for doc in shared_nlp.pipe(texts):
        check_shared_doc(shared_nlp, doc)


@FUZZ
@given(TEXT, TEXT)
def test_fuzzed_text_through_qa(qa_pipeline, context, question):
    (doc,) = qa_pipeline.pipe([ask(qa_pipeline, context, [question, "What?"])])
    check_answers(doc, 2)


@FUZZ
@given(TEXT)
def test_fuzzed_text_through_fill_mask(fill_pipeline, text):
    top_k = fill_pipeline.get_pipe("xlmrxl_fill_mask").cfg.get("top_k", 4)
    for doc in fill_pipeline.pipe(masked_variants(text)):
        check_fill_mask(doc, top_k)


# --------------------------------------------------------------------------- lone surrogates
LONE = ["a\ud800b", "\udfff", "ok \udc80"]


@pytest.mark.parametrize("text", LONE)
def test_lone_surrogates_in_a_doc_are_refused_by_spacy_with_a_unicode_error(shared_nlp, text):
    """spaCy stores strings as UTF-8, so a text with a lone surrogate never becomes a Doc:
    ``make_doc`` raises ``UnicodeEncodeError`` (a ``ValueError``) naming the position; our
    components never see such text. Decode with ``errors="replace"`` (or ``surrogatepass``
    then re-encode) before spaCy to keep going."""
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        shared_nlp(text)


@pytest.mark.parametrize("text", LONE)
def test_lone_surrogates_reaching_the_tokenizer_give_a_clear_error(qa_pipeline, text):
    """Strings that bypass spaCy's tokenizer (a QA question) hit the sentencepiece tokenizer:
    it must raise a ``ValueError`` that says "surrogate", not an opaque pybind11 error."""
    with pytest.raises(ValueError, match="surrogate"):
        qa_pipeline(ask(qa_pipeline, "A context.", text))


def test_escaped_and_replaced_surrogates_are_ordinary_text(shared_nlp, qa_pipeline):
    escaped = "a\\ud800b".encode("utf8").decode("utf8")  # the six characters \ud800, not a surrogate
    replaced = "a\ud800b".encode("utf8", errors="replace").decode("utf8")
    for text in [escaped, replaced]:
        check_shared_doc(shared_nlp, shared_nlp(text))
        check_answers(qa_pipeline(ask(qa_pipeline, text, text)), 1)
