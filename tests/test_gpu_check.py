"""bench/gpu_check.sh's device half, end to end on the CPU (``run --cpu-dry-run``: tiny preset and
shapes, no wheels, no GPU), and the data it carries (``--prepare-carry``)."""

from __future__ import annotations

import gzip
import json
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from bench.gpu_check import corpus, first_sentences, prepare_carry
from spacy_xlmrxl.backbone.settings import BackboneSettings

REPO = Path(__file__).resolve().parent.parent
HAS_LORA = "lora" in {f.name for f in fields(BackboneSettings)}


def test_cpu_dry_run_runs_every_step(tmp_path, shared_data):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "run", "--cpu-dry-run", "--out", str(out),
                             "--carry", str(tmp_path / "no-carry"), "--work", str(tmp_path / "work")],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUMMARY gpu_check: 5/5 steps ran;" in result.stdout
    figures = json.loads((out / "gpu_check.json").read_text())
    steps = figures["steps"]
    assert figures["cpu_dry_run"] and figures["profile"]["preset"] == "tiny"
    assert steps["environment"]["status"] == "ok" and steps["environment"]["cuda_available"] in (True, False)
    assert steps["xl_forward"]["status"] == "ok" and steps["xl_forward"]["finite"]
    assert steps["xl_forward"]["tflops"] > 0 and steps["xl_forward"]["mfu"] is None  # no peak on a CPU
    trained = ["tiny_train", "xl_full_finetune"] + (["xl_lora_ner"] if HAS_LORA else [])
    for name in trained:
        row = steps[name]
        assert row["status"] == "ok", row
        assert row["steps"] == figures["profile"]["tiny_steps" if name == "tiny_train" else
                                              "lora_steps" if name == "xl_lora_ner" else "full_steps"]
        assert row["loss_finite"] and row["peak_rss"] > 0 and row["seconds_per_step"] > 0
        assert (out / f"{name}.log").is_file()
    assert steps["tiny_train"]["last_score"] is not None
    if not HAS_LORA:
        assert steps["xl_lora_ner"] == {"status": "skipped", "wall_s": steps["xl_lora_ner"]["wall_s"],
                                        "reason": "BackboneSettings has no 'lora' setting yet (branch lora-spacy adds it)"}


def test_unknown_command_prints_usage():
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "fly"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: bench/gpu_check.sh prepare | run" in result.stderr


def test_carried_data_is_the_tokenizer_and_the_first_sentences(tmp_path, shared_data):
    carry = tmp_path / "carry"
    prepare_carry(carry, train_sentences=7, dev_sentences=3)
    spm = (shared_data / "tokenizer" / "sentencepiece.bpe.model").read_bytes()
    packed = (carry / "tokenizer" / "sentencepiece.bpe.model.gz").read_bytes()
    assert gzip.decompress(packed) == spm and len(packed) < 0.6 * len(spm)
    train = (carry / "uner" / "train.iob2").read_text(encoding="utf8")
    assert train == first_sentences(shared_data / "ner" / "uner" / "da" / "train.iob2", 7)
    assert train.count("# text = ") == 7 and (carry / "uner" / "dev.iob2").read_text().count("# text = ") == 3
    # the run half reads the carry folder when it is there, else ../shared/data
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    for source, expected in ((carry, 7), (tmp_path / "absent", 4)):
        data = corpus(tmp_path / f"work-{expected}", source, train_sentences=4, dev_sentences=2)
        assert data["tokenizer"].read_bytes() == spm
        docs = list(DocBin().from_disk(data["train"]).get_docs(Vocab()))
        assert len(docs) == expected and any(doc.ents for doc in docs)
