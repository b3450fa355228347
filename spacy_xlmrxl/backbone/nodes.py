"""The backbones inside a thinc model: finding, configuring and installing them.

Owns the one way to find a backbone in any thinc model of this package (`backbone_nodes`: the
layers that own a `TorchModuleShim`; `backbone_shim`: that shim), `set_backbone_source` (the
``checkpoint`` / ``preset`` / ``tokenizer`` given to a component's ``initialize``),
`build_backbone` (a layer's ``init``: its module built from its source), `install_backbone` (a
built or loaded module and its tokenizer into a layer, with the checks that they belong
together) and `get_tokenizer`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from thinc.api import Model

from .adapters import BaseReference
from .devices import torch_device
from .shim import TorchModuleShim
from .source import BackboneSource, load_tokenizer


def backbone_shim(model: Model) -> TorchModuleShim:
    for shim in model.shims:
        if isinstance(shim, TorchModuleShim):
            return shim
    raise ValueError(f"layer {model.name!r} has no torch backbone")


def backbone_nodes(model: Model) -> List[Model]:
    """The layers of ``model`` that own a torch module (listeners own none)."""
    return [node for node in model.walk() if any(isinstance(s, TorchModuleShim) for s in node.shims)]


def set_backbone_source(model: Model, **changes: Any) -> None:
    """Change where the backbones in ``model`` load from (``checkpoint``/``preset``/
    ``tokenizer``/``dtype``); used by components' ``initialize`` settings."""
    if not any(v is not None for v in changes.values()):
        return
    for node in backbone_nodes(model):
        if isinstance(node.attrs.get("source"), BackboneSource):
            node.attrs["source"] = node.attrs["source"].replace(**changes).validate()


def build_backbone(model: Model, model_cls: Any, *, config_overrides: Optional[Dict[str, Any]] = None,
                   model_kwargs: Optional[Dict[str, Any]] = None) -> None:
    """A layer's ``init``: build ``model_cls`` from the layer's `BackboneSource` (on the ops'
    device) and install it; with LoRA, the `BaseReference` of its checkpoint is kept."""
    source: BackboneSource = model.attrs["source"]
    tokenizer_path = source.tokenizer_path()  # fail before building a large model
    module = source.build(model_cls, device=torch_device(model.ops), config_overrides=config_overrides,
                          model_kwargs=model_kwargs)
    checkpoint = source.checkpoint_path()
    base = BaseReference.of(checkpoint, module) if checkpoint is not None and backbone_shim(model).lora else None
    install_backbone(model, module, tokenizer_path.read_bytes(), base=base)


def install_backbone(model: Model, module: torch.nn.Module, tokenizer_model: bytes, *,
                     base: Optional[BaseReference] = None) -> None:
    """Give the layer its torch module and tokenizer (``base``: the checkpoint under its LoRA
    adapters); set ``nO`` and check the window size."""
    shim = backbone_shim(model)
    shim.set_module(module)
    shim.base = base
    model.attrs["tokenizer_model"] = tokenizer_model
    model.attrs["tokenizer"] = None
    tokenizer = get_tokenizer(model)
    config = module.config  # type: ignore[attr-defined]
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the model's vocab_size is "
                         f"{config.vocab_size}: tokenizer and checkpoint do not belong together")
    check = getattr(model.attrs.get("windows"), "check_max_window", None)
    if callable(check):
        check(config.max_sequence_length - 2)
    model.set_dim("nO", config.hidden_size, force=True)


def get_tokenizer(model: Model) -> Any:
    """The layer's tokenizer, rebuilt from its serialised model after loading."""
    if model.attrs.get("tokenizer") is None:
        proto = model.attrs.get("tokenizer_model")
        if proto is None:
            raise ValueError("the backbone has no tokenizer yet: call nlp.initialize() or load a saved pipeline")
        model.attrs["tokenizer"] = load_tokenizer(bytes(proto))
    return model.attrs["tokenizer"]
