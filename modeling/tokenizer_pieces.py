"""The pieces of a text: SentencePiece ids as fairseq model ids, with character offsets.

Owns `PieceEncoder` (what `modeling.tokenizer.XLMRobertaTokenizer` runs to encode text, no
special tokens): SentencePiece ids mapped to the XLM-R model ids (SentencePiece id + 1, ``<unk>``
= 3), character offsets into the text the caller gave (not the normalised text), the literal
``<mask>`` in a text, and long texts tokenised chunk by chunk into numpy arrays with the pieces
of the whole text (`ENCODE_CHUNK_CHARS`, `chunk_starts`). Also `PieceEncoding` / `PieceArrays`,
the two forms of the result, and `check_text` (the refusal of lone surrogates, naming where).

Offsets are ``(start, end)`` character spans into the original text:

* a span holds the surface characters of its piece only: the whitespace that the piece's "▁"
  stands for, and characters the normaliser deletes (controls, zero-width spaces), are not part
  of it when they come first;
* a piece that is a lone "▁" gets an empty span at the start of the next piece;
* a character whose normalised form is split across pieces belongs to the last of them
  (SentencePiece's choice: the final "फ़" of "सिर्फ़" normalises to "फ" + nukta, the pieces are
  "▁सिर्फ" and the nukta, and the first piece's span stops before "फ़"); pieces left with no
  character at all ("ﷺ" -> four words) share the span of the piece that got it; spans are
  otherwise disjoint, and starts and ends never decrease;
* a literal ``<mask>`` becomes ``mask_id`` with the span of the six characters; the whitespace on
  its left is swallowed (HF's ``lstrip=True``), and the text on either side is encoded as its
  own segment (with SentencePiece's dummy prefix), as HF's slow XLM-R tokenizer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy
import sentencepiece

MASK_TOKEN = "<mask>"
WORD_BOUNDARY = "\u2581"  # "▁", SentencePiece's whitespace marker

#: Texts longer than twice this many characters are tokenised chunk by chunk, and shorter texts
#: go to SentencePiece in groups of about that many characters (see `PieceEncoder.encode_arrays`).
ENCODE_CHUNK_CHARS = 1 << 16

Span = Tuple[int, int]


@dataclass(frozen=True)
class PieceEncoding:
    """Pieces of one text, no special tokens: model ``ids`` and character ``offsets`` (one per id)."""

    ids: List[int]
    offsets: List[Span]

    def __len__(self) -> int:
        return len(self.ids)


class PieceArrays(NamedTuple):
    """`PieceEncoding` as arrays: ``ids`` (n,) int32 and ``offsets`` (n, 2) int32."""

    ids: numpy.ndarray
    offsets: numpy.ndarray


class _BlankChars(Dict[str, bool]):
    """char -> whether the normaliser turns it, on its own, into nothing or whitespace."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor) -> None:
        super().__init__()
        self._processor = processor

    def __missing__(self, char: str) -> bool:
        blank = not self._processor.encode(char)
        self[char] = blank
        return blank


class PieceEncoder:
    """Text -> pieces (`PieceEncoding` or `PieceArrays`) over a SentencePiece ``processor``.

    ``mask_id``: the model id of a literal ``<mask>``; ``unk_id``: the model id of ``<unk>``.
    """

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, *, mask_id: int, unk_id: int) -> None:
        self._sp = processor
        self.mask_id = mask_id
        self.unk_id = unk_id
        meta = processor.piece_to_id(WORD_BOUNDARY)
        self._spm_boundary_id = meta if meta != processor.unk_id() else -1
        self._blank = _BlankChars(processor)
        if _has_offset_mapping(processor):
            self._raw_encode = self._encode_with_offset_mapping
        else:  # an older sentencepiece: byte offsets from immutable_proto
            self._raw_encode = self._encode_with_proto

    def encode_batch(self, texts: Sequence[str], *, num_threads: int) -> List[PieceEncoding]:
        """The pieces of each text, with one (multi-threaded) SentencePiece call."""
        texts = list(texts)
        layouts = [_mask_layout(check_text(text, "texts")) for text in texts]
        segments = [text[s:e] for text, layout in zip(texts, layouts) for s, e, mask in layout if not mask]
        encoded = iter(self._encode_segments(segments, num_threads))
        results = []
        for layout in layouts:
            if len(layout) == 1 and not layout[0][2]:
                results.append(next(encoded))
                continue
            ids: List[int] = []
            offsets: List[Span] = []
            for start, end, is_mask in layout:
                if is_mask:
                    ids.append(self.mask_id)
                    offsets.append((start, end))
                else:
                    piece_encoding = next(encoded)
                    ids.extend(piece_encoding.ids)
                    offsets.extend((s + start, e + start) for s, e in piece_encoding.offsets)
            results.append(PieceEncoding(ids, offsets))
        return results

    def encode_arrays(self, texts: Sequence[str], *, num_threads: int) -> List[PieceArrays]:
        """`encode_batch` as int32 arrays, with memory bounded by `ENCODE_CHUNK_CHARS`.

        A text longer than ``2 * ENCODE_CHUNK_CHARS`` characters is tokenised chunk by chunk
        (`chunk_starts`: the chunks' pieces are the pieces of the whole text); shorter texts go to
        SentencePiece in groups of at most that many characters (a longer text alone). Each
        group's Python lists (hundreds of bytes per piece) are dropped as soon as they are converted, so
        they never exist for more than one group or chunk whatever the number of texts.
        """
        texts = [check_text(text, "texts") for text in texts]
        results: List[Optional[PieceArrays]] = [None] * len(texts)
        for group in _groups_of_short_texts(texts, 2 * ENCODE_CHUNK_CHARS):
            encodings = self.encode_batch([texts[i] for i in group], num_threads=num_threads)
            for j, i in enumerate(group):
                enc, encodings[j] = encodings[j], None
                results[i] = PieceArrays(numpy.asarray(enc.ids, dtype="int32"),
                                         numpy.asarray(enc.offsets, dtype="int32").reshape(-1, 2))
                del enc
        for i, text in enumerate(texts):
            if results[i] is None:
                results[i] = self._encode_long(text, num_threads)
        return results  # type: ignore[return-value]

    def _encode_long(self, text: str, num_threads: int) -> PieceArrays:
        """`encode_arrays` of one long text, chunk by chunk (see `chunk_starts`)."""
        starts = chunk_starts(text, ENCODE_CHUNK_CHARS)
        ids, spans = [], []
        for start, end in zip(starts, starts[1:] + [len(text)]):
            (enc,) = self.encode_batch([text[start:end]], num_threads=num_threads)
            ids.append(numpy.asarray(enc.ids, dtype="int32"))
            spans.append(numpy.asarray(enc.offsets, dtype="int32").reshape(-1, 2) + numpy.int32(start))
            del enc
        return PieceArrays(numpy.concatenate(ids), numpy.concatenate(spans).astype("int32", copy=False))

    def _encode_segments(self, segments: List[str], num_threads: int) -> List[PieceEncoding]:
        if not segments:
            return []
        raw = self._raw_encode(segments, num_threads)
        return [self._finish(segment, spm_ids, spans) for segment, (spm_ids, spans) in zip(segments, raw)]

    def _encode_with_offset_mapping(self, segments: List[str], num_threads: int) -> List[Tuple[List[int], List[Span]]]:
        if len(segments) == 1:
            outputs = [self._sp.encode(segments[0], out_type="offset_mapping")]
        else:
            outputs = self._sp.encode(segments, out_type="offset_mapping", num_threads=num_threads)
        return [(out["ids"], out["offsets"]) for out in outputs]

    def _encode_with_proto(self, segments: List[str], num_threads: int) -> List[Tuple[List[int], List[Span]]]:
        """For sentencepiece versions without ``offset_mapping``: UTF-8 byte spans -> char spans."""
        protos = self._sp.encode(segments, out_type="immutable_proto", num_threads=num_threads)
        results = []
        for segment, proto in zip(segments, protos):
            pieces = list(proto.pieces)
            byte_spans = [(p.begin, p.end) for p in pieces]
            results.append(([p.id for p in pieces], byte_to_char_spans(segment, byte_spans)))
        return results

    def _finish(self, text: str, spm_ids: List[int], spans: List[Span]) -> PieceEncoding:
        """Map SentencePiece ids to model ids and SentencePiece spans to surface spans."""
        blank = self._blank
        # fast path: at most one leading blank character (the space a "▁" stands for)
        out = [(s + 1, e) if s < e and blank[text[s]] else (s, e) for s, e in spans]
        if self._spm_boundary_id in spm_ids or any(s >= e or blank[text[s]] for s, e in out):
            out = self._surface_spans(text, spm_ids, out)
        return PieceEncoding([i + 1 if i else self.unk_id for i in spm_ids], out)

    def _surface_spans(self, text: str, spm_ids: List[int], spans: List[Span]) -> List[Span]:
        """Strip all leading blank characters; place lone "▁" and expansion pieces (see module doc)."""
        blank = self._blank
        n = len(spm_ids)
        out: List[Span] = [(0, 0)] * n
        following: Optional[Span] = None  # surface span of piece i + 1
        for i in range(n - 1, -1, -1):
            start, end = spans[i]
            while start < end and blank[text[start]]:
                start += 1
            if following is not None:
                if spm_ids[i] == self._spm_boundary_id:  # a lone "▁": empty, at the next piece
                    start = end = following[0]
                elif start == end:  # no characters: shares the character of the next piece
                    start, end = following
            following = out[i] = (start, end)
        return out


def check_text(text: Any, name: str) -> str:
    """``text`` itself; raise ``TypeError`` for a non-string and ``ValueError`` naming the
    position of a lone surrogate (SentencePiece would fail with an opaque pybind11 error)."""
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name}: lone surrogate {text[err.start]!r} at character {err.start} cannot be encoded as UTF-8; "
            "clean the text first, e.g. text.encode('utf-8', errors='replace').decode('utf-8')"
        ) from err
    return text


def _groups_of_short_texts(texts: Sequence[str], max_chars: int) -> Iterator[List[int]]:
    """Indices of the texts of at most ``max_chars`` characters, in groups of at most
    ``max_chars`` characters altogether (a group holds at least one text)."""
    group: List[int] = []
    size = 0
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            continue
        if group and size + len(text) > max_chars:
            yield group
            group, size = [], 0
        group.append(i)
        size += len(text)
    if group:
        yield group


def is_plain_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def chunk_starts(text: str, size: int) -> List[int]:
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


def _mask_layout(text: str) -> List[Tuple[int, int, bool]]:
    """``(start, end, is_mask)`` chunks of ``text``: the segments to encode and the ``<mask>`` literals.

    Whitespace left of a ``<mask>`` belongs to no chunk; empty segments are left out.
    """
    position = text.find(MASK_TOKEN)
    if position < 0:
        return [(0, len(text), False)]
    layout: List[Tuple[int, int, bool]] = []
    segment_start = 0
    while position >= 0:
        segment_end = segment_start + len(text[segment_start:position].rstrip())
        if segment_end > segment_start:
            layout.append((segment_start, segment_end, False))
        layout.append((position, position + len(MASK_TOKEN), True))
        segment_start = position + len(MASK_TOKEN)
        position = text.find(MASK_TOKEN, segment_start)
    if segment_start < len(text):
        layout.append((segment_start, len(text), False))
    return layout


def byte_to_char_spans(text: str, byte_spans: Sequence[Span]) -> List[Span]:
    """UTF-8 byte spans of ``text`` (at character boundaries) as character spans."""
    if len(text) == len(text.encode("utf-8")):
        return list(byte_spans)
    char_at = {}
    position = 0
    for index, char in enumerate(text):
        char_at[position] = index
        position += len(char.encode("utf-8"))
    char_at[position] = len(text)
    return [(char_at[begin], char_at[end]) for begin, end in byte_spans]


def _has_offset_mapping(processor: sentencepiece.SentencePieceProcessor) -> bool:
    try:
        processor.encode("a", out_type="offset_mapping")
    except (ValueError, TypeError, RuntimeError):
        return False
    return True
