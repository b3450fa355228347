"""Tests of modeling/attention.py: relative position scores (``relative_key``,
``relative_key_query``) against HF transformers on identical weights.

HF's ``XLMRobertaXL*`` classes are the numerical reference (test-only), built by
`tests.modeling.test_model.make_pair`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modeling.config import XLMRobertaXLConfig
from modeling.heads import XLMRobertaXLForCausalLM
from modeling.model import XLMRobertaXLModel

from .test_model import (
    TINY,
    _incremental,
    assert_close,
    assert_grads_close,
    compare_backbone,
    make_pair,
    random_ids,
    real_positions,
    weighted_sum,
)

transformers = pytest.importorskip("transformers")

RELATIVE = ["relative_key", "relative_key_query"]


@pytest.mark.parametrize("kind", RELATIVE)
def test_distance_embeddings_have_hfs_names_and_only_in_self_attention(kind: str) -> None:
    hf, ours = make_pair(position_embedding_type=kind, is_decoder=True, add_cross_attention=True)
    assert set(ours.state_dict()) == set(hf.state_dict())
    names = [name for name in ours.state_dict() if "distance_embedding" in name]
    assert names == [f"encoder.layer.{i}.attention.self.distance_embedding.weight" for i in range(TINY["num_hidden_layers"])]
    head_dim = TINY["hidden_size"] // TINY["num_attention_heads"]
    assert ours.encoder.layer[0].attention.self.distance_embedding.weight.shape == (2 * TINY["max_position_embeddings"] - 1, head_dim)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", RELATIVE)
def test_relative_positions_equal_hf(kind: str, attn: str) -> None:
    """Padded batch, token types, every hidden state, attentions, pooler and every gradient
    (the distance embeddings' included)."""
    hf, ours = make_pair(attn=attn, position_embedding_type=kind, type_vocab_size=2)
    ids, mask = random_ids(pad_lengths=(0, 3, 5))
    types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)
    kwargs: dict[str, Any] = {"attention_mask": mask, "token_type_ids": types, "output_hidden_states": True,
                              "output_attentions": True}
    hf_out, our_out = hf(**{"input_ids": ids, **kwargs}), ours(ids, **kwargs)
    compare_backbone(hf_out, our_out, attentions=True)
    for out, model in ((hf_out, hf), (ours(ids, attention_mask=mask, token_type_ids=types), ours)):
        weighted_sum([real_positions(out.last_hidden_state, mask), out.pooler_output]).backward()
    assert ours.encoder.layer[1].attention.self.distance_embedding.weight.grad.abs().sum() > 0
    assert_grads_close(hf, ours)


@pytest.mark.parametrize("kind", RELATIVE)
def test_relative_positions_change_the_output_and_skip_the_absolute_embeddings(kind: str) -> None:
    """The positions come from the distance embeddings: the absolute table is not read, and a
    model whose distance embeddings are zeroed sees no order at all."""
    _, ours = make_pair(position_embedding_type=kind)
    ids, _ = random_ids(batch=1, length=7)
    before = ours(ids).last_hidden_state
    with torch.no_grad():
        ours.embeddings.position_embeddings.weight.normal_()
    assert_close(ours(ids).last_hidden_state, before)
    with torch.no_grad():
        for layer in ours.encoder.layer:
            layer.attention.self.distance_embedding.weight.zero_()
    flipped = ours(ids.flip(1)).last_hidden_state
    assert_close(flipped.flip(1), ours(ids).last_hidden_state)
    assert (flipped.flip(1) - before).abs().max() > 1e-3


@pytest.mark.parametrize("kind", RELATIVE)
def test_relative_positions_with_cache_equal_full_forward_and_hf(kind: str) -> None:
    """One token per step (as in generation): equal to HF's cached steps. Several tokens per
    step: equal to the full forward (HF gives every query of such a step the last query's
    position, so HF's cached step differs from its own full forward there)."""
    hf, ours = make_pair(attn="eager", position_embedding_type=kind, is_decoder=True)
    ids, mask = random_ids(length=10, pad_lengths=(0, 0, 0))
    mask[1, 0] = 0
    full = ours(ids, attention_mask=mask).last_hidden_state
    assert_close(full, hf(ids, attention_mask=mask).last_hidden_state)
    one_by_one = tuple(range(5, 10))
    states, past = _incremental(ours, ids, mask, splits=one_by_one)
    hf_states, hf_past = _incremental(hf, ids, mask, splits=one_by_one)
    assert_close(states, hf_states, what="one token per step")
    assert_close(past, tuple(tuple(layer) for layer in hf_past), what="cache vs HF")
    states, _ = _incremental(ours, ids, mask, splits=(3, 7))
    assert_close(states[mask.bool()], full[mask.bool()], what="several tokens per step")


def test_relative_positions_in_greedy_generation_equal_hf() -> None:
    hf, ours = make_pair("ForCausalLM", position_embedding_type="relative_key_query", is_decoder=True)
    ids, _ = random_ids(batch=2, length=5)
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 1, "eos_token_id": None}
    assert torch.equal(ours.generate(ids, **settings), hf.generate(ids, **settings))


def test_skip_padding_with_relative_positions_equals_padded_forward() -> None:
    _, ours = make_pair(position_embedding_type="relative_key")
    ids, mask = random_ids(batch=4, length=11, pad_lengths=(0, 4, 9, 2))
    padded = ours(ids, attention_mask=mask).last_hidden_state
    skipped = ours(ids, attention_mask=mask, skip_padding=True).last_hidden_state
    assert_close(real_positions(skipped, mask), real_positions(padded, mask))


@pytest.mark.parametrize("kind", RELATIVE)
def test_relative_checkpoints_load_both_ways(kind: str, tmp_path: Path) -> None:
    hf, ours = make_pair("ForCausalLM", position_embedding_type=kind, is_decoder=True)
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["position_embedding_type"] == kind
    by_hf = transformers.XLMRobertaXLForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert_close(by_hf(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits)
    hf.save_pretrained(tmp_path / "hf")
    by_ours = XLMRobertaXLForCausalLM.from_pretrained(tmp_path / "hf")
    assert by_ours.config.position_embedding_type == kind
    assert_close(by_ours(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)


def test_positions_beyond_the_distance_table_name_the_setting() -> None:
    model = XLMRobertaXLModel(XLMRobertaXLConfig(**TINY, position_embedding_type="relative_key", is_decoder=True)).eval()
    ids, _ = random_ids(batch=1, length=30)
    past = model(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"relative_key positions reach 41, beyond max_position_embeddings \(40\)"):
        model(ids[:, :11], past_key_values=past)
