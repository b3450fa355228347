"""`XLMRobertaTokenizer`: the XLM-R SentencePiece tokenizer with fairseq ids and character offsets.

Owns the mapping between SentencePiece ids and the fairseq / XLM-R model ids (``<s>``=0,
``<pad>``=1, ``</s>``=2, ``<unk>``=3, SentencePiece id + 1, ``<mask>`` = number of pieces + 1),
character offsets of every piece into the text the caller gave (not the normalised text), the
literal ``<mask>`` in a text, the special-token templates ``<s> A </s>`` and
``<s> A </s></s> B </s>``, truncation and padding of single texts, pairs and batches, and
decoding. Pure Python on top of ``sentencepiece``: no HF ``tokenizers``/``transformers``.

Offsets (``PieceEncoding.offsets``) are ``(start, end)`` character spans into the original text:

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
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import sentencepiece

from .sentencepiece_file import TokenizerFileError, load_sentencepiece  # noqa: F401 (TokenizerFileError re-exported)

SPM_FILE_NAME = "sentencepiece.bpe.model"
MASK_TOKEN = "<mask>"
WORD_BOUNDARY = "\u2581"  # "▁", SentencePiece's whitespace marker

Span = Tuple[int, int]
TruncationArg = Union[bool, str]
PaddingArg = Union[bool, str]

_TRUNCATION = {
    False: None,
    "do_not_truncate": None,
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}
_PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}


@dataclass(frozen=True)
class PieceEncoding:
    """Pieces of one text, no special tokens: model ``ids`` and character ``offsets`` (one per id)."""

    ids: List[int]
    offsets: List[Span]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Encoding:
    """One model input (a text or a text pair), all lists of the same length ``L``.

    ``offsets`` are character spans into the text the piece came from ((0, 0) for special and
    padding tokens); ``sequence_ids`` says which text: 0 (first), 1 (pair), ``None`` (special or
    padding); ``special_tokens_mask`` is 1 for special and padding tokens.
    """

    input_ids: List[int]
    attention_mask: List[int]
    offsets: List[Span]
    special_tokens_mask: List[int]
    sequence_ids: List[Optional[int]]

    def __len__(self) -> int:
        return len(self.input_ids)


class BatchEncoding(Dict[str, Any]):
    """Dict of batched fields (``input_ids``, ``attention_mask``, ``offsets``,
    ``special_tokens_mask``, ``sequence_ids``), also readable as attributes.

    With ``return_tensors="pt"``: ``input_ids``, ``attention_mask``, ``special_tokens_mask`` are
    int64 tensors of shape (B, L) and ``offsets`` an int64 tensor of shape (B, L, 2);
    ``sequence_ids`` stays a list of lists (it holds ``None``). ``encodings`` keeps the
    per-row `Encoding` objects.
    """

    def __init__(self, data: Dict[str, Any], encodings: List[Encoding]) -> None:
        super().__init__(data)
        self.encodings = encodings

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}") from None


@dataclass(frozen=True)
class _Options:
    """Validated encoding options (resolved from the HF-style arguments)."""

    add_special_tokens: bool
    truncation: Optional[str]  # None | "longest_first" | "only_first" | "only_second"
    max_length: Optional[int]
    padding: Optional[str]  # None | "longest" | "max_length"
    pad_to_multiple_of: Optional[int]


class _BlankChars(Dict[str, bool]):
    """char -> whether the normaliser turns it, on its own, into nothing or whitespace."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor) -> None:
        super().__init__()
        self._processor = processor

    def __missing__(self, char: str) -> bool:
        blank = not self._processor.encode(char)
        self[char] = blank
        return blank


class XLMRobertaTokenizer:
    """XLM-R tokenizer over any SentencePiece model (the real one has 250,000 pieces).

    ``model_file`` is a ``sentencepiece.bpe.model`` path; or pass the serialised model as
    ``model_proto`` (``source``: where those bytes come from, named in errors). A file that is no
    whole SentencePiece model raises `TokenizerFileError` naming it. ``model_max_length`` is the
    default ``max_length`` for truncation and ``padding="max_length"`` (512 for the released checkpoints). ``num_threads`` is handed to
    SentencePiece's batch encoder (-1: all cores).
    """

    bos_token = "<s>"
    pad_token = "<pad>"
    eos_token = "</s>"
    unk_token = "<unk>"
    mask_token = MASK_TOKEN
    bos_id = 0
    pad_id = 1
    eos_id = 2
    unk_id = 3

    def __init__(
        self,
        model_file: Union[str, Path, None] = None,
        *,
        model_proto: Optional[bytes] = None,
        source: Optional[str] = None,
        model_max_length: int = 512,
        num_threads: int = -1,
    ) -> None:
        model_proto, processor = load_sentencepiece(model_file, model_proto=model_proto, source=source)
        if model_max_length < 1:
            raise ValueError(f"model_max_length={model_max_length} must be at least 1")
        self._proto: bytes = model_proto
        self._sp = processor
        self.model_max_length = model_max_length
        self.num_threads = num_threads
        self._spm_size = processor.get_piece_size()
        self.mask_id = self._spm_size + 1
        meta = processor.piece_to_id(WORD_BOUNDARY)
        self._spm_boundary_id = meta if meta != processor.unk_id() else -1
        self._blank = _BlankChars(processor)
        self._specials = {
            self.bos_id: self.bos_token,
            self.pad_id: self.pad_token,
            self.eos_id: self.eos_token,
            self.unk_id: self.unk_token,
            self.mask_id: self.mask_token,
        }
        self._special_ids = {token: i for i, token in self._specials.items()}
        if _has_offset_mapping(processor):
            self._raw_encode = self._encode_with_offset_mapping
        else:  # an older sentencepiece: byte offsets from immutable_proto
            self._raw_encode = self._encode_with_proto

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], **kwargs: Any) -> "XLMRobertaTokenizer":
        """Load ``sentencepiece.bpe.model`` from a checkpoint directory, or a model file itself."""
        path = Path(path)
        if path.is_dir():
            candidate = path / SPM_FILE_NAME
            if not candidate.is_file():
                raise FileNotFoundError(f"no {SPM_FILE_NAME} in directory {path}")
            path = candidate
        return cls(path, **kwargs)

    # -- pickling: the SentencePiece processor itself cannot be pickled -------------------------
    def __getstate__(self) -> Dict[str, Any]:
        return {
            "model_proto": self._proto,
            "model_max_length": self.model_max_length,
            "num_threads": self.num_threads,
        }

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def model_proto(self) -> bytes:
        """The serialised SentencePiece model (for saving next to a pipeline)."""
        return self._proto

    # -- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of model ids: SentencePiece pieces + ``<pad>`` + ``<mask>`` (250,002 for XLM-R)."""
        return self._spm_size + 2

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def all_special_ids(self) -> List[int]:
        return sorted(self._specials)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens `encode` adds: 2 for one text, 4 for a pair."""
        return 4 if pair else 2

    def _to_spm_id(self, model_id: int) -> int:
        if model_id == self.unk_id:
            return self._sp.unk_id()
        if 4 <= model_id <= self._spm_size:
            return model_id - 1
        raise ValueError(f"id {model_id} is not a model id of this tokenizer (0 .. {self.vocab_size - 1})")

    def convert_ids_to_tokens(self, ids: Union[int, Iterable[int]]) -> Union[str, List[str]]:
        """Token string(s) of model id(s): specials as ``<s>`` etc., pieces as in the model."""
        if isinstance(ids, int):
            return self._id_to_token(ids)
        return [self._id_to_token(int(i)) for i in ids]

    def _id_to_token(self, model_id: int) -> str:
        special = self._specials.get(model_id)
        return special if special is not None else self._sp.id_to_piece(self._to_spm_id(model_id))

    def convert_tokens_to_ids(self, tokens: Union[str, Iterable[str]]) -> Union[int, List[int]]:
        """Model id(s) of token string(s); a string that is no piece gives ``unk_id``."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        special = self._special_ids.get(token)
        if special is not None:
            return special
        spm_id = self._sp.piece_to_id(token)
        return self.unk_id if spm_id == self._sp.unk_id() else spm_id + 1

    def get_vocab(self) -> Dict[str, int]:
        """Token string -> model id, for every id."""
        return {self._id_to_token(i): i for i in range(self.vocab_size)}

    # -- pieces -----------------------------------------------------------------------------------
    def encode_pieces(self, text: str) -> PieceEncoding:
        """Model ids and character offsets of ``text``'s pieces, no special tokens."""
        return self.encode_pieces_batch([text])[0]

    def encode_pieces_batch(self, texts: Sequence[str]) -> List[PieceEncoding]:
        """`encode_pieces` for many texts, with one (multi-threaded) SentencePiece call."""
        texts = list(texts)
        layouts = [_mask_layout(_check_text(text, "texts")) for text in texts]
        segments = [text[s:e] for text, layout in zip(texts, layouts) for s, e, mask in layout if not mask]
        encoded = iter(self._encode_segments(segments))
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

    def _encode_segments(self, segments: List[str]) -> List[PieceEncoding]:
        if not segments:
            return []
        raw = self._raw_encode(segments)
        return [self._finish(segment, spm_ids, spans) for segment, (spm_ids, spans) in zip(segments, raw)]

    def _encode_with_offset_mapping(self, segments: List[str]) -> List[Tuple[List[int], List[Span]]]:
        if len(segments) == 1:
            outputs = [self._sp.encode(segments[0], out_type="offset_mapping")]
        else:
            outputs = self._sp.encode(segments, out_type="offset_mapping", num_threads=self.num_threads)
        return [(out["ids"], out["offsets"]) for out in outputs]

    def _encode_with_proto(self, segments: List[str]) -> List[Tuple[List[int], List[Span]]]:
        """For sentencepiece versions without ``offset_mapping``: UTF-8 byte spans -> char spans."""
        protos = self._sp.encode(segments, out_type="immutable_proto", num_threads=self.num_threads)
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

    # -- model inputs -----------------------------------------------------------------------------
    def encode(
        self,
        text: str,
        text_pair: Optional[str] = None,
        *,
        add_special_tokens: bool = True,
        truncation: TruncationArg = False,
        max_length: Optional[int] = None,
        padding: PaddingArg = False,
        pad_to_multiple_of: Optional[int] = None,
    ) -> Encoding:
        """One model input: ``<s> text </s>`` or ``<s> text </s></s> text_pair </s>``.

        ``truncation``: False, True / "longest_first" (one piece at a time from the longer text),
        "only_first", "only_second"; ``max_length`` defaults to ``model_max_length``.
        ``padding``: False, True / "longest" (no-op for one input), "max_length";
        ``pad_to_multiple_of`` rounds the padded length up.
        """
        _check_text(text, "text")
        pairs = None if text_pair is None else [_check_text(text_pair, "text_pair")]
        options = self._options(add_special_tokens, truncation, max_length, padding, pad_to_multiple_of, pairs)
        return self._encode_batch([text], pairs, options)[0]

    def __call__(
        self,
        texts: Sequence[str],
        text_pairs: Optional[Sequence[str]] = None,
        *,
        add_special_tokens: bool = True,
        truncation: TruncationArg = False,
        max_length: Optional[int] = None,
        padding: PaddingArg = False,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: Optional[str] = None,
    ) -> BatchEncoding:
        """Batch of model inputs (see `encode` for the options); ``return_tensors``: None or "pt"."""
        if isinstance(texts, str) or isinstance(text_pairs, str):
            raise TypeError("texts and text_pairs must be sequences of strings; use encode() for one text")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only None and 'pt' are supported")
        texts = list(texts)
        if text_pairs is not None:
            text_pairs = list(text_pairs)
            if len(text_pairs) != len(texts):
                raise ValueError(f"text_pairs has {len(text_pairs)} texts but texts has {len(texts)}")
        options = self._options(add_special_tokens, truncation, max_length, padding, pad_to_multiple_of, text_pairs)
        encodings = self._encode_batch(texts, text_pairs, options)
        fields = ("input_ids", "attention_mask", "offsets", "special_tokens_mask", "sequence_ids")
        data: Dict[str, Any] = {name: [getattr(e, name) for e in encodings] for name in fields}
        if return_tensors == "pt":
            data = _to_tensors(data)
        return BatchEncoding(data, encodings)

    def _encode_batch(self, texts: List[str], pairs: Optional[List[str]], options: _Options) -> List[Encoding]:
        pieces = self.encode_pieces_batch(texts + (pairs or []))
        n = len(texts)
        encodings = [self._assemble(pieces[i], pieces[n + i] if pairs is not None else None, options) for i in range(n)]
        return self._pad(encodings, options)

    def _options(
        self,
        add_special_tokens: bool,
        truncation: TruncationArg,
        max_length: Optional[int],
        padding: PaddingArg,
        pad_to_multiple_of: Optional[int],
        pairs: Optional[List[str]],
    ) -> _Options:
        if not isinstance(truncation, (bool, str)) or truncation not in _TRUNCATION:
            raise ValueError(
                f"truncation={truncation!r}: use False, True, 'longest_first', 'only_first' or 'only_second'"
            )
        if not isinstance(padding, (bool, str)) or padding not in _PADDING:
            raise ValueError(f"padding={padding!r}: use False, True, 'longest' or 'max_length'")
        strategy, pad_strategy = _TRUNCATION[truncation], _PADDING[padding]
        if max_length is not None and not _is_positive_int(max_length):
            raise ValueError(f"max_length={max_length!r} must be a positive int")
        if strategy is None and pad_strategy != "max_length":
            if max_length is not None:
                raise ValueError(f"max_length={max_length} has no effect without truncation or padding='max_length'")
        elif max_length is None:
            max_length = self.model_max_length
        if strategy == "only_second" and pairs is None:
            raise ValueError("truncation='only_second' needs a text pair")
        n_special = self.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
        if strategy is not None and max_length < n_special:  # type: ignore[operator]
            raise ValueError(f"max_length={max_length} is smaller than the {n_special} special tokens")
        if pad_to_multiple_of is not None:
            if not _is_positive_int(pad_to_multiple_of):
                raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive int")
            if pad_strategy is None:
                raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} needs padding (True, 'longest', 'max_length')")
        return _Options(bool(add_special_tokens), strategy, max_length, pad_strategy, pad_to_multiple_of)

    def _assemble(self, first: PieceEncoding, second: Optional[PieceEncoding], options: _Options) -> Encoding:
        """Truncate, then add the special tokens (no padding)."""
        keep_first, keep_second = len(first), len(second) if second is not None else 0
        if options.truncation is not None:
            n_special = self.num_special_tokens_to_add(second is not None) if options.add_special_tokens else 0
            keep_first, keep_second = _truncated_lengths(
                keep_first,
                keep_second if second is not None else None,
                options.max_length - n_special,  # type: ignore[operator]
                options.truncation,
            )
        parts = [(first, keep_first, 0, self.bos_id)]
        if second is not None:
            parts.append((second, keep_second, 1, self.eos_id))
        edge = 1 if options.add_special_tokens else 0  # <s>/</s> before, </s> after each text
        ids: List[int] = []
        offsets: List[Span] = []
        specials: List[int] = []
        sequence_ids: List[Optional[int]] = []
        for pieces, keep, sequence, opener in parts:
            ids += [opener] * edge + pieces.ids[:keep] + [self.eos_id] * edge
            offsets += [(0, 0)] * edge + pieces.offsets[:keep] + [(0, 0)] * edge
            specials += [1] * edge + [0] * keep + [1] * edge
            sequence_ids += [None] * edge + [sequence] * keep + [None] * edge
        return Encoding(ids, [1] * len(ids), offsets, specials, sequence_ids)

    def _pad(self, encodings: List[Encoding], options: _Options) -> List[Encoding]:
        if options.padding is None or not encodings:
            return encodings
        if options.padding == "max_length":
            assert options.max_length is not None  # set by _options for padding="max_length"
            target = options.max_length
        else:
            target = max(len(e) for e in encodings)
        multiple = options.pad_to_multiple_of
        if multiple is not None and target % multiple:
            target += multiple - target % multiple
        return [_pad_right(e, target, self.pad_id) for e in encodings]

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of model ids: pieces joined, "▁" read as a space, outer spaces stripped.

        Special tokens (``<s> <pad> </s> <unk> <mask>``) are dropped, or written as their
        strings with ``skip_special_tokens=False`` (as HF's slow XLM-R tokenizer does).
        """
        tokens = []
        for model_id in ids:
            model_id = int(model_id)
            if skip_special_tokens and model_id in self._specials:
                continue
            tokens.append(self._id_to_token(model_id))
        return "".join(tokens).replace(WORD_BOUNDARY, " ").strip()

    def batch_decode(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> List[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # sentencepiece would fail with an opaque pybind11 error
        raise ValueError(
            f"{name}: lone surrogate {text[err.start]!r} at character {err.start} cannot be encoded as UTF-8; "
            "clean the text first, e.g. text.encode('utf-8', errors='replace').decode('utf-8')"
        ) from err
    return text


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


def _truncated_lengths(n_first: int, n_second: Optional[int], budget: int, strategy: str) -> Tuple[int, int]:
    """How many pieces of each text to keep so that they fit ``budget`` (HF's strategies).

    ``n_second`` is None without a pair. As in HF, "only_first"/"only_second" (and any strategy
    for a single text) never cut a text down to nothing; "longest_first" on a pair may.
    """
    n_pair = n_second or 0
    excess = n_first + n_pair - budget
    if excess <= 0:
        return n_first, n_pair
    if strategy == "only_second":
        if excess >= n_pair:
            raise ValueError(f"max_length: truncation='only_second' would remove all {n_pair} pieces of text_pair")
        return n_first, n_pair - excess
    if strategy == "only_first" or n_second is None:
        if excess >= n_first:
            raise ValueError(f"max_length: truncation={strategy!r} would remove all {n_first} pieces of the first text")
        return n_first - excess, n_pair
    # longest_first: one piece at a time from the longer text (the second text on ties)
    from_longer = min(abs(n_first - n_pair), excess)
    rest = excess - from_longer
    if n_first > n_pair:
        return n_first - from_longer - rest // 2, n_pair - (rest - rest // 2)
    return n_first - rest // 2, n_pair - from_longer - (rest - rest // 2)


def _pad_right(encoding: Encoding, length: int, pad_id: int) -> Encoding:
    missing = length - len(encoding)
    if missing <= 0:
        return encoding
    return Encoding(
        encoding.input_ids + [pad_id] * missing,
        encoding.attention_mask + [0] * missing,
        encoding.offsets + [(0, 0)] * missing,
        encoding.special_tokens_mask + [1] * missing,
        encoding.sequence_ids + [None] * missing,
    )


def _to_tensors(data: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    lengths = {len(row) for row in data["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(
            "return_tensors='pt': the rows have different lengths "
            f"({min(lengths)} .. {max(lengths)}); use padding=True or padding='max_length'"
        )
    shape = (len(data["input_ids"]), next(iter(lengths), 0))
    tensors = dict(data)
    for name in ("input_ids", "attention_mask", "special_tokens_mask"):
        tensors[name] = torch.tensor(data[name], dtype=torch.long).reshape(shape)
    tensors["offsets"] = torch.tensor(data["offsets"], dtype=torch.long).reshape(shape + (2,))
    return tensors
