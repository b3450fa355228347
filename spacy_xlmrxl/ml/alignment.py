"""Alignment of sentencepiece pieces to spaCy tokens, and pooling of piece vectors into token vectors.

Owns :func:`align_tokens_to_pieces` (character-offset alignment, vectorised with numpy),
:func:`pool_pieces` (mean / first-piece pooling with its backprop, on any thinc ``Ops``),
:class:`StreamingPooler` (the same pooling at inference, block of pieces by block of pieces, so
that no (n_pieces, H) array of a doc is ever held) and :func:`piece_pooler`, a thinc ``Model``
wrapping the pooling for a batch of docs.

Alignment rules (the contract the rest of the package relies on):

* A piece belongs to every token whose character span overlaps the piece's character span
  (half-open spans ``[start, end)`` into ``doc.text``). So one token may get many pieces, one
  piece may serve many tokens, and a piece straddling a token boundary serves both tokens.
* An **empty** piece span (``start == end``, e.g. the lone ``"▁"`` piece the tokenizer places
  at the start of the next word) is attached to the token that contains character ``start``;
  it belongs to no token when that character is whitespace or past the end of the text. This
  mirrors Hugging Face ``word_ids()``, where a lone ``"▁"`` is the first piece of its word, so
  ``mode="first"`` pools the same vector that HF token-classification recipes use.
* Whitespace-only tokens (``token.is_space``) always get an empty alignment (length 0).
* Every other token gets at least one piece whenever the doc has at least one piece. A token
  that no piece overlaps (a character the normaliser dropped, e.g. a lone zero-width joiner)
  is given the **nearest** piece: the one with the smallest character gap to the token,
  where the candidates are the piece ending last at or before the token's start and the piece
  starting first at or after the token's end; on a tie the preceding piece wins.
"""

from __future__ import annotations

from typing import Callable, List, Literal, Sequence, Tuple

import numpy as np
from spacy.attrs import IDX, IS_SPACE, LENGTH
from spacy.tokens import Doc
from thinc.api import Model, Ops
from thinc.types import Floats2d, Ragged

PoolingMode = Literal["mean", "first"]
POOLING_MODES: Tuple[str, ...] = ("mean", "first")


def _as_offsets(offsets: Sequence[Tuple[int, int]], text_length: int) -> np.ndarray:
    """Validate piece offsets and return them as an int64 array of shape (n_pieces, 2)."""
    spans = np.asarray(offsets, dtype=np.int64)
    if spans.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if spans.ndim != 2 or spans.shape[1] != 2:
        raise ValueError(f"offsets must be (start, end) pairs, got an array of shape {spans.shape}")
    bad = (spans[:, 0] < 0) | (spans[:, 0] > spans[:, 1]) | (spans[:, 1] > text_length)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"offsets[{i}] = {tuple(spans[i].tolist())} is not a span inside a text of "
            f"{text_length} characters (need 0 <= start <= end <= len(doc.text))"
        )
    return spans


def _expand_ranges(lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For ranges ``[lo[i], hi[i])`` return (owner i, value) for every value in every range."""
    counts = np.maximum(hi - lo, 0)
    owners = np.repeat(np.arange(len(lo), dtype=np.int64), counts)
    first_of_owner = np.cumsum(counts) - counts
    values = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first_of_owner - lo, counts)
    return owners, values


def _nearest_pieces(
    starts: np.ndarray, ends: np.ndarray, tok_starts: np.ndarray, tok_ends: np.ndarray
) -> np.ndarray:
    """Index of the nearest piece to each token span (ties: the preceding piece); -1 if none."""
    by_end = np.argsort(ends, kind="stable")
    by_start = np.argsort(starts, kind="stable")
    prev_pos = np.searchsorted(ends[by_end], tok_starts, side="right") - 1
    next_pos = np.searchsorted(starts[by_start], tok_ends, side="left")
    has_prev = prev_pos >= 0
    has_next = next_pos < len(starts)
    prev = by_end[np.clip(prev_pos, 0, None)]
    nxt = by_start[np.clip(next_pos, None, len(starts) - 1)]
    prev_gap = np.where(has_prev, tok_starts - ends[prev], np.iinfo(np.int64).max)
    next_gap = np.where(has_next, starts[nxt] - tok_ends, np.iinfo(np.int64).max)
    nearest = np.where(prev_gap <= next_gap, prev, nxt)
    return np.where(has_prev | has_next, nearest, -1)


def align_tokens_to_pieces(doc: Doc, offsets: Sequence[Tuple[int, int]]) -> Ragged:
    """Map each spaCy token of ``doc`` to the pieces that cover it (see the module docstring).

    offsets: one ``(start, end)`` character span into ``doc.text`` per piece, specials excluded;
        any order (tokenizers give them monotone, which is not required here).
    Returns a ``Ragged`` whose ``dataXd`` is an int32 array of piece indices (ascending within a
    token) and whose ``lengths`` (int32, shape (n_tokens,)) count the pieces of each token.
    Raises ``ValueError`` for a span outside ``doc.text`` or with ``start > end``.
    """
    spans = _as_offsets(offsets, len(doc.text))
    token_attrs = doc.to_array([IDX, LENGTH, IS_SPACE]).astype(np.int64).reshape(-1, 3)
    tok_starts = token_attrs[:, 0]
    tok_ends = tok_starts + token_attrs[:, 1]
    is_content = (token_attrs[:, 2] == 0) & (token_attrs[:, 1] > 0)
    n_tokens = len(tok_starts)
    starts, ends = spans[:, 0], spans[:, 1]
    # An empty span at p behaves like the one-character span [p, p + 1) for overlap purposes.
    overlap_ends = np.maximum(ends, starts + 1)
    # Tokens are ordered and disjoint, so the tokens overlapping a piece form one index range.
    lo = np.searchsorted(tok_ends, starts, side="right")
    hi = np.searchsorted(tok_starts, overlap_ends, side="left")
    pair_pieces, pair_tokens = _expand_ranges(lo, hi)
    keep = is_content[pair_tokens]
    pair_pieces, pair_tokens = pair_pieces[keep], pair_tokens[keep]
    counts = np.bincount(pair_tokens, minlength=n_tokens)
    orphans = np.flatnonzero(is_content & (counts == 0))
    if len(orphans) and len(spans):
        nearest = _nearest_pieces(starts, ends, tok_starts[orphans], tok_ends[orphans])
        found = nearest >= 0
        pair_pieces = np.concatenate([pair_pieces, nearest[found]])
        pair_tokens = np.concatenate([pair_tokens, orphans[found]])
        counts = np.bincount(pair_tokens, minlength=n_tokens)
    # Group by token, pieces ascending within a token (fallback pairs were appended last).
    order = np.lexsort((pair_pieces, pair_tokens))
    data = np.ascontiguousarray(pair_pieces[order], dtype=np.int32)
    return Ragged(data, counts.astype(np.int32))


def _check_pooling(hidden: Floats2d, align: Ragged, mode: str) -> None:
    if mode not in POOLING_MODES:
        raise ValueError(f"mode must be one of {POOLING_MODES}, got {mode!r}")
    if hidden.ndim != 2:
        raise ValueError(f"hidden must have shape (n_pieces, H), got {hidden.shape}")
    if align.dataXd.size and int(align.dataXd.max()) >= hidden.shape[0]:
        raise ValueError(
            f"alignment refers to piece {int(align.dataXd.max())} but hidden has only "
            f"{hidden.shape[0]} rows"
        )


def pool_pieces(
    ops: Ops, hidden: Floats2d, align: Ragged, *, mode: PoolingMode = "mean"
) -> Tuple[Floats2d, Callable[[Floats2d], Floats2d]]:
    """Pool piece vectors into token vectors.

    hidden: (n_pieces, H) piece vectors on ``ops``' device; align: from
    :func:`align_tokens_to_pieces` (may live on the CPU). mode ``"mean"`` averages a token's
    pieces, ``"first"`` takes its first (lowest-index) piece. Tokens without pieces get zeros.
    Returns (n_tokens, H) token vectors and a backprop mapping d(n_tokens, H) to
    d(n_pieces, H): mean sends each token's gradient divided by its piece count to every piece,
    first sends it to the first piece; a piece shared by several tokens receives the sum.
    """
    _check_pooling(hidden, align, mode)
    xp = ops.xp
    n_pieces, width = hidden.shape
    lengths = np.asarray(ops.to_numpy(align.lengths), dtype=np.int64)
    pieces = np.asarray(ops.to_numpy(align.dataXd), dtype=np.int32)
    n_tokens = len(lengths)
    if mode == "mean":
        tokens = np.repeat(np.arange(n_tokens, dtype=np.int32), lengths)
        scale = 1.0 / np.maximum(lengths, 1)
    else:
        has_piece = lengths > 0
        pieces = pieces[(np.cumsum(lengths) - lengths)[has_piece]]
        tokens = np.flatnonzero(has_piece).astype(np.int32)
        scale = np.ones(n_tokens)
    pieces_d = ops.asarray1i(pieces)
    tokens_d = ops.asarray1i(tokens)
    scale_d = xp.asarray(scale.astype(hidden.dtype))[:, None]

    pooled = xp.zeros((n_tokens, width), dtype=hidden.dtype)
    ops.scatter_add(pooled, tokens_d, xp.ascontiguousarray(hidden[pieces_d]))
    pooled *= scale_d

    def backprop(d_pooled: Floats2d) -> Floats2d:
        if d_pooled.shape != (n_tokens, width):
            raise ValueError(f"gradient shape {d_pooled.shape} != output shape {(n_tokens, width)}")
        d_hidden = xp.zeros((n_pieces, width), dtype=d_pooled.dtype)
        scaled = xp.ascontiguousarray((d_pooled * scale_d.astype(d_pooled.dtype))[tokens_d])
        ops.scatter_add(d_hidden, pieces_d, scaled)
        return d_hidden

    return pooled, backprop


class StreamingPooler:
    """:func:`pool_pieces` (no backprop) over piece rows that arrive in blocks, for inference.

    ``add(start, rows)`` takes the final (n, H) vectors of pieces ``start .. start + n`` (blocks
    come in piece order and tile ``0..n_pieces``, as :class:`~spacy_xlmrxl.windows.StreamingRecombiner`
    returns them) and pools every token whose pieces have all arrived, for each mode in ``modes``.
    Only the rows of pieces still needed by a token not yet pooled are kept (a few windows'
    worth when offsets are monotone). ``outputs[mode]`` is (n_tokens, H), bit-identical to
    ``pool_pieces(ops, hidden, align, mode=mode)[0]`` (same additions in the same order).
    """

    def __init__(self, ops: Ops, align: Ragged, n_pieces: int, width: int, modes: Sequence[str],
                 dtype: str = "float32") -> None:
        for mode in modes:
            if mode not in POOLING_MODES:
                raise ValueError(f"mode must be one of {POOLING_MODES}, got {mode!r}")
        self.ops = ops
        self.modes = tuple(dict.fromkeys(modes))
        self.n_pieces = int(n_pieces)
        self.width = int(width)
        self.lengths = np.asarray(ops.to_numpy(align.lengths), dtype=np.int32)
        self.pieces = np.asarray(ops.to_numpy(align.dataXd), dtype=np.int32)
        if self.pieces.size and int(self.pieces.max()) >= self.n_pieces:
            raise ValueError(f"alignment refers to piece {int(self.pieces.max())} but the doc has "
                             f"{self.n_pieces} pieces")
        n_tokens = len(self.lengths)
        self.starts = (np.cumsum(self.lengths, dtype=np.int64) - self.lengths).astype(np.int64)
        has = self.lengths > 0
        tok_max = np.full(n_tokens, -1, dtype=np.int32)
        tok_min = np.full(n_tokens, self.n_pieces, dtype=np.int32)
        if has.any():
            tok_max[has] = np.maximum.reduceat(self.pieces, self.starts[has])
            tok_min[has] = np.minimum.reduceat(self.pieces, self.starts[has])
        # Tokens in the order they become ready (their last piece arrives), and for each point
        # of that order the lowest piece a token not yet pooled still needs.
        self._order = np.argsort(tok_max, kind="stable").astype(np.int32)
        self._ready_at = tok_max[self._order]
        self._low = np.append(np.minimum.accumulate(tok_min[self._order][::-1])[::-1],
                              np.int32(self.n_pieces))
        self._next = 0
        xp = ops.xp
        self.outputs = {mode: xp.zeros((n_tokens, self.width), dtype=dtype) for mode in self.modes}
        self._base = 0  # piece index of self._rows[0]
        self._rows = xp.zeros((0, self.width), dtype=dtype)
        self.received = 0
        self._pool(0)  # tokens without pieces

    def add(self, start: int, rows: Floats2d) -> None:
        if start != self.received:
            raise ValueError(f"pieces arrive in order: expected a block at {self.received}, got {start}")
        xp = self.ops.xp
        self._rows = xp.concatenate([self._rows, rows]) if len(self._rows) else rows
        self.received = start + rows.shape[0]
        self._pool(self.received)

    def _pool(self, received: int) -> None:
        # Tokens whose last piece is < received (tokens without pieces have -1: pooled first).
        stop = int(np.searchsorted(self._ready_at, received, side="left"))
        tokens = self._order[self._next:stop]
        self._next = stop
        if len(tokens):
            lengths = self.lengths[tokens].astype(np.int64)
            for mode in self.modes:
                self._pool_mode(mode, tokens, lengths)
        low = min(int(self._low[self._next]), self.received)
        if low > self._base:
            self._rows = self._rows[low - self._base:].copy()
            self._base = low

    def _pool_mode(self, mode: str, tokens: np.ndarray, lengths: np.ndarray) -> None:
        ops, xp = self.ops, self.ops.xp
        starts = self.starts[tokens]
        if mode == "mean":
            owners, pairs = _expand_ranges(starts, starts + lengths)
            pieces = self.pieces[pairs]
            scale = 1.0 / np.maximum(lengths, 1)
        else:
            has_piece = lengths > 0
            pieces = self.pieces[starts[has_piece]]
            owners = np.flatnonzero(has_piece)
            scale = np.ones(len(tokens))
        table = xp.zeros((len(tokens), self.width), dtype=self._rows.dtype)
        if len(pieces):
            rows = xp.ascontiguousarray(self._rows[ops.asarray1i((pieces - self._base).astype(np.int32))])
            ops.scatter_add(table, ops.asarray1i(owners.astype(np.int32)), rows)
        table *= xp.asarray(scale.astype(table.dtype))[:, None]
        self.outputs[mode][ops.asarray1i(tokens)] = table

    @property
    def finished(self) -> bool:
        return self._next == len(self._order)


def piece_pooler(
    mode: PoolingMode = "mean",
) -> Model[List[Tuple[Floats2d, Ragged]], List[Floats2d]]:
    """A thinc Model pooling a batch of ``(hidden (n_pieces, H), align)`` pairs, one per doc,
    into a list of (n_tokens, H) token-vector arrays (see :func:`pool_pieces`)."""
    if mode not in POOLING_MODES:
        raise ValueError(f"mode must be one of {POOLING_MODES}, got {mode!r}")
    return Model("piece_pooler", _pooler_forward, attrs={"mode": mode})


def _pooler_forward(
    model: Model[List[Tuple[Floats2d, Ragged]], List[Floats2d]],
    inputs: List[Tuple[Floats2d, Ragged]],
    is_train: bool,
) -> Tuple[List[Floats2d], Callable[[List[Floats2d]], List[Floats2d]]]:
    mode = model.attrs["mode"]
    results = [pool_pieces(model.ops, hidden, align, mode=mode) for hidden, align in inputs]

    def backprop(d_outputs: List[Floats2d]) -> List[Floats2d]:
        return [bp(d) for (_, bp), d in zip(results, d_outputs)]

    return [pooled for pooled, _ in results], backprop
