"""The torch side of every spacy_xlmrxl component: where weights come from and how torch runs.

Owns
- checkpoint resolution: a local HF/fairseq directory or file, or a hub-style name such as
  ``facebook/xlm-roberta-xl`` looked up ONLY in a local directory or the local HF cache
  (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``) — never downloaded — or
  random init from a preset (``tiny``, ``small``, ``xl``, ``xxl``); see `BackboneSource`;
- tokenizer resolution (the checkpoint's ``sentencepiece.bpe.model`` or an explicit path);
- torch <-> thinc device and array helpers (CPU numpy, GPU cupy, following thinc's current ops);
  a forked child process (``nlp.pipe(n_process=...)``) runs torch on one thread: torch's OpenMP
  pool, once started in the parent, deadlocks in a fork otherwise;
- precision: bf16 autocast, and fp16 autocast with a loss scaler of our own that keeps its scale
  as a Python float (thinc's grad scaler keeps a device tensor and crashes in
  ``torch._amp_update_scale_``, spaCy issue 13512), gradient checkpointing, freezing;
- `TorchModuleShim`: the thinc ``Shim`` that gives a torch module to thinc's optimizer,
  ``use_params``, device moves and byte serialisation (safetensors, not pickle);
- weight directories: `save_module_dir` / `load_module_dir` write and read a torch module as
  ``config.json`` + (sharded) safetensors + the tokenizer model, loaded back by memory map.

This module imports spaCy only through thinc; components, QA and fill-mask all build on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Type, Union

import numpy
import torch
from thinc.api import CupyOps, NumpyOps, Ops, get_current_ops
from thinc.shims import Shim
from thinc.util import torch2xp, xp2torch

from modeling.config import PRESETS, XLMRobertaXLConfig

PathLike = Union[str, os.PathLike]

TOKENIZER_FILE = "sentencepiece.bpe.model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
DEFAULT_CHECKPOINT = "facebook/xlm-roberta-xl"
DEFAULT_MAX_SHARD_SIZE: Union[int, str] = "5GB"  # as HF; shards are safetensors files, never msgpack
_WEIGHT_FILES = (WEIGHTS_FILE, WEIGHTS_INDEX_FILE, "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "model.pt")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
MIXED_PRECISION = ("none", "bf16", "fp16")


def _one_thread_after_fork() -> None:
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


class BackboneError(ValueError):
    """The backbone cannot be built or loaded; the message says what to pass instead."""


# --------------------------------------------------------------------------- resolution
def hf_hub_cache() -> Path:
    """The local HF hub cache directory, honouring ``HF_HUB_CACHE`` and ``HF_HOME``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _cached_snapshot(name: str) -> Optional[Path]:
    """The snapshot directory of hub model ``name`` in the local cache (``refs/main`` first)."""
    repo_dir = hf_hub_cache() / ("models--" + name.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        preferred = snapshots / ref.read_text(encoding="utf8").strip()
        if _is_checkpoint_dir(preferred):
            return preferred
    candidates = [p for p in snapshots.iterdir() if _is_checkpoint_dir(p)]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in _WEIGHT_FILES)


def resolve_checkpoint(name: PathLike) -> Path:
    """A local checkpoint directory or file for ``name``; never downloads.

    ``name`` is a path (HF directory, fairseq directory, or one weights file) or a hub-style
    ``org/model`` name found in the local HF cache.
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    text = str(name)
    if _HUB_NAME.match(text):
        snapshot = _cached_snapshot(text)
        if snapshot is not None:
            return snapshot
        where = f"the local HF cache ({hf_hub_cache()})"
    else:
        where = "the file system"
    raise BackboneError(
        f"checkpoint {text!r} was not found in {where}; this package never downloads weights. "
        "Pass checkpoint = a local HF/fairseq directory or weights file (or put the model in the "
        f"HF cache), or set checkpoint = null and preset = one of {sorted(PRESETS)} for a "
        "randomly initialised backbone (that also needs tokenizer = path to sentencepiece.bpe.model)."
    )


def resolve_tokenizer(tokenizer: Optional[PathLike], checkpoint: Optional[Path] = None) -> Path:
    """The sentencepiece model file: ``tokenizer`` (a file or a directory holding one), else the
    checkpoint's ``sentencepiece.bpe.model``."""
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if path.is_file():
            return path
        raise BackboneError(f"tokenizer {str(tokenizer)!r}: no sentencepiece model at {path}")
    if checkpoint is not None:
        folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
        if (folder / TOKENIZER_FILE).is_file():
            return folder / TOKENIZER_FILE
        raise BackboneError(
            f"checkpoint {checkpoint} has no {TOKENIZER_FILE}; pass tokenizer = path to the "
            "XLM-R sentencepiece model"
        )
    raise BackboneError(
        "no tokenizer: a preset backbone needs tokenizer = path to the XLM-R "
        f"{TOKENIZER_FILE} (or a directory holding it)"
    )


def torch_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or fp32/bf16/fp16) -> torch dtype; None stays None."""
    if name is None:
        return None
    try:
        return DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise BackboneError(f"dtype must be one of {sorted(DTYPES)} or null, got {name!r}") from None


@dataclass
class BackboneSource:
    """Where a backbone's weights and tokenizer come from (the config's backbone settings).

    Exactly one of ``checkpoint`` (pretrained weights) and ``preset`` (random init) is used:
    a preset wins only when ``checkpoint`` is null. ``tokenizer`` overrides the checkpoint's.
    """

    checkpoint: Optional[str] = DEFAULT_CHECKPOINT
    preset: Optional[str] = None
    tokenizer: Optional[str] = None
    dtype: Optional[str] = None
    seed: Optional[int] = None

    def validate(self) -> "BackboneSource":
        """Check values that need no file system (config time); raise `BackboneError`."""
        if self.checkpoint is not None and self.preset is not None:
            raise BackboneError(
                f"both checkpoint ({self.checkpoint!r}) and preset ({self.preset!r}) are set; set "
                "one of them to null (a preset means random initialisation)"
            )
        if self.checkpoint is None and self.preset is None:
            raise BackboneError(
                "neither checkpoint nor preset is set: pass checkpoint = a local HF/fairseq "
                f"directory or hub name in the local cache, or preset = one of {sorted(PRESETS)}"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise BackboneError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        torch_dtype(self.dtype)
        return self

    def replace(self, **changes: Any) -> "BackboneSource":
        """A copy with the given non-None settings changed (``checkpoint`` and ``preset``
        exclude each other: setting one clears the other)."""
        data = self.to_dict()
        changes = {k: v for k, v in changes.items() if v is not None}
        if "preset" in changes:
            data["checkpoint"] = None
        if "checkpoint" in changes:
            data["preset"] = None
        data.update(changes)
        return BackboneSource(**data)

    def to_dict(self) -> Dict[str, Any]:
        return dict(checkpoint=self.checkpoint, preset=self.preset, tokenizer=self.tokenizer,
                    dtype=self.dtype, seed=self.seed)

    def checkpoint_path(self) -> Optional[Path]:
        self.validate()
        return resolve_checkpoint(self.checkpoint) if self.checkpoint is not None else None

    def tokenizer_path(self) -> Path:
        return resolve_tokenizer(self.tokenizer, self.checkpoint_path())

    def build(self, model_cls: Type[torch.nn.Module], *, device: Union[str, torch.device, None] = None,
              config_overrides: Optional[Dict[str, Any]] = None,
              model_kwargs: Optional[Dict[str, Any]] = None) -> torch.nn.Module:
        """Build ``model_cls`` (any `modeling` class) with loaded or random weights on ``device``."""
        overrides = dict(config_overrides or {})
        kwargs = dict(model_kwargs or {})
        dtype = torch_dtype(self.dtype)
        path = self.checkpoint_path()
        if path is None:
            config = XLMRobertaXLConfig.from_preset(str(self.preset), **overrides)
            with torch.device(device or "cpu"):  # allocate (and initialise) where it will run
                module = model_cls(config, **kwargs)  # `modeling` classes initialise themselves
            if self.seed is not None and callable(getattr(module, "init_weights", None)):
                module.init_weights(seed=self.seed)  # type: ignore[operator]
        else:
            from modeling import checkpoint as ckpt

            # constructor keywords (add_pooling_layer) travel with the config overrides
            module = ckpt.load_pretrained(model_cls, path, dtype=dtype, device=device, **overrides, **kwargs)
        if dtype is not None:
            module = module.to(dtype=dtype)
        if device is not None:
            module = module.to(device)
        return module


def load_tokenizer(source: Union[PathLike, bytes]) -> Any:
    """The `modeling.tokenizer.XLMRobertaTokenizer` for a sentencepiece file, a directory
    holding ``sentencepiece.bpe.model``, or the serialised model bytes."""
    if not isinstance(source, bytes):
        path = Path(source)
        source = (path / TOKENIZER_FILE if path.is_dir() else path).read_bytes()
    return _tokenizer_from_proto(hashlib.sha256(source).hexdigest(), source)


_TOKENIZERS: Dict[str, Any] = {}


def _tokenizer_from_proto(digest: str, proto: bytes) -> Any:
    """One shared tokenizer per sentencepiece model (loading the real one takes seconds)."""
    from modeling.tokenizer import XLMRobertaTokenizer

    if digest not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 8:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[digest] = XLMRobertaTokenizer(model_proto=proto)
    return _TOKENIZERS[digest]


# --------------------------------------------------------------------------- devices
def torch_device(ops: Optional[Ops] = None) -> torch.device:
    """The torch device matching thinc's ops: ``cuda:<current>`` for CupyOps, else CPU."""
    ops = ops if ops is not None else get_current_ops()
    if isinstance(ops, CupyOps):
        return torch.device("cuda", torch.cuda.current_device())
    if type(ops).__name__ == "MPSOps":  # pragma: no cover
        return torch.device("mps")
    return torch.device("cpu")


def to_torch(array: Any, *, device: torch.device, dtype: Optional[torch.dtype] = None,
             requires_grad: bool = False) -> torch.Tensor:
    """A numpy/cupy array as a torch tensor on ``device`` (zero-copy where possible)."""
    if isinstance(array, numpy.ndarray) and not array.flags.c_contiguous:
        array = numpy.ascontiguousarray(array)
    tensor = xp2torch(array, device=device)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if requires_grad:
        tensor.requires_grad_()
    return tensor


def to_xp(tensor: torch.Tensor, ops: Ops, *, dtype: str = "float32") -> Any:
    """A torch tensor as an array of ``ops`` (numpy on CPU, cupy on GPU), detached."""
    tensor = tensor.detach()
    if tensor.is_floating_point() and dtype == "float32" and tensor.dtype != torch.float32:
        tensor = tensor.float()
    if isinstance(ops, NumpyOps) and tensor.device.type != "cpu":
        tensor = tensor.cpu()
    return torch2xp(tensor, ops=ops)


# --------------------------------------------------------------------------- precision
def normalise_mixed_precision(value: Union[str, bool, None]) -> str:
    """``"bf16"``, ``"fp16"`` or ``"none"`` from the config value (true means bf16)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "bf16"
    text = str(value).lower()
    text = {"no": "none", "false": "none", "off": "none", "fp32": "none", "float32": "none", "true": "bf16",
            "bfloat16": "bf16", "float16": "fp16"}.get(text, text)
    if text not in MIXED_PRECISION:
        raise BackboneError(f"mixed_precision must be one of {MIXED_PRECISION} (or true/false), got {value!r}")
    return text


def autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    """torch autocast for ``mode`` ("bf16"/"fp16") on ``device``; a null context for "none"."""
    if mode == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class LossScaler:
    """Dynamic loss scaling for fp16 training, independent of thinc's ``PyTorchGradScaler``.

    The gradient arriving from the thinc layers is multiplied by `scale` before torch's
    backward; `unscale_` divides the accumulated parameter gradients once per optimizer step and
    reports non-finite values, in which case the step is skipped and the scale backs off.
    The scale is a Python float, so no device or dtype can disagree (spaCy issue 13512).
    """

    def __init__(self, *, enabled: bool, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        self.enabled = enabled
        self.scale = float(init_scale) if enabled else 1.0
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self._good_steps = 0

    def scale_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.scale if self.enabled else grad

    def unscale_(self, grads: Sequence[torch.Tensor]) -> bool:
        """Divide ``grads`` in place by the scale; True when any is non-finite."""
        if not self.enabled or not grads:
            return False
        inv = 1.0 / self.scale
        bad = torch.zeros((), dtype=torch.bool, device=grads[0].device)
        for grad in grads:
            grad.mul_(inv)
            bad = bad | ~torch.isfinite(grad).all().to(bad.device)
        return bool(bad.item())

    def update(self, found_inf: bool) -> None:
        if not self.enabled:
            return
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, 1.0)
            self._good_steps = 0
        else:
            self._good_steps += 1
            if self._good_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self._good_steps = 0


# --------------------------------------------------------------------------- the shim
class TorchModuleShim(Shim):
    """Gives a torch module to thinc: optimizer steps, ``use_params``, device moves, bytes.

    The module may be absent until the owning thinc model's ``init`` creates it
    (`set_module`). Forward passes are run by the owning layer inside `run` (train or
    inference mode, autocast, freezing); backward passes call `backward`, which applies the
    loss scale. `finish_update` hands every parameter with a gradient to the thinc optimizer.
    Byte serialisation uses safetensors; `external` makes ``to_bytes`` skip the weights when a
    component writes them as files of their own (`save_module_dir`).
    """

    def __init__(self, module: Optional[torch.nn.Module] = None, *, mixed_precision: Union[str, bool, None] = None,
                 frozen: bool = False, grad_checkpointing: bool = False,
                 model_cls: Optional[Type[torch.nn.Module]] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(module, config={})
        self.precision = normalise_mixed_precision(mixed_precision)
        self.frozen = frozen
        self.grad_checkpointing = grad_checkpointing
        self.scaler = LossScaler(enabled=self.precision == "fp16")
        self.model_cls = model_cls
        self.model_kwargs = dict(model_kwargs or {})
        self.external = False
        if isinstance(get_current_ops(), CupyOps):  # pragma: no cover - GPU only
            from thinc.backends import context_pools, set_gpu_allocator

            if "pytorch" not in context_pools.get():  # one memory pool for cupy and torch, as thinc does
                set_gpu_allocator("pytorch")
        if module is not None:
            self.set_module(module)

    # -- module
    @property
    def module(self) -> torch.nn.Module:
        if self._model is None:
            raise BackboneError("the backbone has no weights yet: call nlp.initialize() or load a saved pipeline")
        return self._model

    @property
    def has_module(self) -> bool:
        return self._model is not None

    def set_module(self, module: torch.nn.Module, *, config: Optional[Dict[str, Any]] = None) -> None:
        self._model = module
        if config is not None:
            self.cfg = dict(config)
        elif hasattr(module, "config") and hasattr(module.config, "to_dict"):
            self.cfg = module.config.to_dict()
        if self.frozen:
            module.requires_grad_(False)
        if self.grad_checkpointing and hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable()

    @property
    def device(self) -> torch.device:
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch_device()

    # -- running
    @contextlib.contextmanager
    def run(self, is_train: bool) -> Iterator[bool]:
        """Context for a forward pass; yields whether a backward pass will follow."""
        module = self.module
        grads = is_train and not self.frozen
        module.train(grads)
        if grads:
            with autocast(self.precision, self.device):
                yield True
        else:
            with torch.inference_mode(), autocast(self.precision, self.device):
                yield False

    def backward(self, outputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        """Backpropagate ``grads`` (same shapes as ``outputs``) into the module's parameters."""
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs],
                                    [self.scaler.scale_grad(g).to(o.dtype) for o, g in pairs])

    def finish_update(self, optimizer: Any) -> None:
        if self._model is None or self.frozen:
            return
        named = [(n, p) for n, p in self._model.named_parameters() if p.grad is not None]
        found_inf = self.scaler.unscale_([p.grad for _, p in named])
        for name, param in named:
            if not found_inf:
                if param.dtype != torch.float32:
                    raise BackboneError(
                        f"training needs float32 weights, {name} is {param.dtype}: set dtype = "
                        "\"float32\" and use mixed_precision = \"bf16\" or \"fp16\" instead"
                    )
                new_data, _ = optimizer((self.id, name), torch2xp(param.data), torch2xp(param.grad))
                if not _shares_memory(param.data, new_data):
                    param.data.copy_(xp2torch(new_data, device=param.device))
            param.grad = None
        self.scaler.update(found_inf)

    @contextlib.contextmanager
    def use_params(self, params: Dict[Any, Any]) -> Iterator[None]:
        prefix = f"pytorch_{self.id}_"
        state = {k[len(prefix):]: v for k, v in params.items() if isinstance(k, str) and k.startswith(prefix)}
        if not state or self._model is None:
            yield
            return
        backup = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        self._model.load_state_dict({k: xp2torch(v, device=self.device) for k, v in state.items()}, strict=False)
        try:
            yield
        finally:
            self._model.load_state_dict(backup)

    def to_device(self, device_type: str, device_id: int) -> None:  # pragma: no cover - GPU only
        if self._model is None:
            return
        if device_type == "cpu":
            self._model.cpu()
        elif device_type == "gpu":
            self._model.cuda(device_id)
        else:
            raise ValueError(f"invalid device_type {device_type!r}; use 'cpu' or 'gpu'")

    # -- bytes (nlp.to_bytes, pickling); to_disk writes `save_module_dir` files instead
    def to_bytes(self) -> bytes:
        import srsly

        files = None
        if self._model is not None and not self.external:
            files = module_to_bytes(self._model)
        return srsly.msgpack_dumps({"config": self.cfg, "files": files})

    def from_bytes(self, data: bytes) -> "TorchModuleShim":
        import srsly

        msg = srsly.msgpack_loads(data)
        if not msg.get("files"):  # the weights live in files of their own, or were never made
            return self
        if self.model_cls is None:
            raise BackboneError("cannot restore a backbone from bytes: the shim has no model class")
        self.set_module(module_from_bytes(self.model_cls, msg["files"], **self.model_kwargs), config=msg["config"])
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> "TorchModuleShim":
        clone = TorchModuleShim(None, mixed_precision=self.precision, frozen=self.frozen,
                                grad_checkpointing=self.grad_checkpointing, model_cls=self.model_cls,
                                model_kwargs=self.model_kwargs)
        if self._model is not None:
            clone.set_module(self._compact_module(), config=dict(self.cfg))
        return clone

    def __getstate__(self) -> Dict[str, Any]:
        """Pickle a compact copy: loaded weights are views into one memory map, and pickle
        would otherwise write the whole file once per tensor."""
        state = dict(self.__dict__)
        if self._model is not None:
            state["_model"] = self._compact_module()
        return state

    def _compact_module(self) -> torch.nn.Module:
        if self.model_cls is None:
            import copy

            return copy.deepcopy(self._model)
        return clone_module(self._model, self.model_cls, **self.model_kwargs)  # type: ignore[arg-type]


def clone_module(module: torch.nn.Module, model_cls: Type[torch.nn.Module], **model_kwargs: Any) -> torch.nn.Module:
    """A copy of ``module`` whose tensors own exactly their data (no shared memory maps)."""
    from modeling.checkpoint import parameters_on_meta

    with parameters_on_meta():
        clone = model_cls(module.config.copy(), **model_kwargs)  # type: ignore[union-attr]
    state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    clone.load_state_dict(state, assign=True)
    for theirs, mine in zip(module.parameters(), clone.parameters()):
        mine.requires_grad_(theirs.requires_grad)
    return clone.train(module.training)


def _shares_memory(tensor: torch.Tensor, array: Any) -> bool:
    if isinstance(array, numpy.ndarray):
        return tensor.device.type == "cpu" and array.__array_interface__["data"][0] == tensor.data_ptr()
    ptr = getattr(getattr(array, "data", None), "ptr", None)  # cupy
    return ptr is not None and ptr == tensor.data_ptr()


# --------------------------------------------------------------------------- weight directories
def save_module_dir(module: torch.nn.Module, directory: PathLike, *, tokenizer_model: Optional[bytes] = None,
                    max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write ``module`` as an HF checkpoint directory: ``config.json`` + safetensors (sharded over
    ``max_shard_size``, with an index) + ``sentencepiece.bpe.model``. No pickle and no msgpack,
    so modules over 4 GiB serialise; the directory is itself a valid ``checkpoint``."""
    from modeling.checkpoint import save_pretrained

    out = save_pretrained(module, directory, max_shard_size=max_shard_size)
    if tokenizer_model is not None:
        (out / TOKENIZER_FILE).write_bytes(tokenizer_model)
    return out


def load_module_dir(model_cls: Type[torch.nn.Module], directory: PathLike, *, device: Optional[torch.device] = None,
                    dtype: Union[str, torch.dtype, None] = "auto", **model_kwargs: Any) -> torch.nn.Module:
    """Rebuild a module written by `save_module_dir`: parameters built on the meta device and
    assigned from the memory-mapped safetensors (no second copy when the dtype is kept)."""
    from modeling.checkpoint import CheckpointError, load_pretrained

    if not (Path(directory) / CONFIG_FILE).is_file():  # saved by us: never infer the config from shapes
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: missing; the backbone directory is incomplete")
    return load_pretrained(model_cls, directory, dtype=dtype, device=device or torch_device(), **model_kwargs)


def module_to_bytes(module: torch.nn.Module, tokenizer_model: Optional[bytes] = None) -> Dict[str, bytes]:
    """The files of `save_module_dir` as ``{name: bytes}`` (for ``to_bytes`` and pickling)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_module_dir(module, Path(tmp) / "m", tokenizer_model=tokenizer_model)
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def module_from_bytes(model_cls: Type[torch.nn.Module], files: Dict[str, bytes], *,
                      device: Optional[torch.device] = None, **model_kwargs: Any) -> torch.nn.Module:
    """Inverse of `module_to_bytes` (the weights are read into memory, not mapped)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            (folder / Path(name).name).write_bytes(data)
        module = load_module_dir(model_cls, folder, device=device, **model_kwargs)
        return _detach_from_files(module)


def _detach_from_files(module: torch.nn.Module) -> torch.nn.Module:
    """Copy memory-mapped parameters into memory (their files are about to be deleted)."""
    with torch.no_grad():
        for param in module.parameters():
            param.data = param.data.clone()
        for name, buf in module.named_buffers():
            buf.data = buf.data.clone()
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()
    return module
