"""Multi-head attention of XLM-RoBERTa-XL and its pre-LN residual block.

Owns the query/key/value projections and the attention product
(``scaled_dot_product_attention``, with an explicit-softmax path for attention weights and head
masks), the key/value cache entry of one attention, and `AttentionBlock` (LayerNorm, attention,
output projection, residual), used for self- and cross-attention. Attribute names are HF's
state-dict keys (``self``, ``self_attn_layer_norm``, ``output``).
Shapes: B = batch, S = query length, T = cached (past) length, K = key length (T + S for
self-attention, the encoder length for cross-attention), H = hidden size, N = heads,
D = H / N head size, L = layers.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense import DenseProjection
from .masks import PaddingLayout


class AttentionResult(NamedTuple):
    """``context`` (B, S, H); ``weights`` (B, N, S, K) or None; ``key_value``: (key, value)
    each (B, N, K, D), the cache entry for this attention."""

    context: Tensor
    weights: Optional[Tensor]
    key_value: Tuple[Tensor, Tensor]


class MultiHeadAttention(nn.Module):
    """Query/key/value projections and scaled dot-product attention over N heads.

    Uses ``torch.nn.functional.scaled_dot_product_attention``; computes the softmax explicitly
    only when the attention weights are requested or a head mask is given.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, dropout_prob: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout_prob = dropout_prob
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, states: Tensor) -> Tensor:
        """(B, S, H) -> (B, N, S, D)."""
        batch_size, length, _ = states.shape
        return states.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: Tensor,
        *,
        key_value_states: Optional[Tensor] = None,
        attention_bias: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        past_key_value: Optional[Tuple[Tensor, Tensor]] = None,
        output_attentions: bool = False,
        layout: Optional[PaddingLayout] = None,
    ) -> AttentionResult:
        """Attend from ``hidden_states`` (B, S, H), or (R, H) real positions with ``layout``.

        Self-attention (no ``key_value_states``): keys/values come from ``hidden_states`` and are
        appended to ``past_key_value`` (B, N, T, D) when given. Cross-attention: keys/values come
        from ``key_value_states`` (B, K, H), or are reused from ``past_key_value``.
        ``attention_bias`` broadcasts to (B, N, S, K); ``head_mask`` to (B, N, S, K) as a factor.
        ``layout`` (self-attention without cache only): the projections run on the (R, H) rows,
        which are scattered onto the (B, S) grid for the attention product; ``context`` is (R, H).
        """
        if layout is not None:
            return self._attend_real_positions(hidden_states, layout, attention_bias)
        query = self._split_heads(self.query(hidden_states))
        if key_value_states is not None and past_key_value is not None:
            key, value = past_key_value
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key = self._split_heads(self.key(source))
            value = self._split_heads(self.value(source))
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        dropout_prob = self.dropout_prob if self.training else 0.0
        weights: Optional[Tensor] = None
        if output_attentions or head_mask is not None:
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if attention_bias is not None:
                scores = scores + attention_bias
            weights = F.dropout(torch.softmax(scores, dim=-1), p=dropout_prob, training=self.training)
            if head_mask is not None:
                weights = weights * head_mask
            context = torch.matmul(weights, value)
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, dropout_p=dropout_prob)
        batch_size, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch_size, length, self.num_heads * self.head_dim)
        return AttentionResult(context, weights if output_attentions else None, (key, value))

    def _attend_real_positions(self, rows: Tensor, layout: PaddingLayout, attention_bias: Optional[Tensor]) -> AttentionResult:
        """Self-attention of the (R, H) real positions of a padded batch -> context (R, H)."""
        query, key, value = (self._split_heads(layout.pad(projection(rows)))
                             for projection in (self.query, self.key, self.value))
        dropout_prob = self.dropout_prob if self.training else 0.0
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, dropout_p=dropout_prob)
        context = layout.unpad(context.transpose(1, 2))
        return AttentionResult(context, None, (key, value))


class AttentionBlock(nn.Module):
    """Pre-LN residual attention: ``h + dropout(Wo · attention(LN(h), ...))``.

    The same block serves self-attention (``attention``) and cross-attention (``crossattention``).
    """

    def __init__(
        self, *, hidden_size: int, num_heads: int, layer_norm_eps: float, attention_dropout_prob: float, hidden_dropout_prob: float
    ) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.self = MultiHeadAttention(hidden_size=hidden_size, num_heads=num_heads, dropout_prob=attention_dropout_prob)
        self.output = DenseProjection(in_features=hidden_size, out_features=hidden_size, dropout_prob=hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, **attention_kwargs: object) -> AttentionResult:
        """``hidden_states`` (B, S, H) -> `AttentionResult` whose ``context`` is the updated
        residual stream (B, S, H); ``attention_kwargs`` go to `MultiHeadAttention.forward`."""
        result = self.self(self.self_attn_layer_norm(hidden_states), **attention_kwargs)
        return result._replace(context=hidden_states + self.output(result.context))

