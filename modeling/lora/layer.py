"""`LoraLinear`: a Linear layer with a low-rank adapter beside its (frozen) weight.

Owns the adapted layer's forward pass ``W x + b + (alpha / r) B A dropout(x)`` and the base
matmul's precision: the base weight keeps its dtype at rest (bf16 stays bf16, memory-mapped stays
memory-mapped: the layer holds the very Parameters of the Linear it replaces) while the adapters
are float32; where bf16 matmuls are emulated (a CPU without AVX-512 BF16 / AMX), a bf16 base is
cast to float32 one layer at a time for the product (`modeling.upcast.upcast_linear`), its float32
copy never kept for the backward pass. Shapes: (..., in_features) -> (..., out_features).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..upcast import emulated_bf16, upcast_linear

__all__ = ["LoraLinear", "upcast_linear"]


class LoraLinear(nn.Module):
    """A Linear layer plus a rank-r adapter: ``y = W x + b + scaling * B A dropout(x)``.

    ``weight`` (out, in) and ``bias`` (out,) are the replaced Linear's own Parameters (same state
    dict keys, no copy); ``lora_A.weight`` (r, in) starts Kaiming-uniform like PEFT's and
    ``lora_B.weight`` (out, r) at zero, both float32 by default, so a fresh layer computes what the
    Linear did. ``upcast``: multiply a bf16 / fp16 base in float32 (True), in its own dtype (False)
    or decide per call (None: float32 for float32 inputs outside autocast, and for a bf16 weight
    on a CPU without native bf16 matmuls).
    Casting the model (``model.to(torch.bfloat16)``) casts the base only: the adapters stay in
    ``adapter_dtype``.
    """

    def __init__(self, base: nn.Linear, *, r: int, alpha: float, dropout: float = 0.0,
                 adapter_dtype: torch.dtype = torch.float32, upcast: Optional[bool] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.upcast = upcast
        self.adapter_dtype = adapter_dtype
        device = base.weight.device
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=adapter_dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=adapter_dtype)
        self.reset_adapter(generator=generator)

    def _apply(self, fn: Any, recurse: bool = True) -> "LoraLinear":
        # ``model.to(torch.bfloat16)`` / ``.half()`` cast the base; the adapters keep
        # ``adapter_dtype`` (device moves still apply to them)
        super()._apply(fn, recurse)
        for adapter in (self.lora_A, self.lora_B):
            weight = adapter.weight
            if weight.is_floating_point() and weight.dtype != self.adapter_dtype:
                weight.data = weight.data.to(self.adapter_dtype)
                if weight.grad is not None:
                    weight.grad = weight.grad.to(self.adapter_dtype)
        return self

    @torch.no_grad()
    def reset_adapter(self, *, generator: Optional[torch.Generator] = None) -> None:
        """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's ``kaiming_uniform_(a=sqrt(5))``), B = 0."""
        bound = 1.0 / math.sqrt(self.in_features)
        self.lora_A.weight.uniform_(-bound, bound, generator=generator)
        self.lora_B.weight.zero_()

    def _upcast_base(self, x: Tensor) -> bool:
        if self.weight.dtype not in (torch.bfloat16, torch.float16):
            return False
        if self.upcast is not None:
            return self.upcast
        if x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
            return True  # float32 activations (`modeling.upcast.compute_in_float32`)
        return emulated_bf16(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in) -> (..., out) in the dtype of the base product (``x``'s)."""
        if self._upcast_base(x):
            result = upcast_linear(x, self.weight, self.bias)
        else:
            result = F.linear(x, self.weight, self.bias)
        adapter_input = self.lora_dropout(x).to(self.lora_A.weight.dtype)
        update = self.lora_B(self.lora_A(adapter_input)) * self.scaling
        return (result + update).to(result.dtype)

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """``scaling * B A`` (out, in) in float32: what merging adds to ``weight``."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight is ``W + scaling * B A`` in the base dtype (a new tensor:
        a memory-mapped base is not written to) and whose bias is this layer's bias."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        with torch.no_grad():
            weight = (self.weight.float() + self.delta_weight()).to(self.weight.dtype)
        linear.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def base_linear(self) -> nn.Linear:
        """A plain Linear holding this layer's own weight and bias Parameters (no copy): the
        layer without its adapter."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, base_dtype={self.weight.dtype}, adapter_dtype={self.lora_A.weight.dtype}")
