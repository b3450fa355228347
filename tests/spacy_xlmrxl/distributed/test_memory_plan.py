"""The memory planner against the modeling package: parameter counts, exact optimizer-state
bytes after a real Adam step, and the saved-activation bytes measured with autograd hooks."""

from __future__ import annotations

import importlib.util
from typing import Dict

import pytest

torch = pytest.importorskip("torch")

from modeling.config import XLMRobertaXLConfig  # noqa: E402
from spacy_xlmrxl.distributed.memory_plan import activation_bytes, format_table, plan_grid, plan_memory, unit_parameters

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
