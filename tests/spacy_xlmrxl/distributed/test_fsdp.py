"""torchrun --strategy fsdp (and ddp) with gloo on CPU: configs/ner.cfg (tiny backbone, sharded over
2 ranks with FSDP) follows one process's loss curve with the same global batch, and the saved
pipeline loads; with DDP the backbone's gradients are all-reduced too (the replicas stay equal).

Both runs are real subprocesses. Small ``max_batch_pieces`` makes the ranks' slices split into
different numbers of backbone calls, which exercises the dummy-call balancing.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy
import pytest
import spacy

pytest.importorskip("torch.distributed.fsdp")

from .launch import REPO_ROOT, run_training, toy_ner_docbin

CODE = Path(__file__).resolve().parent / "no_dropout.py"
NAMES = {"Anna": "PER", "Oslo": "LOC", "Acme": "ORG", "Berlin": "LOC"}
FILLER = ["went", "to", "the", "house", "saw", "a", "very", "long", "road", "and", "then"]
STEPS = 4


def _corpus(root: Path) -> None:
    """Docs of 6 words: the batcher's batches hold 3 (or, at the end of an epoch, 1) of them, so
    one rank gets 2 docs and the other 1 (or none); each doc is one backbone call."""
    nlp = spacy.blank("xx")
    rng = random.Random(0)
    for split, n in (("train", 10), ("dev", 4)):
        toy_ner_docbin(nlp.vocab, rng, n, NAMES, FILLER, (6, 6)).to_disk(root / f"{split}.spacy")


def _run(root: Path, out: Path, spm: Path, nproc: int, strategy: str = "fsdp") -> list:
    args = [str(REPO_ROOT / "configs" / "ner.cfg"), "--output", str(out),
            "--code", str(CODE), "--strategy", strategy,
            "--paths.train", str(root / "train.spacy"), "--paths.dev", str(root / "dev.spacy"),
            "--paths.preset", "tiny", "--paths.tokenizer", str(spm), "--training.max_steps", str(STEPS),
            "--training.eval_frequency", "2", "--training.dropout", "0.0",
            "--training.batcher.size", "20", "--components.transformer.model.backbone.max_batch_pieces", "12"]
    return run_training(args, out, nproc, timeout=240, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def reference(spm_model_path, tmp_path_factory):
    """The corpus and the one-process run every two-rank run is compared with."""
    root = tmp_path_factory.mktemp("fsdp")
    _corpus(root)
    return root, _run(root, root / "one", spm_model_path, 1)


def _same_curve(single: list, double: list) -> None:
    assert [e["step"] for e in single] == [e["step"] for e in double] == list(range(1, STEPS + 1))
    one = [e["losses"]["ner"] for e in single]
    two = [e["losses"]["ner"] for e in double]
    assert all(numpy.isfinite(one)) and one[-1] != one[0]
    # float32 sums in another order (and other padding of the model calls)
    numpy.testing.assert_allclose(two, one, rtol=2e-3, atol=1e-3)
    scores = lambda log: [e["score"] for e in log if e["score"] is not None]  # noqa: E731
    assert len(scores(double)) == STEPS // 2
    numpy.testing.assert_allclose(scores(double), scores(single), atol=1e-6)


def test_fsdp_two_ranks_follow_one_process(spm_model_path, reference):
    tmp_path, single = reference
    sharded = _run(tmp_path, tmp_path / "fsdp", spm_model_path, 2)
    _same_curve(single, sharded)
    # both kinds of balancing happened: a rank with no doc (step 1: a batch of 1 doc) and a rank
    # with 1 call fewer than the other (batches of 3 docs)
    dummies = [e["fsdp_dummy_calls"] for e in sharded]
    assert dummies[0] >= 1 and dummies[-1] > dummies[0]
    # the sharded backbone was gathered on rank 0 and saved as a normal pipeline
    nlp_two = spacy.load(tmp_path / "fsdp" / "model-last")
    nlp_one = spacy.load(tmp_path / "one" / "model-last")
    assert nlp_two.pipe_names == ["transformer", "ner"]
    texts = ["Anna went to Oslo", "Acme saw the road to Berlin and then the house"]
    for a, b in zip(nlp_one.pipe(texts), nlp_two.pipe(texts)):
        assert [(e.start_char, e.end_char, e.label_) for e in a.ents] == [(e.start_char, e.end_char, e.label_)
                                                                         for e in b.ents]
    state_one, state_two, state_best = (_backbone_state(tmp_path / run) for run in
                                        ("one/model-last", "fsdp/model-last", "fsdp/model-best"))
    assert state_one.keys() == state_two.keys()
    # Adam moves every weight by about the learning rate per step: the backbone did train, and
    # the sharded steps (clipped by the full gradient norms) are the one-process steps
    assert max(numpy.abs(state_two[k] - state_best[k]).max() for k in state_two) > 5e-4
    for key in state_one:
        numpy.testing.assert_allclose(state_two[key], state_one[key], atol=5e-5, err_msg=key)


def test_ddp_two_ranks_sync_the_backbone(spm_model_path, reference):
    """DDP all-reduces the gradients of the project's torch backbone (TorchModuleShim) as well
    as the thinc head's: rank 0's saved backbone is the one-process backbone."""
    tmp_path, single = reference
    double = _run(tmp_path, tmp_path / "ddp", spm_model_path, 2, strategy="ddp")
    _same_curve(single, double)
    assert "fsdp_dummy_calls" not in double[-1]
    state_one, state_two = (_backbone_state(tmp_path / run) for run in ("one/model-last", "ddp/model-last"))
    for key in state_one:
        numpy.testing.assert_allclose(state_two[key], state_one[key], atol=5e-5, err_msg=key)


def _backbone_state(path: Path) -> dict:
    shim = spacy.load(path).get_pipe("transformer").model.shims[0]
    module = getattr(shim, "float_module", None) or shim.module
    return {k: v.detach().float().numpy().copy() for k, v in module.state_dict().items()}
