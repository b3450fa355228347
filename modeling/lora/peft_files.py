"""The HF PEFT adapter format: `peft_state_dict`, `save_peft_adapter`, `load_peft_adapter`.

Owns the PEFT key names (``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``,
and ``base_model.model.<module path>.<param>`` for ``modules_to_save`` such as a classifier) and
the two files of an adapter directory: ``adapter_config.json`` and ``adapter_model.safetensors``
(safetensors only), which ``peft.PeftModel.from_pretrained`` loads onto the transformers model
of the same class. Every failure is a `CheckpointError` naming the file and, where there is one,
the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, PathLike, SafetensorsFile, TensorSpec, atomic_directory, write_safetensors
from .adapters import apply_lora, lora_config_of, lora_layers, lora_parameters
from .layer import LoraLinear
from .settings import TARGETS, LoraConfig, target_of

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "PEFT_PREFIX", "peft_state_dict", "save_peft_adapter", "read_adapter_config",
           "load_peft_adapter"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_ADAPTER_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
# adapter_config.json settings this implementation does not model: name -> the value it needs
_UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "lora_bias": False,
                "bias": "none", "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
                "layer_replication": None, "trainable_token_indices": None}


# ------------------------------------------------------------------------------------------ saving
def peft_state_dict(model: nn.Module, *, modules_to_save: Sequence[str] = ()) -> Dict[str, Tensor]:
    """The adapters of ``model`` under PEFT's keys (``base_model.model.<path>.lora_A.weight``:
    (r, in); ``lora_B.weight``: (out, r)), plus every Parameter of the ``modules_to_save``
    (module paths such as ``"classifier"``, or the path of one Parameter such as
    ``"lm_head.bias"``, which PEFT itself cannot express) under ``base_model.model.<path>.<name>``."""
    state = {PEFT_PREFIX + name: param.detach() for name, param in lora_parameters(model)}
    for path in modules_to_save:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            try:
                state[PEFT_PREFIX + path] = model.get_parameter(path).detach()
                continue
            except AttributeError:
                raise ValueError(f"modules_to_save: {type(model).__name__} has no module or parameter {path!r}") from None
        for name, param in module.named_parameters():
            state[f"{PEFT_PREFIX}{path}.{name}"] = param.detach()
    return state


def save_peft_adapter(
    model: nn.Module,
    directory: PathLike,
    *,
    base_model_name_or_path: Optional[str] = None,
    modules_to_save: Sequence[str] = (),
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` for ``model``'s adapters
    (and the ``modules_to_save``), atomically, in the format ``peft.PeftModel.from_pretrained``
    reads. Module paths are ``model``'s: an adapter of a bare backbone loads onto a transformers
    ``XLMRobertaXLModel``, one of a task model onto the same transformers task model.
    ``base_model_name_or_path`` is recorded for PEFT (the base checkpoint's name or path)."""
    config = lora_config_of(model)
    state = peft_state_dict(model, modules_to_save=modules_to_save)
    alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
    adapter_config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "revision": None, "inference_mode": True, "r": config.r, "lora_alpha": alpha,
        "lora_dropout": config.dropout, "target_modules": config.pattern, "init_lora_weights": True,
        "modules_to_save": list(modules_to_save) or None, "layers_pattern": None, **_UNSUPPORTED,
    }
    specs = [TensorSpec(key, tensor.dtype, tuple(tensor.shape)) for key, tensor in state.items()]
    directory = Path(directory)
    with atomic_directory(directory) as staging:
        (staging / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf8")
        write_safetensors(staging / ADAPTER_WEIGHTS_NAME, specs, state.__getitem__, metadata={"format": "pt"})
    return directory


# ------------------------------------------------------------------------------------------ loading
def read_adapter_config(directory: PathLike) -> Dict[str, Any]:
    """``adapter_config.json`` of ``directory``, checked for what `load_peft_adapter` supports."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the PEFT adapter config ({error})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type must be 'LORA', got {config.get('peft_type') if isinstance(config, dict) else config!r}")
    for name, needed in _UNSUPPORTED.items():
        value = config.get(name, needed)
        if value != needed and not (needed in ({}, None) and not value):
            raise CheckpointError(f"{path}: {name}={value!r} is not supported (only {name}={needed!r})")
    for name in ("r", "lora_alpha"):
        if name not in config:
            raise CheckpointError(f"{path}: the setting {name!r} is missing")
    return config


def _module_path(model: nn.Module, path: str, modules: Mapping[str, nn.Module]) -> Optional[str]:
    """``path`` as a module path of ``model``: as it is, or with the backbone prefix (``roberta.``)
    added or removed (an adapter of a bare backbone on a task model, or the reverse)."""
    prefix = getattr(model, "base_model_prefix", "roberta") + "."
    candidates = [path, prefix + path, path[len(prefix):] if path.startswith(prefix) else None]
    return next((c for c in candidates if c is not None and c in modules), None)


def _split_keys(file: SafetensorsFile, model: nn.Module) -> Tuple[Dict[str, Tuple[str, str]], Dict[str, str]]:
    """The file's keys as ``{key: (module path, "lora_A"/"lora_B")}`` for adapters and
    ``{key: parameter name}`` for the other tensors (``modules_to_save``), resolved in ``model``."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    adapters: Dict[str, Tuple[str, str]] = {}
    others: Dict[str, str] = {}
    for key in file.keys():
        if not key.startswith(PEFT_PREFIX):
            raise CheckpointError(f"{file.path}: tensor {key!r} does not start with {PEFT_PREFIX!r} (not a PEFT adapter key)")
        name = key[len(PEFT_PREFIX):]
        suffix = next((s for s in _ADAPTER_SUFFIXES if name.endswith(s)), None)
        if suffix is not None:
            path = _module_path(model, name[: -len(suffix)], modules)
            if path is None:
                raise CheckpointError(f"{file.path}: tensor {key!r} adapts a module that {type(model).__name__} lacks")
            adapters[key] = (path, suffix.split(".")[1])
            continue
        module, _, param = name.rpartition(".")
        path = _module_path(model, module, modules)
        if path is None or f"{path}.{param}" not in params:
            raise CheckpointError(f"{file.path}: tensor {key!r} has no parameter in {type(model).__name__}")
        others[key] = f"{path}.{param}"
    return adapters, others


def _lora_config(config: Mapping[str, Any], paths: Iterable[str], where: Path) -> LoraConfig:
    targets = set()
    for path in paths:
        target = target_of(path)
        if target is None:
            raise CheckpointError(f"{where}: {path} is no LoRA target of modeling (targets: {list(TARGETS)})")
        targets.add(target)
    try:
        return LoraConfig(r=config["r"], alpha=config["lora_alpha"], dropout=config.get("lora_dropout", 0.0),
                          targets=targets)
    except ValueError as error:
        raise CheckpointError(f"{where / ADAPTER_CONFIG_NAME}: {error}") from None


def _copy(file: SafetensorsFile, key: str, target: Tensor) -> None:
    shape = tuple(file.shape(key))
    if shape != tuple(target.shape):
        raise CheckpointError(f"{file.path}: tensor {key!r} has shape {list(shape)}, the model needs "
                              f"{list(target.shape)} (an adapter for a backbone of other shapes or rank)")
    with torch.no_grad():
        target.copy_(file.view(key))


def load_peft_adapter(model: nn.Module, directory: PathLike, *, freeze_base: bool = True,
                      upcast: Optional[bool] = None) -> Dict[str, LoraLinear]:
    """Load a PEFT LoRA adapter directory onto ``model`` (in place) and return its LoRA layers.

    Without adapters yet, `apply_lora` puts them on the modules the file's tensors name (rank,
    alpha and dropout from ``adapter_config.json``; ``freeze_base`` and ``upcast`` as there);
    with adapters, the file must cover exactly those, with the same rank and alpha. Tensors of
    ``modules_to_save`` (e.g. ``classifier``) are loaded into their parameters. A tensor whose
    shape differs from the model's raises `CheckpointError` naming it.
    """
    directory = Path(directory)
    config = read_adapter_config(directory)
    weights = directory / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found (PEFT adapters are read from safetensors only)")
    file = SafetensorsFile(weights)
    try:
        adapters, others = _split_keys(file, model)
        wanted = _lora_config(config, {path for path, _ in adapters.values()}, directory)
        layers = lora_layers(model)
        if not layers:
            layers = apply_lora(model, wanted, freeze_base=freeze_base, upcast=upcast)
        elif lora_config_of(model).r != wanted.r or lora_config_of(model).alpha != wanted.alpha:
            raise CheckpointError(f"{directory}: adapter r={wanted.r}, alpha={wanted.alpha:g} differ from the "
                                  f"model's LoRA layers ({lora_config_of(model)})")
        _check_coverage(adapters, layers, weights)
        for key, (path, which) in adapters.items():
            _copy(file, key, getattr(layers[path], which).weight)
        params = dict(model.named_parameters(remove_duplicate=False))
        for key, name in others.items():
            _copy(file, key, params[name])
    finally:
        file.close()
    return layers


def _check_coverage(adapters: Mapping[str, Tuple[str, str]], layers: Mapping[str, LoraLinear], where: Path) -> None:
    """Every LoRA layer gets both its A and B from the file, and every file adapter has a layer."""
    given = set(adapters.values())
    for key, (path, _) in adapters.items():
        if path not in layers:
            raise CheckpointError(f"{where}: tensor {key!r} adapts {path}, which has no LoRA layer in the model")
    missing: List[str] = [f"{PEFT_PREFIX}{path}.{which}.weight" for path in layers for which in ("lora_A", "lora_B")
                          if (path, which) not in given]
    if missing:
        raise CheckpointError(f"{where}: the adapter lacks {len(missing)} tensors the model's LoRA layers need, "
                              f"e.g. {missing[0]!r}")
