"""Tests for spacy_xlmrxl.alignment: piece-to-token alignment rules and pooling with backprop."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from typing import List, Tuple

import numpy as np
import pytest
import spacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacy.attrs import IDX
from spacy.tokens import Doc
from thinc.api import NumpyOps, Ragged

from spacy_xlmrxl.ml.alignment import StreamingPooler, align_tokens_to_pieces, piece_pooler, pool_pieces

# Languages whose blank tokenizer needs no extra package (ja, ko, th, vi do).
LANGS = ("en", "de", "da", "ru", "zh", "xx", "ar", "el")
ALPHABETS = {
    "latin": "abcdefghijklmnopqrstuvwxyzäöüßæøåéABCXYZ",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщъыьэюяЖЩЯ",
    "cjk": "他说了中文字我们的一是不人在有",
    "mixed": "aéЖ中ب हिंदीαβ😀ﬁ①ｶﾀ\u0301",
}
ODD_CHARS = "\u200d\u200c\u00ad\ufeff.,!?-'\"()"
SPACE_WORDS = (" ", "  ", "\n", "\t", "\u3000", "\u2003", "\n\n ")
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
OPS = NumpyOps()
Offsets = List[Tuple[int, int]]


@lru_cache(maxsize=None)
def blank(lang: str) -> spacy.Language:
    return spacy.blank(lang)


# --- reference implementation of the documented rules (slow, obviously correct) -----------


def token_span(token) -> Tuple[int, int]:
    return token.idx, token.idx + len(token.text)


def overlaps(piece: Tuple[int, int], token: Tuple[int, int]) -> bool:
    (ps, pe), (ts, te) = piece, token
    if ps == pe:  # empty spans belong to the token containing their position
        return ts <= ps < te
    return ps < te and pe > ts


def gap(piece: Tuple[int, int], token: Tuple[int, int]) -> int:
    (ps, pe), (ts, te) = piece, token
    return ts - pe if pe <= ts else ps - te


def check_alignment(doc: Doc, offsets: Offsets) -> Ragged:
    """Align and check every documented property against the slow reference."""
    align = align_tokens_to_pieces(doc, offsets)
    assert align.dataXd.dtype == np.int32 and align.lengths.dtype == np.int32
    assert align.lengths.shape == (len(doc),)
    assert int(align.lengths.sum()) == len(align.dataXd)
    start = 0
    for token, length in zip(doc, align.lengths.tolist()):
        pieces = align.dataXd[start : start + length].tolist()
        start += length
        if token.is_space:
            assert pieces == [], (token.text, pieces)
            continue
        expected = [i for i, span in enumerate(offsets) if overlaps(span, token_span(token))]
        if expected:
            assert pieces == expected, (token.text, token_span(token), pieces, expected)
        elif offsets:
            # No overlapping piece: exactly one piece, and no piece is closer.
            assert len(pieces) == 1, (token.text, pieces)
            best = min(gap(span, token_span(token)) for span in offsets)
            assert gap(offsets[pieces[0]], token_span(token)) == best
        else:
            assert pieces == []
    return align


# --- strategies ----------------------------------------------------------------------------


@st.composite
def random_docs(draw) -> Doc:
    """A Doc in a random language, from random words (incl. whitespace and odd characters)
    either given as words/spaces or tokenised by the language's own tokenizer."""
    lang = draw(st.sampled_from(LANGS))
    alphabet = ALPHABETS[draw(st.sampled_from(sorted(ALPHABETS)))] + ODD_CHARS
    word = st.one_of(
        st.text(alphabet, min_size=1, max_size=8), st.sampled_from(SPACE_WORDS)
    )
    words = draw(st.lists(word, min_size=0, max_size=25))
    spaces = draw(st.lists(st.booleans(), min_size=len(words), max_size=len(words)))
    nlp = blank(lang)
    if draw(st.booleans()):
        return Doc(nlp.vocab, words=words, spaces=spaces)
    return nlp("".join(w + (" " if s else "") for w, s in zip(words, spaces)))


@st.composite
def fake_segmentations(draw, text_length: int) -> Offsets:
    """Monotone pieces over the text: random cut points; a segment becomes a piece, is
    dropped (a character the normaliser removed), or is preceded by an empty-span piece."""
    cuts = draw(st.lists(st.integers(0, text_length), max_size=text_length + 2))
    bounds = sorted(set([0, text_length] + cuts))
    offsets: Offsets = []
    for start, end in zip(bounds, bounds[1:]):
        fate = draw(st.sampled_from(["piece", "piece", "piece", "dropped", "empty+piece"]))
        if fate == "empty+piece":
            offsets.append((start, start))
        if fate != "dropped":
            offsets.append((start, end))
    return offsets


# --- alignment -----------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_alignment_properties_fake_segmentation(data):
    doc = data.draw(random_docs())
    offsets = data.draw(fake_segmentations(len(doc.text)))
    check_alignment(doc, offsets)


@SETTINGS
@given(data=st.data())
def test_alignment_properties_straddling_and_unordered_pieces(data):
    """Arbitrary (overlapping, unordered) spans still follow the rules."""
    doc = data.draw(random_docs())
    n = len(doc.text)
    spans = st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda p: (min(p), max(p)))
    check_alignment(doc, data.draw(st.lists(spans, max_size=30)))


def test_one_token_many_pieces_one_piece_many_tokens_and_straddling():
    nlp = blank("en")
    words = ["unbelievable", "(", "x", ")", "ab", "cd"]
    doc = Doc(nlp.vocab, words=words, spaces=[True, False, False, True, False, False])
    assert doc.text == "unbelievable (x) abcd"
    offsets = [(0, 2), (2, 6), (6, 12), (13, 16), (17, 19), (19, 21)]
    align = check_alignment(doc, offsets)
    assert align.lengths.tolist() == [3, 1, 1, 1, 1, 1]
    assert align.dataXd.tolist() == [0, 1, 2, 3, 3, 3, 4, 5]
    straddling = [(0, 12), (13, 18), (18, 21)]  # "(x) a" and "bcd" straddle "ab" | "cd"
    align = check_alignment(doc, straddling)
    assert align.dataXd.tolist() == [0, 1, 1, 1, 1, 2, 2]


def test_whitespace_tokens_empty_and_orphans_get_nearest_piece():
    nlp = blank("en")
    doc = nlp("Hello  world, a\u200d b!\n  ok")
    texts = [t.text for t in doc]
    assert texts == ["Hello", " ", "world", ",", "a\u200d", "b", "!", "\n  ", "ok"]
    # Pieces cover "Hello", " world", ",", "a", an empty "▁" at "b", and "b"; nothing covers
    # the ZWJ (its token still has "a"), "!" or "ok" (these two fall back to piece 5).
    offsets = [(0, 5), (6, 12), (12, 13), (14, 15), (17, 17), (17, 18)]
    align = check_alignment(doc, offsets)
    assert align.lengths.tolist() == [1, 0, 1, 1, 1, 2, 1, 0, 1]
    assert align.dataXd.tolist() == [0, 1, 2, 3, 4, 5, 5, 5]


def test_nearest_piece_tie_prefers_preceding():
    doc = Doc(blank("en").vocab, words=["a", "x", "b"], spaces=[False, False, False])
    align = check_alignment(doc, [(0, 1), (2, 3)])  # "x" is 1 char from both pieces
    assert align.dataXd.tolist() == [0, 0, 1]


def test_no_pieces_and_empty_doc():
    nlp = blank("xx")
    doc = nlp("\u200d \u200d")
    align = check_alignment(doc, [])
    assert align.lengths.tolist() == [0] * len(doc)
    empty = check_alignment(nlp(""), [])
    assert empty.lengths.shape == (0,) and empty.dataXd.shape == (0,)


@pytest.mark.parametrize("offsets", [[(3, 2)], [(-1, 2)], [(0, 99)], [(0, 1, 2)]])
def test_bad_offsets_raise(offsets):
    with pytest.raises(ValueError):
        align_tokens_to_pieces(blank("en")("a b c"), offsets)


def test_long_doc_alignment():
    """Many tokens at once (the 100k-token case runs end to end in test_windows.py)."""
    rng = np.random.default_rng(0)
    letters = rng.integers(ord("a"), ord("i"), size=300_000, dtype=np.uint8).tobytes().decode()
    ends = np.cumsum(rng.integers(1, 9, size=30_000))
    words = [letters[start:end] for start, end in zip([0] + ends.tolist(), ends.tolist())]
    doc = Doc(blank("en").vocab, words=words)
    starts = doc.to_array([IDX]).astype(np.int64)
    lengths = np.array([len(word) for word in words])
    cuts = starts + lengths // 2
    # Per token: (preceding space + first half) and (second half); one-character tokens get
    # a piece that is only the space (no token) and one piece; empty spans are dropped.
    spans = np.stack([np.maximum(starts - 1, 0), cuts, cuts, starts + lengths], axis=1)
    spans = spans.reshape(-1, 2)
    spans = spans[spans[:, 1] > spans[:, 0]]
    align = align_tokens_to_pieces(doc, spans)
    np.testing.assert_array_equal(align.lengths, np.where(lengths > 1, 2, 1))
    assert (np.diff(align.dataXd) > 0).all()


# --- the real XLM-R tokenizer --------------------------------------------------------------

SENTENCES = (
    "Hello world, this is spaCy with XLM-R.",
    "  Leading spaces,   inner   runs and\ttabs\n\nand newlines ",
    "Der Fluß ist schön; Æbleskiver på dansk!",
    "Москва — столица России.",
    "他说了中文字，我们的。",
    "ﬁne ① ｶﾀｶﾅ wor\u200dld e\u0301 😀👍🏽 مرحبا بالعالم नमस्ते",
    "soft\u00adhyphen zero\u200bwidth \ufeffbom",
)


@pytest.fixture(scope="module")
def spm_processor(spm_model_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    return sentencepiece.SentencePieceProcessor(model_file=str(spm_model_path))


def spm_char_offsets(processor, text: str) -> Offsets:
    """Character spans of sentencepiece pieces (its byte offsets converted to characters)."""
    char_byte_starts = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])
    proto = processor.encode(text, out_type="proto")
    return [
        (int(np.searchsorted(char_byte_starts, p.begin)), int(np.searchsorted(char_byte_starts, p.end)))
        for p in proto.pieces
    ]


@pytest.mark.parametrize("lang", LANGS)
def test_real_tokenizer_sentences(spm_processor, lang):
    for text in SENTENCES:
        doc = blank(lang)(text)
        align = check_alignment(doc, spm_char_offsets(spm_processor, text))
        content = np.array([not t.is_space for t in doc], dtype=bool)
        assert (align.lengths[content] >= 1).all()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_real_tokenizer_random_docs(spm_processor, data):
    doc = data.draw(random_docs())
    check_alignment(doc, spm_char_offsets(spm_processor, doc.text))


def test_project_tokenizer_offsets(spm_model_path):
    if importlib.util.find_spec("modeling.tokenizer") is None:
        pytest.skip("modeling/tokenizer.py is not there yet")
    from modeling.tokenizer import XLMRobertaTokenizer

    tokenizer = XLMRobertaTokenizer(str(spm_model_path))
    for lang in ("en", "zh", "xx"):
        for text in SENTENCES:
            doc = blank(lang)(text)
            encoding = tokenizer.encode_pieces(text)
            check_alignment(doc, [tuple(span) for span in encoding.offsets])


# --- pooling -------------------------------------------------------------------------------


def reference_pool(hidden: np.ndarray, align: Ragged, mode: str) -> np.ndarray:
    out = np.zeros((len(align.lengths), hidden.shape[1]), dtype=hidden.dtype)
    start = 0
    for i, length in enumerate(align.lengths.tolist()):
        rows = hidden[align.dataXd[start : start + length]]
        start += length
        if length:
            out[i] = rows.mean(axis=0) if mode == "mean" else rows[0]
    return out


@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["mean", "first"]))
def test_pooling_values_and_gradients(data, mode):
    doc = data.draw(random_docs())
    offsets = data.draw(fake_segmentations(len(doc.text)))
    align = align_tokens_to_pieces(doc, offsets)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    hidden = rng.normal(size=(len(offsets), 3))
    pooled, backprop = pool_pieces(OPS, hidden, align, mode=mode)
    np.testing.assert_allclose(pooled, reference_pool(hidden, align, mode), rtol=1e-12)
    assert not pooled[[t.is_space for t in doc]].any()
    # Pooling is linear, so backprop must be its exact adjoint: <dY, f(X)> == <f*(dY), X>.
    d_pooled = rng.normal(size=pooled.shape)
    d_hidden = backprop(d_pooled)
    assert d_hidden.shape == hidden.shape
    np.testing.assert_allclose((d_pooled * pooled).sum(), (d_hidden * hidden).sum(), atol=1e-9)


def test_pooling_gradient_by_hand():
    align = Ragged(np.array([0, 1, 2, 2, 3], dtype=np.int32), np.array([3, 0, 1, 1], dtype=np.int32))
    hidden = np.arange(8, dtype=np.float32).reshape(4, 2)
    d_pooled = np.array([[3, 3], [7, 7], [1, 1], [2, 2]], dtype=np.float32)
    _, mean_backprop = pool_pieces(OPS, hidden, align, mode="mean")
    np.testing.assert_allclose(mean_backprop(d_pooled)[:, 0], [1, 1, 1 + 1, 2])
    pooled, first_backprop = pool_pieces(OPS, hidden, align, mode="first")
    np.testing.assert_allclose(pooled[:, 0], [0, 0, 4, 6])
    np.testing.assert_allclose(first_backprop(d_pooled)[:, 0], [3, 0, 1, 2])
    assert pooled.dtype == np.float32


def test_pooling_finite_differences():
    doc = blank("de")("Donaudampfschifffahrt ist  lang.")
    align = align_tokens_to_pieces(doc, [(0, 5), (5, 9), (9, 21), (21, 25), (26, 28), (28, 31), (31, 32)])
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(7, 2))
    weights = rng.normal(size=(len(doc), 2))
    for mode in ("mean", "first"):
        pooled, backprop = pool_pieces(OPS, hidden, align, mode=mode)
        grad = backprop(weights)
        eps = 1e-6
        for index in np.ndindex(hidden.shape):
            bumped = hidden.copy()
            bumped[index] += eps
            loss_bumped = (pool_pieces(OPS, bumped, align, mode=mode)[0] * weights).sum()
            numeric = (loss_bumped - (pooled * weights).sum()) / eps
            assert numeric == pytest.approx(grad[index], abs=1e-5)


def test_piece_pooler_model_batches_docs():
    nlp = blank("en")
    docs = [nlp("a bc"), nlp(" "), nlp("d")]
    offsets = [[(0, 1), (2, 3), (3, 4)], [], [(0, 1)]]
    inputs = [
        (np.arange(2 * len(o), dtype=np.float32).reshape(-1, 2), align_tokens_to_pieces(d, o))
        for d, o in zip(docs, offsets)
    ]
    model = piece_pooler("mean")
    outputs, backprop = model(inputs, is_train=True)
    assert [o.shape for o in outputs] == [(2, 2), (1, 2), (1, 2)]
    np.testing.assert_allclose(outputs[0], [[0, 1], [3, 4]])
    assert not outputs[1].any()
    grads = backprop([np.ones_like(o) for o in outputs])
    assert [g.shape for g in grads] == [(3, 2), (0, 2), (1, 2)]
    np.testing.assert_allclose(grads[0][:, 0], [1, 0.5, 0.5])


def test_pooling_errors():
    align = Ragged(np.array([0, 5], dtype=np.int32), np.array([1, 1], dtype=np.int32))
    with pytest.raises(ValueError, match="piece 5"):
        pool_pieces(OPS, np.zeros((2, 3), dtype=np.float32), align)
    with pytest.raises(ValueError, match="mode"):
        pool_pieces(OPS, np.zeros((6, 3), dtype=np.float32), align, mode="max")
    with pytest.raises(ValueError, match="mode"):
        piece_pooler("sum")


# --- streaming pooling (inference) -----------------------------------------------------------


def _stream_pool(hidden: np.ndarray, align: Ragged, cuts, modes):
    pooler = StreamingPooler(OPS, align, len(hidden), hidden.shape[1], modes)
    bounds = sorted(set([0, len(hidden)] + [c for c in cuts if 0 <= c <= len(hidden)]))
    for start, end in zip(bounds, bounds[1:]):
        pooler.add(start, hidden[start:end])
    assert pooler.finished
    return pooler


@SETTINGS
@given(data=st.data(), unordered=st.booleans())
def test_streaming_pooler_is_bit_identical_to_pool_pieces(data, unordered):
    doc = data.draw(random_docs())
    n = len(doc.text)
    if unordered:
        spans = st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda p: (min(p), max(p)))
        offsets = data.draw(st.lists(spans, max_size=30))
    else:
        offsets = data.draw(fake_segmentations(n))
    align = align_tokens_to_pieces(doc, offsets)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    hidden = rng.normal(size=(len(offsets), 4)).astype(np.float32)
    cuts = data.draw(st.lists(st.integers(0, len(offsets)), max_size=6))
    pooler = _stream_pool(hidden, align, cuts, ["mean", "first"])
    for mode in ("mean", "first"):
        expected, _ = pool_pieces(OPS, hidden, align, mode=mode)
        got = pooler.outputs[mode]
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32)), mode


def test_streaming_pooler_keeps_only_the_rows_pending_tokens_need():
    nlp = blank("en")
    doc = nlp("one two three four five six seven eight")
    offsets = [(t.idx, t.idx + len(t.text)) for t in doc]  # one piece per token, monotone
    align = align_tokens_to_pieces(doc, offsets)
    hidden = np.arange(len(doc) * 2, dtype=np.float32).reshape(-1, 2)
    pooler = StreamingPooler(OPS, align, len(hidden), 2, ["mean"])
    for start in range(0, len(hidden), 2):
        pooler.add(start, hidden[start : start + 2])
        assert len(pooler._rows) == 0  # every token of the block pooled at once: nothing held
    assert np.array_equal(pooler.outputs["mean"], hidden)
    with pytest.raises(ValueError, match="in order"):
        pooler.add(3, hidden[:1])
    with pytest.raises(ValueError, match="mode"):
        StreamingPooler(OPS, align, len(hidden), 2, ["max"])
