"""Tests of modeling/upcast.py: bf16 weights computed in float32 layer by layer — the same
outputs and gradients as a float32 model holding the bf16-rounded weights, no weight copied at
rest, no float32 weight kept for the backward pass."""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeling.config import XLMRobertaXLConfig
from modeling.heads import XLMRobertaXLForMaskedLM, XLMRobertaXLForTokenClassification
from modeling.lora import LoraConfig, apply_lora, lora_parameters
from modeling.model import XLMRobertaXLModel
from modeling.upcast import (
    Float32Embedding,
    Float32LayerNorm,
    Float32Linear,
    compute_in_float32,
    computes_in_float32,
    upcast_linear,
)

from .test_model import TINY, assert_close, random_ids, weighted_sum


def inputs() -> Dict[str, Tensor]:
    ids, mask = random_ids(pad_lengths=(0, 3, 5))
    return {"input_ids": ids, "attention_mask": mask}


def bf16_and_reference(cls: type = XLMRobertaXLModel, **overrides) -> tuple:
    """A bf16 model and a float32 model holding exactly its (bf16-rounded) weights."""
    torch.manual_seed(0)
    model = cls(XLMRobertaXLConfig(**{**TINY, **overrides})).to(torch.bfloat16)
    reference = cls(XLMRobertaXLConfig(**{**TINY, **overrides}))
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return model.eval(), reference.eval()


def test_upcast_linear_computes_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=generator).bfloat16().requires_grad_()
    weight = torch.randn(8, 16, generator=generator).bfloat16().requires_grad_()
    bias = torch.randn(8, generator=generator).bfloat16().requires_grad_()
    out = upcast_linear(x, weight, bias)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, weight, bias))
    reference = F.linear(x32, w32, b32)
    assert out.dtype == torch.bfloat16 and torch.equal(out, reference.bfloat16())
    upstream = torch.randn(out.shape, generator=generator)
    out.backward(upstream.bfloat16())
    reference.backward(upstream.bfloat16().float())
    assert torch.equal(x.grad, x32.grad.bfloat16()) and x.grad.dtype == torch.bfloat16
    assert torch.equal(weight.grad, w32.grad.bfloat16())
    assert bias.grad.dtype == torch.bfloat16 and torch.allclose(bias.grad.float(), b32.grad, rtol=1e-2)


def test_swaps_classes_in_place_keeping_parameters() -> None:
    model, _ = bf16_and_reference()
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    linear = sum(type(m) is nn.Linear for m in model.modules())
    norms = sum(type(m) is nn.LayerNorm for m in model.modules())
    embeddings = sum(type(m) is nn.Embedding for m in model.modules())
    assert not computes_in_float32(model)
    assert compute_in_float32(model) == linear + norms + embeddings > 0
    assert compute_in_float32(model) == 0  # idempotent
    assert computes_in_float32(model)
    assert sum(type(m) is Float32Linear for m in model.modules()) == linear
    assert sum(type(m) is Float32LayerNorm for m in model.modules()) == norms
    assert sum(type(m) is Float32Embedding for m in model.modules()) == embeddings
    assert list(model.state_dict()) == keys
    assert all(p.dtype == torch.bfloat16 and p.data_ptr() == pointers[n] for n, p in model.named_parameters())


@pytest.mark.parametrize("cls", [XLMRobertaXLModel, XLMRobertaXLForMaskedLM])
def test_outputs_equal_the_float32_model_of_the_same_weights(cls: type) -> None:
    model, reference = bf16_and_reference(cls)
    with torch.no_grad():
        plain_bf16 = model(**inputs())[0]
        compute_in_float32(model)
        ours = model(**inputs())[0]
        expected = reference(**inputs())[0]
    assert ours.dtype == torch.float32 and plain_bf16.dtype == torch.bfloat16
    assert_close(ours, expected, 1e-5, cls.__name__)
    # the bf16 computation itself is much further off: this is not a rounding-level agreement
    assert (plain_bf16.float() - expected).abs().max() > 100 * (ours - expected).abs().max()


def test_lora_training_gradients_equal_the_float32_model() -> None:
    model, reference = bf16_and_reference(XLMRobertaXLForTokenClassification, num_labels=3)
    settings = LoraConfig(r=4, alpha=8, targets=("query", "value", "intermediate"))
    for m in (model, reference):
        apply_lora(m, settings, seed=0)
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    compute_in_float32(model)
    labels = torch.randint(0, 3, inputs()["input_ids"].shape, generator=torch.Generator().manual_seed(7))
    for m in (model, reference):
        m.train()
        torch.manual_seed(1)
        m(**inputs(), labels=labels).loss.backward()
    ours = dict(lora_parameters(model))
    for name, param in lora_parameters(reference):
        assert_close(ours[name].grad, param.grad, 1e-5, name)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n and "classifier" not in n)


def test_no_float32_weight_is_kept_for_the_backward_pass() -> None:
    model, _ = bf16_and_reference()
    compute_in_float32(model)
    model.train()
    weight_shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)}
    saved: List[Tensor] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(**inputs()).last_hidden_state
    weights = [t for t in saved if tuple(t.shape) in weight_shapes]
    assert weights and all(t.dtype == torch.bfloat16 for t in weights)
    weighted_sum([out]).backward()
    assert all(p.grad is None or p.grad.dtype == torch.bfloat16 for p in model.parameters())


def test_float32_weights_compute_exactly_as_before() -> None:
    torch.manual_seed(0)
    model = XLMRobertaXLModel(XLMRobertaXLConfig(**TINY)).eval()
    with torch.no_grad():
        before = model(**inputs()).last_hidden_state
        compute_in_float32(model)
        assert torch.equal(model(**inputs()).last_hidden_state, before)


def test_large_weights_are_cast_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight over `BLOCK_ELEMENTS` (the tied LM decoder: vocabulary x hidden) is cast in blocks of
    output rows: no float32 copy of the whole weight, the same products and gradients."""
    from modeling import upcast

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, generator=generator).requires_grad_()
    weight = torch.randn(50, 16, generator=generator).bfloat16().requires_grad_()
    bias = torch.randn(50, generator=generator).bfloat16().requires_grad_()
    upstream = torch.randn(2, 3, 50, generator=generator)
    whole = upcast_linear(x, weight, bias)
    whole.backward(upstream)
    expected = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    cast_rows: List[int] = []
    real_block = upcast._block
    monkeypatch.setattr(upcast, "BLOCK_ELEMENTS", 16 * 8)  # 8 rows at a time: 7 blocks, the last of 2
    monkeypatch.setattr(upcast, "_block", lambda w, start: cast_rows.append(real_block(w, start).shape[0]) or real_block(w, start))
    blocked = upcast_linear(x, weight, bias)
    blocked.backward(upstream)
    assert max(cast_rows) == 8 and cast_rows[:7] == [8] * 6 + [2]  # forward's casts, then backward's
    assert_close(blocked, whole, 1e-5, "output")
    for name, t, grad in zip(("x", "weight", "bias"), (x, weight, bias), expected):
        assert_close(t.grad.float(), grad.float(), 1e-5, name)
