"""Tests of modeling/pretrained.py: the PreTrainedModel API against HF transformers' behaviour.

Embedding accessors and resizing, parameter counts, ``base_model``, gradient checkpointing
options, and ``from_pretrained`` / ``save_pretrained`` with HF's keywords, each compared with what
HF's classes do on the same weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from torch import nn

from modeling.config import XLMRobertaXLConfig
from modeling.heads import (
    XLMRobertaXLForCausalLM,
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForQuestionAnswering,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForTokenClassification,
)
from modeling.model import XLMRobertaXLModel

from .test_model import TINY, assert_close, make_pair, random_ids, weighted_sum

transformers = pytest.importorskip("transformers")

LOGGER = "modeling.checkpoint"


def _tied(model: nn.Module) -> bool:
    decoder = model.get_output_embeddings()
    return decoder.weight is model.get_input_embeddings().weight and decoder.bias is model.lm_head.bias


# ------------------------------------------------------------------ embeddings and counts
def test_embedding_accessors_and_base_model() -> None:
    hf, ours = make_pair("ForMaskedLM")
    assert ours.base_model is ours.roberta and ours.roberta.base_model is ours.roberta
    assert ours.get_input_embeddings() is ours.roberta.embeddings.word_embeddings
    assert ours.get_output_embeddings() is ours.lm_head.decoder and _tied(ours)
    assert XLMRobertaXLForSequenceClassification(ours.config).get_output_embeddings() is None
    assert hf.get_output_embeddings() is not None and ours.can_generate() is False
    assert XLMRobertaXLForCausalLM.can_generate() and not XLMRobertaXLModel.can_generate()
    new = nn.Embedding(TINY["vocab_size"], TINY["hidden_size"], padding_idx=1)
    ours.set_input_embeddings(new)
    assert ours.get_input_embeddings() is new and _tied(ours)  # the decoder follows
    decoder = nn.Linear(TINY["hidden_size"], TINY["vocab_size"])
    ours.set_output_embeddings(decoder)
    assert ours.lm_head.bias is decoder.bias  # as HF: the head takes the decoder's bias


@pytest.mark.parametrize("name", ["Model", "ForMaskedLM", "ForSequenceClassification"])
def test_num_parameters_equals_hf(name: str) -> None:
    hf, ours = make_pair(name)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            kwargs = dict(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
            assert ours.num_parameters(**kwargs) == hf.num_parameters(**kwargs), kwargs
    ours.roberta.embeddings.requires_grad_(False) if name != "Model" else ours.embeddings.requires_grad_(False)
    hf.base_model.embeddings.requires_grad_(False)
    assert ours.num_parameters(only_trainable=True) == hf.num_parameters(only_trainable=True)


@pytest.mark.parametrize("name", ["ForMaskedLM", "ForCausalLM", "Model"])
def test_resize_token_embeddings_like_hf(name: str) -> None:
    """Same shapes, kept rows, zero-padded LM bias and config.vocab_size as HF; the decoder stays tied."""
    overrides = {"is_decoder": True} if name == "ForCausalLM" else {}
    hf, ours = make_pair(name, **overrides)
    old = ours.get_input_embeddings().weight.detach().clone()
    for new_size, multiple in ((TINY["vocab_size"] + 13, None), (TINY["vocab_size"] - 100, 64)):
        got, expected = ours.resize_token_embeddings(new_size, pad_to_multiple_of=multiple), hf.resize_token_embeddings(
            new_size, pad_to_multiple_of=multiple)
        assert got.weight.shape == expected.weight.shape and ours.config.vocab_size == hf.config.vocab_size
        kept = min(old.shape[0], got.num_embeddings)
        assert torch.equal(got.weight[:kept], old[:kept])
        if name != "Model":
            assert _tied(ours) and ours.lm_head.bias.shape == hf.lm_head.bias.shape
            assert_close(ours.lm_head.bias, hf.lm_head.bias, what="lm_head.bias")
    assert ours.resize_token_embeddings() is ours.get_input_embeddings()  # nothing to change
    ids, mask = random_ids()
    ids = ids.clamp(max=ours.config.vocab_size - 1)
    out = ours(ids, attention_mask=mask)
    if name != "Model":
        assert out.logits.shape[-1] == ours.config.vocab_size
        ours.zero_grad()
        out.logits.sum().backward()
        assert ours.get_input_embeddings().weight.grad is not None


def test_resize_new_rows_follow_hfs_distribution() -> None:
    """mean_resizing: new rows sit at the old rows' mean (HF's N(mean, 1e-9 cov)); otherwise N(0, std)."""
    _, ours = make_pair("ForMaskedLM")
    old = ours.get_input_embeddings().weight.detach().clone()
    new = ours.resize_token_embeddings(TINY["vocab_size"] + 50).weight.detach()
    assert_close(new[TINY["vocab_size"]:], old.mean(0).expand(50, -1), atol=1e-3, what="new rows")
    torch.manual_seed(0)
    drawn = ours.resize_token_embeddings(TINY["vocab_size"] + 4000, mean_resizing=False).weight.detach()[-4000:]
    assert abs(drawn.std().item() - ours.config.initializer_range) < 2e-3 and abs(drawn.mean().item()) < 1e-3


# ------------------------------------------------------------------ gradient checkpointing
@pytest.mark.parametrize("options", [None, {"use_reentrant": True}, {"use_reentrant": False, "preserve_rng_state": False}])
def test_gradient_checkpointing_kwargs(options: Any) -> None:
    _, ours = make_pair("ForMaskedLM", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    ours.train()

    def grads() -> Dict[str, torch.Tensor]:
        ours.zero_grad()
        weighted_sum([ours(ids, attention_mask=mask).logits]).backward()
        return {name: p.grad.clone() for name, p in ours.named_parameters() if p.grad is not None}

    plain = grads()
    calls = []
    ours.roberta.encoder.layer[0].attention.register_forward_hook(lambda *args: calls.append(1))
    ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    assert ours.is_gradient_checkpointing and ours.supports_gradient_checkpointing
    checkpointed = grads()
    assert len(calls) == 2  # forward + recomputation
    assert set(checkpointed) == set(plain)
    for name, grad in plain.items():
        assert_close(checkpointed[name], grad, 1e-6, name)
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing


# ------------------------------------------------------------------ from_pretrained keywords
@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    _, ours = make_pair("ForTokenClassification", num_labels=3)
    ours.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_torch_dtype_loads_that_dtype(saved: Path, tmp_path: Path) -> None:
    """HF's spelling torch_dtype= (and "auto") loads that dtype; it never becomes a config field."""
    for value in (torch.bfloat16, "bfloat16", "torch.bfloat16"):
        model = XLMRobertaXLForTokenClassification.from_pretrained(saved, torch_dtype=value)
        assert model.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.parameters())
        assert "torch_dtype" not in model.config.extra
    assert XLMRobertaXLForTokenClassification.from_pretrained(saved, torch_dtype="auto").dtype == torch.float32
    model.save_pretrained(tmp_path / "bf16")
    assert XLMRobertaXLForTokenClassification.from_pretrained(tmp_path / "bf16", torch_dtype="auto").dtype == torch.bfloat16
    hf = transformers.XLMRobertaXLForTokenClassification.from_pretrained(tmp_path / "bf16", torch_dtype="auto")
    assert hf.dtype == torch.bfloat16
    assert XLMRobertaXLForTokenClassification.from_pretrained(saved, dtype=torch.float16, torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="torch_dtype"):
        XLMRobertaXLForTokenClassification.from_pretrained(saved, dtype=torch.float16, torch_dtype=torch.bfloat16)


def test_unknown_keywords_raise_and_loading_options_never_reach_config_json(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'num_lables'"):
        XLMRobertaXLForTokenClassification.from_pretrained(saved, num_lables=5)
    with pytest.raises(TypeError, match="'add_pooling_layer'"):  # a constructor keyword of another class
        XLMRobertaXLForTokenClassification.from_pretrained(saved, add_pooling_layer=False)
    with pytest.raises(ValueError, match="attn_implementation"):
        XLMRobertaXLForTokenClassification.from_pretrained(saved, attn_implementation="flash_attention_2")
    model = XLMRobertaXLForTokenClassification.from_pretrained(
        saved, attn_implementation="eager", low_cpu_mem_usage=True, revision="main", cache_dir=str(tmp_path),
        token=None, local_files_only=True, force_download=False, hidden_dropout_prob=0.2,
    )
    assert model.config.hidden_dropout_prob == 0.2  # config fields update
    model.save_pretrained(tmp_path / "again")
    written = json.loads((tmp_path / "again" / "config.json").read_text())
    options = {"attn_implementation", "low_cpu_mem_usage", "output_loading_info", "revision", "cache_dir", "token"}
    assert not options & set(written) and written["hidden_dropout_prob"] == 0.2
    bare = XLMRobertaXLModel.from_pretrained(saved, add_pooling_layer=False)
    assert bare.pooler is None


def test_output_loading_info_equals_hf(saved: Path) -> None:
    ours, info = XLMRobertaXLForSequenceClassification.from_pretrained(saved, num_labels=3, output_loading_info=True)
    hf, hf_info = transformers.XLMRobertaXLForSequenceClassification.from_pretrained(saved, num_labels=3,
                                                                                      output_loading_info=True)
    assert set(info) == set(hf_info)
    assert sorted(info["missing_keys"]) == sorted(hf_info["missing_keys"])
    assert sorted(info["unexpected_keys"]) == sorted(hf_info["unexpected_keys"])
    assert info["mismatched_keys"] == [] and info["error_msgs"] == []
    assert isinstance(ours, XLMRobertaXLForSequenceClassification)


def test_ignore_mismatched_sizes_initialises_like_hf(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RuntimeError, match="classifier.weight"):  # a CheckpointError, HF's exception type
        XLMRobertaXLForTokenClassification.from_pretrained(saved, num_labels=7)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model, info = XLMRobertaXLForTokenClassification.from_pretrained(
            saved, num_labels=7, ignore_mismatched_sizes=True, output_loading_info=True)
    assert "the shapes did not match" in caplog.text
    hf, hf_info = transformers.XLMRobertaXLForTokenClassification.from_pretrained(
        saved, num_labels=7, ignore_mismatched_sizes=True, output_loading_info=True)
    assert sorted(info["mismatched_keys"]) == sorted(hf_info["mismatched_keys"]) == ["classifier.bias", "classifier.weight"]
    assert "classifier.weight (checkpoint [3, 64], model [7, 64])" in caplog.text
    assert model.classifier.weight.shape == (7, TINY["hidden_size"]) and info["missing_keys"] == []
    assert model.classifier.bias.abs().max() == 0  # initialised as HF's init does
    ids, mask = random_ids()
    hf.classifier.load_state_dict(model.classifier.state_dict())
    assert_close(model(ids, attention_mask=mask).logits, hf.eval()(ids, attention_mask=mask).logits)
    bare = XLMRobertaXLModel.from_pretrained(saved, vocab_size=10, ignore_mismatched_sizes=True)
    assert bare.get_input_embeddings().num_embeddings == 10
    bare(torch.randint(2, 10, (2, 8)))


def test_subfolder_and_device_map(saved: Path) -> None:
    model = XLMRobertaXLForTokenClassification.from_pretrained(saved.parent, subfolder=saved.name, device_map="cpu")
    assert model.device.type == "cpu"
    assert XLMRobertaXLForTokenClassification.from_pretrained(saved, device_map={"": "cpu"}).device.type == "cpu"
    with pytest.raises(ValueError, match="device_map"):
        XLMRobertaXLForTokenClassification.from_pretrained(saved, device_map="auto")


@pytest.mark.parametrize("max_shard_size", ["5GB", "60KB"])
def test_save_without_safetensors_loads_in_hf_and_ours(tmp_path: Path, max_shard_size: str) -> None:
    hf, ours = make_pair("ForMaskedLM")
    ours.save_pretrained(tmp_path, safe_serialization=False, max_shard_size=max_shard_size)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith(".safetensors")]
    assert ("pytorch_model.bin" in names) == (max_shard_size == "5GB")
    ids, mask = random_ids()
    expected = ours(ids, attention_mask=mask).logits
    for cls in (XLMRobertaXLForMaskedLM, transformers.XLMRobertaXLForMaskedLM):
        loaded = cls.from_pretrained(tmp_path).eval()
        assert_close(loaded(ids, attention_mask=mask).logits, expected, what=cls.__module__)


def test_question_answering_config_default_still_two_labels(tmp_path: Path) -> None:
    """The HF keywords leave the existing label handling alone (QA head built with num_labels)."""
    model = XLMRobertaXLForQuestionAnswering(XLMRobertaXLConfig(**TINY))
    model.save_pretrained(tmp_path)
    assert XLMRobertaXLForQuestionAnswering.from_pretrained(tmp_path, torch_dtype="auto").qa_outputs.out_features == 2


# ------------------------------------------------------------------ HF conventions around loading
def test_attn_implementation_is_recorded_and_changes_nothing(saved: Path) -> None:
    default = XLMRobertaXLForTokenClassification.from_pretrained(saved)
    eager = XLMRobertaXLForTokenClassification.from_pretrained(saved, attn_implementation="eager")
    assert default.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    assert "_attn_implementation" not in json.loads(eager.config.to_json_string(use_diff=False))
    ids, mask = random_ids()
    assert_close(eager(ids, attention_mask=mask).logits, default(ids, attention_mask=mask).logits)
    built = XLMRobertaXLForTokenClassification._from_config(default.config, torch_dtype=torch.float16,
                                                           attn_implementation="eager")
    assert built.dtype == torch.float16 and built.config._attn_implementation == "eager"
    assert default.config._attn_implementation == "sdpa"  # _from_config works on a copy


def test_loading_under_a_device_context_and_from_a_state_dict(saved: Path) -> None:
    with torch.device("meta"):
        meta = XLMRobertaXLForTokenClassification.from_pretrained(saved)
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    hf, ours = make_pair("ForTokenClassification", num_labels=3)
    rebuilt, info = XLMRobertaXLForTokenClassification.from_pretrained(
        None, config=ours.config, state_dict=ours.state_dict(), output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = random_ids()
    assert_close(rebuilt(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)
    with pytest.raises(ValueError, match="state_dict"):
        XLMRobertaXLForTokenClassification.from_pretrained(saved, state_dict=ours.state_dict())


def test_hf_flags_vocab_size_and_legacy_checkpointing_switch() -> None:
    config = XLMRobertaXLConfig(**TINY)
    model = XLMRobertaXLForMaskedLM(config)
    assert model.vocab_size == TINY["vocab_size"] and model._supports_sdpa and not model._supports_static_cache
    model.resize_token_embeddings(TINY["vocab_size"] + 3)
    assert model.vocab_size == TINY["vocab_size"] + 3
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model.resize_token_embeddings(TINY["vocab_size"], pad_to_multiple_of=1.3)
    legacy = XLMRobertaXLConfig.from_dict({**TINY, "gradient_checkpointing": True})  # old HF config.json key
    assert XLMRobertaXLModel(legacy).is_gradient_checkpointing and not XLMRobertaXLModel(config).is_gradient_checkpointing
