"""Memory of a long doc through the shared transformer: what stays on the Doc is the token
vectors the listeners read plus a few int32 bytes per piece, and what is held meanwhile is one
window batch, a few windows per doc and the tokenizer's lists of one chunk of text, not a
hidden state per piece."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from pathlib import Path

import pytest

from modeling import tokenizer_pieces
from modeling.tokenizer import XLMRobertaTokenizer
from modeling.tokenizer_pieces import chunk_starts

from .test_long_docs import long_text

CORPUS = json.loads((Path(__file__).parent / "corpus.json").read_text(encoding="utf8"))["texts"]

# Measured (tiny preset, width 64, windows of 32/16, 30 k characters = ~10 k pieces, 5.8 k tokens,
# text chunks of 4 k characters): the token vectors (147 B per piece here), ~43 B per piece kept
# besides them (ids, offsets, alignment, one <s> state per 16 pieces) and a traced peak of ~80 B
# per piece above the vectors. Before the streaming inference: 256 B per piece more kept (every
# piece's state on the Doc) and a traced peak of ~780 B per piece (the tokenizer's lists of the
# whole text, the outputs of every window, recombined and pooled copies of the whole doc).
KEPT_PER_PIECE = 64  # bytes besides the token vectors
PEAK_PER_PIECE = 160  # bytes above the start, besides the token vectors


def test_memory_per_piece_is_bounded(shared_nlp, monkeypatch):
    monkeypatch.setattr(tokenizer_pieces, "ENCODE_CHUNK_CHARS", 4096)  # a 30 k text is "long"
    transformer = shared_nlp.get_pipe("xlmrxl_transformer")
    transformer(shared_nlp.make_doc(long_text(2_000)))  # warm up
    doc = shared_nlp.make_doc(long_text(30_000))
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        doc = transformer(doc)
        gc.collect()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = doc._.xlmrxl
    n_pieces = data.n_pieces
    vectors = data.tokvecs["mean"].nbytes
    assert n_pieces > 5_000 and data.hidden is None
    assert vectors == len(doc) * data.width * 4
    assert data.nbytes() - vectors <= KEPT_PER_PIECE * n_pieces, data.nbytes() / n_pieces
    assert kept - start - vectors <= KEPT_PER_PIECE * n_pieces, (kept - start - vectors) / n_pieces
    assert peak - start - vectors <= PEAK_PER_PIECE * n_pieces, (peak - start - vectors) / n_pieces


def test_long_texts_are_tokenised_in_chunks_with_the_pieces_of_the_whole(spm_model_path, monkeypatch):
    tokenizer = XLMRobertaTokenizer(spm_model_path)
    rng = random.Random(0)
    texts = [long_text(20_000)]
    for _ in range(30):  # corpus texts (every script, odd characters) glued by spaces, masks, digits
        parts = [rng.choice(CORPUS) or "." for _ in range(rng.randint(1, 40))]
        texts.append("".join(p + rng.choice([" ", "  ", " <mask> ", "\n", " a ", "x y", "1 2 3"]) for p in parts))
    wholes = tokenizer.encode_pieces_batch(texts)
    for size in (8, 50, 500):  # texts over 2 * size characters are chunked, the others grouped
        monkeypatch.setattr(tokenizer_pieces, "ENCODE_CHUNK_CHARS", size)
        for (ids, offsets), whole in zip(tokenizer.encode_arrays(texts), wholes):
            assert ids.dtype.name == offsets.dtype.name == "int32" and offsets.shape == (len(whole), 2)
            assert ids.tolist() == whole.ids
            assert [tuple(span) for span in offsets.tolist()] == whole.offsets
    assert len(chunk_starts(texts[0], 500)) > 10
    assert chunk_starts("\u4e2d" * 5_000, 500) == [0]  # no safe cut: one chunk


def test_long_text_with_a_lone_surrogate_names_its_place_in_the_whole_text(spm_model_path, monkeypatch):
    monkeypatch.setattr(tokenizer_pieces, "ENCODE_CHUNK_CHARS", 50)
    tokenizer = XLMRobertaTokenizer(spm_model_path)
    text = long_text(2_000)
    text = text[:1500] + "\ud800" + text[1500:]
    with pytest.raises(ValueError, match="lone surrogate '\\\\ud800' at character 1500"):
        tokenizer.encode_arrays(["short", text])


def _encode_peak(tokenizer, texts):
    """Traced peak of `encode_arrays` above what it returns (which is still held)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = tokenizer.encode_arrays(texts)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result) == len(texts)
    return peak - kept


def test_many_short_texts_are_tokenised_in_groups_of_bounded_size(spm_model_path, monkeypatch):
    """The per-piece Python lists (~6 kB for one of these texts) exist for one group of texts at
    a time: the peak besides the result grows by a pointer or two per text, not by the texts'
    lists (before: all the texts' lists at once, ~20 MB here)."""
    monkeypatch.setattr(tokenizer_pieces, "ENCODE_CHUNK_CHARS", 1_000)  # groups of <= 2000 characters
    tokenizer = XLMRobertaTokenizer(spm_model_path)
    texts = [long_text(60 + i % 7) for i in range(4_000)]
    _encode_peak(tokenizer, texts[:10])  # warm up
    few, many = _encode_peak(tokenizer, texts[:500]), _encode_peak(tokenizer, texts)
    assert many - few < 32 * (len(texts) - 500) and few < 200_000, (few, many)


def test_textcat_with_its_own_backbone_keeps_no_piece_state(spm_model_path, monkeypatch):
    """Inference of ``xlmrxl_textcat`` with an own ``Transformer.v1`` holds the <s> states the
    head reads, not every piece's state (4 * H bytes per piece: 256 here, 10 kB for XL): measured
    ~143 B per piece of traced peak (before: ~356), with the same scores as the plain chain."""
    import spacy
    from spacy.training import Example
    from thinc.layers.chain import forward as chain_forward

    monkeypatch.setattr(tokenizer_pieces, "ENCODE_CHUNK_CHARS", 4096)
    nlp = spacy.blank("xx")
    nlp.add_pipe("xlmrxl_textcat", config={"model": {"transformer": {
        "backbone": {"checkpoint": None, "preset": "tiny", "tokenizer": str(spm_model_path)},
        "windows": {"window": 32, "stride": 16}}}})
    gold = [nlp.make_doc("a b"), nlp.make_doc("c d")]
    gold[0].cats, gold[1].cats = {"A": 1.0, "B": 0.0}, {"A": 0.0, "B": 1.0}
    nlp.initialize(lambda: [Example(nlp.make_doc(doc.text), doc) for doc in gold])
    textcat = nlp.get_pipe("xlmrxl_textcat")
    docs = [nlp.make_doc(long_text(n)) for n in (3_000, 500)]
    assert textcat.predict(docs).tolist() == chain_forward(textcat.model, docs, False)[0].tolist()
    doc = nlp.make_doc(long_text(30_000))
    n_pieces = len(textcat.model.get_ref("transformer").attrs["tokenizer"].encode_arrays([doc.text])[0].ids)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        textcat.predict([doc])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_pieces > 5_000
    assert peak - start <= 200 * n_pieces, (peak - start) / n_pieces
