"""CPU inference quantisation (``quantize = "int8"``).

Owns the setting's values and its checks against ``dtype`` and ``mixed_precision``, and
`quantize_linear_int8`: a dynamic-int8 copy of a module's ``nn.Linear`` layers that runs the
forward passes while the float weights stay for saving, with the float Linear pages handed back
to the kernel (`madvise(MADV_PAGEOUT)`).
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any, Dict, Optional, Union

import torch

from .source import BackboneError, torch_dtype

QUANTIZE = ("int8",)


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


def check_quantize_precision(quantize: Union[str, bool, None], mixed_precision: str) -> None:
    """Config-time check: ``quantize = "int8"`` runs float32 activations, so no mixed precision
    (``mixed_precision`` normalised: ``"none"``, ``"bf16"`` or ``"fp16"``)."""
    setting = normalise_quantize(quantize)
    if setting is not None and mixed_precision != "none":
        raise BackboneError(f"quantize = {setting!r} cannot be combined with mixed_precision = "
                            f"{mixed_precision!r}: quantised inference runs in float32 with int8 Linear layers; "
                            "set mixed_precision = null")


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
