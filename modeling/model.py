"""The model base class and the bare backbone `XLMRobertaXLModel`.

Owns `XLMRobertaXLPreTrainedModel` (config holder, HF-style weight initialisation with a seed,
weight tying that survives ``load_state_dict`` / ``to()``, the gradient-checkpointing switch,
``from_pretrained`` / ``save_pretrained`` delegating to `modeling.checkpoint`) and
`XLMRobertaXLModel` (embeddings, encoder, pooler; HF's forward semantics). Constructors allocate
nothing under ``with torch.device("meta"):`` beyond what the meta device holds, so checkpoint
loading can build on meta and materialise tensor by tensor.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .config import XLMRobertaXLConfig
from .layers import DenseProjection, Embeddings, Encoder, LayerInputs, PaddingLayout, attention_bias, expand_head_mask
from .outputs import BackboneOutput, Cache

PathLike = Union[str, "os.PathLike[str]"]


class XLMRobertaXLPreTrainedModel(nn.Module):
    """Base of the backbone and the task models: ``.config``, initialisation, tying, checkpoints.

    Subclasses list tied parameter names in ``_tied_weights_keys`` (the copies, not the
    originals) and re-establish the ties in `tie_weights`.
    """

    base_model_prefix = "roberta"
    _tied_weights_keys: Tuple[str, ...] = ()

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        if not isinstance(config, XLMRobertaXLConfig):
            raise TypeError(f"config must be an XLMRobertaXLConfig, got {type(config).__name__}")
        self.config = config
        self.register_load_state_dict_post_hook(_retie_after_load)

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (of the first one)."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the parameters (of the first one)."""
        return next(self.parameters()).device

    # ------------------------------------------------------------------ weights
    def tie_weights(self) -> None:
        """Re-establish shared parameters (none in the bare model)."""

    def _apply(self, fn: Any, recurse: bool = True) -> "XLMRobertaXLPreTrainedModel":
        # ``to()``/``to_empty()``/``half()`` may replace parameters one module at a time; re-tie.
        result = super()._apply(fn, recurse)
        self.tie_weights()
        return result

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None, *, modules: Optional[Iterable[nn.Module]] = None) -> None:
        """Initialise like HF: Linear / Embedding weights ~ N(0, initializer_range), biases 0,
        embedding padding rows 0, LayerNorm weight 1 and bias 0, LM-head bias 0.

        ``seed`` makes the result reproducible without touching the global RNG; ``modules``
        restricts the initialisation to those modules (and their children), e.g. a freshly added
        task head. Tied copies (``_tied_weights_keys``) are left to their originals; parameters
        on the meta device are skipped.
        """
        # tied copies are skipped by slot (module, name): the shared tensor is initialised once,
        # through the module that owns the original (e.g. the word embeddings, padding row 0)
        tied = set()
        for key in self._tied_weights_keys:
            owner, _, name = key.rpartition(".")
            tied.add((id(self.get_submodule(owner)), name))
        generators: Dict[torch.device, torch.Generator] = {}

        def generator(device: torch.device) -> Optional[torch.Generator]:
            if seed is None:
                return None
            if device not in generators:
                generators[device] = torch.Generator(device=device).manual_seed(seed)
            return generators[device]

        roots = list(self.modules() if modules is None else modules)
        seen = set()
        for root in roots:
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                for name, param in module.named_parameters(recurse=False):
                    if param.is_meta or (id(module), name) in tied:
                        continue
                    _init_parameter(module, name, param, std=self.config.initializer_range,
                                    generator=generator(param.device))

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer in the backward pass (training mode only) to save memory."""
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, Encoder))

    def _set_gradient_checkpointing(self, enabled: bool) -> None:
        for module in self.modules():
            if isinstance(module, Encoder):
                module.gradient_checkpointing = enabled

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
        config: Optional[XLMRobertaXLConfig] = None,
        check_finite: bool = True,
        **overrides: Any,
    ) -> "XLMRobertaXLPreTrainedModel":
        """Load a local HF directory / weights file or a fairseq ``model.pt`` (see
        `modeling.checkpoint.load_pretrained`); ``overrides`` change config fields and
        ``check_finite=False`` loads weights holding NaN / inf instead of refusing them."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, path, dtype=dtype, device=device, config=config, check_finite=check_finite,
                               **overrides)

    def save_pretrained(self, directory: PathLike, *, max_shard_size: Union[int, str] = "5GB") -> Any:
        """Write ``config.json`` and (sharded) safetensors that HF transformers can load."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory, max_shard_size=max_shard_size)


def _retie_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: ``assign=True`` replaces parameters; restore the ties."""
    module.tie_weights()


def _init_parameter(module: nn.Module, name: str, param: Tensor, *, std: float, generator: Optional[torch.Generator]) -> None:
    """Initialise the parameter ``name`` owned directly by ``module`` (HF ``_init_weights``)."""
    if isinstance(module, nn.LayerNorm):
        param.fill_(1.0 if name == "weight" else 0.0)
    elif name == "weight" and isinstance(module, (nn.Linear, nn.Embedding)):
        param.normal_(mean=0.0, std=std, generator=generator)
        padding_idx = getattr(module, "padding_idx", None)
        if padding_idx is not None:
            param[padding_idx].zero_()
    elif name == "bias":
        param.zero_()
    # any other parameter keeps the value its module gave it


class XLMRobertaXLModel(XLMRobertaXLPreTrainedModel):
    """The bare XLM-RoBERTa-XL transformer: embeddings, pre-LN encoder, optional pooler.

    As an encoder (default) attention is bidirectional; with ``config.is_decoder`` it is causal
    with a per-layer key/value cache, and with ``config.add_cross_attention`` each layer also
    attends to ``encoder_hidden_states``.
    """

    def __init__(self, config: XLMRobertaXLConfig, *, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = Embeddings(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            padding_idx=config.pad_token_id,
            dropout_prob=config.hidden_dropout_prob,
        )
        self.encoder = Encoder(config=config)
        self.pooler = (
            DenseProjection(in_features=config.hidden_size, out_features=config.hidden_size, activation="tanh")
            if add_pooling_layer
            else None
        )
        self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

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
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        skip_padding: bool = False,
    ) -> BackboneOutput:
        """Run the backbone.

        - ``input_ids`` (B, S) or ``inputs_embeds`` (B, S, H): exactly one of them.
        - ``attention_mask``: (B, T + S) or (B, S, T + S), 1 = attend, 0 = padding.
        - ``token_type_ids``, ``position_ids``: (B, S); defaults: 0 and fairseq positions.
        - ``head_mask``: (N,) or (L, N), 1 keeps a head (forces explicit attention).
        - ``encoder_hidden_states`` (B, K, H), ``encoder_attention_mask`` (B, K): cross-attention
          input (decoder with ``add_cross_attention`` only; ignored by an encoder, as in HF).
        - ``past_key_values``: the cache returned by a previous call (T cached positions).
        - ``use_cache``: return the updated cache (decoder only; default ``config.use_cache``).
        - ``skip_padding`` (not in HF; encoder with a (B, S) ``attention_mask``): compute only the
          real positions outside the attention product (`PaddingLayout`), so padding costs
          nothing in the projections, feed-forward parts and LayerNorms. The real positions'
          outputs equal the padded computation's (within float rounding of the matrix products);
          padded positions of ``last_hidden_state`` are 0 instead of states nobody should read.
          Not with attention weights, head masks, per-layer hidden states or a cache.
        """
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        layout: Optional[PaddingLayout] = None
        if skip_padding and attention_mask is not None and not bool(attention_mask.all()):
            unsupported = {"a decoder config": config.is_decoder, "output_attentions": output_attentions,
                           "output_hidden_states": output_hidden_states, "head_mask": head_mask is not None,
                           "past_key_values": bool(past_key_values)}
            given = [name for name, on in unsupported.items() if on]
            if given:
                raise ValueError(f"skip_padding cannot be combined with {', '.join(given)}")
            layout = PaddingLayout(attention_mask)
        batch_size, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        use_cache = bool(config.use_cache if use_cache is None else use_cache) and config.is_decoder
        past_length = past_key_values[0][0].shape[2] if past_key_values else 0
        embeddings = self.embeddings(
            input_ids,
            inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            past_length=past_length,
        )
        dtype, device = embeddings.dtype, embeddings.device
        self_bias = attention_bias(
            attention_mask, query_length=length, past_length=past_length, causal=config.is_decoder, dtype=dtype, device=device
        )
        if not config.is_decoder:
            encoder_hidden_states = None
        cross_bias = None
        if encoder_hidden_states is not None:
            cross_bias = attention_bias(encoder_attention_mask, query_length=length, dtype=dtype, device=device)
        output = self.encoder(
            embeddings if layout is None else layout.unpad(embeddings),
            LayerInputs(
                attention_bias=self_bias,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_bias=cross_bias,
                output_attentions=output_attentions,
                layout=layout,
            ),
            head_mask=expand_head_mask(head_mask, num_layers=config.num_hidden_layers, dtype=dtype),
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        if layout is not None:
            output.last_hidden_state = layout.pad(output.last_hidden_state)
        if self.pooler is not None:
            output.pooler_output = self.pooler(output.last_hidden_state[:, 0])
        return output
