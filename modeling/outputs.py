"""Output records of the backbone and the task models, with HF transformers' field names.

Owns `ModelOutput` (HF's ``ModelOutput`` behaviour: attribute access, ``out["key"]`` and
``out[0]`` access, ``keys()`` / ``values()`` / ``items()``, ``len``, ``to_tuple()``, fields that are
None skipped), one dataclass per kind of result (fields in HF's order), and the tuples that
``return_dict=False`` gives (`BackboneOutput.tuple_output`, `task_tuple`). Shapes use B = batch, S = sequence length, H = hidden size, V = vocabulary,
L = layers, N = heads, T = cached positions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator, List, Optional, Tuple, Union

from torch import Tensor

#: One layer's cache: ``(key, value)`` of self-attention, plus ``(cross_key, cross_value)`` with
#: cross-attention; each (B, N, T, H / N).
LayerCache = Tuple[Tensor, ...]
#: The cache of all layers, one `LayerCache` per layer (HF's legacy tuple format).
Cache = Tuple[LayerCache, ...]


@dataclass
class ModelOutput:
    """Base of the output records: fields by attribute, by name (``out["logits"]``) or position.

    As in HF transformers, only the fields that are set (not None) count as keys and as tuple
    entries: ``out[0]`` is the first field that is not None.
    """

    def keys(self) -> List[str]:
        """Names of the fields that are set, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> Tuple[Any, ...]:
        """The values of the fields that are set, in declaration order."""
        return tuple(getattr(self, name) for name in self.keys())

    def __getitem__(self, key: Union[str, int, slice]) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def values(self) -> List[Any]:
        return list(self.to_tuple())

    def items(self) -> List[Tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default


@dataclass
class BackboneOutput(ModelOutput):
    """What `XLMRobertaXLModel` returns.

    - ``last_hidden_state``: (B, S, H), after the final LayerNorm.
    - ``pooler_output``: (B, H), ``tanh(dense(h[:, 0]))``; None without a pooling layer.
    - ``hidden_states``: L + 1 tensors (B, S, H): the embedding output, the raw residual
      stream after layers 1 .. L-1, and the last hidden state (final LayerNorm applied).
    - ``past_key_values``: the decoder's `Cache` (``use_cache``).
    - ``attentions``: L tensors (B, N, S, T + S) of self-attention weights.
    - ``cross_attentions``: L tensors (B, N, S, S_enc) of cross-attention weights.
    """

    last_hidden_state: Optional[Tensor] = None
    pooler_output: Optional[Tensor] = None
    hidden_states: Optional[Tuple[Tensor, ...]] = None
    past_key_values: Optional[Cache] = None
    attentions: Optional[Tuple[Tensor, ...]] = None
    cross_attentions: Optional[Tuple[Tensor, ...]] = None

    def tuple_output(self) -> Tuple[Any, ...]:
        """What HF's backbone returns with ``return_dict=False``: last hidden state, pooled output
        (None without a pooler), then those of the cache, hidden states, attentions and
        cross-attentions that are set, in that order (the cache first, unlike `to_tuple`)."""
        rest = (self.past_key_values, self.hidden_states, self.attentions, self.cross_attentions)
        return (self.last_hidden_state, self.pooler_output, *(value for value in rest if value is not None))


#: the fields a task model computes itself; its other fields come from the backbone
_HEAD_FIELDS = ("loss", "logits", "start_logits", "end_logits")


def task_tuple(result: ModelOutput, backbone: BackboneOutput) -> Tuple[Any, ...]:
    """What HF's task models return with ``return_dict=False``: their own results that are set
    (``loss``, logits) followed by the backbone's tuple after its last hidden state and pooled
    output (`BackboneOutput.tuple_output`)."""
    own = tuple(getattr(result, name) for name in result.keys() if name in _HEAD_FIELDS)
    return own + backbone.tuple_output()[2:]


@dataclass
class LogitsOutput(ModelOutput):
    """A task model's ``logits`` with the optional ``loss`` and the backbone's extra outputs."""

    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    hidden_states: Optional[Tuple[Tensor, ...]] = None
    attentions: Optional[Tuple[Tensor, ...]] = None


@dataclass
class MaskedLMOutput(LogitsOutput):
    """Masked LM: ``logits`` (B, S, V); ``loss`` scalar when labels were given."""


@dataclass
class CausalLMOutput(ModelOutput):
    """Causal LM: ``logits`` (B, S, V), the decoder cache and cross-attentions as in the backbone."""

    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    past_key_values: Optional[Cache] = None
    hidden_states: Optional[Tuple[Tensor, ...]] = None
    attentions: Optional[Tuple[Tensor, ...]] = None
    cross_attentions: Optional[Tuple[Tensor, ...]] = None


@dataclass
class SequenceClassifierOutput(LogitsOutput):
    """Sequence classification / regression: ``logits`` (B, num_labels)."""


@dataclass
class MultipleChoiceModelOutput(LogitsOutput):
    """Multiple choice: ``logits`` (B, C) for C choices; hidden states are over B * C rows."""


@dataclass
class TokenClassifierOutput(LogitsOutput):
    """Token classification: ``logits`` (B, S, num_labels)."""


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    """Extractive QA: ``start_logits`` and ``end_logits`` (B, S)."""

    loss: Optional[Tensor] = None
    start_logits: Optional[Tensor] = None
    end_logits: Optional[Tensor] = None
    hidden_states: Optional[Tuple[Tensor, ...]] = None
    attentions: Optional[Tuple[Tensor, ...]] = None


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """``generate`` with ``return_dict_in_generate`` (greedy search, sampling): ``sequences`` (R, T);
    per new token: ``scores`` (processed) and ``logits`` (raw), each (R, V), the model's
    ``attentions`` and ``hidden_states`` (one tuple per step); the final cache."""

    sequences: Optional[Tensor] = None
    scores: Optional[Tuple[Tensor, ...]] = None
    logits: Optional[Tuple[Tensor, ...]] = None
    attentions: Optional[Tuple[Tuple[Tensor, ...], ...]] = None
    hidden_states: Optional[Tuple[Tuple[Tensor, ...], ...]] = None
    past_key_values: Optional[Cache] = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """``generate`` with beams and ``return_dict_in_generate``: as `GenerateDecoderOnlyOutput`, plus
    ``sequences_scores`` (R,) (length-penalised) and ``beam_indices`` (R, new tokens): for each
    new token, the beam row it extended (-1 after the end); ``scores`` are log-probabilities."""

    sequences: Optional[Tensor] = None
    sequences_scores: Optional[Tensor] = None
    scores: Optional[Tuple[Tensor, ...]] = None
    logits: Optional[Tuple[Tensor, ...]] = None
    beam_indices: Optional[Tensor] = None
    attentions: Optional[Tuple[Tuple[Tensor, ...], ...]] = None
    hidden_states: Optional[Tuple[Tuple[Tensor, ...], ...]] = None
    past_key_values: Optional[Cache] = None
