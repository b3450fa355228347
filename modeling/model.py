"""The bare backbone `XLMRobertaXLModel`: embeddings, encoder, pooler, with HF's forward semantics.

The base class it shares with the task models is `modeling.pretrained`'s. Constructors allocate
nothing under ``with torch.device("meta"):`` beyond what the meta device holds, so checkpoint
loading can build on meta and materialise tensor by tensor.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from torch import Tensor

from .config import XLMRobertaXLConfig
from .dense import DenseProjection
from .embeddings import Embeddings
from .layers import Encoder, LayerInputs
from .masks import PaddingLayout, attention_bias, expand_head_mask
from .outputs import BackboneOutput, Cache
from .pretrained import XLMRobertaXLPreTrainedModel


class XLMRobertaXLModel(XLMRobertaXLPreTrainedModel):
    """The bare XLM-RoBERTa-XL transformer: embeddings, pre-LN encoder, optional pooler.

    As an encoder (default) attention is bidirectional; with ``config.is_decoder`` it is causal
    with a per-layer key/value cache, and with ``config.add_cross_attention`` each layer also
    attends to ``encoder_hidden_states``.
    """

    def __init__(self, config: XLMRobertaXLConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = Embeddings(config=config)
        self.encoder = Encoder(config=config)
        config.pruned_heads = config.pruned_heads_by_layer()
        for layer, heads in config.pruned_heads.items():  # HF builds the pruned shapes of config.pruned_heads
            self.encoder.layer[layer].attention.prune_heads(heads)
        self.pooler = (
            DenseProjection(in_features=config.hidden_size, out_features=config.hidden_size, activation="tanh")
            if add_pooling_layer
            else None
        )
        self.init_weights()

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        past_key_values: Optional[Cache] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        skip_padding: bool = False,
    ) -> Union[BackboneOutput, Tuple[Any, ...]]:
        """Run the backbone.

        - ``input_ids`` (B, S) or ``inputs_embeds`` (B, S, H): exactly one of them.
        - ``attention_mask``: (B, T + S) or (B, S, T + S), 1 = attend, 0 = padding.
        - ``token_type_ids``, ``position_ids``: (B, S); defaults: 0 and fairseq positions.
        - ``head_mask``: (N,) or (L, N), 1 keeps a head (forces explicit attention).
        - ``encoder_hidden_states`` (B, K, H), ``encoder_attention_mask`` (B, K): cross-attention
          input (decoder with ``add_cross_attention`` only; ignored by an encoder, as in HF).
        - ``past_key_values``: the cache returned by a previous call (T cached positions).
        - ``use_cache``: return the updated cache (decoder only; default ``config.use_cache``).
        - ``output_attentions``, ``output_hidden_states``, ``return_dict``: default to the config's
          fields of those names. Without ``return_dict`` the result is HF's tuple: last hidden
          state, pooled output (None without a pooler), then what is set of the cache, hidden
          states, attentions and cross-attentions, in that order.
        - ``skip_padding`` (not in HF; encoder with a (B, S) ``attention_mask``): compute only the
          real positions outside the attention product (see `_padding_layout`).
        """
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        layout = self._padding_layout(attention_mask, skip_padding=skip_padding, head_mask=head_mask is not None,
                                      past_key_values=bool(past_key_values), output_attentions=output_attentions,
                                      output_hidden_states=output_hidden_states)
        use_cache = bool(config.use_cache if use_cache is None else use_cache) and config.is_decoder
        past_length = past_key_values[0][0].shape[2] if past_key_values else 0
        embeddings = self.embeddings(input_ids, inputs_embeds=inputs_embeds, token_type_ids=token_type_ids,
                                     position_ids=position_ids, past_length=past_length)
        output = self.encoder(
            embeddings if layout is None else layout.unpad(embeddings),
            self._layer_inputs(embeddings, attention_mask, encoder_hidden_states, encoder_attention_mask,
                               past_length=past_length, output_attentions=output_attentions, layout=layout),
            head_mask=expand_head_mask(head_mask, num_layers=config.num_hidden_layers, dtype=embeddings.dtype),
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        if layout is not None:
            output.last_hidden_state = layout.pad(output.last_hidden_state)
        if self.pooler is not None:
            output.pooler_output = self.pooler(output.last_hidden_state[:, 0])
        return output if self._return_dict(return_dict) else output.tuple_output()

    def _padding_layout(self, attention_mask: Optional[Tensor], *, skip_padding: bool, **unsupported: bool) -> Optional[PaddingLayout]:
        """The `PaddingLayout` of a ``skip_padding`` call that has padding (None otherwise).

        With it, padding costs nothing in the projections, feed-forward parts and LayerNorms. The
        real positions' outputs equal the padded computation's (within float rounding of the
        matrix products); padded positions of ``last_hidden_state`` are 0 instead of states nobody
        should read. Not with attention weights, head masks, per-layer hidden states or a cache:
        ``unsupported`` says whether each of those is set (refused then).
        """
        if not skip_padding or attention_mask is None or bool(attention_mask.all()):
            return None
        given = [name for name, on in {"a decoder config": self.config.is_decoder, **unsupported}.items() if on]
        if given:
            raise ValueError(f"skip_padding cannot be combined with {', '.join(given)}")
        return PaddingLayout(attention_mask)

    def _layer_inputs(
        self, embeddings: Tensor, attention_mask: Optional[Tensor], encoder_hidden_states: Optional[Tensor],
        encoder_attention_mask: Optional[Tensor], *, past_length: int, output_attentions: bool,
        layout: Optional[PaddingLayout],
    ) -> LayerInputs:
        """What every layer shares: the additive attention biases (causal for a decoder) and the
        cross-attention input (a decoder's only; an encoder ignores it, as HF's does)."""
        dtype, device, length = embeddings.dtype, embeddings.device, embeddings.shape[1]
        self_bias = attention_bias(attention_mask, query_length=length, past_length=past_length,
                                   causal=self.config.is_decoder, dtype=dtype, device=device)
        if not self.config.is_decoder:
            encoder_hidden_states = None
        cross_bias = None
        if encoder_hidden_states is not None:
            cross_bias = attention_bias(encoder_attention_mask, query_length=length, dtype=dtype, device=device)
        return LayerInputs(attention_bias=self_bias, encoder_hidden_states=encoder_hidden_states,
                           encoder_attention_bias=cross_bias, output_attentions=output_attentions, layout=layout)
