"""The memory planner against the modeling package: parameter counts, exact optimizer-state
bytes after a real Adam step, and the saved-activation bytes measured with autograd hooks, for
trained backbones and for frozen ones with LoRA adapters (`modeling.lora.apply_lora`)."""

from __future__ import annotations

import importlib.util
from typing import Dict

import pytest

torch = pytest.importorskip("torch")

from modeling.config import XLMRobertaXLConfig  # noqa: E402
from modeling.lora import LoraConfig, apply_lora, lora_parameter_count, lora_parameters  # noqa: E402
from spacy_xlmrxl.distributed.memory_plan import (  # noqa: E402
    GiB,
    activation_bytes,
    format_cpu_plan,
    format_lora_table,
    format_table,
    lora_grid,
    plan_cpu_training,
    plan_grid,
    plan_lora,
    plan_memory,
    unit_parameters,
)

needs_model = pytest.mark.skipif(importlib.util.find_spec("modeling.model") is None, reason="modeling.model not written yet")


def _tiny(**overrides) -> XLMRobertaXLConfig:
    return XLMRobertaXLConfig.from_preset("tiny", vocab_size=1000, **overrides)


@pytest.mark.parametrize("preset", ["tiny", "small", "xl", "xxl"])
def test_units_add_up_to_the_parameter_count(preset):
    config = XLMRobertaXLConfig.from_preset(preset)
    assert sum(unit_parameters(config)) == config.num_parameters()
    plan = plan_memory(config, strategy="ddp", precision="fp32")
    assert plan.weights == 4 * config.num_parameters()


def test_xl_and_xxl_sizes_and_strategies():
    xl, xxl = (XLMRobertaXLConfig.from_preset(n) for n in ("xl", "xxl"))
    assert 3.4e9 < xl.num_parameters() < 3.6e9 and 10.5e9 < xxl.num_parameters() < 10.9e9
    ddp = plan_memory(xxl, strategy="ddp", precision="bf16", num_gpus=8)
    fsdp = plan_memory(xxl, strategy="fsdp", precision="bf16", num_gpus=8)
    # 16 bytes of model state per parameter, sharded 8 ways by FSDP
    assert ddp.weights + ddp.gradients + ddp.optimizer == 16 * xxl.num_parameters()
    assert fsdp.weights + fsdp.gradients + fsdp.optimizer == pytest.approx(2 * xxl.num_parameters())
    ckpt = plan_memory(xxl, strategy="fsdp", checkpointing=True)
    assert ckpt.activations < fsdp.activations / 5
    table = format_table(plan_grid([("xl", xl), ("xxl", xxl)]))
    assert len(table.splitlines()) == 2 + 16 and "FSDP" in table


@needs_model
def test_state_bytes_after_an_adam_step_match_exactly():
    from modeling.model import XLMRobertaXLModel

    config = _tiny()
    model = XLMRobertaXLModel(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = torch.randint(5, config.vocab_size, (2, 12))
    out = model(input_ids=ids)
    (out.last_hidden_state.square().mean() + out.pooler_output.sum()).backward()
    optimizer.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    plan = plan_memory(config, strategy="ddp", precision="fp32", num_gpus=1)
    assert nbytes(model.parameters()) == plan.weights
    assert nbytes(p.grad for p in model.parameters() if p.grad is not None) == plan.gradients
    state = [t for s in optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert nbytes(state) == plan.optimizer


def _saved_bytes(model, ids) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward pass."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    out.sum().backward()
    return sum(seen.values())


@needs_model
@pytest.mark.parametrize("dropout,checkpointing", [(0.0, False), (0.1, False), (0.1, True)])
def test_activation_estimate_matches_saved_tensors(dropout, checkpointing):
    """CPU: fused attention without dropout, explicit softmax with it; masks are fp32 on CPU."""
    from modeling.model import XLMRobertaXLModel

    config = _tiny(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = XLMRobertaXLModel(config, add_pooling_layer=False).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    batch, length = 3, 24
    measured = _saved_bytes(model, torch.randint(5, config.vocab_size, (batch, length)))
    estimate = activation_bytes(config, batch_size=batch, seq_length=length, element_bytes=4, mask_bytes=4,
                                attention="math" if dropout else "flash", checkpointing=checkpointing)
    if checkpointing:  # saved during forward: the layer inputs; the estimate adds one recomputed layer
        layer = activation_bytes(config, batch_size=batch, seq_length=length, mask_bytes=4,
                                 attention="math") - activation_bytes(
            config.copy(num_hidden_layers=config.num_hidden_layers - 1), batch_size=batch,
            seq_length=length, mask_bytes=4, attention="math")
        estimate -= layer
    # tolerance: 2% (index tensors and LayerNorm statistics are modelled exactly on CPU)
    assert measured == pytest.approx(estimate, rel=0.02)


def _fsdp_state_bytes(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank (spawned): shard a tiny backbone with `shard_shim`, one forward/backward and one
    sharded thinc-Adam step; write this rank's bytes of weights, gradients and Adam moments."""
    import json
    import os

    import torch.distributed as dist
    from thinc.api import Adam

    from modeling.model import XLMRobertaXLModel
    from spacy_xlmrxl.backbone.shim import TorchModuleShim
    from spacy_xlmrxl.distributed.fsdp import shard_shim

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        config = _tiny()
        shim = TorchModuleShim(XLMRobertaXLModel(config), model_cls=XLMRobertaXLModel)
        shard_shim(shim)
        module = shim._model
        out = module(input_ids=torch.randint(5, config.vocab_size, (2, 12)))
        (out.last_hidden_state.square().mean() + out.pooler_output.sum()).backward()
        nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        params = list(module.parameters())
        weights = nbytes(p.to_local() for p in params)
        grads = nbytes(p.grad.to_local() for p in params if p.grad is not None)
        optimizer = Adam(0.001)
        shim.finish_update(optimizer)
        moments = sum(a.nbytes for a in list(optimizer.mom1.values()) + list(optimizer.mom2.values()))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"weights": weights, "grads": grads, "optimizer": moments}, handle)
    finally:
        dist.destroy_process_group()


@needs_model
def test_fsdp_state_bytes_per_rank_match_the_plan(tmp_path):
    """FSDP (fp32) on 2 gloo ranks: each rank holds half of the weights, gradients and Adam
    moments that `plan_memory` counts (uneven dim-0 splits move a few rows between ranks)."""
    import json
    import socket

    import torch.multiprocessing as mp

    pytest.importorskip("torch.distributed.fsdp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_fsdp_state_bytes, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    config = _tiny()
    plan = plan_memory(config, strategy="fsdp", precision="fp32", num_gpus=2)
    for field, planned in (("weights", plan.weights), ("grads", plan.gradients), ("optimizer", plan.optimizer)):
        assert sum(r[field] for r in ranks) == 2 * planned, field
        for r in ranks:
            assert r[field] == pytest.approx(planned, rel=0.01), field


# ------------------------------------------------------------------------------------- LoRA
def _lora_model(layers: int, lora: LoraConfig, *, dtype=torch.float32, dropout: float = 0.0, checkpointing=False):
    from modeling.model import XLMRobertaXLModel

    torch.manual_seed(0)
    config = _tiny(num_hidden_layers=layers, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = XLMRobertaXLModel(config, add_pooling_layer=False).to(dtype).train()
    apply_lora(model, lora, seed=0)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return config, model


def _lora_estimate(config, lora, *, dtype, dropout, checkpointing=False, batch=3, length=24) -> float:
    e = 4 if dtype == torch.float32 else 2  # on CPU, masks and LayerNorm statistics have the activation dtype
    return activation_bytes(config, batch_size=batch, seq_length=length, element_bytes=e, mask_bytes=e,
                            statistics_bytes=e, attention_element_bytes=4, attention="math" if dropout else "flash",
                            checkpointing=checkpointing, lora=lora)


LORA_CASES = [
    pytest.param(LoraConfig(r=4, targets=["query", "value"]), torch.float32, id="qv"),
    pytest.param(LoraConfig(r=4, targets=["query", "key", "value", "attention_output", "intermediate", "output"]),
                 torch.float32, id="all-targets"),
    pytest.param(LoraConfig(r=4, targets=["value", "output"]), torch.float32, id="value-output"),
    pytest.param(LoraConfig(r=4, dropout=0.1, targets=["query", "value"]), torch.float32, id="qv-lora-dropout"),
    pytest.param(LoraConfig(r=4, targets=["query", "value"]), torch.bfloat16, id="qv-bf16-base"),
    pytest.param(LoraConfig(r=8, dropout=0.1, targets=["query", "intermediate"]), torch.bfloat16,
                 id="q-intermediate-bf16-dropout"),
]


@needs_model
@pytest.mark.parametrize("lora,dtype", LORA_CASES)
def test_lora_activation_estimate_matches_saved_tensors(lora, dtype):
    """Frozen base + adapters, no model dropout (fused attention): the total is exact."""
    config, model = _lora_model(3, lora, dtype=dtype)
    measured = _saved_bytes(model, torch.randint(5, config.vocab_size, (3, 24)))
    assert measured == _lora_estimate(config, lora, dtype=dtype, dropout=0.0)
    trained = activation_bytes(config, batch_size=3, seq_length=24, element_bytes=4, mask_bytes=4)
    if dtype == torch.float32 and lora.targets == ("query", "value") and lora.dropout == 0:
        assert measured < 0.8 * trained  # a frozen base saves less than a trained one


@needs_model
@pytest.mark.parametrize("lora,dtype", LORA_CASES[:1] + LORA_CASES[3:5])
def test_lora_activation_per_layer_with_dropout(lora, dtype):
    """With model dropout (explicit softmax on CPU) every layer after the first saves exactly the
    estimate's layer; the first saves at most that (its attention inputs may need no gradient)."""
    measured = {}
    for layers in (2, 3):
        config, model = _lora_model(layers, lora, dtype=dtype, dropout=0.1)
        measured[layers] = _saved_bytes(model, torch.randint(5, config.vocab_size, (3, 24)))
        estimate = _lora_estimate(config, lora, dtype=dtype, dropout=0.1)
        assert estimate * 0.9 <= measured[layers] <= estimate
    per_layer = _lora_estimate(config, lora, dtype=dtype, dropout=0.1) - _lora_estimate(
        config.copy(num_hidden_layers=2), lora, dtype=dtype, dropout=0.1)
    assert measured[3] - measured[2] == per_layer


@needs_model
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_checkpointed_estimate_is_kept_inputs_plus_one_layer(dtype):
    lora = LoraConfig(r=4, targets=["query", "value"])
    config, model = _lora_model(3, lora, dtype=dtype, checkpointing=True)
    measured = _saved_bytes(model, torch.randint(5, config.vocab_size, (3, 24)))
    peak = _lora_estimate(config, lora, dtype=dtype, dropout=0.0, checkpointing=True)
    layer = _lora_estimate(config, lora, dtype=dtype, dropout=0.0) - _lora_estimate(
        config.copy(num_hidden_layers=2), lora, dtype=dtype, dropout=0.0)
    assert measured == peak - layer  # saved in the forward pass; one layer is recomputed in backward


@needs_model
def test_lora_state_bytes_after_an_adam_step_match_the_plan():
    lora = LoraConfig(r=4, targets=["query", "value", "output"])
    config, model = _lora_model(2, lora, dtype=torch.bfloat16)
    adapters = [p for _, p in lora_parameters(model)]
    optimizer = torch.optim.Adam(adapters, lr=1e-3)
    ids = torch.randint(5, config.vocab_size, (2, 12))
    model(input_ids=ids).last_hidden_state.float().square().mean().backward()
    optimizer.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    state = plan_lora(config, lora, base_dtype="bfloat16").state
    adapter_ids = {id(p) for p in adapters}
    assert nbytes(p for p in model.parameters() if id(p) not in adapter_ids) == config.num_parameters(
        with_pooler=False) * 2
    assert state.base_weights == config.num_parameters(with_pooler=False) * 2
    assert nbytes(adapters) == state.adapter_weights and nbytes(p.grad for p in adapters) == state.adapter_gradients
    assert all(p.grad is None for p in model.parameters() if id(p) not in adapter_ids)
    moments = [t for s in optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert nbytes(moments) == state.optimizer


def test_lora_rows_of_xl_and_xxl_and_their_gpu_classes():
    xl, xxl = (XLMRobertaXLConfig.from_preset(n) for n in ("xl", "xxl"))
    lora = LoraConfig(r=8, targets=["query", "value"])
    plans = {(p.name, p.checkpointing): p for p in lora_grid([("xl", xl), ("xxl", xxl)], lora)}
    for (name, _), plan in plans.items():
        config = xl if name == "xl" else xxl
        assert plan.state.base_weights == 2 * config.num_parameters(with_pooler=False)
        assert plan.state.optimizer == 2 * plan.state.adapter_weights  # two float32 moments
        assert plan.total == plan.state.total + plan.activations
        full = plan_memory(config, strategy="ddp", precision="bf16", num_gpus=1, checkpointing=plan.checkpointing)
        assert plan.total < full.total / 3  # no gradients or Adam state for 3.5 / 10.7 B weights
    assert plans["xl", True].activations < plans["xl", False].activations / 5
    assert plans["xl", False].smallest_gpu_gib == 24 and plans["xl", True].smallest_gpu_gib == 24
    assert plans["xxl", False].smallest_gpu_gib == 48 and plans["xxl", True].smallest_gpu_gib == 24
    table = format_lora_table(list(plans.values()))
    assert len(table.splitlines()) == 2 + 4 and "r=8 query+value" in table and "48 GiB" in table


def test_smallest_gpu_class_boundaries():
    xl = XLMRobertaXLConfig.from_preset("xl")
    lora = LoraConfig(r=8)
    small = plan_lora(xl, lora, checkpointing=True, batch_size=1, seq_length=128)
    huge = plan_lora(xl, lora, batch_size=64, seq_length=512)
    assert small.smallest_gpu_gib == 24 and small.total < 24 * GiB
    assert huge.total > 80 * GiB and huge.smallest_gpu_gib is None
    assert "> 80 GiB" in format_lora_table([huge])
    with pytest.raises(ValueError, match="base_dtype"):
        plan_lora(xl, lora, base_dtype="int8")


# ------------------------------------------------------------------------------------- CPU
def test_cpu_plan_parts_of_lora_and_full_fine_tuning():
    xl = XLMRobertaXLConfig.from_preset("xl")
    lora = LoraConfig(r=8, targets=["query", "value"])
    fp32 = plan_cpu_training(xl, lora=lora, base_dtype="float32", batch_size=8, seq_length=64, runtime_bytes=GiB)
    bf16 = plan_cpu_training(xl, lora=lora, base_dtype="bfloat16", batch_size=8, seq_length=64, runtime_bytes=GiB)
    full = plan_cpu_training(xl, lora=None, batch_size=8, seq_length=64, runtime_bytes=GiB)
    frozen_words = plan_cpu_training(xl, lora=None, batch_size=8, seq_length=64, freeze_word_embeddings=True)
    p = xl.num_parameters(with_pooler=False)
    assert fp32.weights == 4 * p and bf16.weights == 2 * p == full.weights / 2
    assert fp32.trained_state == bf16.trained_state == 16 * lora_parameter_count(xl, lora)  # w, grad, 2 moments
    assert full.trained_state == 12 * p  # gradients + two Adam moments
    words = xl.vocab_size * xl.hidden_size
    assert full.optimizer_temporary == 4 * words  # the vocab-sized weight-decay temporary
    assert frozen_words.trained_state == 12 * (p - words)
    assert frozen_words.optimizer_temporary == 4 * xl.hidden_size * xl.intermediate_size
    assert bf16.activations < fp32.activations
    # a bf16 base computed in float32 (a CPU without native bf16): bf16 weights, float32 activations,
    # one Linear weight's float32 copy at a time
    upcast = plan_cpu_training(xl, lora=lora, base_dtype="bfloat16", batch_size=8, seq_length=64,
                               runtime_bytes=GiB, compute_dtype="float32")
    assert upcast.weights == bf16.weights and upcast.activations == fp32.activations
    assert upcast.optimizer_temporary == 4 * xl.hidden_size * xl.intermediate_size
    assert full.total > 2 * fp32.total and full.total > 24 * GiB  # full fine-tuning does not fit 24 GiB
    assert fp32.total == pytest.approx(GiB + fp32.weights + fp32.trained_state + fp32.activations + fp32.head
                                       + fp32.optimizer_temporary)
    assert format_cpu_plan(bf16).startswith(f"{bf16.total / GiB:.2f} GiB (runtime 1.00")
    with pytest.raises(ValueError, match="float32"):
        plan_cpu_training(xl, lora=None, base_dtype="bfloat16", batch_size=1, seq_length=8)


@needs_model
def test_cpu_plan_state_matches_a_thinc_adam_step_of_an_applied_model():
    """The weights and trained-state bytes of the CPU plan equal the tensors of a LoRA model after
    one thinc Adam step through the shim (the optimizer spaCy trains with)."""
    from thinc.api import Adam

    from spacy_xlmrxl.backbone.shim import TorchModuleShim

    lora = LoraConfig(r=4, targets=["query", "value"])
    config, model = _lora_model(2, lora, dtype=torch.bfloat16)
    shim = TorchModuleShim(model, lora=lora)  # the adapters are already applied: the shim checks they match
    ids = torch.randint(5, config.vocab_size, (2, 12))
    model(input_ids=ids).last_hidden_state.float().square().mean().backward()
    adapters = [p for _, p in lora_parameters(model)]
    grads = sum(p.grad.numel() * 4 for p in adapters)
    optimizer = Adam(0.001)
    shim.finish_update(optimizer)
    moments = sum(a.nbytes for a in list(optimizer.mom1.values()) + list(optimizer.mom2.values()))
    plan = plan_cpu_training(config, lora=lora, base_dtype="bfloat16", batch_size=2, seq_length=12)
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    assert nbytes(model.parameters()) == plan.weights + sum(p.numel() * 4 for p in adapters)
    assert plan.trained_state == sum(p.numel() * 4 for p in adapters) + grads + moments
