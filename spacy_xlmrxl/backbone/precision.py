"""Precision of the backbone's forward and backward passes.

Owns the ``mixed_precision`` setting (bf16 / fp16 autocast), `LossScaler` (fp16 loss scaling
with the scale kept as a Python float: thinc's grad scaler keeps a device tensor and crashes in
``torch._amp_update_scale_``, spaCy issue 13512), and what bf16 means on a CPU without native
bf16 matmuls (detected by `modeling.cpu_features.native_bf16_matmul`, re-exported here): bf16
weights are computed in float32 layer by layer (`emulated_bf16_weights`), bf16 autocast gets a
`SlowBF16Warning`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Sequence, Union

import torch

from modeling import cpu_features
from modeling.cpu_features import native_bf16_matmul  # noqa: F401 - re-exported
from modeling.upcast import emulated_bf16

from .source import BackboneError

MIXED_PRECISION = ("none", "bf16", "fp16")


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


def emulated_bf16_weights(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds bf16 weights on a CPU without native bf16 matmuls: it is then
    computed in float32 layer by layer (`modeling.upcast.compute_in_float32`): bf16's memory at
    about float32's speed."""
    param = next(module.parameters(), None)
    return param is not None and emulated_bf16(param)


def warn_if_bf16_emulated(device: torch.device, *, mixed_precision: str) -> bool:
    """Warn (one `SlowBF16Warning`) when bf16 autocast (``mixed_precision``) will run on a CPU
    without native bf16 matmuls; True when it warned. (bf16 weights, ``dtype``, are computed in
    float32 there instead: `emulated_bf16_weights`.)"""
    if mixed_precision != "bf16" or device.type != "cpu" or cpu_features.native_bf16_matmul():
        return False
    warnings.warn(
        f"mixed_precision = \"bf16\" on this CPU ({torch.backends.cpu.get_cpu_capability()}; no native bf16 matmul: "
        "no AVX-512 BF16 / AMX, or Arm BF16): "
        "bf16 autocast is emulated here and will be many times slower than float32 "
        "(about 200x for a plain matmul on an AVX2 CPU). Keep mixed_precision = null on this CPU: "
        "for bf16's memory set dtype = \"bfloat16\" (stored in bf16, computed in float32 layer by layer), "
        "for faster inference quantize = \"int8\"; "
        "bf16 autocast pays off on CPUs with AVX-512 BF16 / AMX and on GPUs.",
        SlowBF16Warning, stacklevel=3,
    )
    return True


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
