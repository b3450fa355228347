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
  ``torch._amp_update_scale_``, spaCy issue 13512), gradient checkpointing, freezing; a warning
  when bf16 is asked for on a CPU without native bf16 matmuls (`native_bf16_matmul`);
- CPU inference quantisation (``quantize = "int8"``): a dynamic-int8 copy of the backbone's
  ``nn.Linear`` layers that runs the forward passes while the float weights stay for saving
  (`quantize_linear_int8`);
- `TorchModuleShim`: the thinc ``Shim`` that gives a torch module to thinc's optimizer,
  ``use_params``, device moves and byte serialisation (safetensors, not pickle);
- weight directories: `save_module_dir` / `load_module_dir` write and read a torch module as
  ``config.json`` + (sharded) safetensors + the tokenizer model, loaded back by memory map.

This module imports spaCy only through thinc; components, QA and fill-mask all build on it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import platform
import re
import tempfile
import warnings
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
QUANTIZE = ("int8",)


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


# --------------------------------------------------------------------------- bf16 on CPUs
class SlowBF16Warning(UserWarning):
    """bf16 was asked for on a CPU whose bf16 matmul torch emulates (many times slower than fp32)."""


def _cpu_flags() -> Optional[set]:
    """The CPU feature flags of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); None if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def native_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 natively: AVX-512 BF16 or AMX-BF16 on x86 (``/proc/cpuinfo``
    flags ``avx512_bf16`` / ``amx_bf16``), the ``bf16`` feature on Arm. Without them torch's bf16
    matmul is emulated (measured on an AVX2 Zen 3: 0.2 GFLOP/s against 44 in fp32). Where the
    flags cannot be read, torch's CPU capability decides (``AVX2``/``DEFAULT`` on x86: not native)
    and anything else counts as native (no warning when unsure)."""
    flags = _cpu_flags()
    if flags is not None:
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2")
    return True


def warn_if_bf16_emulated(device: torch.device, *, dtype: Optional[torch.dtype], mixed_precision: str) -> bool:
    """Warn (one `SlowBF16Warning` per call) when bf16 weights (``dtype``) or bf16 autocast
    (``mixed_precision``) will run on a CPU without native bf16 matmuls; True when it warned."""
    wanted = [what for what, on in (("dtype = \"bfloat16\"", dtype == torch.bfloat16),
                                    ("mixed_precision = \"bf16\"", mixed_precision == "bf16")) if on]
    if not wanted or device.type != "cpu" or native_bf16_matmul():
        return False
    warnings.warn(
        f"{' and '.join(wanted)} on this CPU ({torch.backends.cpu.get_cpu_capability()}; no native bf16 matmul: "
        "no AVX-512 BF16 / AMX, or Arm BF16): "
        "bf16 matrix multiplication is emulated here and will be many times slower than float32 "
        "(about 200x for a plain matmul on an AVX2 CPU). For faster CPU inference keep float32 "
        "(dtype = null, mixed_precision = null) and set quantize = \"int8\" (dynamic int8 Linear layers); "
        "bf16 pays off on CPUs with AVX-512 BF16 / AMX and on GPUs.",
        SlowBF16Warning, stacklevel=3,
    )
    return True


# --------------------------------------------------------------------------- int8 inference
def normalise_quantize(value: Union[str, bool, None]) -> Optional[str]:
    """``"int8"`` or None from the config value (``null``/``false``/``"none"`` mean None)."""
    if value is None or value is False:
        return None
    text = str(value).lower()
    if text in ("none", "null", "false", "no", "off", "float32", "fp32"):
        return None
    text = {"qint8": "int8", "dynamic_int8": "int8"}.get(text, text)
    if text not in QUANTIZE:
        raise BackboneError(f"quantize must be null or one of {list(QUANTIZE)}, got {value!r}")
    return text


def check_quantize_dtype(quantize: Union[str, bool, None], dtype: Optional[str]) -> None:
    """Config-time check: ``quantize = "int8"`` needs float32 weights (``dtype`` null or float32)."""
    setting = normalise_quantize(quantize)
    if setting is not None and torch_dtype(dtype) not in (None, torch.float32):
        raise BackboneError(f"quantize = {setting!r} needs float32 weights, but dtype = {dtype!r}: set dtype = null "
                            "(int8 Linear layers with float32 activations replace bf16/fp16 on the CPU)")


def quantize_linear_int8(module: torch.nn.Module, *, release_float_pages: bool = True) -> torch.nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers are torch's dynamic int8 ones (what
    ``torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)`` makes:
    int8 weights per tensor, activations quantised per batch, float32 accumulation and bias).
    Every other parameter and buffer (embeddings, LayerNorms) is shared with ``module``, not
    copied, and ``module`` is left unchanged: the extra memory is the int8 weights, about a
    quarter of the float32 Linear weights. Needs float32 Linear weights on the CPU; the copy is
    deterministic (same weights, same copy).

    ``release_float_pages``: after each layer is quantised, its float weight's memory is handed
    back to the kernel with ``madvise(MADV_PAGEOUT)`` (Linux >= 5.4; a no-op elsewhere). This is
    non-destructive: pages of weights memory-mapped from safetensors (a loaded pipeline or
    checkpoint) leave the resident set and are read from the file again if ever needed (to
    save), so the float weights cost page cache rather than resident memory; anonymous memory
    without swap is not touched."""
    linear_names = [name for name, sub in module.named_modules() if name and type(sub) is torch.nn.Linear]
    for name in linear_names:
        weight = module.get_submodule(name).weight
        if weight.device.type != "cpu":
            raise BackboneError(f"quantize = \"int8\" runs on the CPU only (torch dynamic quantisation); "
                                f"{name} is on {weight.device}: set quantize = null on a GPU")
        if weight.dtype != torch.float32:
            raise BackboneError(f"quantize = \"int8\" needs float32 weights, {name} is {weight.dtype}: "
                                "set dtype = null (or \"float32\")")
    memo: Dict[int, Any] = {id(t): t for t in (*module.parameters(), *module.buffers())}
    clone = copy.deepcopy(module, memo)  # new module objects around the same tensors
    # weights also used outside a Linear layer (e.g. an LM head tied to the embeddings) stay resident
    used_elsewhere = {id(p) for name, sub in module.named_modules() if type(sub) is not torch.nn.Linear
                      for p in sub.parameters(recurse=False)}
    with warnings.catch_warnings():  # torch >= 2.9 deprecates torch.ao eager quantisation (torchao replaces it)
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
        from torch.ao.quantization import default_dynamic_qconfig

        for name in linear_names:
            parent_name, _, child_name = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            linear = getattr(parent, child_name)
            linear.qconfig = default_dynamic_qconfig  # what quantize_dynamic gives nn.Linear for qint8
            setattr(parent, child_name, DynamicQuantizedLinear.from_float(linear))
            if release_float_pages and id(linear.weight) not in used_elsewhere:
                _page_out(linear.weight)
    clone.requires_grad_(False)
    return clone.eval()


_MADV_PAGEOUT = 21  # linux/mman.h


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def _page_out(tensor: torch.Tensor) -> None:
    """``madvise(MADV_PAGEOUT)`` over the whole pages inside ``tensor``'s memory (best effort)."""
    import mmap
    import sys

    if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    libc = _libc()
    if libc is None:
        return
    start = tensor.data_ptr()
    stop = start + tensor.numel() * tensor.element_size()
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = stop // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        libc.madvise(first, last - first, _MADV_PAGEOUT)  # errors (old kernel): nothing happens


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds dynamic int8 Linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return any(isinstance(sub, DynamicQuantizedLinear) for sub in module.modules())


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

    ``quantize = "int8"``: every module given to `set_module` (at initialise, ``from_disk``,
    ``from_bytes``, copies) gets a dynamic-int8 copy (`quantize_linear_int8`) that `module`
    returns and the forward passes run; the float weights stay in `float_module` and are what
    is saved, exported and copied, so a saved pipeline is a float HF checkpoint and loading it
    quantises again, identically. Inference only: a training forward raises `BackboneError`.
    Memory: the int8 Linear weights (about 1 byte per Linear parameter: 2.8 GB for XL) on top of
    the float weights, whose Linear pages are handed back to the kernel after quantisation
    (`quantize_linear_int8`): when they are memory-mapped (``spacy.load``, or ``initialize`` from
    a float32 checkpoint) they leave the resident set and cost page cache only; built in memory
    (a preset, a dtype conversion) they stay resident. Quantising takes time at load (XL: minutes
    on 2 cores).
    """

    def __init__(self, module: Optional[torch.nn.Module] = None, *, mixed_precision: Union[str, bool, None] = None,
                 frozen: bool = False, grad_checkpointing: bool = False,
                 model_cls: Optional[Type[torch.nn.Module]] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, quantize: Union[str, bool, None] = None,
                 freeze_word_embeddings: bool = False) -> None:
        super().__init__(module, config={})
        self.precision = normalise_mixed_precision(mixed_precision)
        self.quantize = normalise_quantize(quantize)
        if self.quantize is not None and self.precision != "none":
            raise BackboneError(f"quantize = {self.quantize!r} cannot be combined with mixed_precision = "
                                f"{self.precision!r}: quantised inference runs in float32 with int8 Linear layers; "
                                "set mixed_precision = null")
        self._runner: Optional[torch.nn.Module] = None  # the quantised copy, when quantize is set
        self.frozen = frozen
        self.freeze_word_embeddings = bool(freeze_word_embeddings)
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
        """The module forward passes run: the int8 copy with ``quantize = "int8"``, else the weights."""
        if self._model is None:
            raise BackboneError("the backbone has no weights yet: call nlp.initialize() or load a saved pipeline")
        return self._runner if self._runner is not None else self._model

    @property
    def float_module(self) -> torch.nn.Module:
        """The module with the (float) weights: what is saved, exported and trained."""
        if self._model is None:
            raise BackboneError("the backbone has no weights yet: call nlp.initialize() or load a saved pipeline")
        return self._model

    @property
    def has_module(self) -> bool:
        return self._model is not None

    def set_module(self, module: torch.nn.Module, *, config: Optional[Dict[str, Any]] = None) -> None:
        """Install ``module`` (freezing, checkpointing, the int8 copy); installing the module the shim
        already holds keeps its int8 copy (the weights did not change)."""
        keep_runner = module is self._model and self._runner is not None
        self._model = module
        if config is not None:
            self.cfg = dict(config)
        elif hasattr(module, "config") and hasattr(module.config, "to_dict"):
            self.cfg = module.config.to_dict()
        if self.frozen:
            module.requires_grad_(False)
        if self.freeze_word_embeddings:
            freeze_word_embeddings(module)
        if self.grad_checkpointing and hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable()
        if keep_runner:
            return
        self._runner = None
        param = next(module.parameters(), None)
        if param is not None:
            warn_if_bf16_emulated(param.device, dtype=param.dtype, mixed_precision=self.precision)
        if self.quantize is not None:
            self._runner = quantize_linear_int8(module)

    @property
    def device(self) -> torch.device:
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch_device()

    # -- running
    @contextlib.contextmanager
    def run(self, is_train: bool) -> Iterator[bool]:
        """Context for a forward pass; yields whether a backward pass will follow."""
        module = self.module
        if is_train and self._runner is not None:
            raise BackboneError(
                f"this backbone is set to quantize = {self.quantize!r}, which is for inference only: it cannot be "
                "trained (update() was called). Set quantize = null to train or fine-tune (e.g. "
                "--components.transformer.model.quantize null, or the component's own backbone block), "
                "and quantize the trained pipeline for inference"
            )
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
        self._requantize()
        try:
            yield
        finally:
            self._model.load_state_dict(backup)
            self._requantize()

    def _requantize(self) -> None:
        if self.quantize is not None and self._model is not None:
            self._runner = quantize_linear_int8(self._model)

    def to_device(self, device_type: str, device_id: int) -> None:  # pragma: no cover - GPU only
        if self._model is None:
            return
        if device_type == "cpu":
            self._model.cpu()
        elif device_type == "gpu":
            if self.quantize is not None:
                raise BackboneError(f"quantize = {self.quantize!r} runs on the CPU only: set quantize = null on a GPU")
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
                                model_kwargs=self.model_kwargs, quantize=self.quantize,
                                freeze_word_embeddings=self.freeze_word_embeddings)
        if self._model is not None:
            clone.set_module(self._compact_module(), config=dict(self.cfg))
        return clone

    def __getstate__(self) -> Dict[str, Any]:
        """Pickle a compact copy: loaded weights are views into one memory map, and pickle
        would otherwise write the whole file once per tensor."""
        state = dict(self.__dict__)
        state["_runner"] = None  # rebuilt from the float weights by __setstate__
        if self._model is not None:
            state["_model"] = self._compact_module()
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("quantize", None)
        self.__dict__.setdefault("freeze_word_embeddings", False)
        self.__dict__.setdefault("_runner", None)
        self._requantize()

    def _compact_module(self) -> torch.nn.Module:
        if self.model_cls is None:
            import copy

            return copy.deepcopy(self._model)
        return clone_module(self._model, self.model_cls, **self.model_kwargs)  # type: ignore[arg-type]


def freeze_word_embeddings(module: torch.nn.Module) -> None:
    """Stop training the word-embedding matrix of ``module`` (vocab x hidden: 250k x 2560 = 0.64 B
    parameters in XL). No gradient is computed for it and the optimizer keeps no state for it:
    on a GPU that saves its fp32 gradient + Adam moments (7.7 GB for XL); on a CPU, the dense
    gradient and optimizer update of 250k rows per step. Position embeddings, LayerNorms and every
    layer still train."""
    get = getattr(module, "get_input_embeddings", None)
    if not callable(get):
        raise BackboneError(f"freeze_word_embeddings: {type(module).__name__} has no get_input_embeddings()")
    get().weight.requires_grad_(False)


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
