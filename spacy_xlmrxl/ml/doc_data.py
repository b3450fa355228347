"""What the backbone leaves on a Doc: `XLMRDocData` (``doc._.xlmrxl``) and its gradient `XLMRGrad`.

Owns the ``Doc._.xlmrxl`` extension (registered on import), the per-doc output of
``spacy-xlmrxl.Transformer.v2`` (and v1) and the gradient that flows back into it from heads and
listeners (with in-place accumulation for several listeners), and the msgpack encoder/decoder
that lets a Doc holding an `XLMRDocData` go through ``Doc.to_bytes`` (``nlp.pipe(n_process=2)``,
``DocBin(store_user_data=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy
import srsly
from spacy.tokens import Doc
from thinc.api import Ops, get_current_ops
from thinc.types import Floats2d, Ragged

EXTENSION = "xlmrxl"

if not Doc.has_extension(EXTENSION):
    Doc.set_extension(EXTENSION, default=None)


@dataclass
class XLMRDocData:
    """The backbone's output for one doc.

    piece_ids: (n_pieces,) int32 tokenizer ids, no specials;
    offsets: (n_pieces, 2) int32 character spans of the pieces in ``doc.text``;
    align: Ragged over the doc's tokens: ``dataXd`` piece indices, ``lengths`` (n_tokens,)
        pieces per token (0 for whitespace tokens);
    windows: the ``(start, end)`` piece windows the backbone ran on (an empty doc has the one
        window ``(0, 0)``, i.e. ``<s></s>``);
    hidden: (n_pieces, H) last hidden states, overlapping windows averaged; always set in
        training (``begin_update``), and at inference only when piece states are asked for
        (the ``Transformer`` layer's own ``predict``, or the component's ``piece_states``), else None;
    cls: (n_windows, H) the ``<s>`` state of each window;
    tokvecs: inference only: pooling mode (``"mean"``/``"first"``) -> (n_tokens, H) token
        vectors, pooled window batch by window batch (bit-identical to pooling ``hidden``), for
        the modes the listening components use.
    """

    piece_ids: numpy.ndarray
    offsets: numpy.ndarray
    align: Ragged
    windows: List[Tuple[int, int]]
    hidden: Optional[Floats2d]
    cls: Floats2d
    tokvecs: Dict[str, Floats2d] = field(default_factory=dict)

    @property
    def n_pieces(self) -> int:
        return int(self.piece_ids.shape[0])

    @property
    def width(self) -> int:
        return int((self.hidden if self.hidden is not None else self.cls).shape[1])

    def nbytes(self) -> int:
        """Bytes of the arrays this doc data holds (what it keeps per doc)."""
        arrays = [self.piece_ids, self.offsets, self.align.dataXd, self.align.lengths, self.cls,
                  *self.tokvecs.values()] + ([self.hidden] if self.hidden is not None else [])
        return int(sum(a.nbytes for a in arrays))

    @classmethod
    def zeros(cls, n_tokens: int, width: int, *, ops: Optional[Ops] = None) -> "XLMRDocData":
        """Stand-in for a doc the backbone has not seen: no pieces, one zero ``<s>`` state."""
        ops = ops or get_current_ops()
        return cls(
            piece_ids=numpy.zeros((0,), dtype="int32"),
            offsets=numpy.zeros((0, 2), dtype="int32"),
            align=Ragged(numpy.zeros((0,), dtype="int32"), numpy.zeros((n_tokens,), dtype="int32")),
            windows=[(0, 0)],
            hidden=ops.alloc2f(0, width),
            cls=ops.alloc2f(1, width),
        )

    def grad_zeros(self, ops: Ops) -> "XLMRGrad":
        hidden = ops.alloc2f(self.n_pieces, self.width)
        return XLMRGrad(hidden=hidden, cls=ops.alloc2f(*self.cls.shape))


_MSGPACK_KEY = "__xlmrxl_doc_data__"


@srsly.msgpack_encoders("xlmrxl_doc_data")
def _encode_doc_data(obj: Any, chain: Any = None) -> Any:
    """msgpack form of an `XLMRDocData`: its arrays on the host (numpy), the Ragged as its parts."""
    if isinstance(obj, XLMRDocData):
        return {_MSGPACK_KEY: {
            "piece_ids": any_to_numpy(obj.piece_ids), "offsets": any_to_numpy(obj.offsets),
            "align_data": any_to_numpy(obj.align.dataXd), "align_lengths": any_to_numpy(obj.align.lengths),
            "windows": [list(w) for w in obj.windows],
            "hidden": None if obj.hidden is None else any_to_numpy(obj.hidden), "cls": any_to_numpy(obj.cls),
            "tokvecs": {mode: any_to_numpy(v) for mode, v in obj.tokvecs.items()}}}
    return obj if chain is None else chain(obj)


@srsly.msgpack_decoders("xlmrxl_doc_data")
def _decode_doc_data(obj: Any, chain: Any = None) -> Any:
    if isinstance(obj, dict) and _MSGPACK_KEY in obj:
        msg = obj[_MSGPACK_KEY]
        return XLMRDocData(piece_ids=msg["piece_ids"], offsets=msg["offsets"],
                           align=Ragged(msg["align_data"], msg["align_lengths"]),
                           windows=[(int(s), int(e)) for s, e in msg["windows"]], hidden=msg["hidden"], cls=msg["cls"],
                           tokvecs=dict(msg.get("tokvecs") or {}))
    return obj if chain is None else chain(obj)


@dataclass
class XLMRGrad:
    """Gradient w.r.t. one `XLMRDocData`: ``hidden`` (n_pieces, H) and ``cls`` (n_windows, H);
    None means zero."""

    hidden: Optional[Floats2d] = None
    cls: Optional[Floats2d] = None

    def add_(self, other: "XLMRGrad") -> "XLMRGrad":
        """Accumulate ``other`` into self (in place where an array exists)."""
        for name in ("hidden", "cls"):
            theirs = getattr(other, name)
            if theirs is None:
                continue
            mine = getattr(self, name)
            if mine is None:
                setattr(self, name, theirs.copy())
            else:
                mine += theirs
        return self

    def squared_norm(self) -> float:
        return float(sum((g ** 2).sum() for g in (self.hidden, self.cls) if g is not None))


@dataclass
class GradAccumulator:
    """Sums the gradients several listeners send for one batch (see the transformer component)."""

    grads: List[XLMRGrad] = field(default_factory=list)

    def add(self, grads: Sequence[XLMRGrad]) -> float:
        """Add one listener's per-doc gradients; returns their squared norm (for the loss log)."""
        if not self.grads:
            self.grads = [XLMRGrad() for _ in grads]
        if len(grads) != len(self.grads):
            raise ValueError(f"gradient for {len(grads)} docs, the batch has {len(self.grads)}")
        total = 0.0
        for mine, theirs in zip(self.grads, grads):
            mine.add_(theirs)
            total += theirs.squared_norm()
        return total

    def pop(self) -> List[XLMRGrad]:
        grads, self.grads = self.grads, []
        return grads


def set_doc_data(docs: Sequence[Doc], outputs: Sequence[XLMRDocData]) -> None:
    for doc, data in zip(docs, outputs):
        doc._.set(EXTENSION, data)


def get_doc_data(doc: Doc) -> Optional[XLMRDocData]:
    return doc._.get(EXTENSION)


def any_to_numpy(array: Any) -> numpy.ndarray:
    """numpy view/copy of a numpy or cupy array."""
    return array.get() if hasattr(array, "get") else numpy.asarray(array)
