"""The best fillers of each ``<mask>``, from vocabulary logits that arrive a chunk of masks at a time.

Owns `TopK`: per position, the ``top_k`` most probable ordinary pieces and their probabilities
under the softmax over the ordinary pieces (no special token, none of the vocabulary's padding
rows beyond the tokenizer). It keeps only (n_positions, k) ids and scores; each chunk's logits
are read one row at a time (a row's float64 softmax, one vocabulary's worth, is the only copy
made), so its memory does not grow with the number of masks. The arithmetic is the
float64 softmax and selection the component always used, row by row.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy


class TopK:
    """The ``top_k`` best ``(id, probability)`` of each of ``n_positions`` rows of logits.

    ``n_allowed``: ids ``0 .. n_allowed - 1`` may fill (the tokenizer's vocabulary), less the
    ``excluded`` ones (the special tokens); the logits may have more columns (a padded
    vocabulary). `add` takes the logits of some rows; ``ids`` (int64) and ``scores`` (float64),
    both (n_positions, k) with ``k = min(top_k, number of allowed ids)``, hold the results, best
    first.
    """

    def __init__(self, n_positions: int, *, top_k: int, n_allowed: int, excluded: Iterable[int] = ()) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.n_positions = n_positions
        self.top_k = top_k
        self.n_allowed = n_allowed
        self.excluded = sorted(set(int(i) for i in excluded))
        self._allowed: Optional[numpy.ndarray] = None
        self.ids = numpy.zeros((n_positions, 0), dtype="int64")
        self.scores = numpy.zeros((n_positions, 0), dtype="float64")

    def _start(self, vocab_size: int) -> numpy.ndarray:
        """The allowed columns of ``vocab_size``-wide logits; sizes the results on first use."""
        if self._allowed is None or len(self._allowed) != vocab_size:
            allowed = numpy.zeros((vocab_size,), dtype=bool)
            allowed[: self.n_allowed] = True
            allowed[[i for i in self.excluded if i < vocab_size]] = False
            k = min(self.top_k, int(allowed.sum()))
            if k < 1:
                raise ValueError(f"no vocabulary entry of the {vocab_size} logits can fill a mask")
            self._allowed = allowed
            self.ids = numpy.zeros((self.n_positions, k), dtype="int64")
            self.scores = numpy.zeros((self.n_positions, k), dtype="float64")
        return self._allowed

    def add(self, rows: numpy.ndarray, logits: numpy.ndarray) -> None:
        """Take the (len(rows), vocab_size) logits of positions ``rows``."""
        allowed = self._start(logits.shape[1])
        k = self.ids.shape[1]
        for row, row_logits in zip(rows.tolist(), logits):
            probs = numpy.where(allowed, row_logits.astype("float64"), -numpy.inf)
            numpy.subtract(probs, probs.max(), out=probs)
            numpy.exp(probs, out=probs)
            probs /= probs.sum()
            best = numpy.argpartition(-probs, k - 1)[:k]
            best = best[numpy.argsort(-probs[best], kind="stable")]
            self.ids[row] = best
            self.scores[row] = probs[best]
