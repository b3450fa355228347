"""Precision of the backbone's forward and backward passes.

Owns the ``mixed_precision`` setting (bf16 / fp16 autocast), `LossScaler` (fp16 loss scaling
with the scale kept as a Python float: thinc's grad scaler keeps a device tensor and crashes in
``torch._amp_update_scale_``, spaCy issue 13512), and the `SlowBF16Warning` given when bf16 is
asked for on a CPU without native bf16 matmuls (detected by `modeling.cpu_features.native_bf16_matmul`,
re-exported here).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Sequence, Union

import torch

from modeling.cpu_features import native_bf16_matmul

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
