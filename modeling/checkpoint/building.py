"""Building a model without memory and planning what fills it: `parameters_on_meta` (construction
with parameters on the meta device), `plan_load` (which checkpoint key fills which group of tied
parameters, what is missing, what is left over), `check_plan` (refusals before any tensor is read)
and `set_tensor`, which puts a tensor in place of a parameter or buffer."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .discovery import Checkpoint
from .files import CheckpointError, Shape

__all__ = ["parameters_on_meta", "LoadPlan", "plan_load", "check_plan", "set_tensor"]

_BACKBONE_PREFIXES = ("embeddings.", "encoder.")
_OPTIONAL_BACKBONE_PREFIXES = ("pooler.",)
_META_LOCK = threading.Lock()
_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "ones_", "zeros_", "orthogonal_")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Construct modules with their parameters on the meta device (no memory, no init cost).

    Buffers stay real, so values a module computes at construction (non-persistent buffers)
    survive. ``torch.nn.init`` functions skip meta tensors meanwhile (some, e.g. ``normal_``,
    would otherwise import torch's Python decompositions: seconds per process). Only the calling
    thread is affected.
    """
    original = nn.Module.register_parameter
    thread = threading.get_ident()

    def register_parameter(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if param is not None and not param.is_meta and threading.get_ident() == thread:
            param = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    def skipping_meta(init: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def wrapped(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if tensor.is_meta and threading.get_ident() == thread:
                return tensor
            return init(tensor, *args, **kwargs)

        return wrapped

    inits = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    with _META_LOCK:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        for name, init in inits.items():
            setattr(nn.init, name, skipping_meta(init))
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]
            for name, init in inits.items():
                setattr(nn.init, name, init)


@dataclass
class LoadPlan:
    """What goes where: groups of tied names, their sources, and what is missing or left over."""

    groups: List[List[str]]
    sources: Dict[int, str]  # group index -> checkpoint key it is loaded from
    missing: List[str]
    unexpected: List[str]
    # (parameter name, the checkpoint tensor's shape, the parameter's shape) skipped by ``ignore_mismatched_sizes``;
    # their parameters are listed in ``missing`` too (they are initialised)
    mismatched: List[Tuple[str, Shape, Shape]] = field(default_factory=list)


def _map_prefix(keys: Iterable[str], expected: Iterable[str], prefix: str) -> Dict[str, str]:
    """checkpoint key -> model key: add or strip ``prefix.`` between bare and task checkpoints."""
    keys, expected = list(keys), set(expected)
    dotted = prefix + "."
    model_has = any(k.startswith(dotted) for k in expected)
    file_has = any(k.startswith(dotted) for k in keys)
    backbone = _BACKBONE_PREFIXES + _OPTIONAL_BACKBONE_PREFIXES
    mapping = {}
    for key in keys:
        if model_has and not file_has and key.startswith(backbone):
            mapping[key] = dotted + key
        elif file_has and not model_has and key.startswith(dotted):
            mapping[key] = key[len(dotted):]
        else:
            mapping[key] = key
    return mapping


def _is_backbone(key: str, prefix: str) -> bool:
    """Keys whose absence or surplus means the config does not match (pooler excluded)."""
    bare = key[len(prefix) + 1:] if key.startswith(prefix + ".") else key
    return bare.startswith(_BACKBONE_PREFIXES) or "sentence_encoder." in key


def plan_load(model: nn.Module, checkpoint: Checkpoint, prefix: str) -> LoadPlan:
    state = model.state_dict(keep_vars=True)
    groups: Dict[int, List[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    group_list = list(groups.values())
    by_model_key = {model_key: key for key, model_key in _map_prefix(checkpoint.tensors, state, prefix).items()}
    sources: Dict[int, str] = {}
    missing: List[str] = []
    consumed = set()
    for index, names in enumerate(group_list):
        present = [by_model_key[n] for n in names if n in by_model_key]
        consumed.update(present)
        if present:
            sources[index] = present[0]
        elif isinstance(state[names[0]], nn.Parameter):
            missing.append(names[0])
    unexpected = [key for key in checkpoint.tensors if key not in consumed]
    return LoadPlan(group_list, sources, missing, unexpected)


def check_plan(plan: LoadPlan, model: nn.Module, checkpoint: Checkpoint, prefix: str, config_source: Optional[str],
               *, ignore_mismatched_sizes: bool = False) -> None:
    """Refuse missing or surplus backbone weights and mis-shaped / non-float tensors, before any read.
    With ``ignore_mismatched_sizes`` a mis-shaped tensor is dropped from the plan instead: its
    parameter becomes missing (to be initialised) and the pair is listed in ``plan.mismatched``."""
    hint = f" (config from {config_source})" if config_source else " (config inferred from the shapes)"
    if ignore_mismatched_sizes:
        _drop_mismatched(plan, model, checkpoint)
    mismatched = {name for name, _, _ in plan.mismatched}
    fatal_missing = [key for key in plan.missing if _is_backbone(key, prefix) and key not in mismatched]
    if fatal_missing:
        raise CheckpointError(
            f"{checkpoint.source}: missing weight {fatal_missing[0]!r} for {type(model).__name__}"
            f"{hint} ({len(fatal_missing)} backbone weights missing in all)"
        )
    fatal_unexpected = [key for key in plan.unexpected if _is_backbone(key, prefix)]
    if fatal_unexpected:
        raise CheckpointError(
            f"{checkpoint.describe(fatal_unexpected[0])}: unexpected weight: {type(model).__name__}{hint} has no "
            f"such parameter, so the checkpoint does not match the model ({len(fatal_unexpected)} such keys)"
        )
    state = model.state_dict(keep_vars=True)
    for index, key in plan.sources.items():
        name = plan.groups[index][0]
        file, file_key = checkpoint.tensors[key]
        expected = tuple(state[name].shape)
        if file.shape(file_key) != expected:
            raise CheckpointError(
                f"{checkpoint.describe(key)}: shape {list(file.shape(file_key))} does not fit {name!r}, which "
                f"has shape {list(expected)}{hint}"
            )
        if state[name].is_floating_point() and not file.dtype(file_key).is_floating_point:
            raise CheckpointError(
                f"{checkpoint.describe(key)}: dtype {file.dtype(file_key)} cannot be read into the floating "
                f"point weight {name!r}"
            )


def _drop_mismatched(plan: LoadPlan, model: nn.Module, checkpoint: Checkpoint) -> None:
    state = model.state_dict(keep_vars=True)
    for index, key in list(plan.sources.items()):
        name = plan.groups[index][0]
        file, file_key = checkpoint.tensors[key]
        if file.shape(file_key) != tuple(state[name].shape):
            del plan.sources[index]
            plan.missing.append(name)
            plan.mismatched.append((name, file.shape(file_key), tuple(state[name].shape)))


def set_tensor(model: nn.Module, name: str, value: Tensor) -> None:
    """Put ``value`` in place of the parameter or buffer ``name`` (a tensor becomes a parameter)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=True)
    else:
        module._buffers[attr] = value
