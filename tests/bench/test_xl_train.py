"""bench/xl_train.py at tiny scale: the whole script (random checkpoint, UNER conversion, `spacy
train` children with the per-step logger of bench/train_hooks.py, the planner's estimate, nlp.pipe
children) on the ``tiny`` preset, and its step arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from bench.spacy_train import step_figures
from bench.xl_train import summary
from spacy_xlmrxl.backbone.settings import BackboneSettings

REPO = Path(__file__).resolve().parents[2]
HAS_LORA = "lora" in {f.name for f in fields(BackboneSettings)}
LORA_OVERRIDES = REPO / "configs" / "xl_lora_cpu.cfg"


def _run(tmp_path: Path, *options: str) -> dict:
    out = tmp_path / "figures.json"
    command = [sys.executable, str(REPO / "bench" / "xl_train.py"), "--preset", "tiny", "--sentences", "5",
               "--scratch", str(tmp_path / "scratch"), "--json", str(out), *options]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUMMARY xl_train:" in result.stdout and "native bf16 matmuls:" in result.stdout
    return json.loads(out.read_text())


def _check_training(row: dict, steps: int) -> None:
    assert "error" not in row, row.get("error")
    assert len(row["losses"]) == steps and row["loss_finite"] and row["loss_falling"]
    assert row["seconds_per_step"] > 0 and row["peak_rss"] > row["rss_after_init"] > 0
    # the planner's estimate, with the measured runtime of a weightless process, is close
    assert 0.7 < row["peak_rss"] / row["planned_total"] < 1.4
    assert (Path(row["pipeline"]) / "config.cfg").is_file()


def test_full_fine_tuning_run_at_tiny_scale(tmp_path, shared_data):
    """Runs now (no LoRA setting needed): full fine-tuning of the tiny preset, 3 steps on one
    repeated batch, then nlp.pipe in fp32 and int8 in fresh processes."""
    overrides = tmp_path / "overrides.cfg"
    overrides.write_text("[backbone]\ngrad_checkpointing = true\nmax_batch_pieces = 512\n")
    figures = _run(tmp_path, "--modes", "full-fp32", "--steps", "3", "--overrides", str(overrides),
                   "--skip-variant", "bf16", "--skip-variant", "bf16-emulated")
    (row,) = figures["train"]
    _check_training(row, 3)
    assert figures["baseline"]["batch_size"] == 8 and figures["full_plan"] > 0
    assert [p["variant"] for p in figures["pipe"]] == ["fp32", "int8"]
    for pipe in figures["pipe"]:
        assert "error" not in pipe, pipe.get("error")
        assert pipe["sentences"] == 5 and pipe["words"] > 20 and pipe["words_per_s"] > 0


def test_lora_modes_at_tiny_scale(tmp_path, shared_data):
    # 3 steps: the learning-rate warm-up of configs/ner.cfg starts at 0, so step 2 repeats step 1's loss
    figures = _run(tmp_path, "--steps", "3", "--modes", "lora-fp32,lora-bf16,lora-bf16-emulated",
                   "--skip-variant", "int8")
    assert [row["mode"] for row in figures["train"]] == ["lora-fp32", "lora-bf16", "lora-bf16-emulated"]
    for row in figures["train"]:
        _check_training(row, 3)
    assert figures["full_plan"] > max(row["planned_total"] for row in figures["train"])
    assert all("error" not in pipe for pipe in figures["pipe"])
    assert {"fp32", "bf16"} <= {pipe["variant"] for pipe in figures["pipe"]}


def test_step_figures_leave_out_the_first_and_evaluating_steps():
    records = [{"step": None, "rss": 10},
               {"step": 0, "seconds": 9.0, "losses": {"ner": 5.0, "transformer": 0.0}, "evaluated": True},
               {"step": 1, "seconds": 2.0, "losses": {"ner": 4.0}, "evaluated": False},
               {"step": 2, "seconds": 7.0, "losses": {"ner": 3.0}, "evaluated": True, "score": 0.25},
               {"step": 3, "seconds": 4.0, "losses": {"ner": 2.5}, "evaluated": False}]
    figures = step_figures(records)
    assert figures["seconds_per_step"] == 3.0 and figures["first_step_seconds"] == 9.0
    assert figures["losses"] == [5.0, 4.0, 3.0, 2.5] and figures["loss_falling"] and figures["loss_finite"]
    assert figures["rss_after_init"] == 10 and figures["last_score"] == 0.25 and figures["steps"] == 4
    records[-1]["losses"] = {"ner": float("nan")}
    worse = step_figures(records)
    assert not worse["loss_finite"] and not worse["loss_falling"]


def test_summary_line_names_failures_and_the_full_fine_tuning_plan():
    gib = 1024 ** 3
    line = summary({"layers": 36, "native_bf16": False, "memory": 24 * gib, "full_plan": 60 * gib,
                    "train": [{"mode": "lora-bf16", "peak_rss": 9 * gib, "planned_total": 9.5 * gib,
                               "seconds_per_step": 30.0, "losses": [3.0, 2.0], "loss_finite": True,
                               "loss_falling": True},
                              {"mode": "lora-fp32", "error": "killed"}],
                    "pipe": [{"variant": "int8", "error": "x"}]})
    assert line.startswith("SUMMARY xl_train: layers=36 native_bf16=no")
    assert "lora-bf16: peak RSS 9.00 GiB (plan 9.50, 0.95x)" in line and "lora-fp32: FAILED" in line
    assert "full fine-tuning plan 60.0 GiB (does not fit 24 GiB)" in line and "pipe int8: FAILED" in line
