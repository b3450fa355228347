"""Tests of modeling/lora: LoRA layers against HF PEFT, PEFT adapter files both ways, merging into
an HF checkpoint, training (only adapters change), bf16 bases, checkpointing, the memory arithmetic
and the bad-input errors.

PEFT + transformers are the numerical reference (test-only): both sides get identical base
weights (`make_pair`) and identical, nonzero adapter weights (B random, not PEFT's zeros).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeling import cpu_features
from modeling.checkpoint import CheckpointError, checkpoint_files, load_pretrained, save_pretrained
from modeling.config import XLMRobertaXLConfig
from modeling.heads import XLMRobertaXLForTokenClassification
from modeling.lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    TARGETS,
    LoraConfig,
    LoraLinear,
    apply_lora,
    head_parameters,
    load_peft_adapter,
    lora_config_of,
    lora_layers,
    lora_parameter_count,
    lora_parameters,
    lora_training_bytes,
    merge_lora,
    merged_adapters,
    peft_state_dict,
    save_peft_adapter,
    without_adapters,
)
from modeling.lora import layer as lora_layer_module
from modeling.model import XLMRobertaXLModel

from .test_model import TINY, assert_close, make_pair, max_diff, random_ids, weighted_sum

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ALL_TARGETS = tuple(TARGETS)
SETTINGS = LoraConfig(r=4, alpha=8, targets=("query", "value"))


# ---------------------------------------------------------------------------------- helpers
def randomise_adapters(model: nn.Module, *, seed: int = 3) -> None:
    """Nonzero B (and a fresh A) in every LoRA layer, so that the adapters change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def peft_twin(hf: nn.Module, ours: nn.Module) -> nn.Module:
    """``hf`` wrapped by ``peft.get_peft_model`` with our settings, holding our adapter weights
    (copied module by module, not through our key names)."""
    settings = lora_config_of(ours)
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=settings.pattern)
    twin = peft.get_peft_model(hf, config)
    with torch.no_grad():
        for path, layer in lora_layers(ours).items():
            reference = hf.get_submodule(path)
            reference.lora_A["default"].weight.copy_(layer.lora_A.weight)
            reference.lora_B["default"].weight.copy_(layer.lora_B.weight)
    assert len([m for m in twin.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]) == len(lora_layers(ours))
    return twin


def lora_pair(name: str = "Model", settings: LoraConfig = SETTINGS, **overrides: Any) -> Tuple[nn.Module, nn.Module]:
    """(PEFT-wrapped HF model, our LoRA model), equal base and adapter weights, eval mode."""
    hf, ours = make_pair(name, **overrides)
    apply_lora(ours, settings, seed=0)
    randomise_adapters(ours)
    return peft_twin(hf, ours).eval(), ours.eval()


def outputs(model: nn.Module, **inputs: Any) -> List[Tensor]:
    out = model(**inputs)
    keys = ("last_hidden_state", "pooler_output", "logits")
    return [getattr(out, key) for key in keys if getattr(out, key, None) is not None]


def padded_inputs() -> Dict[str, Tensor]:
    ids, mask = random_ids(pad_lengths=(0, 3, 5))
    return {"input_ids": ids, "attention_mask": mask}


def tiny_config(**overrides: Any) -> XLMRobertaXLConfig:
    return XLMRobertaXLConfig(**{**TINY, **overrides})


def token_batch(num_labels: int = 2) -> Dict[str, Tensor]:
    inputs = padded_inputs()
    labels = torch.randint(0, num_labels, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(7))
    return {**inputs, "labels": labels}


# ---------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("kwargs,named", [
    ({"r": 0}, r"lora\.r"), ({"r": -2}, r"lora\.r"), ({"r": 2.5}, r"lora\.r"), ({"r": True}, r"lora\.r"),
    ({"alpha": 0}, r"lora\.alpha"), ({"alpha": -1.0}, r"lora\.alpha"), ({"alpha": float("nan")}, r"lora\.alpha"),
    ({"dropout": -0.1}, r"lora\.dropout"), ({"dropout": 1.0}, r"lora\.dropout"),
    ({"targets": ["query", "dense"]}, r"lora\.targets.*unknown: \['dense'\]"),
    ({"targets": []}, r"lora\.targets.*none"), ({"targets": "query"}, r"lora\.targets.*string"),
])
def test_bad_settings_name_the_setting(kwargs: Dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        LoraConfig(**kwargs)


def test_settings_normalise_and_round_trip() -> None:
    settings = LoraConfig(r=2, alpha=4, dropout=0.1, targets=["value", "query", "value"])
    assert settings.targets == ("query", "value") and settings.scaling == 2.0
    assert LoraConfig.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match=r"unknown lora settings \['rank'\]"):
        LoraConfig.from_dict({"rank": 4})
    with pytest.raises(TypeError):
        LoraConfig(4)  # keyword-only


# ---------------------------------------------------------------------------------- applying
def test_apply_wraps_the_targets_and_freezes_the_backbone() -> None:
    model = XLMRobertaXLModel(tiny_config())
    base_keys = set(model.state_dict())
    original = model.encoder.layer[1].attention.self.value.weight
    inputs = padded_inputs()
    before = model.eval()(**inputs).last_hidden_state
    layers = apply_lora(model, LoraConfig(r=2, alpha=4, targets=ALL_TARGETS), seed=0)
    assert len(layers) == TINY["num_hidden_layers"] * len(ALL_TARGETS)
    assert model.encoder.layer[1].attention.self.value.weight is original  # the same Parameter, no copy
    lora_keys = {name for name, _ in lora_parameters(model)}
    assert set(model.state_dict()) == base_keys | lora_keys  # base keys unchanged
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == lora_keys
    assert all(param.dtype == torch.float32 for _, param in lora_parameters(model))
    # B starts at zero: the output is the base model's
    assert torch.equal(model(**inputs).last_hidden_state, before)


def test_task_model_head_stays_trainable() -> None:
    model = XLMRobertaXLForTokenClassification(tiny_config(num_labels=3))
    apply_lora(model, SETTINGS)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == {name for name, _ in lora_parameters(model)} | {"classifier.weight", "classifier.bias"}
    unfrozen = XLMRobertaXLForTokenClassification(tiny_config(num_labels=3))
    apply_lora(unfrozen, SETTINGS, freeze_base=False)
    assert all(param.requires_grad for param in unfrozen.parameters())


def test_seed_makes_the_adapters_reproducible() -> None:
    first, second = XLMRobertaXLModel(tiny_config()), XLMRobertaXLModel(tiny_config())
    apply_lora(first, SETTINGS, seed=5)
    apply_lora(second, SETTINGS, seed=5)
    for (name, a), (_, b) in zip(lora_parameters(first), lora_parameters(second)):
        assert torch.equal(a, b), name
    layer = next(iter(lora_layers(first).values()))
    bound = 1.0 / layer.in_features ** 0.5
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 4
    assert not layer.lora_B.weight.any()


# ---------------------------------------------------------------------------------- against PEFT
@pytest.mark.parametrize("name,targets", [
    ("Model", ("query", "value")),
    ("Model", ALL_TARGETS),
    ("ForTokenClassification", ("key", "attention_output", "intermediate", "output")),
    ("ForMaskedLM", ("query", "output")),
])
def test_outputs_and_gradients_equal_peft(name: str, targets: Tuple[str, ...]) -> None:
    twin, ours = lora_pair(name, LoraConfig(r=4, alpha=8, targets=targets))
    inputs = padded_inputs()
    expected, actual = outputs(twin, **inputs), outputs(ours, **inputs)
    assert_close(actual, expected, what=name)
    assert max_diff(actual[0], make_pair(name)[1].eval()(**inputs)[0]) > 1e-2  # the adapters matter
    weighted_sum(expected).backward()
    weighted_sum(actual).backward()
    reference = dict(twin.named_parameters())
    for key, param in lora_parameters(ours):
        path, which = key.rsplit(".", 2)[0], key.split(".")[-2]
        assert_close(param.grad, reference[f"base_model.model.{path}.{which}.default.weight"].grad, 1e-4, key)


def test_train_mode_dropout_equals_peft() -> None:
    twin, ours = lora_pair(settings=LoraConfig(r=4, alpha=8, dropout=0.3, targets=("query", "value")))
    inputs = padded_inputs()
    results = []
    for model in (twin, ours):
        model.train()
        torch.manual_seed(11)
        results.append(outputs(model, **inputs))
    assert_close(results[1], results[0])


def test_skip_padding_equals_the_padded_forward() -> None:
    _, ours = lora_pair(settings=LoraConfig(r=4, alpha=8, targets=ALL_TARGETS))
    inputs = padded_inputs()
    mask = inputs["attention_mask"].bool()
    padded = ours(**inputs).last_hidden_state
    skipped = ours(**inputs, skip_padding=True).last_hidden_state
    assert_close(skipped[mask], padded[mask])


# ---------------------------------------------------------------------------------- PEFT files
def test_saved_adapter_loads_in_peft(tmp_path: Any) -> None:
    hf, ours = make_pair("ForTokenClassification")
    apply_lora(ours, LoraConfig(r=4, alpha=8, dropout=0.1, targets=("query", "value", "intermediate")), seed=0)
    randomise_adapters(ours)
    with torch.no_grad():
        ours.classifier.weight.add_(0.5)  # a trained head, carried as modules_to_save
    save_peft_adapter(ours, tmp_path / "adapter", base_model_name_or_path="tiny-base", modules_to_save=["classifier"])
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == "tiny-base"
    expected_keys = {f"base_model.model.{name}" for name, _ in lora_parameters(ours)}
    expected_keys |= {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    from safetensors import safe_open
    with safe_open(str(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME), "pt") as handle:
        assert set(handle.keys()) == expected_keys
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    inputs = padded_inputs()
    assert_close(outputs(ours.eval(), **inputs), outputs(loaded, **inputs))


def peft_adapter(hf: nn.Module, directory: Any, target_modules: List[str]) -> nn.Module:
    """``hf`` with a PEFT LoRA adapter (random B) on ``target_modules``, saved by PEFT to ``directory``."""
    twin = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=6, target_modules=target_modules))
    with torch.no_grad():
        for name, param in twin.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    twin.save_pretrained(str(directory))
    return twin


def test_peft_saved_adapter_loads_in_ours(tmp_path: Any) -> None:
    hf, ours = make_pair()
    twin = peft_adapter(hf, tmp_path / "peft", ["query", "value", "output.dense", "intermediate.dense"])
    layers = load_peft_adapter(ours, tmp_path / "peft")
    # PEFT's "output.dense" suffix matches the attention output and the feed-forward output
    assert lora_config_of(ours) == LoraConfig(r=2, alpha=6, targets=("query", "value", "attention_output",
                                                                      "intermediate", "output"))
    assert len(layers) == TINY["num_hidden_layers"] * 5
    inputs = padded_inputs()
    assert_close(outputs(ours.eval(), **inputs), outputs(twin.eval(), **inputs))


def test_adapter_round_trip_and_state_dict_keys(tmp_path: Any) -> None:
    _, ours = lora_pair()
    state = peft_state_dict(ours)
    assert "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight" in state
    assert state["base_model.model.encoder.layer.2.attention.self.value.lora_B.weight"].shape == (TINY["hidden_size"], 4)
    save_peft_adapter(ours, tmp_path / "adapter")
    _, fresh = make_pair()
    load_peft_adapter(fresh, tmp_path / "adapter")
    inputs = padded_inputs()
    assert_close(outputs(fresh.eval(), **inputs), outputs(ours, **inputs), atol=0.0)
    # an adapter of the bare backbone loads onto a task model's backbone (the ``roberta.`` prefix)
    task = XLMRobertaXLForTokenClassification(tiny_config())
    load_peft_adapter(task, tmp_path / "adapter")
    assert set(lora_layers(task)) == {f"roberta.{path}" for path in lora_layers(ours)}


# ---------------------------------------------------------------------------------- merging
def test_merged_model_saves_as_hf_checkpoint_with_our_outputs(tmp_path: Any) -> None:
    _, ours = lora_pair("ForTokenClassification", LoraConfig(r=4, alpha=8, targets=ALL_TARGETS))
    inputs = padded_inputs()
    expected = outputs(ours, **inputs)
    base_keys = set(make_pair("ForTokenClassification")[1].state_dict())
    merge_lora(ours)
    assert not lora_layers(ours) and set(ours.state_dict()) == base_keys
    assert all(type(m) is not LoraLinear for m in ours.modules())
    assert_close(outputs(ours, **inputs), expected)
    save_pretrained(ours, tmp_path / "merged")
    hf = transformers.XLMRobertaXLForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    assert_close(outputs(hf, **inputs), expected)


def test_without_adapters_and_merged_adapters_are_temporary_views(tmp_path: Any) -> None:
    _, plain = make_pair("ForTokenClassification")
    _, ours = make_pair("ForTokenClassification")
    apply_lora(ours, LoraConfig(r=4, alpha=8, targets=ALL_TARGETS), seed=0)
    randomise_adapters(ours)
    ours.eval(), plain.eval()
    inputs = padded_inputs()
    adapted = outputs(ours, **inputs)
    layers = lora_layers(ours)
    with without_adapters(ours) as view:
        assert view is ours and not lora_layers(ours) and set(ours.state_dict()) == set(plain.state_dict())
        assert ours.roberta.encoder.layer[0].attention.self.query.weight is layers[
            "roberta.encoder.layer.0.attention.self.query"].weight  # the base Parameters, not copies
        assert_close(outputs(ours, **inputs), outputs(plain, **inputs), atol=0.0)
        save_pretrained(ours, tmp_path / "base")
    with merged_adapters(ours):
        assert not lora_layers(ours)
        assert_close(outputs(ours, **inputs), adapted)
        save_pretrained(ours, tmp_path / "merged")
    assert lora_layers(ours) == layers and all(ours.get_submodule(p) is m for p, m in layers.items())
    assert_close(outputs(ours, **inputs), adapted, atol=0.0)
    base = load_pretrained(XLMRobertaXLForTokenClassification, tmp_path / "base").eval()
    assert_close(outputs(base, **inputs), outputs(plain, **inputs), atol=0.0)
    merged = transformers.XLMRobertaXLForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    assert_close(outputs(merged, **inputs), adapted)


def test_head_parameters_leave_out_the_backbone_and_tied_weights() -> None:
    from modeling.heads import XLMRobertaXLForMaskedLM, XLMRobertaXLForQuestionAnswering

    assert head_parameters(XLMRobertaXLModel(tiny_config())) == {}
    assert set(head_parameters(XLMRobertaXLForQuestionAnswering(tiny_config(num_labels=2)))) == {
        "qa_outputs.weight", "qa_outputs.bias"}
    mlm = XLMRobertaXLForMaskedLM(tiny_config())
    heads = head_parameters(mlm)
    assert set(heads) == {"lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
                          "lm_head.layer_norm.bias"}
    assert all(param is not mlm.roberta.embeddings.word_embeddings.weight for param in heads.values())
    # a Parameter path (lm_head.bias, whose module holds the tied decoder) as modules_to_save
    apply_lora(mlm, SETTINGS)
    state = peft_state_dict(mlm, modules_to_save=["lm_head.dense", "lm_head.bias"])
    assert {k for k in state if "lora_" not in k} == {"base_model.model.lm_head.bias", "base_model.model.lm_head.dense.weight",
                                                      "base_model.model.lm_head.dense.bias"}
    with pytest.raises(ValueError, match="no module or parameter 'lm_head.nothing'"):
        peft_state_dict(mlm, modules_to_save=["lm_head.nothing"])


def test_checkpoint_files_lists_config_index_and_shards(tmp_path: Any) -> None:
    model = XLMRobertaXLModel(tiny_config())
    save_pretrained(model, tmp_path / "one")
    assert [p.name for p in checkpoint_files(tmp_path / "one")] == ["config.json", "model.safetensors"]
    save_pretrained(model, tmp_path / "sharded", max_shard_size=200_000)
    names = [p.name for p in checkpoint_files(tmp_path / "sharded")]
    assert names[:2] == ["config.json", "model.safetensors.index.json"] and len(names) > 3
    assert [p.name for p in checkpoint_files(tmp_path / "one" / "model.safetensors")] == ["config.json", "model.safetensors"]
    with pytest.raises(CheckpointError, match="no such file or directory"):
        checkpoint_files(tmp_path / "missing")


# ---------------------------------------------------------------------------------- training
def test_one_step_changes_only_the_adapters() -> None:
    model = XLMRobertaXLModel(tiny_config())
    apply_lora(model, LoraConfig(r=4, alpha=8, targets=ALL_TARGETS), seed=0)
    base = {name: param.detach().clone() for name, param in model.named_parameters() if not param.requires_grad}
    adapters = {name: param.detach().clone() for name, param in lora_parameters(model)}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # B = 0 at first, so A's gradient is zero until B has moved once
        optimizer.zero_grad()
        weighted_sum([model.train()(**padded_inputs()).last_hidden_state]).backward()
        assert all(param.grad is None for param in model.parameters() if not param.requires_grad)
        optimizer.step()
    for name, param in model.named_parameters():
        if name in base:
            assert torch.equal(param, base[name]), f"base parameter {name} changed"
    for name, param in lora_parameters(model):
        assert not torch.equal(param, adapters[name]), f"adapter {name} did not change"


@pytest.mark.parametrize("head_trains", [True, False])
def test_loss_falls_on_a_repeated_batch(head_trains: bool) -> None:
    """The batch's loss (eval mode, no dropout noise) before and after 10 steps; with a frozen
    head only the adapters can lower it."""
    torch.manual_seed(0)
    model = XLMRobertaXLForTokenClassification(tiny_config(num_labels=3))
    apply_lora(model, SETTINGS, seed=0)
    model.classifier.requires_grad_(head_trains)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    batch = token_batch(3)
    with torch.no_grad():
        before = model.eval()(**batch).loss.item()
    model.train()
    for _ in range(10):
        optimizer.zero_grad()
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.eval()(**batch).loss.item()
    assert after < (0.8 if head_trains else 0.95) * before, (before, after)


def test_optimizer_state_is_the_planned_size() -> None:
    config = tiny_config(num_labels=3)
    model = XLMRobertaXLModel(config, add_pooling_layer=False)
    settings = LoraConfig(r=4, alpha=8, targets=ALL_TARGETS)
    apply_lora(model, settings, seed=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    weighted_sum([model.train()(**padded_inputs()).last_hidden_state]).backward()
    optimizer.step()
    planned = lora_training_bytes(config, settings, base_dtype=torch.float32)
    moments = sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    assert moments == planned.optimizer
    assert sum(p.grad.numel() * p.grad.element_size() for p in trainable) == planned.adapter_gradients
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    assert frozen == planned.base_weights


@pytest.mark.parametrize("checkpointing_dropout", [0.0, 0.2])
def test_gradient_checkpointing_gives_the_same_gradients(checkpointing_dropout: float) -> None:
    grads = []
    for checkpointing in (False, True):
        model = XLMRobertaXLModel(tiny_config(), add_pooling_layer=False)
        model.init_weights(seed=1)
        apply_lora(model, LoraConfig(r=4, alpha=8, dropout=checkpointing_dropout, targets=ALL_TARGETS), seed=0)
        randomise_adapters(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.manual_seed(5)
        out = model.train()(**padded_inputs(), skip_padding=True).last_hidden_state
        weighted_sum([out]).backward()
        grads.append({name: param.grad.clone() for name, param in lora_parameters(model)})
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, 1e-6, name)


# ---------------------------------------------------------------------------------- bf16 base
def test_upcast_keeps_no_float32_weight_for_backward() -> None:
    model = XLMRobertaXLModel(tiny_config(), add_pooling_layer=False).to(torch.bfloat16)
    apply_lora(model, LoraConfig(r=4, alpha=8, targets=ALL_TARGETS), upcast=True, seed=0)
    weight_shapes = {tuple(layer.weight.shape) for layer in lora_layers(model).values()}
    saved: List[Tensor] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model.train()(**padded_inputs()).last_hidden_state
    kept = [t for t in saved if tuple(t.shape) in weight_shapes]
    assert kept and all(t.dtype == torch.bfloat16 for t in kept)  # the base weights at rest, no fp32 copy
    weighted_sum([out.float()]).backward()


@pytest.mark.parametrize("upcast", [True, False])
def test_bf16_base_with_float32_adapters_trains(upcast: bool) -> None:
    settings = LoraConfig(r=4, alpha=8, targets=ALL_TARGETS)
    reference = XLMRobertaXLForTokenClassification(tiny_config(num_labels=3))
    model = XLMRobertaXLForTokenClassification(tiny_config(num_labels=3))
    model.load_state_dict(reference.state_dict())
    model.to(torch.bfloat16)  # the whole model: base and head in bf16, then float32 adapters
    for m in (model, reference):
        apply_lora(m, settings, seed=0, upcast=upcast if m is model else None)
        randomise_adapters(m)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = token_batch(3)
    with torch.no_grad():  # close to the float32 model (bf16 rounding of the base and activations)
        expected = reference.eval()(**batch).loss.item()
        assert abs(model.eval()(**batch).loss.item() - expected) < 0.05
    model.train()(**batch).loss.backward()
    optimizer.step()
    assert frozen and all(p.dtype == torch.bfloat16 for p in model.roberta.parameters() if not p.requires_grad)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for _, p in lora_parameters(model))
    assert model.classifier.weight.grad is not None  # the head trains (in its own dtype)
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)


def test_casting_the_model_keeps_float32_adapters() -> None:
    model = XLMRobertaXLModel(tiny_config())
    apply_lora(model, SETTINGS, seed=0)
    randomise_adapters(model)
    weighted_sum([model(**padded_inputs()).last_hidden_state]).backward()
    model.to(torch.bfloat16)
    assert model.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    for name, param in lora_parameters(model):
        assert param.dtype == torch.float32 and param.grad.dtype == torch.float32, name
    assert model(**padded_inputs()).last_hidden_state.dtype == torch.bfloat16


def test_bf16_base_is_upcast_only_where_the_cpu_emulates_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = lora_layer_module.upcast_linear
    monkeypatch.setattr(lora_layer_module, "upcast_linear", lambda *args: calls.append(1) or real(*args))
    layer = LoraLinear(nn.Linear(8, 4).bfloat16(), r=2, alpha=2)
    x = torch.randn(2, 8).bfloat16()
    for native, expected in ((True, 0), (False, 1)):
        monkeypatch.setattr(cpu_features, "native_bf16_matmul", lambda native=native: native)
        calls.clear()
        layer(x)
        assert len(calls) == expected
    calls.clear()
    LoraLinear(nn.Linear(8, 4), r=2, alpha=2)(x.float())  # a float32 base is never cast
    assert not calls


def test_memory_mapped_base_stays_mapped(tmp_path: Any) -> None:
    save_pretrained(XLMRobertaXLModel(tiny_config()), tmp_path / "base")
    model = XLMRobertaXLModel.from_pretrained(tmp_path / "base")
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    apply_lora(model, SETTINGS)
    for name, param in model.named_parameters():
        if name in pointers:
            assert param.data_ptr() == pointers[name], name


# ---------------------------------------------------------------------------------- memory arithmetic
@pytest.mark.parametrize("overrides", [{}, {"is_decoder": True, "add_cross_attention": True}])
@pytest.mark.parametrize("targets", [("query", "value"), ALL_TARGETS, ("intermediate",)])
def test_parameter_count_equals_the_applied_model(overrides: Dict[str, Any], targets: Tuple[str, ...]) -> None:
    config = tiny_config(**overrides)
    settings = LoraConfig(r=3, alpha=6, targets=targets)
    model = XLMRobertaXLModel(config)
    apply_lora(model, settings)
    assert lora_parameter_count(config, settings) == sum(p.numel() for _, p in lora_parameters(model))


def test_training_bytes_of_xl() -> None:
    from modeling.config import PRESETS

    config = XLMRobertaXLConfig(**PRESETS["xl"]) if isinstance(PRESETS["xl"], dict) else PRESETS["xl"]
    settings = LoraConfig(r=8, alpha=16, targets=("query", "value"))
    memory = lora_training_bytes(config, settings)
    count = lora_parameter_count(config, settings)
    assert count == config.num_hidden_layers * 2 * 8 * (2 * config.hidden_size)
    assert memory.base_weights == config.num_parameters(with_pooler=False) * 2
    assert (memory.adapter_weights, memory.adapter_gradients, memory.optimizer) == (4 * count, 4 * count, 8 * count)
    assert memory.total == memory.base_weights + 16 * count


# ---------------------------------------------------------------------------------- bad input
def test_applying_twice_or_to_quantized_layers_is_refused() -> None:
    model = XLMRobertaXLModel(tiny_config())
    apply_lora(model, SETTINGS)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(model, SETTINGS)
    quantized = torch.ao.quantization.quantize_dynamic(XLMRobertaXLModel(tiny_config()), {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ValueError, match=r"lora\.targets.*encoder\.layer\.0\.attention\.self\.query.*not a torch\.nn\.Linear"):
        apply_lora(quantized, SETTINGS)
    with pytest.raises(ValueError, match=r"lora\.targets \['query'\]: no such Linear layers in Sequential"):
        apply_lora(nn.Sequential(nn.Linear(2, 2)), LoraConfig(targets=["query"]))


def test_adapter_of_other_shapes_names_the_tensor(tmp_path: Any) -> None:
    _, ours = lora_pair()
    save_peft_adapter(ours, tmp_path / "adapter")
    narrow = XLMRobertaXLModel(tiny_config(hidden_size=32, intermediate_size=64))
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors: tensor 'base_model\.model\.encoder\.layer\.0\.attention\.self\.query\.lora_A\.weight' has shape \[4, 64\], the model needs \[4, 32\]"):
        load_peft_adapter(narrow, tmp_path / "adapter")
    other_rank = XLMRobertaXLModel(tiny_config())
    apply_lora(other_rank, LoraConfig(r=2, alpha=8, targets=("query", "value")))
    with pytest.raises(CheckpointError, match="adapter r=4, alpha=8 differ"):
        load_peft_adapter(other_rank, tmp_path / "adapter")
    other_targets = XLMRobertaXLModel(tiny_config())
    apply_lora(other_targets, LoraConfig(r=4, alpha=8, targets=("query", "key", "value")))
    with pytest.raises(CheckpointError, match=r"the adapter lacks 6 tensors.*attention\.self\.key\.lora_A"):
        load_peft_adapter(other_targets, tmp_path / "adapter")


def test_unsupported_adapter_files_are_refused(tmp_path: Any) -> None:
    _, ours = lora_pair()
    directory = tmp_path / "adapter"
    save_peft_adapter(ours, directory)
    config = json.loads((directory / ADAPTER_CONFIG_NAME).read_text())
    for name, value in (("use_dora", True), ("use_rslora", True), ("bias", "all"), ("peft_type", "IA3")):
        (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps({**config, name: value}))
        with pytest.raises(CheckpointError, match=name if name != "peft_type" else "peft_type must be 'LORA'"):
            load_peft_adapter(XLMRobertaXLModel(tiny_config()), directory)
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    (directory / ADAPTER_WEIGHTS_NAME).rename(directory / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_peft_adapter(XLMRobertaXLModel(tiny_config()), directory)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_peft_adapter(XLMRobertaXLModel(tiny_config()), tmp_path / "none")
    hf, _ = make_pair()
    peft_adapter(hf, tmp_path / "pooler", ["query", "dense"])  # "dense" also names the pooler's Linear
    with pytest.raises(CheckpointError, match=r"pooler\.dense is no LoRA target of modeling"):
        load_peft_adapter(XLMRobertaXLModel(tiny_config()), tmp_path / "pooler")
