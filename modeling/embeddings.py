"""The input embeddings of XLM-RoBERTa-XL: word + position + token type (no LayerNorm in XL).

Owns fairseq position ids (real tokens count from ``padding_idx + 1``, pads keep the padding
position) and `Embeddings`, whose attribute names are HF's state-dict keys. Shapes: B = batch,
S = length, H = hidden size.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .config import XLMRobertaXLConfig


def position_ids_from_input_ids(input_ids: Tensor, padding_idx: int, *, past_length: int = 0) -> Tensor:
    """fairseq positions: real tokens count from ``padding_idx + 1 + past_length``, pads stay at
    ``padding_idx``. ``input_ids`` (B, S) -> (B, S) int64. (HF: ``create_position_ids_from_input_ids``.)"""
    not_pad = input_ids.ne(padding_idx).int()
    return ((torch.cumsum(not_pad, dim=1).type_as(not_pad) + past_length) * not_pad).long() + padding_idx



class Embeddings(nn.Module):
    """``word + position + token_type`` embeddings, then dropout (no LayerNorm in XL); the
    position term only with ``position_embedding_type="absolute"``."""

    def __init__(self, *, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=self.padding_idx)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        #: with relative positions (in the attention) the position embeddings are kept but not added, as in HF
        self.position_embedding_type = config.position_embedding_type
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def create_position_ids_from_inputs_embeds(self, inputs_embeds: Tensor) -> Tensor:
        """Positions of inputs given as embeddings (HF's name), where padding cannot be seen:
        ``padding_idx + 1 .. padding_idx + S`` in every row. (B, S, H) -> (B, S) int64."""
        batch_size, length = inputs_embeds.shape[:2]
        start = self.padding_idx + 1
        positions = torch.arange(start, start + length, dtype=torch.long, device=inputs_embeds.device)
        return positions.unsqueeze(0).expand(batch_size, length)

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        *,
        inputs_embeds: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_length: int = 0,
    ) -> Tensor:
        """``input_ids`` (B, S) or ``inputs_embeds`` (B, S, H) -> (B, S, H).

        Without ``position_ids``, positions come from ``input_ids`` (pads keep the padding
        position; counting continues after ``past_length`` cached tokens) or, for embeddings,
        are ``padding_idx + 1 .. padding_idx + S``. ``token_type_ids`` default to 0.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.word_embeddings(input_ids)
        batch_size, length = inputs_embeds.shape[:2]
        if position_ids is None:
            if input_ids is not None:
                position_ids = position_ids_from_input_ids(input_ids, self.padding_idx, past_length=past_length)
            else:
                position_ids = self.create_position_ids_from_inputs_embeds(inputs_embeds)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch_size, length, dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.position_embedding_type == "absolute":
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(embeddings)

