"""What a forward pass hides from attention: padding and causal masks, head masks, padding layout.

Owns the additive attention bias built from an attention mask (and causality), the HF head-mask
convention expanded per layer, and `PaddingLayout`, which lets an encoder forward skip padded
positions everywhere but inside the attention product.
Shapes: B = batch, S = query length, T = cached (past) length, K = key length (T + S for
self-attention, the encoder length for cross-attention), H = hidden size, N = heads,
D = H / N head size, L = layers.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def attention_bias(
    attention_mask: Optional[Tensor],
    *,
    query_length: int,
    past_length: int = 0,
    causal: bool = False,
    dtype: torch.dtype,
    device: torch.device,
) -> Optional[Tensor]:
    """The additive attention bias: 0 where a query may attend a key, ``finfo(dtype).min`` elsewhere.

    ``attention_mask``: (B, K) or (B, S, K) with 1 = attend, 0 = padding, or None (attend all);
    K = ``past_length + query_length`` for self-attention. ``causal`` also forbids keys after the
    query's own position. Returns (B, 1, 1, K), (B, 1, S, K) or (1, 1, S, K), or None when nothing
    is masked (so that the fused attention kernels need no mask).
    """
    if attention_mask is None and not causal:
        return None
    allowed: Optional[Tensor] = None
    if attention_mask is not None:
        if attention_mask.dim() == 2:
            if not causal and bool(attention_mask.all()):
                return None
            allowed = attention_mask[:, None, None, :].to(dtype)
        elif attention_mask.dim() == 3:
            allowed = attention_mask[:, None, :, :].to(dtype)
        else:
            raise ValueError(f"attention_mask must have 2 or 3 dimensions, got shape {tuple(attention_mask.shape)}")
    if causal:
        key_length = past_length + query_length
        future = torch.ones(query_length, key_length, dtype=torch.bool, device=device).triu(past_length + 1)
        causal_allowed = (~future).to(dtype)[None, None]
        allowed = causal_allowed if allowed is None else allowed * causal_allowed
    return (1.0 - allowed) * torch.finfo(dtype).min


def expand_head_mask(head_mask: Optional[Tensor], *, num_layers: int, dtype: torch.dtype) -> Optional[Tensor]:
    """HF head-mask convention: (N,) for every layer or (L, N); 1 keeps a head, 0 silences it.
    Returns (L, 1, N, 1, 1) in ``dtype`` (one broadcastable factor per layer) or None."""
    if head_mask is None:
        return None
    if head_mask.dim() == 1:
        head_mask = head_mask.unsqueeze(0).expand(num_layers, -1)
    elif head_mask.dim() != 2:
        raise ValueError(f"head_mask must be (heads,) or (layers, heads), got shape {tuple(head_mask.shape)}")
    if head_mask.shape[0] != num_layers:
        raise ValueError(f"head_mask has {head_mask.shape[0]} rows for {num_layers} layers")
    return head_mask[:, None, :, None, None].to(dtype)


class PaddingLayout:
    """Where the real (not padded) positions of a (B, S) batch lie, to run without the padding.

    Everything in an encoder layer except the attention product works position by position,
    so those parts can run on the R real positions alone, as an (R, H) matrix: the padding costs
    nothing there (with length-mixed batches a sizeable share of the positions). Only the
    attention product needs the (B, S) grid: `pad` scatters (R, X) rows into a zero-filled
    (B, S, X) tensor and `unpad` gathers them back. Both are differentiable.

    ``attention_mask`` (B, S): 1 = real position, 0 = padding.
    """

    def __init__(self, attention_mask: Tensor) -> None:
        if attention_mask.dim() != 2:
            raise ValueError(f"skipping padding needs a (B, S) attention_mask, got shape {tuple(attention_mask.shape)}")
        self.batch_size, self.length = attention_mask.shape
        #: (R,) int64 each: batch row and position of every real position, in row-major order
        self.rows, self.columns = attention_mask.nonzero(as_tuple=True)
        #: (R,) int64: their flat indices ``row * S + column``
        self.indices = self.rows * self.length + self.columns

    def unpad(self, states: Tensor) -> Tensor:
        """(B, S, ...) -> (R, X), X the product of the trailing sizes: the rows at the real
        positions, gathered in one copy even from a strided view (e.g. attention's
        (B, N, S, D) output transposed to (B, S, N, D))."""
        return states[self.rows, self.columns].reshape(self.rows.shape[0], -1)

    def pad(self, rows: Tensor) -> Tensor:
        """(R, X) -> (B, S, X), zeros at the padded positions."""
        grid = torch.zeros(self.batch_size * self.length, rows.shape[-1], dtype=rows.dtype, device=rows.device)
        return grid.index_copy_(0, self.indices, rows).view(self.batch_size, self.length, -1)

