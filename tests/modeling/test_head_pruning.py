"""Tests of head pruning (``prune_heads``, ``config.pruned_heads``: modeling/attention.py,
modeling/pretrained.py, modeling/config.py) against HF transformers on identical weights.

Every comparison prunes HF's model and ours the same way, starting from the identical weights
that `tests.modeling.test_model.make_pair` gives both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeling.config import ConfigError, XLMRobertaXLConfig
from modeling.heads import XLMRobertaXLForCausalLM, XLMRobertaXLForMaskedLM, XLMRobertaXLForSequenceClassification
from modeling.lora import LoraConfig, apply_lora
from modeling.model import XLMRobertaXLModel

from . import test_model as common

transformers = pytest.importorskip("transformers")

HEADS = common.TINY["num_attention_heads"]
PRUNING = {0: [1, 2, 3], -1: [0], 1: [2]}
NORMALISED = {0: [1, 2, 3], 1: [2], 2: [0]}


def _shapes(model: torch.nn.Module) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruned_model_equals_hfs(attn: str) -> None:
    """Outputs, attentions (fewer heads), hidden states, pooler, gradients and every parameter
    shape equal HF's after the same pruning; config.pruned_heads records it."""
    hf, ours = common.make_pair(attn=attn)
    hf.prune_heads(PRUNING)
    ours.prune_heads(PRUNING)
    assert _shapes(ours) == _shapes(hf)
    assert ours.config.pruned_heads == NORMALISED
    ids, mask = common.random_ids(pad_lengths=(0, 3, 5))
    for extra in ({}, {"output_attentions": True}):
        hf_out = hf(ids, attention_mask=mask, output_hidden_states=True, **extra)
        our_out = ours(ids, attention_mask=mask, output_hidden_states=True, **extra)
        common.compare_backbone(hf_out, our_out, attentions=bool(extra))
    assert [a.shape[1] for a in our_out.attentions] == [1, 3, 3]
    for out, model in ((hf_out, hf), (our_out, ours)):
        common.weighted_sum([common.real_positions(out.last_hidden_state, mask), out.pooler_output]).backward()
    common.assert_grads_close(hf, ours)


def test_pruning_again_skips_pruned_heads_like_hf() -> None:
    """Head indices always refer to the unpruned layer; heads pruned before are skipped."""
    hf, ours = common.make_pair("ForSequenceClassification", attn="eager")
    for step in ({0: [1]}, {0: [1, 3], 2: [0]}, {0: [1]}):
        hf.prune_heads(step)
        ours.prune_heads(step)
    assert _shapes(ours) == _shapes(hf)
    assert ours.config.pruned_heads == {0: [1, 3], 2: [0]}
    assert ours.roberta.encoder.layer[0].attention.self.kept_heads == [0, 2]
    ids, mask = common.random_ids(pad_lengths=(0, 2, 4))
    common.assert_close(ours(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)


def test_every_head_of_a_layer_pruned_equals_hf() -> None:
    hf, ours = common.make_pair(attn="eager")
    hf.prune_heads({1: list(range(HEADS))})
    ours.prune_heads({1: list(range(HEADS))})
    ids, mask = common.random_ids(pad_lengths=(0, 3, 5))
    for extra in ({}, {"output_attentions": True}):
        common.assert_close(ours(ids, attention_mask=mask, **extra).last_hidden_state, hf(ids, attention_mask=mask).last_hidden_state)


def test_model_built_from_a_config_with_pruned_heads_has_the_pruned_shapes() -> None:
    """A config's pruned_heads (negative layers included, as HF's tests write them) give the
    pruned shapes at construction; the count of config.num_parameters follows."""
    hf, _ = common.make_pair("ForMaskedLM", attn="eager")
    hf.prune_heads(PRUNING)
    config = XLMRobertaXLConfig.from_dict({**hf.config.to_dict(), "pruned_heads": PRUNING})
    ours = XLMRobertaXLForMaskedLM(config)
    assert _shapes(ours) == _shapes(hf) and config.pruned_heads == NORMALISED
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert XLMRobertaXLConfig(**common.TINY, pruned_heads=PRUNING).num_parameters() == XLMRobertaXLModel(
        XLMRobertaXLConfig(**common.TINY, pruned_heads=PRUNING)).num_parameters()
    with torch.device("meta"):
        on_meta = XLMRobertaXLModel(XLMRobertaXLConfig(**common.TINY, pruned_heads=PRUNING))
    assert all(p.is_meta for p in on_meta.parameters())
    assert on_meta.encoder.layer[0].attention.self.query.weight.shape == (common.TINY["hidden_size"] // HEADS, common.TINY["hidden_size"])


def test_pruned_checkpoints_load_both_ways(tmp_path: Path) -> None:
    hf, ours = common.make_pair("ForMaskedLM", attn="eager")
    hf.prune_heads(PRUNING)
    ours.prune_heads(PRUNING)
    ids, mask = common.random_ids(pad_lengths=(0, 2, 0))
    expected = hf(ids, attention_mask=mask).logits
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["pruned_heads"] == {"0": [1, 2, 3], "1": [2], "2": [0]}
    by_hf = transformers.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    common.assert_close(by_hf(ids, attention_mask=mask).logits, expected)
    hf.save_pretrained(tmp_path / "hf")  # HF writes the layer key "-1" as given
    assert "-1" in json.loads((tmp_path / "hf" / "config.json").read_text())["pruned_heads"]
    by_ours = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "hf")
    assert by_ours.config.pruned_heads == NORMALISED and _shapes(by_ours) == _shapes(hf)
    common.assert_close(by_ours(ids, attention_mask=mask).logits, expected)


def test_head_mask_of_a_pruned_model_covers_the_original_heads() -> None:
    """head_mask stays (heads,) or (layers, heads) over the unpruned heads (HF's pruned layers
    cannot take it): a pruned model with mask m equals HF's unpruned model with m and the pruned
    heads masked."""
    hf, ours = common.make_pair(attn="eager")
    ours.prune_heads(PRUNING)
    head_mask = torch.rand(common.TINY["num_hidden_layers"], HEADS, generator=torch.Generator().manual_seed(4))
    kept = torch.ones(common.TINY["num_hidden_layers"], HEADS)
    for layer, heads in NORMALISED.items():
        kept[layer, heads] = 0.0
    ids, mask = common.random_ids(pad_lengths=(0, 3, 5))
    expected = hf(ids, attention_mask=mask, head_mask=head_mask * kept)
    common.compare_backbone(expected, ours(ids, attention_mask=mask, head_mask=head_mask), hidden=False)
    common.assert_close(ours(ids, attention_mask=mask, head_mask=head_mask[1]).last_hidden_state,
                 hf(ids, attention_mask=mask, head_mask=head_mask[1] * kept).last_hidden_state)
    with pytest.raises(ValueError, match=r"head_mask has 3 heads; the model has 4 \(pruned ones included\)"):
        ours(ids, attention_mask=mask, head_mask=torch.ones(3))


def test_pruned_decoder_cache_equals_full_forward_and_hf() -> None:
    hf, ours = common.make_pair("ForCausalLM", attn="eager", is_decoder=True)
    hf.prune_heads(PRUNING)
    ours.prune_heads(PRUNING)
    ids, mask = common.random_ids(length=10, pad_lengths=(0, 0, 0))
    states, past = common._incremental(ours.roberta, ids, mask, splits=(4, 7))
    common.assert_close(states, ours.roberta(ids, attention_mask=mask).last_hidden_state)
    assert [layer[0].shape[1] for layer in past] == [1, 3, 3]
    hf_states, hf_past = common._incremental(hf.roberta, ids, mask, splits=(4, 7))
    common.assert_close(states, hf_states)
    common.assert_close(past, tuple(tuple(layer) for layer in hf_past), what="cache vs HF")
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 1, "eos_token_id": None}
    assert torch.equal(ours.generate(ids[:, :4], **settings), hf.generate(ids[:, :4], **settings))


def test_pruning_keeps_dtype_device_and_trainability() -> None:
    model = XLMRobertaXLForCausalLM(XLMRobertaXLConfig(**common.TINY, is_decoder=True)).to(torch.bfloat16)
    model.roberta.encoder.layer[0].attention.self.key.weight.requires_grad_(False)
    model.prune_heads({0: [0]})
    attention = model.roberta.encoder.layer[0].attention
    assert attention.self.query.weight.dtype == torch.bfloat16 and attention.output.dense.weight.dtype == torch.bfloat16
    assert attention.self.query.weight.requires_grad and not attention.self.key.weight.requires_grad
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight  # ties untouched


@pytest.mark.parametrize("pruning, message", [
    ({3: [0]}, r"heads_to_prune: layer 3 is not a layer index of the 3 layers"),
    ({-4: [0]}, r"heads_to_prune: layer -4 is not"),
    ({"a": [1]}, r"heads_to_prune: layer 'a' is not"),
    ({0: [4]}, r"heads_to_prune\[0\]: 4 is not a head index of the 4 heads"),
    ({0: 1}, r"heads_to_prune\[0\] must be a list of heads"),
    ([0, 1], r"heads_to_prune must map layer indices to lists of heads"),
])
def test_bad_pruning_names_the_entry(pruning: object, message: str) -> None:
    model = XLMRobertaXLModel(XLMRobertaXLConfig(**common.TINY))
    before = _shapes(model)
    with pytest.raises(ConfigError, match=message):
        model.prune_heads(pruning)
    assert _shapes(model) == before and model.config.pruned_heads == {}


def test_bad_pruned_heads_in_a_config_are_refused_when_a_model_is_built() -> None:
    config = XLMRobertaXLConfig(**common.TINY)
    config.pruned_heads = {5: [0]}
    with pytest.raises(ConfigError, match=r"pruned_heads: layer 5 is not a layer index"):
        XLMRobertaXLModel(config)


@pytest.mark.parametrize("targets", [("query", "value"), ("attention_output",)])
def test_pruning_after_lora_is_refused_and_changes_nothing(targets: tuple) -> None:
    model = XLMRobertaXLModel(XLMRobertaXLConfig(**common.TINY))
    apply_lora(model, LoraConfig(r=2, targets=targets))
    before = _shapes(model)
    with pytest.raises(ValueError, match=r"cannot prune heads of a modeling\.lora\.layer\.LoraLinear: prune them before"):
        model.prune_heads({0: [1]})
    assert _shapes(model) == before and model.config.pruned_heads == {}


def test_pruning_a_quantised_model_is_refused() -> None:
    model = torch.ao.quantization.quantize_dynamic(XLMRobertaXLModel(XLMRobertaXLConfig(**common.TINY)).eval(),
                                                   {torch.nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ValueError, match=r"cannot prune heads of a torch\.ao\.nn\.quantized\.dynamic\..*Linear: prune them"):
        model.prune_heads({0: [1]})


def test_sequence_classifier_pruned_through_the_task_model(tmp_path: Path) -> None:
    """prune_heads on a task model prunes its backbone; the saved model reloads pruned."""
    model = XLMRobertaXLForSequenceClassification(XLMRobertaXLConfig(**common.TINY, num_labels=3)).eval()
    model.prune_heads({1: [0, 3]})
    ids, mask = common.random_ids(pad_lengths=(0, 1, 2))
    model.save_pretrained(tmp_path)
    again = XLMRobertaXLForSequenceClassification.from_pretrained(tmp_path)
    assert again.roberta.encoder.layer[1].attention.self.num_heads == 2
    common.assert_close(again(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
