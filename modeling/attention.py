"""Multi-head attention of XLM-RoBERTa-XL and its pre-LN residual block.

Owns the query/key/value projections and the attention product
(``scaled_dot_product_attention``, with an explicit-softmax path for attention weights, head
masks and relative positions), HF's relative position scores (``relative_key``,
``relative_key_query``), the key/value cache entry of one attention, head pruning (HF's
``prune_heads``: the projections lose the pruned heads' rows and columns), and `AttentionBlock`
(LayerNorm, attention, output projection, residual), used for self- and cross-attention.
Attribute names are HF's state-dict keys (``self``, ``self_attn_layer_norm``, ``output``,
``distance_embedding``).
Shapes: B = batch, S = query length, T = cached (past) length, K = key length (T + S for
self-attention, the encoder length for cross-attention), H = hidden size, N = heads (those
left after pruning), D = head size (H / the original number of heads), L = layers.
"""

from __future__ import annotations

import math
from typing import Iterable, List, NamedTuple, Optional, Set, Tuple

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
    only when the attention weights are requested, a head mask is given or the scores carry
    relative positions.

    ``position_embedding_type`` ``"relative_key"`` adds ``q · E[i - j]`` to the score of query
    position i and key position j, ``"relative_key_query"`` also ``k · E[i - j]``; ``E`` is
    ``distance_embedding``, one D-vector per distance in ``-(P - 1) .. P - 1``
    (P = ``max_position_embeddings``). Positions count along the (padded) sequence, the cached
    ones first. ``"absolute"``: nothing is added here (the embeddings carry the positions).
    """

    def __init__(
        self, *, hidden_size: int, num_heads: int, dropout_prob: float, position_embedding_type: str = "absolute",
        max_position_embeddings: int = 0,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout_prob = dropout_prob
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        if position_embedding_type != "absolute":
            self.distance_embedding = nn.Embedding(2 * max_position_embeddings - 1, self.head_dim)
        #: the heads removed by `prune_heads`, as indices among the original heads
        self.pruned_heads: Set[int] = set()

    @property
    def kept_heads(self) -> List[int]:
        """The original indices of the N heads left after pruning, in their order."""
        return [head for head in range(self.num_heads + len(self.pruned_heads)) if head not in self.pruned_heads]

    @torch.no_grad()
    def prune_heads(self, heads: Iterable[int]) -> Optional[Tensor]:
        """Remove ``heads`` (indices among the original heads; heads pruned before are skipped):
        their rows of the query, key and value projections go. Returns the (N' · D,) index of the
        kept context features (for the output projection's columns), or None if nothing changed."""
        kept = self.kept_heads
        removed = set(heads) - self.pruned_heads
        if not removed:
            return None
        positions = torch.tensor([i for i, head in enumerate(kept) if head not in removed], dtype=torch.long,
                                 device=self.query.weight.device)
        features = (positions[:, None] * self.head_dim + torch.arange(self.head_dim, device=positions.device)).reshape(-1)
        for projection in (self.query, self.key, self.value):
            keep_features(projection, features, dim=0)
        self.pruned_heads |= removed
        self.num_heads = len(kept) - len(removed)
        return features

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
        past_length = 0
        if key_value_states is not None and past_key_value is not None:
            key, value = past_key_value
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key = self._split_heads(self.key(source))
            value = self._split_heads(self.value(source))
            if past_key_value is not None:
                past_length = past_key_value[0].shape[2]
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        context, weights = self._attend(query, key, value, attention_bias=attention_bias, head_mask=head_mask,
                                        need_weights=output_attentions, query_offset=past_length)
        batch_size, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch_size, length, self.num_heads * self.head_dim)
        return AttentionResult(context, weights, (key, value))

    def _attend_real_positions(self, rows: Tensor, layout: PaddingLayout, attention_bias: Optional[Tensor]) -> AttentionResult:
        """Self-attention of the (R, H) real positions of a padded batch -> context (R, H)."""
        query, key, value = (self._split_heads(layout.pad(projection(rows)))
                             for projection in (self.query, self.key, self.value))
        context, _ = self._attend(query, key, value, attention_bias=attention_bias)
        context = layout.unpad(context.transpose(1, 2))
        return AttentionResult(context, None, (key, value))

    def _attend(
        self, query: Tensor, key: Tensor, value: Tensor, *, attention_bias: Optional[Tensor],
        head_mask: Optional[Tensor] = None, need_weights: bool = False, query_offset: int = 0,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """The attention product: ``query`` (B, N, S, D), ``key`` / ``value`` (B, N, K, D) ->
        context (B, N, S, D) and, with ``need_weights``, the weights (B, N, S, K).
        ``query_offset``: the position of the first query (T cached positions before it)."""
        dropout_prob = self.dropout_prob if self.training else 0.0
        relative = self.position_embedding_type != "absolute"
        if not (need_weights or head_mask is not None or relative):
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, dropout_p=dropout_prob)
            return context, None
        scores = torch.matmul(query, key.transpose(-1, -2))
        if relative:
            for term in self._relative_scores(query, key, query_offset=query_offset):
                scores = scores + term
        scores = scores / math.sqrt(self.head_dim)
        if attention_bias is not None:
            scores = scores + attention_bias
        weights = F.dropout(torch.softmax(scores, dim=-1), p=dropout_prob, training=self.training)
        if head_mask is not None:
            weights = weights * self._kept_head_mask(head_mask)
        return torch.matmul(weights, value), weights if need_weights else None

    def _kept_head_mask(self, head_mask: Tensor) -> Tensor:
        """A head mask over the original heads (1, N_original, 1, 1) -> over the kept ones."""
        if not self.pruned_heads or head_mask.shape[1] == 1:
            return head_mask
        if head_mask.shape[1] != self.num_heads + len(self.pruned_heads):
            raise ValueError(f"head_mask has {head_mask.shape[1]} heads; the model has "
                             f"{self.num_heads + len(self.pruned_heads)} (pruned ones included)")
        return head_mask[:, self.kept_heads]

    def _relative_scores(self, query: Tensor, key: Tensor, *, query_offset: int) -> List[Tensor]:
        """The relative-position terms of the raw scores, each (B, N, S, K): ``q · E[i - j]``,
        and for ``relative_key_query`` also ``k · E[i - j]``."""
        length, key_length = query.shape[2], key.shape[2]
        if max(key_length, query_offset + length) > self.max_position_embeddings:
            raise ValueError(f"{self.position_embedding_type} positions reach {max(key_length, query_offset + length)}, "
                             f"beyond max_position_embeddings ({self.max_position_embeddings})")
        query_positions = torch.arange(query_offset, query_offset + length, device=query.device)
        distance = query_positions[:, None] - torch.arange(key_length, device=query.device)[None, :]
        table = self.distance_embedding(distance + self.max_position_embeddings - 1).to(query.dtype)  # (S, K, D)
        terms = [torch.einsum("bnsd,skd->bnsk", query, table)]
        if self.position_embedding_type == "relative_key_query":
            terms.append(torch.einsum("bnkd,skd->bnsk", key, table))
        return terms


class AttentionBlock(nn.Module):
    """Pre-LN residual attention: ``h + dropout(Wo · attention(LN(h), ...))``.

    The same block serves self-attention (``attention``) and cross-attention (``crossattention``,
    always ``"absolute"``: relative positions apply to self-attention only, as in HF).
    """

    def __init__(
        self, *, hidden_size: int, num_heads: int, layer_norm_eps: float, attention_dropout_prob: float,
        hidden_dropout_prob: float, position_embedding_type: str = "absolute", max_position_embeddings: int = 0,
    ) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.self = MultiHeadAttention(hidden_size=hidden_size, num_heads=num_heads, dropout_prob=attention_dropout_prob,
                                       position_embedding_type=position_embedding_type,
                                       max_position_embeddings=max_position_embeddings)
        self.output = DenseProjection(in_features=hidden_size, out_features=hidden_size, dropout_prob=hidden_dropout_prob)

    def prune_heads(self, heads: Iterable[int]) -> None:
        """HF's head pruning: remove the attention heads ``heads`` (original indices) from the
        query, key and value projections and their columns from the output projection."""
        for linear in (self.self.query, self.self.key, self.self.value, self.output.dense):
            if type(linear) is not nn.Linear:  # checked before anything changes
                kind = f"{type(linear).__module__}.{type(linear).__qualname__}"
                raise ValueError(f"cannot prune heads of a {kind}: prune them before applying LoRA adapters or quantising")
        features = self.self.prune_heads(heads)
        if features is not None:
            keep_features(self.output.dense, features, dim=1)

    def forward(self, hidden_states: Tensor, **attention_kwargs: object) -> AttentionResult:
        """``hidden_states`` (B, S, H) -> `AttentionResult` whose ``context`` is the updated
        residual stream (B, S, H); ``attention_kwargs`` go to `MultiHeadAttention.forward`."""
        result = self.self(self.self_attn_layer_norm(hidden_states), **attention_kwargs)
        return result._replace(context=hidden_states + self.output(result.context))



@torch.no_grad()
def keep_features(linear: nn.Module, index: Tensor, *, dim: int) -> None:
    """Keep only the ``index`` outputs (``dim=0``, bias rows too) or inputs (``dim=1``, bias
    unchanged) of the ``nn.Linear`` ``linear``, in place: new parameters in its dtype and on its
    device (meta included), with its ``requires_grad``."""
    linear.weight = nn.Parameter(linear.weight.index_select(dim, index), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None and dim == 0:
        linear.bias = nn.Parameter(linear.bias.index_select(0, index), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape
