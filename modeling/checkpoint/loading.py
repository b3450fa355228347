"""Loading models and state dicts: `load_pretrained` (build on the meta device, materialise each
tensor straight from its file, initialise what the checkpoint lacks, report missing / unexpected
keys once), `resolve_dtype` and `load_state_dict`."""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ..config import CONFIG_FIELDS, ConfigError, XLMRobertaXLConfig
from ..dtypes import DTYPE_NAMES
from .building import LoadPlan, check_plan, parameters_on_meta, plan_load, set_tensor
from .discovery import Checkpoint, open_checkpoint
from .files import CheckpointError, DTypeLike, PathLike, TensorFile
from .inference import check_config, infer_config

__all__ = ["load_pretrained", "resolve_dtype", "load_state_dict"]

logger = logging.getLogger(__package__)  # "modeling.checkpoint", as before the package split
# elements summed per step when a materialised tensor is checked for NaN / inf (bounds the scratch
# memory of the exact count that a non-finite sum triggers)
_FINITE_CHUNK = 2**22


def load_pretrained(
    model_cls: Type[nn.Module],
    path: PathLike,
    *,
    dtype: DTypeLike = None,
    device: Optional[Union[str, torch.device]] = None,
    config: Any = None,
    check_finite: bool = True,
    ignore_mismatched_sizes: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build ``model_cls`` from the checkpoint at ``path`` without holding two copies of the weights.

    - ``path``: an HF directory, a ``.safetensors`` / ``.bin`` file (config given or a
      ``config.json`` beside it, else inferred from shapes), a sharded index, a fairseq ``model.pt``.
    - ``dtype``: torch dtype, ``"float32"`` / ``"bfloat16"`` / ``"float16"`` or ``"auto"``;
      default float32. Safetensors already stored in that dtype stay memory-mapped (zero-copy,
      copy-on-write: writing to a parameter never changes the file; as with any memory map, the
      file must not be truncated or rewritten in place while the model lives — our own
      `save_pretrained` replaces files, so saving over the loaded directory is safe); others
      are cast chunk by chunk.
    - ``device``: where the weights are materialised (default: torch's default device, CPU unless
      a ``with torch.device(...)`` block says otherwise; on ``meta`` nothing is read).
    - ``config``: an `XLMRobertaXLConfig`, a dict or a path; ``overrides`` change config fields
      (and keys of the checkpoint's ``config.json``); constructor keywords such as
      ``add_pooling_layer`` are passed to ``model_cls``; any other keyword is a ``TypeError``.
    - ``check_finite``: refuse (`CheckpointError` naming file and key) a floating tensor holding
      NaN or inf values as it is materialised; ``False`` loads it as it is.
    - ``ignore_mismatched_sizes``: a tensor whose shape differs from its parameter's (e.g. a
      classifier for another label count) is skipped and the parameter initialised (HF's
      option) instead of refused; the config is then not checked against the shapes.

    Parameters the checkpoint lacks outside the backbone (task heads, pooler) are initialised
    like the reference; they, unused checkpoint keys and mismatched ones are logged once and
    stored in ``model.loading_info`` (HF's keys: ``missing_keys``, ``unexpected_keys``,
    ``mismatched_keys``, ``error_msgs``). The model is
    returned in eval mode.
    """
    checkpoint = open_checkpoint(path)
    try:
        return _load(model_cls, checkpoint, dtype=dtype, device=device, config=config, check_finite=check_finite,
                     ignore_mismatched_sizes=ignore_mismatched_sizes, overrides=dict(overrides))
    finally:
        checkpoint.close()


def _load(
    model_cls: Type[nn.Module],
    checkpoint: Checkpoint,
    *,
    dtype: DTypeLike,
    device: Optional[Union[str, torch.device]],
    config: Any,
    check_finite: bool,
    ignore_mismatched_sizes: bool,
    overrides: Dict[str, Any],
) -> nn.Module:
    model_kwargs, overrides = _split_overrides(model_cls, overrides)
    config, config_source = _resolve_config(model_cls, checkpoint, config, overrides)
    adapt = getattr(model_cls, "config_for_weights", None)
    if adapt is not None and "num_labels" not in overrides:
        config = adapt(config, checkpoint.shapes())  # e.g. the QA head's rows decide its num_labels
    if config_source is not None and not ignore_mismatched_sizes:
        check_config(config, checkpoint, config_source=config_source)
    target_dtype = resolve_dtype(dtype, config=config, checkpoint=checkpoint)
    target_device = torch.device(device) if device is not None else _default_device()
    with parameters_on_meta():
        model = model_cls(config, **model_kwargs)
    prefix = getattr(model_cls, "base_model_prefix", "roberta")
    plan = plan_load(model, checkpoint, prefix)
    check_plan(plan, model, checkpoint, prefix, config_source, ignore_mismatched_sizes=ignore_mismatched_sizes)
    _initialise_missing(model, plan, dtype=target_dtype, device=target_device)
    _materialise(model, plan, checkpoint, dtype=target_dtype, device=target_device, check_finite=check_finite)
    _finish(model, dtype=target_dtype, device=target_device)
    model.loading_info = _loading_info(model, plan, checkpoint)
    return model.eval()


def _loading_info(model: nn.Module, plan: LoadPlan, checkpoint: Checkpoint) -> Dict[str, list]:
    """HF's loading report of ``plan`` (logged once when anything was missing, unused or mismatched)."""
    mismatched = [name for name, _, _ in plan.mismatched]
    missing = [key for key in plan.missing if key not in mismatched]
    if missing or plan.unexpected:
        logger.warning(
            "Loading %s from %s: %d weights not in the checkpoint were initialised (%s); %d checkpoint "
            "weights were not used (%s)",
            type(model).__name__, checkpoint.source, len(missing), ", ".join(missing) or "-",
            len(plan.unexpected), ", ".join(plan.unexpected) or "-",
        )
    if mismatched:
        logger.warning(
            "Loading %s from %s: %d weights were initialised because the shapes did not match: %s",
            type(model).__name__, checkpoint.source, len(mismatched),
            "; ".join(f"{key} (checkpoint {list(a)}, model {list(b)})" for key, a, b in plan.mismatched),
        )
    return {"missing_keys": missing, "unexpected_keys": list(plan.unexpected), "mismatched_keys": mismatched,
            "error_msgs": []}


def _default_device() -> torch.device:
    """torch's default device (``with torch.device(...)`` sets it; CPU otherwise), as HF loads there."""
    get = getattr(torch, "get_default_device", None)  # torch >= 2.3
    return torch.device(get()) if get is not None else torch.device("cpu")


def _initialise_missing(model: nn.Module, plan: LoadPlan, *, dtype: torch.dtype, device: torch.device) -> None:
    """Give the missing parameters memory (zeros) and run the model's init on their modules only."""
    if not plan.missing:
        return
    state = model.state_dict(keep_vars=True)
    owners: List[nn.Module] = []
    for index, names in enumerate(plan.groups):
        if index in plan.sources or not isinstance(state[names[0]], nn.Parameter):
            continue
        meta = state[names[0]]
        param = nn.Parameter(torch.zeros(meta.shape, dtype=dtype, device=device), requires_grad=meta.requires_grad)
        for name in names:
            set_tensor(model, name, param)
            owner = _owner(model, name)
            if all(owner is not seen for seen in owners):
                owners.append(owner)
    init = getattr(model, "init_weights", None)
    if init is not None:
        init(modules=owners)


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def _materialise(
    model: nn.Module, plan: LoadPlan, checkpoint: Checkpoint, *, dtype: torch.dtype, device: torch.device,
    check_finite: bool,
) -> None:
    """Read every planned tensor (file by file, front to back) and assign it to its tied names."""
    state = model.state_dict(keep_vars=True)
    by_file: Dict[int, List[Tuple[int, str]]] = {}
    for index, key in plan.sources.items():
        file, _ = checkpoint.tensors[key]
        by_file.setdefault(id(file), []).append((index, key))
    with _one_thread():
        for file in checkpoint.files:
            jobs = sorted(by_file.get(id(file), []), key=lambda job: file.position(checkpoint.tensors[job[1]][1]))
            for index, key in jobs:
                names = plan.groups[index]
                current = state[names[0]]
                wanted = dtype if current.is_floating_point() else current.dtype
                name_in_file = checkpoint.tensors[key][1]
                if device.type == "meta":  # a model without memory: nothing to read
                    tensor = torch.empty(file.shape(name_in_file), dtype=wanted, device=device)
                else:
                    tensor = file.materialize(name_in_file, dtype=wanted, device=device)
                if check_finite and tensor.is_floating_point() and not tensor.is_meta:
                    _refuse_non_finite(file, name_in_file, key, tensor)
                value: Tensor = tensor
                if isinstance(current, nn.Parameter):
                    value = nn.Parameter(tensor, requires_grad=current.requires_grad)
                for name in names:
                    set_tensor(model, name, value)
            file.close()


def _count_non_finite(pieces: Iterable[Tensor]) -> int:
    """How many NaN / inf values ``pieces`` hold, `_FINITE_CHUNK` elements at a time.

    A chunk's sum is non-finite whenever the chunk holds a NaN or inf, so one pass without
    scratch memory clears it (file-backed data is read once, never copied); only a chunk whose
    sum is not finite is counted exactly (its sum may merely have overflowed).
    """
    bad = 0
    for piece in pieces:
        for chunk in piece.reshape(-1).split(_FINITE_CHUNK):
            if not bool(torch.isfinite(chunk.sum())):
                bad += chunk.numel() - int(torch.isfinite(chunk).sum())
    return bad


def _refuse_non_finite(file: TensorFile, name: str, key: str, tensor: Tensor) -> None:
    """Raise when ``tensor`` (``name`` of ``file``, the model's ``key``) holds NaN / inf values,
    telling a corrupt file from values that only overflow the dtype they were cast to.

    A tensor that holds the stored values as they are (the file's own view) is checked through
    `TensorFile.chunks`: a safetensors file reads them through short-lived maps, so the check
    leaves none of the file's pages resident (the model reads its own when it first uses them).
    """
    stored = file.dtype(name)
    as_stored = tensor.dtype == stored and tensor.device.type == "cpu"
    bad = _count_non_finite(file.chunks(name) if as_stored else [tensor])
    if not bad:
        return
    what = f"{file.path}: tensor {name!r}" + (f" (loaded as {key!r})" if key != name else "")
    if stored != tensor.dtype and not _count_non_finite(file.chunks(name)):
        raise CheckpointError(
            f"{what} has {bad} value(s) beyond the range of {tensor.dtype} once cast from {stored}: load it "
            f"in {stored} (dtype=...) or pass check_finite=False to load it anyway"
        )
    raise CheckpointError(
        f"{what} has {bad} NaN/inf value(s); the checkpoint is corrupt. Pass check_finite=False to load it anyway"
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the casts on the calling thread only.

    Casting out of a memory map is bound by page faults, not arithmetic, and each release of
    mapped pages (a short-lived map closed) must flush the TLB of every CPU running a thread of
    the process, so more threads cost more CPU and wall time than one (bench/xl_load.py measures it).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _finish(model: nn.Module, *, dtype: torch.dtype, device: torch.device) -> None:
    """Move/cast the buffers the checkpoint did not hold, re-tie, and check nothing is left on meta."""
    for name, buffer in list(model.named_buffers()):
        if buffer.device != device or (buffer.is_floating_point() and buffer.dtype != dtype):
            set_tensor(model, name, buffer.to(device=device, dtype=dtype if buffer.is_floating_point() else buffer.dtype))
    tie = getattr(model, "tie_weights", None)
    if tie is not None:
        tie()
    left = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta and device.type != "meta"]
    if left:
        raise CheckpointError(f"internal error: {left[0]!r} was neither loaded nor initialised")


def load_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """The tensors of a checkpoint (file or directory, shards included) under HF key names.

    Safetensors and zip pickles come back memory-mapped (copy-on-write), in their stored dtype;
    fairseq keys are renamed to HF's.
    """
    checkpoint = open_checkpoint(path)
    try:
        return {key: file.view(name) for key, (file, name) in checkpoint.tensors.items()}
    finally:
        checkpoint.close()


def _split_overrides(model_cls: type, overrides: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Separate constructor keywords (e.g. ``add_pooling_layer``) from config overrides."""
    accepted = set(inspect.signature(model_cls.__init__).parameters) - {"self", "config"}
    model_kwargs = {k: overrides[k] for k in list(overrides) if k in accepted}
    return model_kwargs, {k: v for k, v in overrides.items() if k not in model_kwargs}


def _resolve_config(
    model_cls: type, checkpoint: Checkpoint, config: Any, overrides: Dict[str, Any]
) -> Tuple[XLMRobertaXLConfig, Optional[str]]:
    """The config to build with, and where it came from (``None`` when inferred from shapes).
    An override that is no config field (nor a key of the ``config.json`` read) is a ``TypeError``
    naming it, as HF's constructor raises for what neither the config nor the model takes."""
    unused: Dict[str, Any] = {}
    try:
        source: Optional[str] = "the given config"
        if isinstance(config, XLMRobertaXLConfig):
            if overrides:
                config, unused = XLMRobertaXLConfig.from_dict(config.to_dict(), return_unused_kwargs=True, **overrides)
        elif isinstance(config, dict):
            config, unused = XLMRobertaXLConfig.from_dict(config, return_unused_kwargs=True, **overrides)
        elif config is not None or checkpoint.config_file is not None:
            source = str(config if config is not None else checkpoint.config_file)
            config, unused = XLMRobertaXLConfig.from_pretrained(source, return_unused_kwargs=True, **overrides)
        else:
            unused = {k: v for k, v in overrides.items() if k not in CONFIG_FIELDS}
        if config is not None:
            _validate(config, source)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{checkpoint.source}: cannot build the config: {err}") from err
    if unused:
        raise TypeError(f"{model_cls.__name__}.from_pretrained() got unexpected keyword argument(s) "
                        f"{', '.join(map(repr, unused))}: neither a loading option, a config field nor a "
                        f"keyword of {model_cls.__name__}")
    if config is not None:
        return config, source
    heads = overrides.pop("num_attention_heads", None)
    return infer_config(checkpoint, num_attention_heads=heads, **overrides), None


def _validate(config: XLMRobertaXLConfig, source: Optional[str]) -> None:
    """`XLMRobertaXLConfig.validate`, naming where the config came from."""
    try:
        config.validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err


def resolve_dtype(dtype: DTypeLike, *, config: XLMRobertaXLConfig, checkpoint: Checkpoint) -> torch.dtype:
    """``None`` -> torch's default dtype; ``"auto"`` -> ``config.torch_dtype`` or the file's float dtype."""
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    if name == "auto":
        if config.torch_dtype is not None:
            return config.torch_dtype
        for file, key in checkpoint.tensors.values():
            if file.dtype(key).is_floating_point:
                return file.dtype(key)
        return torch.get_default_dtype()
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
    return DTYPE_NAMES[name]
