"""torchrun with LoRA (backbone setting ``lora``), gloo on CPU: configs/ner.cfg from a tiny base
checkpoint trains its adapters with DDP and with FSDP over 2 ranks as one process does; the base
saved in every ``model-last`` is bit-identical to the checkpoint, and only the adapters (and the
thinc head) are reduced and stepped.

All runs are real subprocesses, as in test_fsdp.py (whose corpus they share).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest
import spacy
import torch

pytest.importorskip("torch.distributed.fsdp")

from modeling.checkpoint import load_state_dict

from ..test_lora import shims_of, write_base
from .launch import REPO_ROOT, run_training
from .test_fsdp import STEPS, _corpus

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"]}


def _run(root: Path, out: Path, base: Path, spm: Path, nproc: int, strategy: str) -> list:
    args = [str(REPO_ROOT / "configs" / "ner.cfg"), "--output", str(out), "--strategy", strategy,
            "--paths.train", str(root / "train.spacy"), "--paths.dev", str(root / "dev.spacy"),
            "--paths.checkpoint", str(base), "--paths.tokenizer", str(spm), "--training.max_steps", str(STEPS),
            "--training.eval_frequency", "2", "--training.dropout", "0.0", "--training.batcher.size", "20",
            "--components.transformer.model.backbone.max_batch_pieces", "12",
            "--components.transformer.model.backbone.lora", json.dumps(LORA)]
    return run_training(args, out, nproc, timeout=300, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runs(spm_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-ddp")
    _corpus(root)
    base = write_base(root / "base", spm_model_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    logs = {name: _run(root, root / name, base, spm_model_path, nproc, strategy)
            for name, nproc, strategy in (("one", 1, "ddp"), ("ddp", 2, "ddp"), ("fsdp", 2, "fsdp"))}
    return root, base, logs


def _adapters_and_base(path: Path):
    shim = shims_of(spacy.load(path))[0]
    assert shim.lora is not None and (path / "transformer" / "backbone" / "lora" / "adapter_config.json").is_file()
    state = shim.float_module.state_dict()
    adapters = {k: v.numpy().copy() for k, v in state.items() if ".lora_" in k}
    return adapters, {k: v for k, v in state.items() if ".lora_" not in k}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_the_adapters_as_one_process_and_leave_the_base(runs, strategy):
    root, base, logs = runs
    one = [e["losses"]["ner"] for e in logs["one"]]
    two = [e["losses"]["ner"] for e in logs[strategy]]
    assert [e["step"] for e in logs[strategy]] == list(range(1, STEPS + 1))
    assert all(numpy.isfinite(one)) and one[-1] != one[0]  # batches of 1 and 3 docs: learning is test_lora.py's
    numpy.testing.assert_allclose(two, one, rtol=2e-3, atol=1e-3)
    checkpoint = load_state_dict(base)
    reference, _ = _adapters_and_base(root / "one" / "model-last")
    adapters, saved_base = _adapters_and_base(root / strategy / "model-last")
    # the base, gathered (FSDP) or replicated (DDP) and saved by rank 0: bit-identical to the checkpoint
    assert saved_base.keys() == checkpoint.keys()
    assert all(torch.equal(saved_base[k], checkpoint[k]) for k in checkpoint)
    # the adapters trained (B starts at zero) and match the one-process run
    assert all(numpy.count_nonzero(v) for k, v in adapters.items() if "lora_B" in k)
    assert adapters.keys() == reference.keys()
    for key in reference:
        numpy.testing.assert_allclose(adapters[key], reference[key], atol=5e-5, err_msg=key)
