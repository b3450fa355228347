"""torchrun training with gloo: 2 ranks with half batches follow one process's loss curve.

A built-in tagger (HashEmbedCNN tok2vec) on a synthetic corpus keeps this independent of the
project's components; both runs are real ``torchrun`` / ``python -m`` subprocesses.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin

from spacy_xlmrxl.distributed.ddp import GradientSync

from .launch import REPO_ROOT, run_training, toy_ner_docbin

TAGS = {"the": "DET", "a": "DET", "cat": "NOUN", "dog": "NOUN", "idea": "NOUN", "runs": "VERB",
        "sleeps": "VERB", "sees": "VERB", "big": "ADJ", "red": "ADJ", "quickly": "ADV"}

CONFIG = """
[paths]
train = null
dev = null

[system]
seed = 0
gpu_allocator = null

[nlp]
lang = "en"
pipeline = ["tagger"]
batch_size = 16

[components]

[components.tagger]
factory = "tagger"

[components.tagger.model]
@architectures = "spacy.Tagger.v2"
nO = null

[components.tagger.model.tok2vec]
@architectures = "spacy.HashEmbedCNN.v2"
pretrained_vectors = null
width = 32
depth = 1
embed_size = 300
window_size = 1
maxout_pieces = 2
subword_features = true

[corpora]

[corpora.train]
@readers = "spacy.Corpus.v1"
path = ${paths.train}

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${paths.dev}

[training]
seed = ${system.seed}
gpu_allocator = ${system.gpu_allocator}
dropout = 0.0
max_steps = 8
max_epochs = 0
eval_frequency = 4
accumulate_gradient = 1
train_corpus = "corpora.train"
dev_corpus = "corpora.dev"

[training.batcher]
@batchers = "spacy.batch_by_sequence.v1"
size = 8

[training.optimizer]
@optimizers = "Adam.v1"
learn_rate = 0.01

[initialize]
vectors = null
"""


def _docbin(nlp, n: int, seed: int) -> DocBin:
    rng = random.Random(seed)
    words = list(TAGS)
    docs = DocBin()
    for _ in range(n):
        sent = [rng.choice(words) for _ in range(rng.randint(3, 9))]
        docs.add(Doc(nlp.vocab, words=sent, tags=[TAGS[w] for w in sent]))
    return docs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    nlp = spacy.blank("en")
    _docbin(nlp, 48, 1).to_disk(root / "train.spacy")
    _docbin(nlp, 16, 2).to_disk(root / "dev.spacy")
    (root / "tagger.cfg").write_text(CONFIG)
    return root


def _run(root: Path, out: Path, nproc: int) -> list:
    args = [str(root / "tagger.cfg"), "--output", str(out),
            "--paths.train", str(root / "train.spacy"), "--paths.dev", str(root / "dev.spacy")]
    return run_training(args, out, nproc, env={"OMP_NUM_THREADS": "1"})


def _weights(path: Path) -> list:
    nlp = spacy.load(path)
    sync = GradientSync(nlp)
    return [numpy.asarray(node.get_param(name)) for node, name in sync.thinc_slots]


def test_two_ranks_follow_one_process(setup):
    single = _run(setup, setup / "one", 1)
    double = _run(setup, setup / "two", 2)
    assert [e["step"] for e in single] == [e["step"] for e in double] == list(range(1, 9))
    one = [e["losses"]["tagger"] for e in single]
    two = [e["losses"]["tagger"] for e in double]
    assert one[-1] < one[0]  # it learns
    numpy.testing.assert_allclose(two, one, rtol=1e-4)
    assert [e["score"] is not None for e in double] == [s % 4 == 0 for s in range(1, 9)]
    numpy.testing.assert_allclose([e["score"] for e in double if e["score"] is not None],
                                  [e["score"] for e in single if e["score"] is not None], atol=1e-6)
    for a, b in zip(_weights(setup / "one" / "model-last"), _weights(setup / "two" / "model-last")):
        numpy.testing.assert_allclose(a, b, atol=5e-4)  # Adam magnifies float-order noise in tiny grads
    nlp = spacy.load(setup / "two" / "model-best")
    assert nlp.pipe_names == ["tagger"] and nlp("the cat runs")[1].tag_


def test_saves_replace_model_best_and_last_whole(setup, tmp_path):
    """model-best / model-last are staged and swapped in: nothing of an older directory is kept,
    and what an interrupted save left beside them is removed."""
    out = tmp_path / "out"
    (out / "model-last").mkdir(parents=True)
    (out / "model-last" / "stray.txt").write_text("from an older run")
    (out / ".model-best.tmp-0123456789ab").mkdir()  # an interrupted save's staging directory
    _run(setup, out, 1)
    assert not (out / "model-last" / "stray.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["model-best", "model-last", "train_log.jsonl"]
    assert spacy.load(out / "model-last").pipe_names == ["tagger"]


def test_xlmrxl_ner_trains_on_two_ranks(spm_model_path, tmp_path):
    """The project's configs/ner.cfg (transformer + listener NER) with a tiny random backbone."""

    nlp = spacy.blank("xx")
    rng = random.Random(0)
    names = {"Anna": "PER", "Oslo": "LOC", "Acme": "ORG"}
    for split, n in (("train", 16), ("dev", 4)):
        toy_ner_docbin(nlp.vocab, rng, n, names, ["went", "to", "the", "house", "saw"], (3, 7)).to_disk(
            tmp_path / f"{split}.spacy")
    out = tmp_path / "out"
    log = run_training([str(REPO_ROOT / "configs" / "ner.cfg"), "--output", str(out),
                        "--paths.train", str(tmp_path / "train.spacy"), "--paths.dev", str(tmp_path / "dev.spacy"),
                        "--paths.preset", "tiny", "--paths.tokenizer", str(spm_model_path),
                        "--training.max_steps", "2", "--training.eval_frequency", "2"], out, 2)
    assert [e["step"] for e in log] == [1, 2] and all(numpy.isfinite(e["losses"]["ner"]) for e in log)
    trained = spacy.load(out / "model-last")
    assert trained.pipe_names == ["transformer", "ner"]
    assert trained("Anna went to Oslo").text == "Anna went to Oslo"
