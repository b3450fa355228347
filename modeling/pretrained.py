"""`XLMRobertaXLPreTrainedModel`: what every model class shares, with HF ``PreTrainedModel``'s API.

Owns the config holder (the config is validated again when a model is built, so values set on it
after construction are checked too), HF-style weight initialisation with a seed, weight tying that
survives ``load_state_dict`` / ``to()``, the embedding accessors and ``resize_token_embeddings``,
``num_parameters``, ``base_model``, head pruning (``prune_heads``), the gradient-checkpointing
switch, the ``return_dict`` default, and ``from_pretrained`` / ``save_pretrained`` with HF's
keywords, which delegate the file work to `modeling.checkpoint`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .config import XLMRobertaXLConfig, normalise_pruned_heads
from .generation.config import GENERATION_CONFIG_NAME
from .hub import hub_options, resolve_checkpoint
from .layers import Encoder

PathLike = Union[str, "os.PathLike[str]"]
#: the ``attn_implementation`` values we accept: both compute the same attention (ours picks
#: ``scaled_dot_product_attention`` unless attention weights or a head mask need the explicit path)
ATTENTION_IMPLEMENTATIONS = (None, "eager", "sdpa")


class XLMRobertaXLPreTrainedModel(nn.Module):
    """Base of the backbone and the task models: ``.config``, initialisation, tying, checkpoints.

    Subclasses list tied parameter names in ``_tied_weights_keys`` (the copies, not the
    originals) and re-establish the ties in `tie_weights`.
    """

    config_class = XLMRobertaXLConfig
    base_model_prefix = "roberta"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _tied_weights_keys: Tuple[str, ...] = ()
    # HF's capability flags, which HF's tooling and test suites read: SDPA attention yes; HF's
    # cache classes, static caches, flash / flex attention no; no module must stay in float32
    _supports_sdpa = True
    _supports_flash_attn_2 = False
    _supports_flex_attn = False
    _supports_cache_class = False
    _supports_static_cache = False
    _supports_quantized_cache = False
    _is_stateful = False
    _keep_in_fp32_modules = None
    _no_split_modules = ["TransformerLayer"]
    _keys_to_ignore_on_load_missing = None
    _keys_to_ignore_on_load_unexpected = None

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        if not isinstance(config, XLMRobertaXLConfig):
            raise TypeError(f"config must be an XLMRobertaXLConfig, got {type(config).__name__}")
        config.validate()  # fields may have been set since the config was built
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

    @property
    def base_model(self) -> nn.Module:
        """The backbone: ``self.roberta`` in a task model, the model itself otherwise."""
        return getattr(self, self.base_model_prefix, self)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @classmethod
    def _from_config(cls, config: XLMRobertaXLConfig, *, torch_dtype: Optional[torch.dtype] = None,
                     attn_implementation: Optional[str] = None, **kwargs: Any) -> "XLMRobertaXLPreTrainedModel":
        """HF's constructor from a config (a copy of it), in ``torch_dtype``, recording ``attn_implementation``."""
        config = copy.deepcopy(config)
        _set_attention_implementation(config, attn_implementation)
        model = cls(config, **kwargs)
        return model.to(torch_dtype) if torch_dtype is not None else model

    @classmethod
    def can_generate(cls) -> bool:
        """Whether the class has ``generate`` (the causal LM)."""
        return False

    def _return_dict(self, return_dict: Optional[bool]) -> bool:
        """A forward's ``return_dict`` argument, defaulting to ``config.use_return_dict``."""
        return self.config.use_return_dict if return_dict is None else bool(return_dict)

    # ------------------------------------------------------------------ embeddings
    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Use ``value`` as the word embeddings (a tied LM decoder follows it)."""
        self.base_model.embeddings.word_embeddings = value
        self.tie_weights()

    def get_output_embeddings(self) -> Optional[nn.Module]:
        """The vocabulary projection (None: only the language models have one)."""
        return None

    @torch.no_grad()
    def resize_token_embeddings(
        self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary to ``new_num_tokens`` (rounded up to ``pad_to_multiple_of``),
        as HF does: kept rows are copied; new rows are drawn around the mean of the old ones
        (``mean_resizing``, HF's distribution) or from N(0, initializer_range); a tied LM decoder
        stays tied and its bias is padded with zeros; an untied one (``tie_word_embeddings=False``)
        is resized the same way as the embeddings, its new biases at the old biases' mean. Updates
        ``config.vocab_size`` and returns the new embedding module (the old one when nothing changes)."""
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            # HF's wording (its tests match it)
            raise ValueError(f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is "
                             "not and integer. Please make sure to pass an integer (pad_to_multiple_of)")
        old = self.get_input_embeddings()
        count = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            count = -(-count // int(pad_to_multiple_of)) * int(pad_to_multiple_of)
        if count == old.num_embeddings:
            return old
        if count <= self.config.pad_token_id:
            raise ValueError(f"new_num_tokens ({count}) must exceed pad_token_id ({self.config.pad_token_id})")
        options = {"mean_resizing": mean_resizing, "std": self.config.initializer_range}
        new = nn.Embedding(count, old.embedding_dim, padding_idx=old.padding_idx, device="meta")
        new.weight = nn.Parameter(_resized_rows(old.weight, count, **options), requires_grad=old.weight.requires_grad)
        decoder = self.get_output_embeddings()
        untied = decoder is not None and decoder.weight is not old.weight
        old_bias = None if decoder is None or decoder.bias is None else decoder.bias.detach().clone()
        self.set_input_embeddings(new)
        if untied:  # HF's tie_word_embeddings=False: the decoder is resized the same way, new biases at the mean
            decoder.weight = nn.Parameter(_resized_rows(decoder.weight, count, **options),
                                          requires_grad=decoder.weight.requires_grad)
            if old_bias is not None and count > old_bias.shape[0] and mean_resizing:
                decoder.bias[old_bias.shape[0]:] = old_bias.float().mean().to(old_bias.dtype)
        self.config.vocab_size = count
        return new

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count (shared tensors once); ``exclude_embeddings`` leaves out embedding tables."""
        embedding_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and not (exclude_embeddings and id(p) in embedding_weights))

    # ------------------------------------------------------------------ weights
    def prune_heads(self, heads_to_prune: Dict[int, Iterable[int]]) -> None:
        """HF's head pruning: remove self-attention heads, ``{layer: [heads]}`` (a negative layer
        index counts from the end; head indices are those of the unpruned layer, heads pruned
        before are skipped). The query, key and value projections lose the heads' rows and the
        output projection their columns; ``config.pruned_heads`` records every pruning (so
        ``config.json`` holds it and a model built or loaded from it has the pruned shapes).
        Prune before applying LoRA adapters or quantising."""
        config = self.config
        pruning = normalise_pruned_heads(heads_to_prune, num_layers=config.num_hidden_layers,
                                         num_heads=config.num_attention_heads, setting="heads_to_prune")
        recorded = config.pruned_heads_by_layer()
        for layer, heads in pruning.items():
            self.base_model.encoder.layer[layer].attention.prune_heads(heads)
            recorded[layer] = sorted(set(recorded.get(layer, ())) | set(heads))
        config.pruned_heads = dict(sorted(recorded.items()))

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

        seen = set()
        for root in list(self.modules() if modules is None else modules):
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                for name, param in module.named_parameters(recurse=False):
                    if param.is_meta or (id(module), name) in tied:
                        continue
                    _init_parameter(module, name, param, std=self.config.initializer_range,
                                    generator=generator(param.device))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[Dict[str, Any]] = None) -> None:
        """Recompute each layer in the backward pass (training mode only) to save memory.

        ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint``; the default
        is ``use_reentrant=False`` (HF's default is ``True``, which loses the gradients of layers
        whose input needs none, e.g. with frozen embeddings).
        """
        self._set_gradient_checkpointing(True, dict(gradient_checkpointing_kwargs or {}))

    def gradient_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False, {})

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, Encoder))

    def _set_gradient_checkpointing(self, enabled: bool, options: Dict[str, Any]) -> None:
        for module in self.modules():
            if isinstance(module, Encoder):
                module.gradient_checkpointing = enabled
                module.checkpoint_options = options

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Optional[PathLike],
        *,
        config: Any = None,
        torch_dtype: Any = None,
        dtype: Any = None,
        device: Optional[Union[str, torch.device]] = None,
        device_map: Any = None,
        check_finite: bool = True,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        subfolder: str = "",
        attn_implementation: Optional[str] = None,
        low_cpu_mem_usage: Optional[bool] = None,
        **kwargs: Any,
    ) -> Any:
        """Load a local HF directory / weights file, a fairseq ``model.pt`` (see
        `modeling.checkpoint.load_pretrained`) or a Hub repository (`modeling.hub`: downloaded
        into HF's cache), with HF's keywords:

        - ``torch_dtype`` (HF's spelling) or ``dtype``: a torch dtype, its name or ``"auto"``;
        - ``device`` or ``device_map`` (a device, or ``{"": device}``): where the weights go;
        - ``ignore_mismatched_sizes``: weights whose shape differs from the model's are
          initialised instead of refused (listed in ``mismatched_keys``);
        - ``output_loading_info``: return ``(model, info)``, info holding ``missing_keys``,
          ``unexpected_keys``, ``mismatched_keys`` and ``error_msgs``;
        - ``subfolder``: a folder inside the checkpoint; the Hub options of `modeling.hub`
          (``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``, ...);
          ``low_cpu_mem_usage`` is accepted (loading never holds two copies anyway);
          ``attn_implementation``: ``"eager"`` or ``"sdpa"`` (the same results here);
        - ``check_finite=False`` loads weights holding NaN / inf instead of refusing them;
        - ``pretrained_model_name_or_path=None`` with ``config`` and ``state_dict``: the weights
          come from that state dict (HF's way to build without files);
        - a ``generation_config.json`` beside the weights becomes the ``generation_config``.

        Other ``kwargs`` change config fields or go to the constructor (``add_pooling_layer``);
        anything else is a ``TypeError`` naming it.
        """
        from .checkpoint import load_pretrained

        options = hub_options(kwargs)
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"give torch_dtype ({torch_dtype!r}) or dtype ({dtype!r}), not both")
        state_dict = kwargs.pop("state_dict", None)
        if pretrained_model_name_or_path is None:
            model = _from_state_dict(cls, config, state_dict, kwargs)
        else:
            if state_dict is not None:
                raise ValueError("give state_dict without a checkpoint path (pretrained_model_name_or_path=None)")
            path = resolve_checkpoint(pretrained_model_name_or_path, subfolder=subfolder, **options,
                                      optional_files=(GENERATION_CONFIG_NAME,) if cls.can_generate() else ())
            model = load_pretrained(cls, path, dtype=dtype if dtype is not None else torch_dtype,
                                    device=_device_from_map(device, device_map), config=config,
                                    check_finite=check_finite, ignore_mismatched_sizes=ignore_mismatched_sizes, **kwargs)
            _read_generation_config(model, path)
        _set_attention_implementation(model.config, attn_implementation)
        return (model, dict(model.loading_info)) if output_loading_info else model

    def save_pretrained(
        self, save_directory: PathLike, *, max_shard_size: Union[int, str] = "5GB", safe_serialization: bool = True
    ) -> Any:
        """Write ``config.json`` and (sharded) safetensors that HF transformers can load, or
        ``pytorch_model.bin`` files with ``safe_serialization=False``."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, save_directory, max_shard_size=max_shard_size, safe_serialization=safe_serialization)


def _device_from_map(device: Optional[Union[str, torch.device]], device_map: Any) -> Optional[Union[str, torch.device]]:
    """The one device of ``device`` / HF's ``device_map`` (a device, an index, or ``{"": device}``)."""
    if device_map is None:
        return device
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        device_map = torch.device("cuda", device_map)
    if not isinstance(device_map, (str, torch.device)) or device_map in ("auto", "balanced", "sequential"):
        raise ValueError(f"device_map must name one device (or be {{'': device}}), got {device_map!r}: "
                         "placing layers on several devices is not supported")
    if device is not None and torch.device(device) != torch.device(device_map):
        raise ValueError(f"device ({device!r}) and device_map ({device_map!r}) disagree")
    return device_map


def _set_attention_implementation(config: XLMRobertaXLConfig, name: Optional[str]) -> None:
    """Record HF's ``attn_implementation`` on the config (both names compute the same attention)."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {name!r}")
    if name is not None:
        config._attn_implementation = name


def _from_state_dict(cls: type, config: Any, state_dict: Optional[Dict[str, Tensor]], kwargs: Dict[str, Any]) -> Any:
    """HF's ``from_pretrained(None, config=..., state_dict=...)``: build, then load the tensors."""
    if not isinstance(config, XLMRobertaXLConfig) or state_dict is None:
        raise ValueError("from_pretrained(None, ...) needs config=XLMRobertaXLConfig(...) and state_dict=...")
    config, unused = XLMRobertaXLConfig.from_dict(config.to_dict(), return_unused_kwargs=True, **kwargs)
    model = cls(config, **unused)
    result = model.load_state_dict(state_dict, strict=False)
    model.loading_info = {"missing_keys": list(result.missing_keys), "unexpected_keys": list(result.unexpected_keys),
                          "mismatched_keys": [], "error_msgs": []}
    return model.eval()


def _read_generation_config(model: nn.Module, path: Path) -> None:
    """A model that generates takes the ``generation_config.json`` of its checkpoint directory."""
    file = path / GENERATION_CONFIG_NAME if path.is_dir() else path.parent / GENERATION_CONFIG_NAME
    if getattr(model, "generation_config", None) is not None and file.is_file():
        model.generation_config = type(model.generation_config).from_pretrained(file)


def _retie_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: ``assign=True`` replaces parameters; restore the ties."""
    module.tie_weights()


def _resized_rows(weight: Tensor, count: int, *, mean_resizing: bool, std: float) -> Tensor:
    """``weight`` (V, H) cut or grown to (count, H): kept rows copied, new ones `_new_embedding_rows`."""
    kept = min(count, weight.shape[0])
    rows = [weight.detach()[:kept]]
    if count > kept:
        rows.append(_new_embedding_rows(weight.detach(), count - kept, mean_resizing=mean_resizing, std=std))
    return torch.cat(rows).to(weight.dtype)


def _new_embedding_rows(old: Tensor, count: int, *, mean_resizing: bool, std: float) -> Tensor:
    """``count`` new embedding rows: HF's draw from N(mean, 1e-9 * covariance) of the ``old`` rows
    (their mean where that covariance is not positive definite), or N(0, std)."""
    if not mean_resizing:
        return torch.randn(count, old.shape[1], device=old.device).mul_(std).to(old.dtype)
    weight = old.float()
    mean = weight.mean(dim=0)
    centered = weight - mean
    covariance = 1e-9 * (centered.T @ centered) / weight.shape[0]
    try:
        rows = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance).sample((count,))
    except (ValueError, RuntimeError):  # not positive definite (e.g. fewer rows than dimensions)
        rows = mean.expand(count, -1)
    return rows.to(old.dtype)


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
