"""Putting LoRA adapters on a model and taking them off: `apply_lora`, `merge_lora`, the lookups.

Owns finding the target Linear layers of a backbone or task model (by `LoraConfig.targets`),
replacing them with `LoraLinear` (same Parameters, so the base state dict keys and a memory map
stay as they were), freezing the backbone, and folding the adapters back into plain Linear
layers, after which the model saves as an ordinary HF checkpoint; for a while only
(`without_adapters`: the base alone, `merged_adapters`: the folded weights), or for good
(`merge_lora`). Also which Parameters of a task model are its head (`head_parameters`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .layer import LoraLinear
from .settings import LoraConfig, target_of

__all__ = ["apply_lora", "merge_lora", "lora_layers", "lora_parameters", "lora_config_of", "backbone_of",
           "head_parameters", "without_adapters", "merged_adapters"]


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone of ``model``: a task model's ``roberta`` (its ``base_model_prefix``), else the
    model itself."""
    backbone = getattr(model, getattr(model, "base_model_prefix", "roberta"), None)
    return model if backbone is None else backbone


def lora_layers(model: nn.Module) -> Dict[str, LoraLinear]:
    """Every `LoraLinear` of ``model`` by its module path (``roberta.encoder.layer.0.attention.self.query``)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLinear)}


def lora_parameters(model: nn.Module) -> Iterator[Tuple[str, nn.Parameter]]:
    """The adapter Parameters of ``model`` by state-dict name (``<path>.lora_A.weight`` / ``lora_B``)."""
    for path, layer in lora_layers(model).items():
        yield f"{path}.lora_A.weight", layer.lora_A.weight
        yield f"{path}.lora_B.weight", layer.lora_B.weight


def _targets(model: nn.Module, config: LoraConfig) -> List[Tuple[str, nn.Module]]:
    """(path, module) of every module of ``model`` that ``config.targets`` name; checked."""
    wanted = set(config.targets)
    found = [(path, module) for path, module in model.named_modules() if target_of(path) in wanted]
    for path, module in found:
        if isinstance(module, LoraLinear):
            raise ValueError(f"{path} already has a LoRA adapter (apply_lora was called twice; merge_lora first)")
        if type(module) is not nn.Linear:
            raise ValueError(
                f"lora.targets {list(config.targets)}: {path} is a {type(module).__module__}.{type(module).__name__}, "
                "not a torch.nn.Linear: LoRA needs the float weights (apply it before quantizing, or without int8)"
            )
    missing = wanted - {target_of(path) for path, _ in found}
    if missing:
        raise ValueError(f"lora.targets {sorted(missing)}: no such Linear layers in {type(model).__name__} "
                         "(expected encoder.layer.N.… modules)")
    return found


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def apply_lora(
    model: nn.Module,
    config: LoraConfig,
    *,
    freeze_base: bool = True,
    adapter_dtype: torch.dtype = torch.float32,
    upcast: Optional[bool] = None,
    seed: Optional[int] = None,
) -> Dict[str, LoraLinear]:
    """Replace the Linear layers that ``config.targets`` name with `LoraLinear` layers, in place.

    - ``model``: a `modeling` backbone (``XLMRobertaXLModel``) or task model, in any dtype; a later
      ``model.to(dtype)`` casts its base only (the adapters keep ``adapter_dtype``).
    - ``freeze_base``: ``requires_grad = False`` on every backbone Parameter (`backbone_of`:
      ``roberta`` of a task model, whose heads stay trainable); the adapters always train.
    - ``adapter_dtype``: dtype of A and B (float32, also over a bf16 base).
    - ``upcast``: see `LoraLinear` (None: float32 products only for bf16 where the CPU lacks them).
    - ``seed``: makes A's initialisation reproducible without touching the global RNG.

    Returns the new layers by module path. Raises `ValueError` naming the setting when a target
    is missing, already adapted or not a float ``nn.Linear`` (e.g. int8-quantized).
    """
    found = _targets(model, config)
    if freeze_base:
        backbone_of(model).requires_grad_(False)
    layers: Dict[str, LoraLinear] = {}
    generators: Dict[torch.device, torch.Generator] = {}
    for path, linear in found:
        device = linear.weight.device
        generator = None
        if seed is not None and device.type != "meta":
            generator = generators.setdefault(device, torch.Generator(device=device).manual_seed(seed))
        layer = LoraLinear(linear, r=config.r, alpha=config.alpha, dropout=config.dropout,
                           adapter_dtype=adapter_dtype, upcast=upcast, generator=generator)
        _replace(model, path, layer)
        layers[path] = layer
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W + scaling * B A``, in the base dtype) and put
    plain ``nn.Linear`` layers back: the result has the original module structure and state dict
    keys and saves as a normal HF checkpoint. In place; returns ``model``."""
    for path, layer in lora_layers(model).items():
        _replace(model, path, layer.merged())
    return model


@contextlib.contextmanager
def _swapped(model: nn.Module, make: Callable[[LoraLinear], nn.Linear]) -> Iterator[nn.Module]:
    layers = lora_layers(model)
    for path, layer in layers.items():
        _replace(model, path, make(layer))
    try:
        yield model
    finally:
        for path, layer in layers.items():
            _replace(model, path, layer)


def without_adapters(model: nn.Module) -> "contextlib.AbstractContextManager[nn.Module]":
    """While active, each `LoraLinear` of ``model`` is a plain Linear holding its base weight and
    bias (the same Parameters, no copy): ``model`` computes, and its state dict holds, the base
    alone (``save_pretrained`` writes the base as an HF checkpoint). The adapters come back on exit."""
    return _swapped(model, LoraLinear.base_linear)


def merged_adapters(model: nn.Module) -> "contextlib.AbstractContextManager[nn.Module]":
    """While active, each `LoraLinear` of ``model`` is its `LoraLinear.merged` Linear (a new
    weight ``W + scaling * B A`` per adapted layer: extra memory for those layers only; the base
    weights are not written): ``model`` computes and saves as merged. The adapters come back on exit."""
    return _swapped(model, LoraLinear.merged)


def head_parameters(model: nn.Module) -> Dict[str, nn.Parameter]:
    """The Parameters of ``model`` outside its backbone (`backbone_of`) by name, each once, none
    of them a backbone Parameter: a task model's head (``qa_outputs.weight``, the LM head's
    ``dense`` / ``layer_norm`` / ``bias``, but not its decoder weight, which is the tied word
    embedding matrix). Empty for a bare backbone."""
    backbone = backbone_of(model)
    if backbone is model:
        return {}
    inside = {id(param) for param in backbone.parameters()}
    return {name: param for name, param in model.named_parameters() if id(param) not in inside}


def lora_config_of(model: nn.Module) -> LoraConfig:
    """The `LoraConfig` that ``model``'s adapters were built with (read from the layers).

    Raises `ValueError` when ``model`` has none, or when its layers differ in rank, alpha or dropout.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters (call apply_lora first)")
    settings = {(layer.r, layer.alpha, _dropout(layer)) for layer in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"the LoRA layers of {type(model).__name__} differ in (r, alpha, dropout): {sorted(settings)}")
    (r, alpha, dropout), = settings
    return LoraConfig(r=r, alpha=alpha, dropout=dropout, targets={target_of(path) for path in layers})


def _dropout(layer: LoraLinear) -> float:
    return float(getattr(layer.lora_dropout, "p", 0.0))
