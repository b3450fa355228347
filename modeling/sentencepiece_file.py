"""Reading a SentencePiece model (``sentencepiece.bpe.model``) for the tokenizer.

Owns `load_sentencepiece` (the serialised model from a file or from bytes, parsed and checked to
be whole and to have the fairseq id layout) and `TokenizerFileError`, whose message names the
file (or what the bytes are). A model cut short at a piece boundary still parses, with fewer
pieces and no normaliser, so the top-level fields are walked to see that the normaliser spec,
which a trained model always holds after its pieces, is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Set, Tuple, Union

import sentencepiece

__all__ = ["TokenizerFileError", "load_sentencepiece"]

_NORMALIZER_SPEC = 3  # ModelProto field numbers: pieces 1, trainer_spec 2, normalizer_spec 3


class TokenizerFileError(ValueError):
    """A SentencePiece model that cannot be used; the message names its file and the reason."""


def load_sentencepiece(
    model_file: Union[str, Path, None] = None, *, model_proto: Optional[bytes] = None, source: Optional[str] = None
) -> Tuple[bytes, sentencepiece.SentencePieceProcessor]:
    """The serialised model and its processor, from ``model_file`` or ``model_proto`` (exactly one).

    Errors name ``model_file``, else ``source`` (where the bytes were read from), else
    ``model_proto``.
    """
    if (model_file is None) == (model_proto is None):
        raise ValueError("give exactly one of model_file and model_proto")
    if model_file is not None:
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"model_file: no SentencePiece model at {path}")
        model_proto = path.read_bytes()
        source = str(model_file)
    name = source or "model_proto"
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TokenizerFileError(
            f"{name} is not a SentencePiece model: truncated or corrupt ({len(model_proto)} bytes; "
            f"sentencepiece says: {reason})"
        ) from error
    fields = _top_level_fields(model_proto)
    if fields is None or _NORMALIZER_SPEC not in fields:
        raise TokenizerFileError(
            f"{name} is not a whole SentencePiece model: it has {processor.get_piece_size()} pieces but no "
            f"normalizer spec after them ({len(model_proto)} bytes), so the file is truncated"
        )
    layout = (processor.unk_id(), processor.bos_id(), processor.eos_id(), processor.pad_id())
    if layout != (0, 1, 2, -1):
        raise TokenizerFileError(
            f"{name}: the fairseq id mapping needs SentencePiece unk/bos/eos/pad ids 0/1/2/-1, "
            f"this model has {'/'.join(map(str, layout))}"
        )
    return model_proto, processor


def _top_level_fields(proto: bytes) -> Optional[Set[int]]:
    """The field numbers at the top level of a serialised protobuf message; ``None`` when it
    does not end on a field boundary. Short pieces (field 1, length under 128: nearly all of
    them) are skipped in a tight loop."""
    pos, end, seen = 0, len(proto), set()
    while pos < end:
        start = pos
        while pos + 1 < end and proto[pos] == 0x0A and proto[pos + 1] < 0x80:
            pos += 2 + proto[pos + 1]
        if pos != start:
            seen.add(1)
        if pos >= end:
            break
        tag, pos = _varint(proto, pos)
        wire = tag & 7
        if wire == 2:
            length, pos = _varint(proto, pos)
            pos += length
        elif wire == 0:
            pos = _varint(proto, pos)[1]
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            return None
        seen.add(tag >> 3)
    return seen if pos == end else None


def _varint(buffer: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while pos < len(buffer):
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return value, len(buffer) + 1  # ran off the end: the caller sees no field boundary
