"""Model inputs from pieces: special tokens, truncation and padding, as HF tokenizers do them.

Owns `Encoding` (one input: ``<s> A </s>`` or ``<s> A </s></s> B </s>``), `BatchEncoding` (the
batched fields, optionally as torch tensors), the resolution and checking of HF's
``truncation`` / ``max_length`` / ``padding`` / ``pad_to_multiple_of`` arguments
(`resolve_options`, errors name the argument), HF's truncation strategies
(`truncated_lengths`), and `assemble` / `pad` of `modeling.tokenizer.XLMRobertaTokenizer`.
Pure Python; torch only for ``return_tensors="pt"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from .tokenizer_pieces import PieceEncoding, Span

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
    """Dict of HF's fields (``input_ids``, ``attention_mask``, and on request ``offset_mapping``,
    ``special_tokens_mask``), also readable as attributes (``batch.input_ids``).

    With ``return_tensors="pt"`` the fields are int64 tensors of shape (B, L) (``offset_mapping``
    (B, L, 2)). ``encodings`` keeps the per-row `Encoding` objects, which hold every field;
    ``sequence_ids(i)`` says which text each position of row ``i`` came from, as in HF.
    """

    def __init__(self, data: Dict[str, Any], encodings: List[Encoding]) -> None:
        super().__init__(data)
        self.encodings = encodings

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}") from None

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Per position of row ``batch_index``: 0 (first text), 1 (pair), None (special, padding)."""
        return self.encodings[batch_index].sequence_ids

    def to(self, device: Any) -> BatchEncoding:
        """The tensor fields moved to ``device`` (in place, as HF; returns ``self``)."""
        for name, value in self.items():
            if hasattr(value, "to"):
                self[name] = value.to(device)
        return self


@dataclass(frozen=True)
class Options:
    """Validated encoding options (resolved from the HF-style arguments)."""

    add_special_tokens: bool
    truncation: Optional[str]  # None | "longest_first" | "only_first" | "only_second"
    max_length: Optional[int]
    padding: Optional[str]  # None | "longest" | "max_length"
    pad_to_multiple_of: Optional[int]


def n_specials(pair: bool) -> int:
    """How many special tokens a model input has: 2 for one text, 4 for a pair."""
    return 4 if pair else 2


def resolve_options(
    add_special_tokens: bool,
    truncation: TruncationArg,
    max_length: Optional[int],
    padding: PaddingArg,
    pad_to_multiple_of: Optional[int],
    *,
    pair: bool,
    model_max_length: int,
) -> Options:
    """`Options` from HF's arguments; ``ValueError`` naming the argument for a bad or useless value."""
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
        max_length = model_max_length
    if strategy == "only_second" and not pair:
        raise ValueError("truncation='only_second' needs a text pair")
    n_special = n_specials(pair) if add_special_tokens else 0
    if strategy is not None and max_length < n_special:  # type: ignore[operator]
        raise ValueError(f"max_length={max_length} is smaller than the {n_special} special tokens")
    if pad_to_multiple_of is not None:
        if not _is_positive_int(pad_to_multiple_of):
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive int")
        if pad_strategy is None:
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} needs padding (True, 'longest', 'max_length')")
    return Options(bool(add_special_tokens), strategy, max_length, pad_strategy, pad_to_multiple_of)


def assemble(first: PieceEncoding, second: Optional[PieceEncoding], options: Options, *, bos_id: int,
             eos_id: int) -> Encoding:
    """Truncate, then add the special tokens (no padding)."""
    keep_first, keep_second = len(first), len(second) if second is not None else 0
    if options.truncation is not None:
        n_special = n_specials(second is not None) if options.add_special_tokens else 0
        keep_first, keep_second = truncated_lengths(
            keep_first,
            keep_second if second is not None else None,
            options.max_length - n_special,  # type: ignore[operator]
            options.truncation,
        )
    parts = [(first, keep_first, 0, bos_id)]
    if second is not None:
        parts.append((second, keep_second, 1, eos_id))
    edge = 1 if options.add_special_tokens else 0  # <s>/</s> before, </s> after each text
    ids: List[int] = []
    offsets: List[Span] = []
    specials: List[int] = []
    sequence_ids: List[Optional[int]] = []
    for pieces, keep, sequence, opener in parts:
        ids += [opener] * edge + pieces.ids[:keep] + [eos_id] * edge
        offsets += [(0, 0)] * edge + pieces.offsets[:keep] + [(0, 0)] * edge
        specials += [1] * edge + [0] * keep + [1] * edge
        sequence_ids += [None] * edge + [sequence] * keep + [None] * edge
    return Encoding(ids, [1] * len(ids), offsets, specials, sequence_ids)


def pad(encodings: List[Encoding], options: Options, *, pad_id: int) -> List[Encoding]:
    """The encodings padded on the right as ``options`` says (unchanged without padding)."""
    if options.padding is None or not encodings:
        return encodings
    if options.padding == "max_length":
        assert options.max_length is not None  # set by resolve_options for padding="max_length"
        target = options.max_length
    else:
        target = max(len(e) for e in encodings)
    multiple = options.pad_to_multiple_of
    if multiple is not None and target % multiple:
        target += multiple - target % multiple
    return [_pad_right(e, target, pad_id) for e in encodings]


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def truncated_lengths(n_first: int, n_second: Optional[int], budget: int, strategy: str) -> Tuple[int, int]:
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


def to_tensors(data: Dict[str, Any]) -> Dict[str, Any]:
    """The batched fields as torch tensors (``return_tensors="pt"``); rows must be equally long."""
    import torch

    lengths = {len(row) for row in data["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(
            "return_tensors='pt': the rows have different lengths "
            f"({min(lengths)} .. {max(lengths)}); use padding=True or padding='max_length'"
        )
    shape = (len(data["input_ids"]), next(iter(lengths), 0))
    tensors = {}
    for name, rows in data.items():
        extra = (2,) if name == "offset_mapping" else ()
        tensors[name] = torch.tensor(rows, dtype=torch.long).reshape(shape + extra)
    return tensors
