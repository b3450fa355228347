"""Low-precision weights computed in float32, one layer at a time.

Owns `upcast_linear` (``F.linear`` in float32 from a bf16 / fp16 weight whose float32 copy lives
only during the product and is never kept for the backward pass) and `compute_in_float32`, which
makes a whole model keep its bf16 weights at rest but compute in float32: every ``nn.Linear``,
``nn.LayerNorm`` and ``nn.Embedding`` becomes its float32-computing subclass (same Parameters,
same state dict keys, no copy), so the hidden states flow in float32 and each weight is cast only
while its own layer runs (a weight over `BLOCK_ELEMENTS`, such as the tied LM decoder, block by
block of output rows). This is what a CPU without native bf16 matmuls (no AVX-512 BF16 / AMX,
`modeling.cpu_features`) needs: bf16's memory at about float32's speed (the casts add their
share) instead of an emulated bf16 matmul many times slower. `modeling.lora.LoraLinear` multiplies its frozen base the same way.
Shapes: Linear (..., in) -> (..., out); LayerNorm (..., H) -> (..., H); Embedding ids (...) -> (..., H).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_features

__all__ = ["BLOCK_ELEMENTS", "Float32Embedding", "emulated_bf16", "Float32LayerNorm", "Float32Linear", "compute_in_float32", "upcast_linear"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def emulated_bf16(weight: Tensor) -> bool:
    """Whether ``weight`` is bf16 on a CPU without native bf16 matmuls (`modeling.cpu_features`):
    the weight that is better computed in float32 there."""
    return (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"
            and not cpu_features.native_bf16_matmul())


#: float32 elements of a weight cast at once: a larger weight (the tied LM decoder, vocabulary x
#: hidden) is multiplied block by block of output rows, so a cast never holds more than this
BLOCK_ELEMENTS = 2**25


def _blocks(weight: Tensor) -> range:
    """Starts of the output-row blocks of ``weight`` (out, in) cast one at a time."""
    rows = max(1, BLOCK_ELEMENTS // max(1, weight.shape[1]))
    return range(0, weight.shape[0], rows)


def _block(weight: Tensor, start: int) -> Tensor:
    """Rows ``start:start + block`` of ``weight`` in float32."""
    step = _blocks(weight).step
    return weight[start:start + step].float()


class _UpcastLinear(torch.autograd.Function):
    """``x W^T + b`` computed in float32 from a low-precision ``weight``; the result and the input
    gradient come back in ``x``'s dtype. Only ``weight`` itself (at rest, not its float32 copy)
    and, when the weight trains, ``x`` are saved for the backward pass; the float32 copy is made
    block by block of output rows (`BLOCK_ELEMENTS`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.x_dtype, ctx.bias_dtype = x.dtype, None if bias is None else bias.dtype
        with torch.autocast(x.device.type, enabled=False):
            x32 = x.float()
            starts = _blocks(weight)
            if len(starts) == 1:
                return F.linear(x32, weight.float(), None if bias is None else bias.float()).to(x.dtype)
            out = x32.new_empty(*x.shape[:-1], weight.shape[0])
            for start in starts:
                block = _block(weight, start)
                stop = start + block.shape[0]
                out[..., start:stop] = F.linear(x32, block, None if bias is None else bias[start:stop].float())
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight = ctx.saved_tensors
        rows = grad.float().reshape(-1, grad.shape[-1])  # (N, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = rows.new_zeros(rows.shape[0], weight.shape[1])
            for start in _blocks(weight):
                block = _block(weight, start)
                grad_x.addmm_(rows[:, start:start + block.shape[0]], block)
            grad_x = grad_x.reshape(*grad.shape[:-1], weight.shape[1]).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (rows.t() @ x.reshape(-1, x.shape[-1]).float()).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b


def upcast_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear`` computed in float32 for a bf16 / fp16 ``weight``: (..., in) -> (..., out) in
    ``x``'s dtype; the weight's float32 copy lives only during the product."""
    return _UpcastLinear.apply(x, weight, bias)


class Float32Linear(nn.Linear):
    """A Linear whose low-precision weight is multiplied in float32: (..., in) -> (..., out) in
    float32 (a float32 weight computes exactly as ``nn.Linear``)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dtype in _LOW_PRECISION:
            return upcast_linear(x.float(), self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class Float32LayerNorm(nn.LayerNorm):
    """A LayerNorm computed in float32 from low-precision parameters: (..., H) -> (..., H) float32."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class Float32Embedding(nn.Embedding):
    """An Embedding whose looked-up rows come back in float32: ids (...) -> (..., H) float32
    (only the rows looked up are cast)."""

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input).float()


_FLOAT32_CLASS = {nn.Linear: Float32Linear, nn.LayerNorm: Float32LayerNorm, nn.Embedding: Float32Embedding}


def compute_in_float32(model: nn.Module) -> int:
    """Make ``model`` compute in float32 while its weights stay in their dtype at rest.

    Every module whose class is exactly ``nn.Linear``, ``nn.LayerNorm`` or ``nn.Embedding`` takes
    the float32-computing subclass of its class in place (its Parameters, buffers, hooks and state
    dict keys stay as they are). Returns the number of modules changed; calling it again changes
    nothing. Quantized or adapted layers (`modeling.lora.LoraLinear`) are left alone: they decide
    their own precision.
    """
    changed = 0
    for module in model.modules():
        target = _FLOAT32_CLASS.get(type(module))
        if target is not None:
            module.__class__ = target
            changed += 1
    return changed


def computes_in_float32(model: nn.Module) -> bool:
    """Whether `compute_in_float32` was applied to ``model`` (any of its layers computes in float32)."""
    return any(type(module) in _FLOAT32_CLASS.values() for module in model.modules())
