"""Tests for spacy_xlmrxl.windows: strided windows, recombination, batching, long documents."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Config, NumpyOps

from spacy_xlmrxl.ml.alignment import align_tokens_to_pieces, pool_pieces
from spacy_xlmrxl.ml.windows import (
    AtLeastOneWindow,
    StreamingRecombiner,
    StridedWindows,
    WindowPlan,
    batch_windows,
    best_window,
    check_max_window,
    make_strided_windows,
    recombine,
    whole_sequence,
)

OPS = NumpyOps()
SETTINGS = settings(max_examples=80, deadline=None)


def window_config(**params) -> Config:
    lines = "\n".join(f"{key} = {value}" for key, value in params.items())
    return Config().from_str(f'[windows]\n@misc = "spacy-xlmrxl.strided_windows.v1"\n{lines}\n')


def coverage(windows, n_pieces: int) -> np.ndarray:
    counts = np.zeros(n_pieces, dtype=int)
    for start, end in windows:
        counts[start:end] += 1
    return counts


# --- window maker ----------------------------------------------------------------------------


@SETTINGS
@given(
    n_pieces=st.integers(0, 3000),
    window=st.integers(1, 600),
    stride_fraction=st.floats(0.01, 1.0),
)
def test_strided_windows_cover_every_piece(n_pieces, window, stride_fraction):
    stride = max(1, int(window * stride_fraction))
    windows = StridedWindows(window=window, stride=stride)(n_pieces)
    if n_pieces == 0:
        assert windows == []
        return
    assert windows[0][0] == 0 and windows[-1][1] == n_pieces
    assert (coverage(windows, n_pieces) >= 1).all()
    assert all(0 < end - start <= window for start, end in windows)
    assert all(end - start == window for start, end in windows) or len(windows) == 1
    starts = [start for start, _ in windows]
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


def test_strided_windows_examples():
    windows = make_strided_windows(window=10, stride=4)
    assert windows(0) == []
    assert windows(7) == [(0, 7)]
    assert windows(10) == [(0, 10)]
    assert windows(15) == [(0, 10), (4, 14), (5, 15)]
    assert make_strided_windows(window=5, stride=5)(12) == [(0, 5), (5, 10), (7, 12)]
    assert pickle.loads(pickle.dumps(windows))(15) == windows(15)


def test_registered_and_resolved_from_config():
    resolved = registry.resolve(window_config(window=128, stride=96))["windows"]
    assert (resolved.window, resolved.stride) == (128, 96)
    default = registry.resolve(window_config())["windows"]
    assert (default.window, default.stride) == (510, 384)


@pytest.mark.parametrize(
    "params, name",
    [
        ({"window": 128, "stride": 129}, "stride"),
        ({"window": 0, "stride": 1}, "window"),
        ({"window": 128, "stride": 0}, "stride"),
        ({"window": -5, "stride": -5}, "window"),
        ({"window": 512, "stride": 256}, "window"),
    ],
)
def test_config_time_errors_name_the_setting(params, name):
    with pytest.raises(ValueError, match=name):
        registry.resolve(window_config(**params))


def test_max_window_check():
    assert registry.resolve(window_config(window=1000, stride=500, max_window="null"))
    windows = make_strided_windows(window=1000, stride=500, max_window=None)
    with pytest.raises(ValueError, match="window=1000"):
        windows.check_max_window(510)
    check_max_window(510, 510)
    with pytest.raises(ValueError, match="window=511"):
        check_max_window(511, 510)


# --- recombine -------------------------------------------------------------------------------


@SETTINGS
@given(n_pieces=st.integers(1, 400), window=st.integers(1, 64), stride_fraction=st.floats(0.01, 1.0))
def test_recombine_position_index_and_backprop(n_pieces, window, stride_fraction):
    windows = StridedWindows(window=window, stride=max(1, int(window * stride_fraction)))(n_pieces)
    outputs = [np.repeat(np.arange(s, e, dtype=np.float32)[:, None], 3, axis=1) for s, e in windows]
    averaged, backprop = recombine(OPS, outputs, windows, n_pieces)
    expected = np.repeat(np.arange(n_pieces, dtype=np.float32)[:, None], 3, axis=1)
    np.testing.assert_allclose(averaged, expected, rtol=1e-6)
    # Gradients: each window position gets d / count, so they sum back to d at every piece.
    rng = np.random.default_rng(n_pieces)
    d_averaged = rng.normal(size=(n_pieces, 3)).astype(np.float32)
    d_windows = backprop(d_averaged)
    summed = np.zeros_like(d_averaged)
    for (start, end), grad in zip(windows, d_windows):
        assert grad.shape == (end - start, 3)
        summed[start:end] += grad
    np.testing.assert_allclose(summed, d_averaged, rtol=1e-5, atol=1e-6)
    counts = coverage(windows, n_pieces)[:, None]
    rows = np.concatenate([np.arange(start, end) for start, end in windows])
    np.testing.assert_allclose(np.concatenate(d_windows), (d_averaged / counts)[rows], rtol=1e-6)


def test_recombine_averages_different_outputs():
    windows = [(0, 3), (1, 4), (2, 4)]
    outputs = [np.array([[1.0], [2.0], [3.0]]), np.array([[10.0], [20.0], [30.0]]), np.array([[5.0], [7.0]])]
    averaged, _ = recombine(OPS, outputs, windows, 4)
    np.testing.assert_allclose(averaged[:, 0], [1.0, 6.0, (3 + 20 + 5) / 3, (30 + 7) / 2])


def test_recombine_errors_and_empty_doc():
    with pytest.raises(ValueError, match="piece 3"):
        recombine(OPS, [np.zeros((3, 2))], [(0, 3)], 4)
    with pytest.raises(ValueError, match="shape"):
        recombine(OPS, [np.zeros((2, 2))], [(0, 3)], 3)
    with pytest.raises(ValueError, match="inside"):
        recombine(OPS, [np.zeros((3, 2))], [(2, 5)], 4)
    averaged, backprop = recombine(OPS, [], [], 0, width=8)
    assert averaged.shape == (0, 8) and backprop(averaged) == []


# --- batching ----------------------------------------------------------------------------------


@SETTINGS
@given(
    doc_lengths=st.lists(st.integers(0, 90), min_size=0, max_size=8),
    budget=st.integers(1, 400),
    max_rows=st.one_of(st.none(), st.integers(1, 5)),
    multiple=st.one_of(st.none(), st.integers(1, 8)),
)
def test_batch_windows_round_trip(doc_lengths, budget, max_rows, multiple):
    rng = np.random.default_rng(len(doc_lengths))
    docs = [rng.integers(4, 250_000, size=n) for n in doc_lengths]
    plan = batch_windows(
        docs,
        StridedWindows(window=20, stride=15),
        max_batch_pieces=budget,
        max_batch_windows=max_rows,
        pad_to_multiple_of=multiple,
    )
    assert sorted(int(p) for b in plan.batches for p in b.positions) == list(range(len(plan.windows)))
    lengths = [span.end - span.start for b in plan.batches for span in b.rows]
    assert lengths == sorted(lengths, reverse=True)
    for batch in plan.batches:
        n_rows, seq_len = batch.input_ids.shape
        assert batch.input_ids.dtype == np.int64 and batch.attention_mask.shape == (n_rows, seq_len)
        assert n_rows * seq_len <= budget or n_rows == 1
        assert max_rows is None or n_rows <= max_rows
        assert multiple is None or seq_len % multiple == 0
        for row, span in enumerate(batch.rows):
            length = span.end - span.start
            ids, mask = batch.input_ids[row], batch.attention_mask[row]
            assert ids[0] == 0 and ids[length + 1] == 2
            np.testing.assert_array_equal(ids[1 : length + 1], docs[span.doc][span.start : span.end])
            assert (ids[length + 2 :] == 1).all()
            assert mask[: length + 2].all() and not mask[length + 2 :].any()
    # A fake model that echoes the ids: split + recombine gives every doc's ids back.
    outputs = [b.input_ids[..., None].astype(np.float32) for b in plan.batches]
    per_doc = plan.split_outputs(outputs)
    assert [len(w) for w in per_doc] == [len(w) for w in plan.doc_windows]
    for ids, windows, window_outputs, n in zip(docs, plan.doc_windows, per_doc, plan.n_pieces):
        averaged, _ = recombine(OPS, window_outputs, windows, n, width=1)
        np.testing.assert_array_equal(averaged[:, 0], ids)
    # merge_gradients is split_outputs' inverse, with zeros at the specials and the padding.
    merged = plan.merge_gradients(per_doc)
    for batch, output, grad in zip(plan.batches, outputs, merged):
        keep = (batch.attention_mask == 1) & (batch.input_ids != 0) & (batch.input_ids != 2)
        np.testing.assert_array_equal(grad[..., 0], np.where(keep, output[..., 0], 0))


def test_split_outputs_keeps_torch_autograd():
    torch = pytest.importorskip("torch")
    plan = batch_windows([np.arange(4, 30), np.arange(4, 9)], StridedWindows(window=8, stride=6), max_batch_pieces=40)
    outputs = [torch.zeros(b.input_ids.shape + (2,), requires_grad=True) for b in plan.batches]
    loss = sum(w.sum() for windows in plan.split_outputs(outputs) for w in windows)
    loss.backward()
    for batch, output in zip(plan.batches, outputs):
        expected = plan.merge_gradients(
            [[np.ones((e - s, 2), dtype=np.float32) for s, e in w] for w in plan.doc_windows]
        )
        position = plan.batches.index(batch)
        np.testing.assert_array_equal(output.grad.numpy(), expected[position])


def test_batch_windows_empty_window_for_empty_doc():
    """A caller may give an empty doc the window (0, 0): it becomes ``<s></s>``."""
    plan = batch_windows([[], [7, 8, 9]], lambda n: StridedWindows(window=2, stride=1)(n) or [(0, 0)])
    rows = {span.doc: batch.input_ids[r].tolist() for batch in plan.batches for r, span in enumerate(batch.rows)}
    assert rows[0] == [0, 2, 1, 1]
    per_doc = plan.split_outputs([b.input_ids[..., None].astype(np.float32) for b in plan.batches])
    assert [w.shape for w in per_doc[0]] == [(0, 1)]
    averaged, _ = recombine(OPS, per_doc[0], plan.doc_windows[0], 0)
    assert averaged.shape == (0, 1)


def test_batch_windows_bad_budget():
    with pytest.raises(ValueError, match="max_batch_pieces"):
        batch_windows([[5, 6]], StridedWindows(window=4, stride=2), max_batch_pieces=0)
    with pytest.raises(ValueError, match="max_batch_windows"):
        batch_windows([[5, 6]], StridedWindows(window=4, stride=2), max_batch_windows=0)


# --- the planner's lookups ----------------------------------------------------------------------


@SETTINGS
@given(doc_lengths=st.lists(st.integers(0, 70), min_size=0, max_size=7), budget=st.integers(1, 200),
       window=st.integers(1, 20), stride_fraction=st.floats(0.05, 1.0), lazy=st.booleans())
def test_plan_lookups_agree_with_the_batches(doc_lengths, budget, window, stride_fraction, lazy):
    """window_index / doc_start / locate / doc_slots / piece_slot say where each window and piece
    is, checked against the batches' own rows and input ids (each piece id names its piece)."""
    docs = [np.arange(1000 * (d + 1), 1000 * (d + 1) + n) for d, n in enumerate(doc_lengths)]
    make = StridedWindows(window=window, stride=max(1, int(window * stride_fraction)))
    plan = batch_windows(docs, make, max_batch_pieces=budget, lazy=lazy)
    assert plan.doc_start.tolist() == np.cumsum([0] + [len(w) for w in plan.doc_windows]).tolist()
    for d, windows in enumerate(plan.doc_windows):
        assert windows == make(len(docs[d]))
        slots = plan.doc_slots(d)
        assert slots.shape == (len(windows), 2)
        for w, (start, end) in enumerate(windows):
            position = plan.doc_start[d] + w
            assert plan.window_index[position] == w and plan.windows[position] == (d, start, end)
            b, row = plan.locate(d, w)
            assert (b, row) == tuple(slots[w]) and plan.batches[b].rows[row] == (d, start, end)
            assert plan.batches[b].positions[row] == position
        for piece in range(len(docs[d])):
            b, row, column = plan.piece_slot(d, piece)
            assert plan.inputs(b)[0][row, column] == docs[d][piece]
            start, end = windows[plan.best_window(d, piece)]
            assert 1 <= column <= end - start and start <= piece < end
        with pytest.raises(IndexError, match=f"doc {d} has {len(windows)} window"):
            plan.locate(d, len(windows))


def test_best_window_prefers_centred_context_then_the_first():
    windows = [(0, 16), (8, 24), (16, 32)]
    assert [best_window(windows, p) for p in (2, 15, 31)] == [0, 1, 2]
    assert best_window(windows, 11) == 0  # 3 pieces of context in (0, 16) and in (8, 24): the first
    assert best_window(windows, 12) == 1  # 3 in (0, 16), 4 in (8, 24)
    assert best_window([(0, 4), (0, 4)], 1) == 0
    with pytest.raises(ValueError, match="piece 40"):
        best_window(windows, 40)


def test_whole_sequence_and_at_least_one_window_makers():
    assert whole_sequence(0) == [(0, 0)] and whole_sequence(7) == [(0, 7)]
    make = AtLeastOneWindow(StridedWindows(window=4, stride=2))
    assert make(0) == [(0, 0)] and make(6) == [(0, 4), (2, 6)]
    plan = batch_windows([[5, 6, 7], [], [8]], whole_sequence, max_batch_pieces=4)  # QA features: one row each
    assert [plan.locate(d) for d in range(3)] == [(0, 0), (2, 0), (1, 0)]  # longest first
    assert plan.batches[2].input_ids.tolist() == [[0, 2]]


def test_plan_refuses_windows_out_of_doc_order():
    plan = batch_windows([[5, 6], [7]], whole_sequence)
    with pytest.raises(ValueError, match="grouped by doc"):
        WindowPlan(plan.windows[::-1], plan.doc_windows, plan.n_pieces, plan.batches)


# --- a 100k-token document end to end ------------------------------------------------------------


def test_long_document_every_token_gets_a_vector():
    """100k spaCy tokens -> pieces -> > 20 windows -> batches -> fake model -> recombine -> pool:
    every non-space token gets the mean of its own pieces; nothing is dropped."""
    rng = np.random.default_rng(7)
    vocab = ["alpha", "b", "gamma", "δέλτα", "中文", ",", "Москва", "\n", "xy\u200dz", "ok"]
    words = [vocab[i] for i in rng.integers(0, len(vocab), size=100_000)]
    spaces = (rng.random(100_000) < 0.8).tolist()
    doc = Doc(spacy.blank("xx").vocab, words=words, spaces=spaces)
    text, offsets, piece_ids = doc.text, [], []
    for token in doc:  # pieces of up to 3 characters, none for whitespace; id = hash of text
        if token.is_space:
            continue
        for start in range(token.idx, token.idx + len(token.text), 3):
            end = min(start + 3, token.idx + len(token.text))
            offsets.append((start, end))
            piece_ids.append(4 + sum(map(ord, text[start:end])))
    n_pieces = len(piece_ids)
    windows = make_strided_windows()
    assert len(windows(n_pieces)) > 20
    plan = batch_windows([piece_ids], windows, max_batch_pieces=16 * 512)
    outputs = [np.stack([b.input_ids, -b.input_ids], axis=-1).astype(np.float32) for b in plan.batches]
    [window_outputs] = plan.split_outputs(outputs)
    hidden, _ = recombine(OPS, window_outputs, plan.doc_windows[0], n_pieces)
    np.testing.assert_allclose(hidden[:, 0], piece_ids, rtol=1e-6)
    align = align_tokens_to_pieces(doc, offsets)
    vectors, _ = pool_pieces(OPS, hidden, align)
    assert vectors.shape == (len(doc), 2)
    is_space = np.array([token.is_space for token in doc])
    assert (vectors[~is_space, 0] >= 4).all() and not vectors[is_space].any()
    token_of_pair = np.repeat(np.arange(len(doc)), align.lengths)
    sums = np.bincount(token_of_pair, weights=np.asarray(piece_ids)[align.dataXd], minlength=len(doc))
    np.testing.assert_allclose(vectors[:, 0], sums / np.maximum(align.lengths, 1), rtol=1e-5)


# --- streaming recombination (inference) -------------------------------------------------------


def _stream(windows, outputs, n_pieces, order):
    """Feed windows in ``order``; return the blocks and the most windows held at once."""
    streamer = StreamingRecombiner(windows, n_pieces)
    blocks, most_held = [], 0
    for k in order:
        block = streamer.add(k, outputs[k])
        most_held = max(most_held, len(streamer._kept))
        if block is not None:
            blocks.append(block)
    assert streamer.finished
    return blocks, most_held


@SETTINGS
@given(n_pieces=st.integers(0, 300), window=st.integers(1, 40), stride_fraction=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**32 - 1), shuffle=st.booleans())
def test_streaming_recombiner_is_bit_identical_to_recombine(n_pieces, window, stride_fraction, seed, shuffle):
    windows = StridedWindows(window=window, stride=max(1, int(window * stride_fraction)))(n_pieces) or [(0, 0)]
    rng = np.random.default_rng(seed)
    outputs = [rng.normal(size=(e - s, 5)).astype(np.float32) for s, e in windows]
    expected, _ = recombine(OPS, outputs, windows, n_pieces, width=5)
    order = rng.permutation(len(windows)) if shuffle else range(len(windows))
    blocks, most_held = _stream(windows, outputs, n_pieces, order)
    starts = [start for start, _ in blocks]
    assert starts == sorted(starts) and sum(len(rows) for _, rows in blocks) == n_pieces
    streamed = np.concatenate([rows for _, rows in blocks]) if blocks else np.zeros((0, 5), np.float32)
    assert streamed.dtype == np.float32 and np.array_equal(streamed.view(np.uint32), expected.view(np.uint32))
    if not shuffle:  # document order: only the windows overlapping the next one are held
        assert most_held <= -(-window // max(1, int(window * stride_fraction))) + 1


def test_streaming_recombiner_arbitrary_windows_and_errors():
    windows = [(2, 6), (0, 3), (0, 6), (5, 6)]
    outputs = [np.full((e - s, 1), float(k + 1), np.float32) for k, (s, e) in enumerate(windows)]
    expected, _ = recombine(OPS, outputs, windows, 6)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        blocks, _ = _stream(windows, outputs, 6, order)
        assert np.array_equal(np.concatenate([rows for _, rows in blocks]), expected)
    streamer = StreamingRecombiner(windows, 6)
    with pytest.raises(ValueError, match="shape"):
        streamer.add(0, np.zeros((3, 1), np.float32))
    streamer.add(0, outputs[0])
    with pytest.raises(ValueError, match="twice"):
        streamer.add(0, outputs[0])
    with pytest.raises(ValueError, match="piece 4"):
        StreamingRecombiner([(0, 4)], 5)


def test_lazy_plan_builds_the_same_inputs_one_batch_at_a_time():
    ids = [np.arange(5, 5 + n, dtype=np.int32) for n in (0, 7, 40, 3)]
    make = StridedWindows(window=8, stride=6)
    eager = batch_windows(ids, make, max_batch_pieces=30)
    lazy = batch_windows(ids, make, max_batch_pieces=30, lazy=True)
    assert len(eager.batches) == len(lazy.batches) > 1
    for b, (e, l) in enumerate(zip(eager.batches, lazy.batches)):
        assert l.input_ids is None and l.rows == e.rows
        input_ids, attention_mask = lazy.inputs(b)
        assert np.array_equal(input_ids, e.input_ids) and np.array_equal(attention_mask, e.attention_mask)
        assert eager.inputs(b)[0] is e.input_ids
