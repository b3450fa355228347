"""The building blocks of the XLM-RoBERTa-XL network (pre-LayerNorm transformer).

Owns the embeddings (word + position + token type, no LayerNorm), position ids, the additive
attention bias and head mask preparation, multi-head attention (``scaled_dot_product_attention``
with an explicit-softmax fallback for attention weights / head masks), the pre-LN attention block
(used for self- and cross-attention), the transformer layer with its feed-forward part and
key/value cache, the encoder stack with the final LayerNorm and gradient checkpointing, and
`PaddingLayout`, which lets an encoder forward skip padded positions everywhere but inside the
attention product.

Submodule attribute names follow HF transformers' state-dict keys exactly (``self``,
``self_attn_layer_norm``, ``LayerNorm``, ``intermediate``, ...), so HF weights load unrenamed.
Shapes: B = batch, S = query length, T = cached (past) length, K = key length (T + S for
self-attention, the encoder length for cross-attention), H = hidden size, N = heads,
D = H / N head size, L = layers.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .config import XLMRobertaXLConfig
from .outputs import BackboneOutput, Cache, LayerCache

Activation = Callable[[Tensor], Tensor]

ACTIVATIONS: Dict[str, Activation] = {
    "gelu": F.gelu,  # exact erf GELU
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def get_activation(name: Union[str, Activation]) -> Activation:
    """The activation function called ``name`` (HF's names), or ``name`` itself if callable."""
    if callable(name):
        return name
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"hidden_act {name!r} is not one of {sorted(ACTIVATIONS)}") from None


# ---------------------------------------------------------------------------------- positions
def position_ids_from_input_ids(input_ids: Tensor, padding_idx: int, *, past_length: int = 0) -> Tensor:
    """fairseq positions: real tokens count from ``padding_idx + 1 + past_length``, pads stay at
    ``padding_idx``. ``input_ids`` (B, S) -> (B, S) int64. (HF: ``create_position_ids_from_input_ids``.)"""
    not_pad = input_ids.ne(padding_idx).int()
    return ((torch.cumsum(not_pad, dim=1).type_as(not_pad) + past_length) * not_pad).long() + padding_idx


# ---------------------------------------------------------------------------------- masks
def attention_bias(
    attention_mask: Optional[Tensor],
    *,
    query_length: int,
    past_length: int = 0,
    causal: bool = False,
    dtype: torch.dtype,
    device: torch.device,
) -> Optional[Tensor]:
    """The additive attention bias: 0 where a query may attend a key, ``finfo(dtype).min`` elsewhere.

    ``attention_mask``: (B, K) or (B, S, K) with 1 = attend, 0 = padding, or None (attend all);
    K = ``past_length + query_length`` for self-attention. ``causal`` also forbids keys after the
    query's own position. Returns (B, 1, 1, K), (B, 1, S, K) or (1, 1, S, K), or None when nothing
    is masked (so that the fused attention kernels need no mask).
    """
    if attention_mask is None and not causal:
        return None
    allowed: Optional[Tensor] = None
    if attention_mask is not None:
        if attention_mask.dim() == 2:
            if not causal and bool(attention_mask.all()):
                return None
            allowed = attention_mask[:, None, None, :].to(dtype)
        elif attention_mask.dim() == 3:
            allowed = attention_mask[:, None, :, :].to(dtype)
        else:
            raise ValueError(f"attention_mask must have 2 or 3 dimensions, got shape {tuple(attention_mask.shape)}")
    if causal:
        key_length = past_length + query_length
        future = torch.ones(query_length, key_length, dtype=torch.bool, device=device).triu(past_length + 1)
        causal_allowed = (~future).to(dtype)[None, None]
        allowed = causal_allowed if allowed is None else allowed * causal_allowed
    return (1.0 - allowed) * torch.finfo(dtype).min


def expand_head_mask(head_mask: Optional[Tensor], *, num_layers: int, dtype: torch.dtype) -> Optional[Tensor]:
    """HF head-mask convention: (N,) for every layer or (L, N); 1 keeps a head, 0 silences it.
    Returns (L, 1, N, 1, 1) in ``dtype`` (one broadcastable factor per layer) or None."""
    if head_mask is None:
        return None
    if head_mask.dim() == 1:
        head_mask = head_mask.unsqueeze(0).expand(num_layers, -1)
    elif head_mask.dim() != 2:
        raise ValueError(f"head_mask must be (heads,) or (layers, heads), got shape {tuple(head_mask.shape)}")
    if head_mask.shape[0] != num_layers:
        raise ValueError(f"head_mask has {head_mask.shape[0]} rows for {num_layers} layers")
    return head_mask[:, None, :, None, None].to(dtype)


class PaddingLayout:
    """Where the real (not padded) positions of a (B, S) batch lie, to run without the padding.

    Everything in an encoder layer except the attention product works position by position,
    so those parts can run on the R real positions alone, as an (R, H) matrix: the padding costs
    nothing there (with length-mixed batches a sizeable share of the positions). Only the
    attention product needs the (B, S) grid: `pad` scatters (R, X) rows into a zero-filled
    (B, S, X) tensor and `unpad` gathers them back. Both are differentiable.

    ``attention_mask`` (B, S): 1 = real position, 0 = padding.
    """

    def __init__(self, attention_mask: Tensor) -> None:
        if attention_mask.dim() != 2:
            raise ValueError(f"skipping padding needs a (B, S) attention_mask, got shape {tuple(attention_mask.shape)}")
        self.batch_size, self.length = attention_mask.shape
        #: (R,) int64 each: batch row and position of every real position, in row-major order
        self.rows, self.columns = attention_mask.nonzero(as_tuple=True)
        #: (R,) int64: their flat indices ``row * S + column``
        self.indices = self.rows * self.length + self.columns

    def unpad(self, states: Tensor) -> Tensor:
        """(B, S, ...) -> (R, X), X the product of the trailing sizes: the rows at the real
        positions, gathered in one copy even from a strided view (e.g. attention's
        (B, N, S, D) output transposed to (B, S, N, D))."""
        return states[self.rows, self.columns].reshape(self.rows.shape[0], -1)

    def pad(self, rows: Tensor) -> Tensor:
        """(R, X) -> (B, S, X), zeros at the padded positions."""
        grid = torch.zeros(self.batch_size * self.length, rows.shape[-1], dtype=rows.dtype, device=rows.device)
        return grid.index_copy_(0, self.indices, rows).view(self.batch_size, self.length, -1)


# ---------------------------------------------------------------------------------- modules
class Embeddings(nn.Module):
    """``word + position + token_type`` embeddings, then dropout (no LayerNorm in XL)."""

    def __init__(self, *, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=self.padding_idx)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def create_position_ids_from_inputs_embeds(self, inputs_embeds: Tensor) -> Tensor:
        """Positions of inputs given as embeddings (HF's name), where padding cannot be seen:
        ``padding_idx + 1 .. padding_idx + S`` in every row. (B, S, H) -> (B, S) int64."""
        batch_size, length = inputs_embeds.shape[:2]
        start = self.padding_idx + 1
        positions = torch.arange(start, start + length, dtype=torch.long, device=inputs_embeds.device)
        return positions.unsqueeze(0).expand(batch_size, length)

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        *,
        inputs_embeds: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_length: int = 0,
    ) -> Tensor:
        """``input_ids`` (B, S) or ``inputs_embeds`` (B, S, H) -> (B, S, H).

        Without ``position_ids``, positions come from ``input_ids`` (pads keep the padding
        position; counting continues after ``past_length`` cached tokens) or, for embeddings,
        are ``padding_idx + 1 .. padding_idx + S``. ``token_type_ids`` default to 0.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.word_embeddings(input_ids)
        batch_size, length = inputs_embeds.shape[:2]
        if position_ids is None:
            if input_ids is not None:
                position_ids = position_ids_from_input_ids(input_ids, self.padding_idx, past_length=past_length)
            else:
                position_ids = self.create_position_ids_from_inputs_embeds(inputs_embeds)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch_size, length, dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(embeddings)


class DenseProjection(nn.Module):
    """``dropout(activation(dense(x)))``: (..., in_features) -> (..., out_features).

    Serves as the attention output projection, the feed-forward halves and the pooler.
    """

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        activation: Optional[Union[str, Activation]] = None,
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.activation = None if activation is None else get_activation(activation)
        self.dropout = nn.Dropout(dropout_prob) if dropout_prob > 0 else nn.Identity()

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = self.dense(hidden_states)
        if self.activation is not None:
            hidden_states = self.activation(hidden_states)
        return self.dropout(hidden_states)


class AttentionResult(NamedTuple):
    """``context`` (B, S, H); ``weights`` (B, N, S, K) or None; ``key_value``: (key, value)
    each (B, N, K, D), the cache entry for this attention."""

    context: Tensor
    weights: Optional[Tensor]
    key_value: Tuple[Tensor, Tensor]


class MultiHeadAttention(nn.Module):
    """Query/key/value projections and scaled dot-product attention over N heads.

    Uses ``torch.nn.functional.scaled_dot_product_attention``; computes the softmax explicitly
    only when the attention weights are requested or a head mask is given.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, dropout_prob: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout_prob = dropout_prob
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, states: Tensor) -> Tensor:
        """(B, S, H) -> (B, N, S, D)."""
        batch_size, length, _ = states.shape
        return states.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: Tensor,
        *,
        key_value_states: Optional[Tensor] = None,
        attention_bias: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        past_key_value: Optional[Tuple[Tensor, Tensor]] = None,
        output_attentions: bool = False,
        layout: Optional[PaddingLayout] = None,
    ) -> AttentionResult:
        """Attend from ``hidden_states`` (B, S, H), or (R, H) real positions with ``layout``.

        Self-attention (no ``key_value_states``): keys/values come from ``hidden_states`` and are
        appended to ``past_key_value`` (B, N, T, D) when given. Cross-attention: keys/values come
        from ``key_value_states`` (B, K, H), or are reused from ``past_key_value``.
        ``attention_bias`` broadcasts to (B, N, S, K); ``head_mask`` to (B, N, S, K) as a factor.
        ``layout`` (self-attention without cache only): the projections run on the (R, H) rows,
        which are scattered onto the (B, S) grid for the attention product; ``context`` is (R, H).
        """
        if layout is not None:
            return self._attend_real_positions(hidden_states, layout, attention_bias)
        query = self._split_heads(self.query(hidden_states))
        if key_value_states is not None and past_key_value is not None:
            key, value = past_key_value
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key = self._split_heads(self.key(source))
            value = self._split_heads(self.value(source))
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        dropout_prob = self.dropout_prob if self.training else 0.0
        weights: Optional[Tensor] = None
        if output_attentions or head_mask is not None:
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if attention_bias is not None:
                scores = scores + attention_bias
            weights = F.dropout(torch.softmax(scores, dim=-1), p=dropout_prob, training=self.training)
            if head_mask is not None:
                weights = weights * head_mask
            context = torch.matmul(weights, value)
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, dropout_p=dropout_prob)
        batch_size, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch_size, length, self.num_heads * self.head_dim)
        return AttentionResult(context, weights if output_attentions else None, (key, value))

    def _attend_real_positions(self, rows: Tensor, layout: PaddingLayout, attention_bias: Optional[Tensor]) -> AttentionResult:
        """Self-attention of the (R, H) real positions of a padded batch -> context (R, H)."""
        query, key, value = (self._split_heads(layout.pad(projection(rows)))
                             for projection in (self.query, self.key, self.value))
        dropout_prob = self.dropout_prob if self.training else 0.0
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, dropout_p=dropout_prob)
        context = layout.unpad(context.transpose(1, 2))
        return AttentionResult(context, None, (key, value))


class AttentionBlock(nn.Module):
    """Pre-LN residual attention: ``h + dropout(Wo · attention(LN(h), ...))``.

    The same block serves self-attention (``attention``) and cross-attention (``crossattention``).
    """

    def __init__(
        self, *, hidden_size: int, num_heads: int, layer_norm_eps: float, attention_dropout_prob: float, hidden_dropout_prob: float
    ) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.self = MultiHeadAttention(hidden_size=hidden_size, num_heads=num_heads, dropout_prob=attention_dropout_prob)
        self.output = DenseProjection(in_features=hidden_size, out_features=hidden_size, dropout_prob=hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, **attention_kwargs: object) -> AttentionResult:
        """``hidden_states`` (B, S, H) -> `AttentionResult` whose ``context`` is the updated
        residual stream (B, S, H); ``attention_kwargs`` go to `MultiHeadAttention.forward`."""
        result = self.self(self.self_attn_layer_norm(hidden_states), **attention_kwargs)
        return result._replace(context=hidden_states + self.output(result.context))


class LayerInputs(NamedTuple):
    """What every layer of one forward pass shares.

    ``attention_bias``: additive self-attention bias broadcasting to (B, N, S, T + S);
    ``encoder_hidden_states`` (B, K, H) with ``encoder_attention_bias`` (to (B, N, S, K)): the
    cross-attention input, or None; ``output_attentions``: return attention weights.
    ``layout``: the hidden states are the (R, H) real positions of this padded batch (encoder
    self-attention only, see `PaddingLayout`).
    """

    attention_bias: Optional[Tensor] = None
    encoder_hidden_states: Optional[Tensor] = None
    encoder_attention_bias: Optional[Tensor] = None
    output_attentions: bool = False
    layout: Optional[PaddingLayout] = None


class LayerOutput(NamedTuple):
    """``hidden_states`` (B, S, H); attention weights (B, N, S, K) or None; the layer's cache."""

    hidden_states: Tensor
    self_attention: Optional[Tensor]
    cross_attention: Optional[Tensor]
    present: LayerCache


class TransformerLayer(nn.Module):
    """One pre-LN layer: self-attention block, optional cross-attention block, feed-forward block
    ``h + W2 · act(W1 · LN(h))`` (HF applies no dropout after ``W2``)."""

    def __init__(self, *, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        block = partial(
            AttentionBlock,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            layer_norm_eps=config.layer_norm_eps,
            attention_dropout_prob=config.attention_probs_dropout_prob,
            hidden_dropout_prob=config.hidden_dropout_prob,
        )
        self.attention = block()
        self.crossattention = block() if config.add_cross_attention else None
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = DenseProjection(
            in_features=config.hidden_size, out_features=config.intermediate_size, activation=config.hidden_act
        )
        self.output = DenseProjection(in_features=config.intermediate_size, out_features=config.hidden_size)

    def forward(
        self,
        hidden_states: Tensor,
        inputs: LayerInputs,
        *,
        head_mask: Optional[Tensor] = None,
        past_key_value: Optional[LayerCache] = None,
    ) -> LayerOutput:
        """``hidden_states`` (B, S, H) -> `LayerOutput`.

        ``head_mask``: this layer's factor (1, N, 1, 1). ``past_key_value``: this layer's cache
        ``(k, v[, cross_k, cross_v])``; the returned ``present`` has the same layout, updated.
        """
        attention = self.attention(
            hidden_states,
            attention_bias=inputs.attention_bias,
            head_mask=head_mask,
            past_key_value=None if past_key_value is None else past_key_value[:2],
            output_attentions=inputs.output_attentions,
            layout=inputs.layout,
        )
        hidden_states, present = attention.context, attention.key_value
        cross_weights = None
        if inputs.encoder_hidden_states is not None:
            if self.crossattention is None:
                raise ValueError(
                    "encoder_hidden_states were given but the model has no cross-attention "
                    "(set add_cross_attention=True in the config)"
                )
            cross = self.crossattention(
                hidden_states,
                key_value_states=inputs.encoder_hidden_states,
                attention_bias=inputs.encoder_attention_bias,
                head_mask=head_mask,
                past_key_value=None if past_key_value is None or len(past_key_value) < 4 else past_key_value[2:],
                output_attentions=inputs.output_attentions,
            )
            hidden_states, cross_weights = cross.context, cross.weights
            present = present + cross.key_value
        hidden_states = hidden_states + self.output(self.intermediate(self.LayerNorm(hidden_states)))
        return LayerOutput(hidden_states, attention.weights, cross_weights, present)


class Encoder(nn.Module):
    """The stack of `TransformerLayer` and the final LayerNorm (HF names ``layer``, ``LayerNorm``)."""

    def __init__(self, *, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(config=config) for _ in range(config.num_hidden_layers))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # HF's legacy switch: a config (or config.json) with gradient_checkpointing=True turns it on
        self.gradient_checkpointing = bool(getattr(config, "gradient_checkpointing", False))
        #: keywords of ``torch.utils.checkpoint.checkpoint`` (``use_reentrant`` defaults to False)
        self.checkpoint_options: Dict[str, object] = {}

    def forward(
        self,
        hidden_states: Tensor,
        inputs: LayerInputs,
        *,
        head_mask: Optional[Tensor] = None,
        past_key_values: Optional[Cache] = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        """Embeddings (B, S, H) -> `BackboneOutput` without ``pooler_output``.

        ``head_mask``: (L, 1, N, 1, 1) from `expand_head_mask`. ``hidden_states`` holds the
        input and each layer's raw output except the last, then the final normalised state.
        Gradient checkpointing (when switched on) recomputes each layer in the backward pass,
        in training mode only, and turns the cache off.
        """
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        use_cache = use_cache and not checkpointing
        all_hidden: Optional[list] = [] if output_hidden_states else None
        all_self: Optional[list] = [] if inputs.output_attentions else None
        all_cross: Optional[list] = [] if inputs.output_attentions and inputs.encoder_hidden_states is not None else None
        cache: Optional[list] = [] if use_cache else None
        for index, layer in enumerate(self.layer):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            kwargs = dict(
                head_mask=None if head_mask is None else head_mask[index],
                past_key_value=None if past_key_values is None else past_key_values[index],
            )
            if checkpointing:
                out = self._checkpointed(layer, hidden_states, inputs, **kwargs)
            else:
                out = layer(hidden_states, inputs, **kwargs)
            hidden_states = out.hidden_states
            for collected, value in ((cache, out.present), (all_self, out.self_attention), (all_cross, out.cross_attention)):
                if collected is not None:
                    collected.append(value)
        hidden_states = self.LayerNorm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        as_tuple = lambda items: None if items is None else tuple(items)  # noqa: E731
        return BackboneOutput(
            last_hidden_state=hidden_states,
            hidden_states=as_tuple(all_hidden),
            attentions=as_tuple(all_self),
            past_key_values=as_tuple(cache),
            cross_attentions=as_tuple(all_cross),
        )

    def _checkpointed(self, layer: TransformerLayer, hidden_states: Tensor, inputs: LayerInputs, **kwargs: object) -> LayerOutput:
        """``layer(hidden_states, inputs, **kwargs)`` recomputed in the backward pass. The tensors
        that may need gradients travel as arguments (the reentrant variant only sees those)."""

        def run(hidden: Tensor, encoder_hidden: Optional[Tensor]) -> Tuple[object, ...]:
            return tuple(layer(hidden, inputs._replace(encoder_hidden_states=encoder_hidden), **kwargs))

        options = {"use_reentrant": False, **self.checkpoint_options}
        return LayerOutput(*torch.utils.checkpoint.checkpoint(run, hidden_states, inputs.encoder_hidden_states, **options))
