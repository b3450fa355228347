"""bench/upcast_memory.py: one XL-wide layer through the whole script (children per contender,
per-step figures, the SUMMARY line) and the summary's ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.upcast_memory import summary

REPO = Path(__file__).resolve().parents[2]


def test_one_layer_run_prints_each_contender():
    command = [sys.executable, str(REPO / "bench" / "upcast_memory.py"), "--layers", "1", "--steps", "2",
               "--length", "8", "--contenders", "bf16,upcast"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("SUMMARY upcast_memory: layers=1 | bf16: peak ")
    assert "upcast: peak " in line and "x bf16's peak" in line and "FAILED" not in line


def test_summary_ratios_and_failures():
    def row(name, peak, seconds):
        return {"contender": name, "peak_rss": peak, "steps": [{"seconds": s} for s in seconds]}

    line = summary([row("fp32", 14e9, [50, 40, 44]), row("bf16", 7e9, [12, 10, 10]),
                    row("upcast", 7.7e9, [60, 44, 46]), {"contender": "upcast-mmap", "error": "killed"}], 36)
    assert "fp32: peak 14.00 GB, 42.0 s/step |" in line  # median of the steps after the first
    assert "upcast: peak 7.70 GB, 45.0 s/step (1.10x bf16's peak, 1.07x fp32's time)" in line
    assert line.endswith("upcast-mmap: FAILED")
