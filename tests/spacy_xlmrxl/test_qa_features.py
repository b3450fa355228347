"""Tests of spacy_xlmrxl.qa_features: chunking with a doc stride, gold positions, span decoding."""

import re

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacy_xlmrxl.pipeline.qa.features import (
    N_PAIR_SPECIALS,
    AnswerDecoder,
    _strip,
    build_features,
    chunk_spans,
    decode_answers,
    feature_candidates,
    gold_positions,
    iter_features,
    validate_window,
)


def word_pieces(text):
    """A stand-in tokenisation: one piece per word, ids from a running vocabulary."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    return [10 + i for i in range(len(spans))], spans


@given(n=st.integers(0, 300), length=st.integers(1, 64), data=st.data())
@settings(max_examples=200, deadline=None)
def test_chunk_spans_cover_with_overlap(n, length, data):
    stride = data.draw(st.integers(0, length - 1))
    spans = chunk_spans(n, length, stride)
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 - s0 == length  # only the last chunk may be short
        assert e0 - s1 == stride  # consecutive chunks share exactly `stride` pieces
        assert s1 > s0
    assert all(0 <= e - s <= length for s, e in spans)


def test_chunk_spans_rejects_bad_stride():
    with pytest.raises(ValueError):
        chunk_spans(10, 4, 4)


def test_validate_window_names_the_setting():
    validate_window(max_length=64, doc_stride=16, max_question_length=16)
    with pytest.raises(ValueError, match="doc_stride"):
        validate_window(max_length=64, doc_stride=60, max_question_length=16)
    with pytest.raises(ValueError, match="max_length"):
        validate_window(max_length=20, doc_stride=0, max_question_length=16)


def test_build_features_layout_and_offsets():
    context = "one two three four five six seven eight nine ten"
    ids, offsets = word_pieces(context)
    question = [5, 6, 7]
    features = build_features(question, ids, offsets, max_length=12, doc_stride=2, max_question_length=4, question_index=3)
    room = 12 - N_PAIR_SPECIALS - len(question)
    assert len(features) > 1
    seen = set()
    for k, feature in enumerate(features):
        assert feature.question_index == 3 and feature.chunk_index == k
        assert feature.input_ids[: feature.context_start] == (0, 5, 6, 7, 2, 2)
        assert feature.input_ids[-1] == 2
        assert len(feature.input_ids) <= 12
        assert 0 < len(feature.offsets) <= room
        chunk_ids = feature.input_ids[feature.context_start : feature.context_end]
        for piece_id, (s, e) in zip(chunk_ids, feature.offsets):
            assert offsets[piece_id - 10] == (s, e)
            seen.add(piece_id)
    assert seen == set(ids)


def test_question_is_truncated():
    ids, offsets = word_pieces("a b c")
    (feature,) = build_features(list(range(100, 150)), ids, offsets, max_length=20, doc_stride=0, max_question_length=8)
    assert feature.context_start == 1 + 8 + 2
    assert len(feature.offsets) == 3


def test_empty_context_gives_one_feature_and_no_answer():
    (feature,) = build_features([5], [], [], max_length=16, doc_stride=2, max_question_length=4)
    assert feature.offsets == ()
    logits = numpy.zeros(len(feature.input_ids))
    assert decode_answers([(logits, logits)], [feature], "") == []


def test_gold_positions_inside_and_outside_chunk():
    context = "alpha beta gamma delta epsilon zeta eta theta"
    ids, offsets = word_pieces(context)
    features = build_features([5], ids, offsets, max_length=9, doc_stride=1, max_question_length=2)
    start = context.index("gamma")
    end = context.index("delta") + len("delta")
    holders = [f for f in features if gold_positions(f, start, end) != (0, 0)]
    assert holders
    for feature in holders:
        first, last = gold_positions(feature, start, end)
        assert feature.offsets[first - feature.context_start][0] == start
        assert feature.offsets[last - feature.context_start][1] == end
    # chunks that do not hold the whole answer point at <s>
    for feature in features:
        if feature not in holders:
            assert gold_positions(feature, start, end) == (0, 0)
    assert gold_positions(features[0], 3, 3) == (0, 0)  # empty gold = no answer


def test_gold_positions_inside_a_piece_takes_the_covering_piece():
    context = "the 308-point defence"
    feature = build_features([5], [10, 11, 12], [(0, 3), (4, 13), (14, 21)], max_length=16, doc_stride=0, max_question_length=2)[0]
    assert gold_positions(feature, 4, 7) == (feature.context_start + 1, feature.context_start + 1)
    assert context[4:7] == "308"


def _logits_for(feature, start_pos, end_pos, strength=8.0):
    start = numpy.zeros(len(feature.input_ids), dtype="float32")
    end = numpy.zeros(len(feature.input_ids), dtype="float32")
    start[start_pos] = strength
    end[end_pos] = strength
    return start, end


def test_decode_picks_the_peaked_span_across_chunks():
    context = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11"
    ids, offsets = word_pieces(context)
    features = build_features([5], ids, offsets, max_length=10, doc_stride=2, max_question_length=2)
    assert len(features) >= 3
    target = features[-1]
    logits = [_logits_for(f, 0, 0, strength=0.0) for f in features]
    logits[-1] = _logits_for(target, target.context_start + 1, target.context_start + 2)
    answers = decode_answers(logits, features, context, top_k=3, max_answer_length=5)
    best = answers[0]
    first_word = target.offsets[1]
    assert (best.start, best.end) == (first_word[0], target.offsets[2][1])
    assert best.text == context[best.start : best.end]
    assert 0 < best.score <= 1
    assert len(answers) == 3
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)
    assert len({(a.start, a.end) for a in answers}) == 3


def test_decode_respects_max_answer_length():
    context = "a b c d e f"
    ids, offsets = word_pieces(context)
    (feature,) = build_features([5], ids, offsets, max_length=32, doc_stride=0, max_question_length=2)
    logits = [_logits_for(feature, feature.context_start, feature.context_start + 5)]
    for length in (1, 3, 6):
        answers = decode_answers(logits, [feature], context, top_k=50, max_answer_length=length)
        assert answers
        assert max(len(a.text.split()) for a in answers) == length


def test_no_answer_threshold():
    context = "a b c d"
    ids, offsets = word_pieces(context)
    (feature,) = build_features([5], ids, offsets, max_length=32, doc_stride=0, max_question_length=2)
    null_wins = [_logits_for(feature, 0, 0, strength=10.0)]
    assert decode_answers(null_wins, [feature], context) != []  # threshold off: always an answer
    assert decode_answers(null_wins, [feature], context, no_answer_threshold=0.0) == []
    span_wins = [_logits_for(feature, feature.context_start, feature.context_start)]
    assert decode_answers(span_wins, [feature], context, no_answer_threshold=0.0)[0].text == "a"
    # a threshold larger than the margin switches the answer off
    null, spans = feature_candidates(*span_wins[0], feature, top_k=1, max_answer_length=30)
    margin = spans[0][0] - null
    assert decode_answers(span_wins, [feature], context, no_answer_threshold=margin + 0.1) == []
    assert decode_answers(span_wins, [feature], context, no_answer_threshold=margin - 0.1) != []


def test_whitespace_only_pieces_are_never_answers():
    context = "x  y"
    (feature,) = build_features([5], [10, 11, 12], [(0, 1), (3, 3), (3, 4)], max_length=16, doc_stride=0, max_question_length=2)
    logits = [_logits_for(feature, feature.context_start + 1, feature.context_start + 1)]
    for answer in decode_answers(logits, [feature], context, top_k=10):
        assert answer.text.strip() == answer.text != ""


def test_real_tokenizer_offsets_round_trip(spm_model_path, shared_data):
    import json

    from modeling.tokenizer import XLMRobertaTokenizer

    tokenizer = XLMRobertaTokenizer(str(spm_model_path))
    data = json.loads((shared_data / "qa" / "xquad" / "xquad.en.json").read_text(encoding="utf8"))
    paragraph = data["data"][0]["paragraphs"][0]
    context, qa = paragraph["context"], paragraph["qas"][0]
    encoded = tokenizer.encode_pieces(context)
    question = tokenizer.encode_pieces(qa["question"]).ids
    features = build_features(question, encoded.ids, encoded.offsets, max_length=64, doc_stride=16, max_question_length=16)
    assert len(features) > 2
    answer = qa["answers"][0]
    start, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
    holders = [f for f in features if gold_positions(f, start, end) != (0, 0)]
    assert holders
    first, last = gold_positions(holders[0], start, end)
    c0 = holders[0].context_start
    text = context[holders[0].offsets[first - c0][0] : holders[0].offsets[last - c0][1]]
    assert answer["text"] in text
    logits = [_logits_for(f, first, last) if f is holders[0] else _logits_for(f, 0, 0, 0.0) for f in features]
    assert decode_answers(logits, features, context)[0].text.strip() == text.strip()


def _all_spans_answers(logits, features, context, *, top_k, max_answer_length):
    """The n-best over every chunk without dropping any span (decode_answers before AnswerDecoder)."""
    best = {}
    for (start_logits, end_logits), feature in zip(logits, features):
        _, spans = feature_candidates(start_logits, end_logits, feature, top_k=top_k, max_answer_length=max_answer_length)
        for score, first, last in spans:
            start, end = _strip(context, feature.offsets[first][0], feature.offsets[last][1])
            if start < end:
                best[(start, end)] = max(score, best.get((start, end), -numpy.inf))
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return [(s, e, float(numpy.exp(score))) for (s, e), score in ranked]


@given(seed=st.integers(0, 2**32 - 1), top_k=st.integers(1, 4), n_words=st.integers(1, 120))
@settings(max_examples=60, deadline=None)
def test_answer_decoder_keeps_top_k_spans_and_the_answers_of_all(seed, top_k, n_words):
    """Chunk by chunk with only O(top_k) spans held, the answers of all the chunks' spans
    (scores rounded to a few values so that ties and repeated spans across chunks happen)."""
    rng = numpy.random.default_rng(seed)
    context = " ".join(f"w{i}" for i in range(n_words))
    ids, offsets = word_pieces(context)
    features = build_features([5], ids, offsets, max_length=12, doc_stride=3, max_question_length=2)
    logits = [(numpy.round(rng.normal(size=len(f.input_ids)), 1).astype("float32"),
               numpy.round(rng.normal(size=len(f.input_ids)), 1).astype("float32")) for f in features]
    decoder = AnswerDecoder(context, top_k=top_k, max_answer_length=4)
    most = 0
    for feature_logits, feature in zip(logits, features):
        decoder.add(feature_logits, feature)
        most = max(most, len(decoder.best))
    assert most <= 4 * top_k + top_k
    got = [(a.start, a.end, a.score) for a in decoder.answers()]
    assert got == _all_spans_answers(logits, features, context, top_k=top_k, max_answer_length=4)


def test_iter_features_from_arrays_equal_build_features_from_lists():
    context = " ".join(f"w{i}" for i in range(40))
    ids, offsets = word_pieces(context)
    settings_ = dict(max_length=14, doc_stride=3, max_question_length=3, question_index=2)
    from_lists = build_features([5, 6], ids, offsets, **settings_)
    from_arrays = list(iter_features([5, 6], numpy.asarray(ids, dtype="int32"), numpy.asarray(offsets, dtype="int32"), **settings_))
    assert from_arrays == from_lists and len(from_lists) > 3
    assert all(type(i) is int for f in from_arrays for i in f.input_ids + sum(f.offsets, ()))
