"""Tokenisation of Docs into sentencepiece ids and character offsets, with bounded memory.

Owns `encode_docs`: ``(n_pieces,)`` int32 ids and ``(n_pieces, 2)`` int32 offsets per doc. Each
doc's Python lists are dropped as soon as they are converted, and a long text is tokenised
chunk by chunk (`_chunk_starts`), so the tokenizer's per-piece Python objects never exist for
more than one chunk.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy
from spacy.tokens import Doc

#: Texts longer than twice this many characters are tokenised chunk by chunk (see `_encode_long`).
ENCODE_CHUNK_CHARS = 1 << 16


def encode_docs(tokenizer: Any, docs: Sequence[Doc]) -> Tuple[List[numpy.ndarray], List[numpy.ndarray]]:
    """(n_pieces,) int32 ids and (n_pieces, 2) int32 offsets per doc. Each doc's Python lists
    are dropped as soon as they are converted, and a long text is tokenised in chunks, so the
    tokenizer's lists (~300 bytes per piece) never exist for more than one chunk."""
    texts = [doc.text for doc in docs]
    piece_ids: List[Any] = [None] * len(texts)
    offsets: List[Any] = [None] * len(texts)
    short = [i for i, text in enumerate(texts) if len(text) <= 2 * ENCODE_CHUNK_CHARS]
    encodings = tokenizer.encode_pieces_batch([texts[i] for i in short]) if short else []
    for j, i in enumerate(short):
        enc, encodings[j] = encodings[j], None
        piece_ids[i] = numpy.asarray(enc.ids, dtype="int32")
        offsets[i] = numpy.asarray(enc.offsets, dtype="int32").reshape(-1, 2)
        del enc
    for i, text in enumerate(texts):
        if piece_ids[i] is None:
            piece_ids[i], offsets[i] = _encode_long(tokenizer, text)
    return piece_ids, offsets


def is_plain_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _chunk_starts(text: str, size: int) -> List[int]:
    """Where the chunks of ``text`` start: right after a space between two ASCII letters or
    digits (``"word word"``), about every ``size`` characters. SentencePiece never joins
    characters across such a space and normalises neither neighbour, so the chunks' pieces are
    the pieces of the whole text. A text without such a space is one chunk."""
    starts = [0]
    while len(text) - starts[-1] > 2 * size:
        low, space = starts[-1] + size // 2, text.rfind(" ", starts[-1] + size // 2, starts[-1] + size)
        while space > low and not (is_plain_char(text[space - 1]) and is_plain_char(text[space + 1])):
            space = text.rfind(" ", low, space)
        if space <= low:
            break
        starts.append(space + 1)
    return starts


def _encode_long(tokenizer: Any, text: str) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """`encode_docs` for one long text, chunk by chunk (see `_chunk_starts`)."""
    starts = _chunk_starts(text, ENCODE_CHUNK_CHARS)
    ids, spans = [], []
    try:
        for start, end in zip(starts, starts[1:] + [len(text)]):
            enc = tokenizer.encode_pieces(text[start:end])
            ids.append(numpy.asarray(enc.ids, dtype="int32"))
            spans.append(numpy.asarray(enc.offsets, dtype="int32").reshape(-1, 2) + numpy.int32(start))
            del enc
    except ValueError:  # e.g. a lone surrogate: the error names its position in the whole text
        tokenizer.encode_pieces(text)
        raise
    return numpy.concatenate(ids), numpy.concatenate(spans).astype("int32", copy=False)
