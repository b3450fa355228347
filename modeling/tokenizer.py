"""`XLMRobertaTokenizer`: the XLM-R SentencePiece tokenizer with fairseq ids and character offsets.

Owns the tokenizer's API (HF-like): loading (``sentencepiece.bpe.model`` from a file, a
checkpoint directory, a Hub repository (`modeling.hub`) or bytes, via `modeling.sentencepiece_file`), the mapping between
SentencePiece ids and the fairseq / XLM-R model ids (``<s>``=0, ``<pad>``=1, ``</s>``=2,
``<unk>``=3, SentencePiece id + 1, ``<mask>`` = number of pieces + 1), the pieces of texts as
lists (`XLMRobertaTokenizer.encode_pieces`) or as int32 arrays tokenised chunk by chunk
(`XLMRobertaTokenizer.encode_arrays`), model inputs (``encode`` / ``__call__``: the templates
``<s> A </s>`` and ``<s> A </s></s> B </s>``, truncation and padding) and decoding. Pure Python
on top of ``sentencepiece``: no HF ``tokenizers``/``transformers``. The pieces and their
character offsets are `modeling.tokenizer_pieces`' (its docstring says what the offsets
promise); special tokens, truncation and padding are `modeling.tokenizer_inputs`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from .hub import hub_options, resolve_file
from .sentencepiece_file import TokenizerFileError, load_sentencepiece  # noqa: F401 (TokenizerFileError re-exported)
from .tokenizer_inputs import (BatchEncoding, Encoding, Options, PaddingArg, TruncationArg, assemble, n_specials, pad,
                               resolve_options, to_tensors)
from .tokenizer_pieces import MASK_TOKEN, WORD_BOUNDARY, PieceArrays, PieceEncoder, PieceEncoding, check_text

__all__ = ["BatchEncoding", "Encoding", "MASK_TOKEN", "PieceArrays", "PieceEncoding", "SPM_FILE_NAME",
           "TokenizerFileError", "XLMRobertaTokenizer"]

SPM_FILE_NAME = "sentencepiece.bpe.model"


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
        self._pieces = PieceEncoder(processor, mask_id=self.mask_id, unk_id=self.unk_id)
        self._specials = {
            self.bos_id: self.bos_token,
            self.pad_id: self.pad_token,
            self.eos_id: self.eos_token,
            self.unk_id: self.unk_token,
            self.mask_id: self.mask_token,
        }
        self._special_ids = {token: i for i, token in self._specials.items()}

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], *, subfolder: str = "", **kwargs: Any) -> "XLMRobertaTokenizer":
        """Load ``sentencepiece.bpe.model`` from a checkpoint directory (``subfolder`` inside it),
        a model file itself, or a Hub repository (downloaded; the Hub options of `modeling.hub`);
        other ``kwargs`` go to the constructor."""
        file = resolve_file(path, SPM_FILE_NAME, subfolder=subfolder, **hub_options(kwargs))
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such file (a tokenizer is a {SPM_FILE_NAME})")
        return cls(file, **kwargs)

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
        return n_specials(pair)

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
        return self._pieces.encode_batch(texts, num_threads=self.num_threads)

    def encode_arrays(self, texts: Sequence[str]) -> List[PieceArrays]:
        """`encode_pieces_batch` as arrays: per text, ``ids`` (n,) int32 and ``offsets`` (n, 2)
        int32, the same values. Long texts are tokenised chunk by chunk, short ones in groups
        (`modeling.tokenizer_pieces.ENCODE_CHUNK_CHARS`), so the per-piece Python lists exist
        for one chunk or group at a time: memory besides the result is bounded whatever the
        length or the number of the texts."""
        return self._pieces.encode_arrays(texts, num_threads=self.num_threads)

    # -- HF's names of the special tokens' ids -----------------------------------------------------
    cls_token = bos_token
    sep_token = eos_token

    @property
    def bos_token_id(self) -> int:
        return self.bos_id

    cls_token_id = bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.eos_id

    sep_token_id = eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.pad_id

    @property
    def unk_token_id(self) -> int:
        return self.unk_id

    @property
    def mask_token_id(self) -> int:
        return self.mask_id

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
        check_text(text, "text")
        pairs = None if text_pair is None else [check_text(text_pair, "text_pair")]
        options = self._options(add_special_tokens, truncation, max_length, padding, pad_to_multiple_of, pairs)
        return self._encode_batch([text], pairs, options)[0]

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: TruncationArg = False,
        max_length: int | None = None,
        padding: PaddingArg = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
    ) -> BatchEncoding:
        """Model inputs as HF's tokenizers give them (see `encode` for the options).

        ``text`` is one string (``text_pair``: one string or None) or a sequence of strings
        (``text_pair``: a sequence of the same length or None). The fields are HF's:
        ``input_ids`` and ``attention_mask`` (unless ``return_attention_mask=False``), plus
        ``offset_mapping`` and ``special_tokens_mask`` when asked for. One string gives flat
        lists, a sequence lists of lists; ``return_tensors="pt"`` gives int64 tensors of shape
        (B, L) (B = 1 for one string; ``offset_mapping`` (B, L, 2)).
        """
        single = isinstance(text, str)
        texts, pairs = _as_batch(text, text_pair, single=single)
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only None and 'pt' are supported")
        options = self._options(add_special_tokens, truncation, max_length, padding, pad_to_multiple_of, pairs)
        encodings = self._encode_batch(texts, pairs, options)
        fields = {"input_ids": "input_ids"}
        if return_attention_mask is None or return_attention_mask:
            fields["attention_mask"] = "attention_mask"
        if return_offsets_mapping:
            fields["offset_mapping"] = "offsets"
        if return_special_tokens_mask:
            fields["special_tokens_mask"] = "special_tokens_mask"
        data: dict[str, Any] = {name: [getattr(e, attr) for e in encodings] for name, attr in fields.items()}
        if return_tensors == "pt":
            data = to_tensors(data)
        elif single:
            data = {name: rows[0] for name, rows in data.items()}
        return BatchEncoding(data, encodings)

    def _encode_batch(self, texts: List[str], pairs: Optional[List[str]], options: Options) -> List[Encoding]:
        pieces = self.encode_pieces_batch(texts + (pairs or []))
        n = len(texts)
        encodings = [assemble(pieces[i], pieces[n + i] if pairs is not None else None, options,
                              bos_id=self.bos_id, eos_id=self.eos_id) for i in range(n)]
        return pad(encodings, options, pad_id=self.pad_id)

    def _options(
        self,
        add_special_tokens: bool,
        truncation: TruncationArg,
        max_length: Optional[int],
        padding: PaddingArg,
        pad_to_multiple_of: Optional[int],
        pairs: Optional[List[str]],
    ) -> Options:
        return resolve_options(add_special_tokens, truncation, max_length, padding, pad_to_multiple_of,
                               pair=pairs is not None, model_max_length=self.model_max_length)

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


def _as_batch(text: Any, text_pair: Any, *, single: bool) -> tuple[list[str], list[str] | None]:
    """``text`` / ``text_pair`` of `XLMRobertaTokenizer.__call__` as lists; TypeError or
    ValueError naming the argument when they do not go together."""
    if single:
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(f"text is one string, so text_pair must be one string or None, not {type(text_pair).__name__}")
        return [text], None if text_pair is None else [text_pair]
    if isinstance(text_pair, str):
        raise TypeError("text is a sequence of strings, so text_pair must be one too (of the same length), not a string")
    texts = list(text)
    if text_pair is None:
        return texts, None
    pairs = list(text_pair)
    if len(pairs) != len(texts):
        raise ValueError(f"text_pair has {len(pairs)} texts but text has {len(texts)}")
    return texts, pairs
