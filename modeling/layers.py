"""The layer stack of the XLM-RoBERTa-XL network (pre-LN transformer).

Owns the transformer layer (self-attention block, optional cross-attention block, feed-forward
block) with its key/value cache, and the encoder stack with the final LayerNorm and gradient
checkpointing. The parts live beside it: `modeling.embeddings`, `modeling.attention`,
`modeling.masks`, `modeling.dense`.

Submodule attribute names follow HF transformers' state-dict keys exactly (``attention``,
``crossattention``, ``intermediate``, ``LayerNorm``, ...), so HF weights load unrenamed.
Shapes: B = batch, S = query length, T = cached (past) length, K = key length (T + S for
self-attention, the encoder length for cross-attention), H = hidden size, N = heads,
D = H / N head size, L = layers.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .attention import AttentionBlock
from .config import XLMRobertaXLConfig
from .dense import DenseProjection
from .masks import PaddingLayout
from .outputs import BackboneOutput, Cache, LayerCache


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
        self.attention = block(position_embedding_type=config.position_embedding_type,
                               max_position_embeddings=config.max_position_embeddings)
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
