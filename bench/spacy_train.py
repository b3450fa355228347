"""`spacy train` as a measured child process, for bench/xl_train.py and bench/gpu_check.py.

Owns the parent's side of a measured training run: the config (a training config merged with
partial override files and a settings dict, by ``spacy-xlmrxl merge-config``'s `merge_config`,
with the per-step logger of bench/train_hooks.py put in), the child ``python -m spacy train ...
--code bench/train_hooks.py`` with its log, and the figures read back (`step_figures`: seconds
per step, the loss of each step; the exit report: peak RSS and peak GPU memory). Also
`run_logged`, how every bench child is started (repository on ``PYTHONPATH``, output to a log).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
HOOKS = REPO / "bench" / "train_hooks.py"
REPORT_ENV = "XLMRXL_BENCH_REPORT"  # read by bench/train_hooks.py


def run_logged(command: Sequence[str], *, log: Path, env: Optional[Mapping[str, str]] = None,
               timeout: Optional[float] = None) -> int:
    """Run ``command`` from the repository root, stdout and stderr to ``log``; the exit status
    (124 when ``timeout`` seconds passed). The repository goes first on ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    environment = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": path, **(env or {})}
    with open(log, "w", encoding="utf8") as handle:
        try:
            return subprocess.run(list(command), cwd=REPO, env=environment, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            handle.write(f"\n[timed out after {timeout} s]\n")
            return 124


def log_tail(log: Path, lines: int = 5) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])


def merged_config(base: Path, override_files: Sequence[Path], settings: Mapping[str, Any]) -> Any:
    """``base`` merged with each partial config file, then with ``settings`` (same layout: a
    ``backbone`` section goes to every backbone block); variables stay uninterpolated."""
    from thinc.api import Config

    from spacy_xlmrxl.cli.config import merge_config

    config = Config().from_disk(base, interpolate=False)
    for path in override_files:
        if not Path(path).is_file():
            raise SystemExit(f"{path} is missing (a partial config merged over {base.name})")
        config = merge_config(config, Config().from_disk(path, interpolate=False))
    return merge_config(config, dict(settings))


def train_child(config: Any, out: Path, *, gpu_id: int = -1, save: bool = True,
                timeout: Optional[float] = None, env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """``spacy train`` on ``config`` (a merged config) in a child, its files under ``out``
    (``config.cfg``, ``train.log``, ``steps.jsonl``, the pipeline under ``model/`` when ``save``);
    ``env``: extra environment variables of the child.
    Returns the exit status and seconds, and, when it succeeded, the exit report (``peak_rss``,
    ``peak_gpu``) and `step_figures`; else ``error`` (the log's last lines)."""
    from spacy_xlmrxl.cli.config import merge_config

    out.mkdir(parents=True, exist_ok=True)
    steps_log, report, log = out / "steps.jsonl", out / "report.json", out / "train.log"
    for stale in (steps_log, report):
        stale.unlink(missing_ok=True)
    logger = {"training": {"logger": {"@loggers": "spacy-xlmrxl-bench.step_logger.v1", "path": str(steps_log)}}}
    merge_config(config, logger).to_disk(out / "config.cfg")
    command = [sys.executable, "-m", "spacy", "train", str(out / "config.cfg"), "--code", str(HOOKS),
               "--gpu-id", str(gpu_id)] + (["--output", str(out / "model")] if save else [])
    start = time.perf_counter()
    code = run_logged(command, log=log, env={**(env or {}), REPORT_ENV: str(report)}, timeout=timeout)
    result: Dict[str, Any] = {"returncode": code, "seconds": time.perf_counter() - start}
    if code != 0 or not report.is_file():
        result["error"] = log_tail(log) or f"exit status {code}"
        return result
    result.update(json.loads(report.read_text()))
    result.update(step_figures([json.loads(line) for line in steps_log.read_text().splitlines()]))
    return result


def step_figures(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median seconds per step (steps after the first that did not evaluate), the summed loss of
    every step, whether all are finite and whether the last is below the first; the resident and
    GPU memory when training started (after initialisation), the training steps' GPU peak and
    the score of the last evaluation."""
    steps = [r for r in records if r.get("step") is not None]
    timed = [r["seconds"] for r in steps[1:] if not r["evaluated"] and r["seconds"] is not None]
    losses = [sum(r["losses"].values()) for r in steps]
    start = next((r for r in records if r.get("step") is None), {})
    gpu = [r["peak_gpu"] for r in steps if r.get("peak_gpu") is not None]
    scores = [r.get("score") for r in steps if r.get("evaluated")]
    return {
        "steps": len(steps),
        "seconds_per_step": statistics.median(timed) if timed else float("nan"),
        "first_step_seconds": steps[0]["seconds"] if steps else float("nan"),
        "losses": losses, "loss_finite": all(math.isfinite(x) for x in losses),
        "loss_falling": len(losses) > 1 and losses[-1] < losses[0],
        "rss_after_init": start.get("rss"), "peak_gpu_before_training": start.get("peak_gpu"),
        "peak_gpu_training": max(gpu) if gpu else None, "last_score": scores[-1] if scores else None,
    }
