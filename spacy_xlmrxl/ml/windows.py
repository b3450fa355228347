"""Long documents: windows over a sequence of pieces, the one planner that batches them, recombining.

Owns the window makers (the registered ``"spacy-xlmrxl.strided_windows.v1"`` in
``spacy.registry.misc``, with its default block `strided_windows_config`; `AtLeastOneWindow`, `whole_sequence`), the window planner
:func:`batch_windows` / :class:`WindowPlan` that the transformer, QA and fill-mask all use
(framework-agnostic numpy: padded ``input_ids`` / ``attention_mask`` batches under a size
budget, and every lookup between windows and batches: a window's index in its doc, (doc,
window) -> (batch, row), the best window of a piece, batch outputs <-> per-doc window outputs),
:func:`recombine` (averaging the outputs of overlapping windows back into one (n_pieces, H)
array, with its backprop) and :class:`StreamingRecombiner` (the same average at inference,
window by window, returning pieces as soon as they are final).

Windows are spans ``(start, end)`` over the piece indices of ONE doc, specials excluded, so a
window of ``w`` pieces becomes ``<s> piece[start:end] </s>``, ``w + 2`` model positions. That
is why the window is bounded by the model's ``max_sequence_length - 2`` (510 for the released
checkpoints) whatever the spaCy tokenisation is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from spacy.util import registry
from thinc.api import Ops, get_array_module
from thinc.types import Floats2d

Window = Tuple[int, int]
WindowMaker = Callable[[int], List[Window]]

#: Longest window the released XLM-R checkpoints take: 512 positions minus ``<s>`` and ``</s>``.
RELEASED_MAX_WINDOW = 510


def check_max_window(window: int, max_window: int) -> None:
    """Raise ``ValueError`` naming ``window`` when it does not fit the model's position limit.

    max_window: the model's ``max_sequence_length - 2`` (room for ``<s>`` and ``</s>``).
    """
    if window > max_window:
        raise ValueError(
            f"window={window} pieces does not fit the model: at most {max_window} pieces fit "
            f"beside <s> and </s> (max_sequence_length - 2)"
        )


class StridedWindows:
    """Callable ``(n_pieces) -> [(start, end), ...]``: windows of ``window`` pieces every ``stride``.

    Windows start at 0, stride, 2 * stride, ... until one reaches ``n_pieces``; that last window
    is shifted left to end exactly at ``n_pieces`` and to be a full ``window`` long when the doc
    is long enough (more left context for the tail instead of a short last window). Every piece
    index is covered, consecutive windows overlap by at least ``window - stride`` pieces, and an
    empty doc (``n_pieces == 0``) gets no window at all (``[]``). A class rather than a closure
    so pipelines using it can be pickled.
    """

    def __init__(self, *, window: int, stride: int) -> None:
        for name, value in (("window", window), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if stride > window:
            raise ValueError(
                f"stride={stride} is larger than window={window}: pieces between windows would "
                f"be dropped (need stride <= window)"
            )
        self.window = int(window)
        self.stride = int(stride)

    def check_max_window(self, max_window: int) -> None:
        """Raise ``ValueError`` when ``self.window`` exceeds ``max_window`` (see module function)."""
        check_max_window(self.window, max_window)

    def __call__(self, n_pieces: int) -> List[Window]:
        if n_pieces < 0:
            raise ValueError(f"n_pieces must be >= 0, got {n_pieces}")
        windows: List[Window] = []
        start = 0
        while start < n_pieces:
            if start + self.window >= n_pieces:
                windows.append((max(n_pieces - self.window, 0), n_pieces))
                break
            windows.append((start, start + self.window))
            start += self.stride
        return windows

    def __repr__(self) -> str:
        return f"StridedWindows(window={self.window}, stride={self.stride})"


@registry.misc("spacy-xlmrxl.strided_windows.v1")
def make_strided_windows(
    window: int = 510, stride: int = 384, max_window: Optional[int] = RELEASED_MAX_WINDOW
) -> Callable[[int], List[Window]]:
    """Window maker for the config: ``window`` pieces per window, a new window every ``stride``.

    ``max_window`` (default 510, the released checkpoints' limit; ``null`` to skip) is checked
    here, at config time; the transformer component checks again against its model's config.
    Raises ``ValueError`` naming ``window`` / ``stride`` for impossible values.
    """
    windows = StridedWindows(window=window, stride=stride)
    if max_window is not None:
        windows.check_max_window(max_window)
    return windows


def strided_windows_config() -> Dict[str, Any]:
    """The default ``windows`` block of the architectures: 510-piece windows every 384 pieces."""
    return {"@misc": "spacy-xlmrxl.strided_windows.v1", "window": 510, "stride": 384}


def _check_windows(windows: Sequence[Window], n_pieces: int) -> np.ndarray:
    """Per-piece window counts; raise ``ValueError`` for a bad window or an uncovered piece."""
    counts = np.zeros(n_pieces + 1, dtype=np.int64)
    for start, end in windows:
        if not 0 <= start <= end <= n_pieces:
            raise ValueError(f"window {(start, end)} is not inside 0..{n_pieces}")
        counts[start] += 1
        counts[end] -= 1
    counts = np.cumsum(counts[:-1])
    if n_pieces and counts.min() == 0:
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"piece {missing} of {n_pieces} is in no window: it would be dropped")
    return counts


def recombine(
    ops: Ops,
    window_outputs: Sequence[Floats2d],
    windows: Sequence[Window],
    n_pieces: int,
    *,
    width: Optional[int] = None,
) -> Tuple[Floats2d, Callable[[Floats2d], List[Floats2d]]]:
    """Average the outputs of overlapping windows into one output per piece.

    window_outputs[i]: (end_i - start_i, H) outputs of window ``windows[i] = (start_i, end_i)``
    (specials already removed). Returns the (n_pieces, H) average over the windows covering each
    piece (plain, unweighted mean), and a backprop mapping d(n_pieces, H) to the list of
    per-window gradients (each position gets ``d / count``). ``width`` gives H when there are no
    windows (an empty doc); it defaults to 0 then. Raises ``ValueError`` when a piece is in no
    window or a window's output has the wrong length.
    """
    if len(window_outputs) != len(windows):
        raise ValueError(f"{len(window_outputs)} window outputs for {len(windows)} windows")
    for (start, end), out in zip(windows, window_outputs):
        if out.ndim != 2 or out.shape[0] != end - start:
            raise ValueError(f"window {(start, end)} has an output of shape {out.shape}")
    streaming = StreamingRecombiner(windows, n_pieces)  # the one implementation of the average
    xp = ops.xp
    if window_outputs:
        width = window_outputs[0].shape[1]
        dtype = window_outputs[0].dtype
    else:
        width, dtype = width or 0, np.float32
    averaged = xp.zeros((n_pieces, width), dtype=dtype)
    for k, out in enumerate(window_outputs):
        block = streaming.add(k, out)
        if block is not None:
            averaged[block[0] : block[0] + block[1].shape[0]] = block[1]
    scale = xp.asarray((1.0 / np.maximum(streaming.counts, 1))[:, None].astype(dtype))

    def backprop(d_averaged: Floats2d) -> List[Floats2d]:
        if d_averaged.shape != (n_pieces, width):
            raise ValueError(f"gradient shape {d_averaged.shape} != {(n_pieces, width)}")
        d_scaled = d_averaged * scale.astype(d_averaged.dtype)
        return [d_scaled[start:end] for start, end in windows]

    return averaged, backprop


class StreamingRecombiner:
    """:func:`recombine` for inference, one window at a time, in any arrival order.

    (:func:`recombine` itself runs on it, adding every window in order.)
    ``add(k, output)`` takes window ``windows[k]``'s (end - start, H) output (it keeps a copy
    only while a piece of the window is still waiting for another window) and returns the
    ``(start, rows)`` block of pieces that became final: ``rows`` is (end - start, H), the
    pieces every covering window of which has now arrived. Blocks come in piece order and tile
    ``0..n_pieces``. Each piece is the sum of its windows' rows in document window order, times
    ``1 / count``, whatever the arrival order; only the windows still overlapping unfinished
    pieces are held: with windows arriving in document order, about two windows per doc.
    """

    def __init__(self, windows: Sequence[Window], n_pieces: int) -> None:
        self.windows = [(int(s), int(e)) for s, e in windows]
        self.n_pieces = int(n_pieces)
        self.counts = _check_windows(self.windows, self.n_pieces).astype(np.int32)
        self._by_start = sorted(range(len(self.windows)), key=lambda k: self.windows[k])
        self._next = 0  # position in _by_start of the first window that has not arrived
        self._seen = np.zeros(len(self.windows), dtype=bool)
        self._kept: Dict[int, Any] = {}  # k -> rows of window k from piece end - len(rows) on
        self.done = 0  # pieces [0, done) have been returned

    def add(self, k: int, output: Any) -> Optional[Tuple[int, Any]]:
        start, end = self.windows[k]
        if self._seen[k] or output.ndim != 2 or output.shape[0] != end - start:
            raise ValueError(f"window {k} {(start, end)}: output of shape {output.shape}, or added twice")
        self._seen[k] = True
        if end > self.done:
            self._kept[k] = output[max(self.done - start, 0):].copy()
        while self._next < len(self._by_start) and self._seen[self._by_start[self._next]]:
            self._next += 1
        # Every window covering a piece before the first missing window's start has arrived.
        last = self.windows[self._by_start[self._next]][0] if self._next < len(self._by_start) else self.n_pieces
        first = self.done
        if last <= first:
            return None
        xp = get_array_module(output)
        block = xp.zeros((last - first, output.shape[1]), dtype=output.dtype)
        for j in sorted(self._kept):  # document window order, as recombine adds them
            s, e = self.windows[j]
            lo, hi = max(s, first), min(e, last)
            if lo < hi:
                rows = self._kept[j]
                offset = e - rows.shape[0]
                block[lo - first : hi - first] += rows[lo - offset : hi - offset]
        scale = xp.asarray((1.0 / np.maximum(self.counts[first:last], 1))[:, None].astype(output.dtype))
        self.done = last
        for j in [j for j in self._kept if self.windows[j][1] <= last]:
            del self._kept[j]
        return first, block * scale

    @property
    def finished(self) -> bool:
        return self.done == self.n_pieces and bool(self._seen.all())


class WindowSpan(NamedTuple):
    """One window: pieces ``start:end`` of doc ``doc``."""

    doc: int
    start: int
    end: int


@dataclass
class WindowBatch:
    """One model call's worth of windows.

    rows: the window of each row; positions: index of each row's window in ``WindowPlan.windows``;
    input_ids, attention_mask: (n_rows, seq_len) int64, ``<s> pieces </s>`` then padding
    (attention 0). Row ``r``'s piece outputs are ``out[r, 1 : 1 + len(rows[r])]``.
    """

    rows: List[WindowSpan]
    positions: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray


@dataclass
class WindowPlan:
    """All windows of a batch of docs, how they are batched, and every way between the two.

    windows: every window, grouped by doc and in window order within a doc;
    doc_windows[d]: doc ``d``'s ``(start, end)`` list (for :func:`recombine`);
    n_pieces[d]: the number of pieces of doc ``d``; batches: model inputs, longest windows first
    (with ``lazy=True``, their ``input_ids`` / ``attention_mask`` are None: use :meth:`inputs`).
    The lookups, computed once from ``windows`` and ``batches``: ``window_index[k]``, the index of
    ``windows[k]`` among its doc's windows; ``doc_start[d]``, the position in ``windows`` of doc
    ``d``'s first window (``doc_start[-1] == len(windows)``); ``slots[k]``, the ``(batch, row)``
    of ``windows[k]``. :meth:`locate`, :meth:`doc_slots`, :meth:`best_window` and
    :meth:`piece_slot` answer from them.
    """

    windows: List[WindowSpan]
    doc_windows: List[List[Window]]
    n_pieces: List[int]
    batches: List[WindowBatch]
    source: Optional[Tuple[Any, ...]] = field(default=None, repr=False)  # what lazy batches are built from
    window_index: np.ndarray = field(init=False, repr=False)
    doc_start: np.ndarray = field(init=False, repr=False)
    slots: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        docs = np.fromiter((span.doc for span in self.windows), dtype=np.int64, count=len(self.windows))
        counts = np.fromiter((len(w) for w in self.doc_windows), dtype=np.int64, count=len(self.doc_windows))
        if len(docs) != counts.sum() or (np.diff(docs) < 0).any():
            raise ValueError("WindowPlan.windows must list every doc's windows, grouped by doc in doc order")
        self.doc_start = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])
        self.window_index = np.arange(len(docs), dtype=np.int64) - self.doc_start[docs]
        self.slots = np.full((len(docs), 2), -1, dtype=np.int64)
        for b, batch in enumerate(self.batches):
            self.slots[batch.positions] = np.stack(
                [np.full(len(batch.positions), b), np.arange(len(batch.positions))], axis=1)

    def inputs(self, b: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` of ``batches[b]``; a lazy plan builds them now, so
        that only one batch's inputs exist at a time."""
        batch = self.batches[b]
        if batch.input_ids is not None or self.source is None:
            return batch.input_ids, batch.attention_mask
        built = _make_batch([int(p) for p in batch.positions], self.windows, *self.source)
        return built.input_ids, built.attention_mask

    def locate(self, doc: int, window: int = 0) -> Tuple[int, int]:
        """``(batch, row)`` of window ``window`` (index among doc ``doc``'s windows)."""
        n_windows = int(self.doc_start[doc + 1] - self.doc_start[doc])
        if not 0 <= window < n_windows:
            raise IndexError(f"doc {doc} has {n_windows} window(s): there is no window {window}")
        b, row = self.slots[self.doc_start[doc] + window]
        return int(b), int(row)

    def doc_slots(self, doc: int) -> np.ndarray:
        """(n_windows, 2) ``(batch, row)`` of doc ``doc``'s windows, in window order."""
        return self.slots[self.doc_start[doc] : self.doc_start[doc + 1]]

    def best_window(self, doc: int, piece: int) -> int:
        """Index (among doc ``doc``'s windows) of the window that gives ``piece`` the most
        context on its shorter side; see :func:`best_window`."""
        return best_window(self.doc_windows[doc], piece)

    def piece_slot(self, doc: int, piece: int) -> Tuple[int, int, int]:
        """``(batch, row, column)`` of piece ``piece`` of doc ``doc`` in the model outputs of its
        best window (:meth:`best_window`): ``column`` counts the ``<s>`` before the pieces."""
        window = self.best_window(doc, piece)
        b, row = self.locate(doc, window)
        return b, row, 1 + piece - self.doc_windows[doc][window][0]

    def split_outputs(self, batch_outputs: Sequence[Any]) -> List[List[Any]]:
        """Per-doc lists of per-window piece outputs from per-batch model outputs.

        batch_outputs[b]: (n_rows_b, seq_len_b, H) output of ``batches[b]`` (numpy, cupy or
        torch: only basic slicing is used, so autograd flows through). Returns, for each doc,
        its windows' (end - start, H) outputs in ``doc_windows`` order, specials and padding
        stripped.
        """
        if len(batch_outputs) != len(self.batches):
            raise ValueError(f"{len(batch_outputs)} outputs for {len(self.batches)} batches")
        return [[batch_outputs[b][row, 1 : 1 + end - start] for (b, row), (start, end) in
                 zip(self.doc_slots(d).tolist(), self.doc_windows[d])] for d in range(len(self.n_pieces))]

    def merge_gradients(self, doc_window_grads: Sequence[Sequence[Any]]) -> List[Any]:
        """Inverse of :meth:`split_outputs` for numpy/cupy gradients: per-doc per-window
        (end - start, H) gradients -> per-batch (n_rows, seq_len, H) gradients, zero at the
        specials and the padding."""
        flat = [grad for grads in doc_window_grads for grad in grads]
        if len(flat) != len(self.windows):
            raise ValueError(f"{len(flat)} window gradients for {len(self.windows)} windows")
        if not flat:
            return []
        xp = get_array_module(flat[0])
        width, dtype = flat[0].shape[1], flat[0].dtype
        merged = [xp.zeros(batch.input_ids.shape + (width,), dtype=dtype) for batch in self.batches]
        for (b, row), span, grad in zip(self.slots.tolist(), self.windows, flat):
            merged[b][row, 1 : 1 + span.end - span.start] = grad
        return merged


def best_window(windows: Sequence[Window], piece: int) -> int:
    """Index of the window of ``windows`` holding ``piece`` with the most context on its shorter
    side (``min(piece - start, end - 1 - piece)``); the first such window on ties. Raises
    ``ValueError`` when no window holds ``piece``."""
    spans = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    holding = (spans[:, 0] <= piece) & (piece < spans[:, 1])
    if not holding.any():
        raise ValueError(f"piece {piece} is in none of the windows {list(map(tuple, spans.tolist()))[:4]}...")
    context = np.minimum(piece - spans[:, 0], spans[:, 1] - 1 - piece)
    return int(np.argmax(np.where(holding, context, -1)))


def whole_sequence(n_pieces: int) -> List[Window]:
    """Window maker of one window over the whole sequence (for sequences that are model inputs
    already, such as QA features); an empty sequence gets ``(0, 0)``."""
    return [(0, n_pieces)]


class AtLeastOneWindow:
    """Window maker that gives a doc without pieces the window ``(0, 0)`` (``<s></s>``), so
    every doc has an ``<s>`` state (what HF gives for the empty text)."""

    def __init__(self, make_windows: WindowMaker) -> None:
        self.make_windows = make_windows

    def __call__(self, n_pieces: int) -> List[Window]:
        return list(self.make_windows(n_pieces)) or [(0, 0)]


def _pad_length(length: int, multiple: Optional[int]) -> int:
    return length if not multiple else -(-length // multiple) * multiple


def batch_windows(
    doc_piece_ids: Sequence[Sequence[int]],
    make_windows: Callable[[int], List[Window]],
    *,
    max_batch_pieces: int = 8192,
    max_batch_windows: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
    bos_id: int = 0,
    eos_id: int = 2,
    pad_id: int = 1,
    max_padding: float = 0.1,
    min_batch_pieces: int = 2048,
    lazy: bool = False,
) -> WindowPlan:
    """The window planner: cut each doc's pieces into windows, pack them into padded model batches.

    doc_piece_ids[d]: doc ``d``'s piece ids (no specials); ``make_windows(n_pieces)`` gives a
    doc's ``(start, end)`` windows. Windows go into batches longest first (see `_pack_windows`
    for the size budget ``max_batch_pieces`` / ``max_batch_windows`` and the padding rule
    ``max_padding`` / ``min_batch_pieces``). Returns a :class:`WindowPlan` with its lookups;
    docs with no piece have no window. ``lazy``: build each batch's ``input_ids`` /
    ``attention_mask`` only when :meth:`WindowPlan.inputs` asks for it.
    """
    if max_batch_pieces <= 0:
        raise ValueError(f"max_batch_pieces must be positive, got {max_batch_pieces}")
    if max_batch_windows is not None and max_batch_windows <= 0:
        raise ValueError(f"max_batch_windows must be positive, got {max_batch_windows}")
    ids = [_as_ids(piece_ids) for piece_ids in doc_piece_ids]
    doc_windows = [list(make_windows(len(piece_ids))) for piece_ids in ids]
    windows = [WindowSpan(d, s, e) for d, spans in enumerate(doc_windows) for s, e in spans]
    groups = _pack_windows([end - start for _, start, end in windows], max_batch_pieces=max_batch_pieces,
                           max_batch_windows=max_batch_windows, pad_to_multiple_of=pad_to_multiple_of,
                           max_padding=max_padding, min_batch_pieces=min_batch_pieces)
    source = (ids, pad_to_multiple_of, bos_id, eos_id, pad_id)
    if lazy:
        batches = [WindowBatch([windows[p] for p in group], np.asarray(group, dtype=np.int64), None, None)
                   for group in groups]
    else:
        batches = [_make_batch(group, windows, *source) for group in groups]
    return WindowPlan(windows, doc_windows, [len(piece_ids) for piece_ids in ids], batches,
                      source if lazy else None)


def _pack_windows(lengths: Sequence[int], *, max_batch_pieces: int, max_batch_windows: Optional[int],
                  pad_to_multiple_of: Optional[int], max_padding: float, min_batch_pieces: int) -> List[List[int]]:
    """Windows (by their piece counts) packed into batches: lists of window positions.

    Windows are sorted by length (longest first, ties in document order) and packed greedily so
    that each batch's padded size ``n_rows * seq_len`` (``seq_len`` = longest window + 2
    specials, rounded up to ``pad_to_multiple_of``) stays within ``max_batch_pieces``, and it
    has at most ``max_batch_windows`` rows; a window too big for the budget alone gets a batch
    of its own. A batch also closes when the next window would make its padding exceed
    ``max_padding`` of its real positions, once it holds ``min_batch_pieces`` padded positions:
    smaller batches multiply too inefficiently to be worth splitting (``F.linear`` runs much
    faster on thousands of rows than on hundreds: bench/README.md, ``pipeline_profile.py``). The
    components run these batches with ``skip_padding``, so padding costs only the attention
    product there; the rule still measured fastest against larger padded batches without a
    padding limit, which gain nothing in the matrix products and pay in attention and memory
    traffic (bench/README.md).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: List[List[int]] = []
    real = 0  # real (unpadded) positions of the last group, specials included
    for position in order:
        length = lengths[position] + 2  # longest first: a group's first window fixes its padded length
        if groups:
            seq_len = _pad_length(lengths[groups[-1][0]] + 2, pad_to_multiple_of)
            n_rows = len(groups[-1]) + 1
            wasteful = (n_rows * seq_len > (1 + max_padding) * (real + length)
                        and (n_rows - 1) * seq_len >= min_batch_pieces)
            if n_rows * seq_len <= max_batch_pieces and n_rows <= (max_batch_windows or n_rows) and not wasteful:
                groups[-1].append(position)
                real += length
                continue
        groups.append([position])
        real = length
    return groups


def _as_ids(piece_ids: Any) -> np.ndarray:
    """1-d integer array of piece ids (an int32 array stays int32: no copy)."""
    ids = np.asarray(piece_ids).reshape(-1)
    return ids if ids.dtype.kind in "iu" else ids.astype(np.int64)


def _make_batch(
    group: List[int],
    windows: List[WindowSpan],
    ids: List[np.ndarray],
    pad_to_multiple_of: Optional[int],
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> WindowBatch:
    rows = [windows[position] for position in group]
    seq_len = _pad_length(max(end - start for _, start, end in rows) + 2, pad_to_multiple_of)
    input_ids = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), seq_len), dtype=np.int64)
    for row, (doc, start, end) in enumerate(rows):
        length = end - start
        input_ids[row, 0] = bos_id
        input_ids[row, 1 : 1 + length] = ids[doc][start:end]
        input_ids[row, 1 + length] = eos_id
        attention_mask[row, : length + 2] = 1
    return WindowBatch(rows, np.asarray(group, dtype=np.int64), input_ids, attention_mask)
