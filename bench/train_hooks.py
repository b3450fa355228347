"""What `spacy train` measures for the benchmark scripts: loaded with ``spacy train ... --code bench/train_hooks.py``.

Owns
- ``spacy-xlmrxl-bench.step_logger.v1`` (``[training.logger]``, argument ``path``): one JSON line
  per training step with the step's seconds (from the first component's ``update`` to the last
  component's ``finish_update``: the forward, backward and optimizer step, neither batching nor
  evaluation), each component's loss of that step, whether the step evaluated, the process's
  resident memory then and its peak so far, and the peak GPU memory when CUDA is in use; plus a
  first line (``"step": null``) written when training starts, after the pipeline was initialised;
- the exit report: when ``$XLMRXL_BENCH_REPORT`` names a file, the process writes its peak
  resident memory (``VmHWM``: initialisation, training and the final save) and peak GPU memory
  (``peak_gpu``: the whole process; ``peak_gpu_training``: from the first step on, as the GPU
  peak is reset when training starts) there as JSON when it exits.
spaCy's own console logger reports accumulated losses at evaluations only; this one reports every step.
Importing this file also imports `spacy_xlmrxl`, which registers the project's factories and
architectures: a child then trains where the project is on ``PYTHONPATH`` without being
installed (the GPU machine of bench/gpu_check.sh, which has no entry points for it).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from spacy.util import registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import spacy_xlmrxl  # noqa: E402,F401  (registrations, for a project that is not installed)
from bench.common import current_rss, peak_rss  # noqa: E402

REPORT_ENV = "XLMRXL_BENCH_REPORT"
_GPU_PEAK_BEFORE_TRAINING: Dict[str, int] = {}


def _cuda() -> Any:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def peak_gpu_bytes() -> Optional[int]:
    """``torch.cuda.max_memory_allocated()`` when this process uses CUDA, else None."""
    cuda = _cuda()
    return None if cuda is None else int(cuda.max_memory_allocated())


def _write_report() -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        training = peak_gpu_bytes()
        before = _GPU_PEAK_BEFORE_TRAINING.get("bytes")
        overall = None if training is None else max(training, before or 0)
        Path(path).write_text(json.dumps({"peak_rss": peak_rss(), "peak_gpu": overall,
                                          "peak_gpu_training": training}))


atexit.register(_write_report)


class _StepClock:
    """Times and losses of the current step, fed by the wrapped component methods."""

    def __init__(self) -> None:
        self.start: Optional[float] = None
        self.end: Optional[float] = None
        self.losses: Dict[str, float] = {}

    def wrap(self, name: str, pipe: Any) -> None:
        update, finish_update = pipe.update, pipe.finish_update

        def timed_update(examples: Any, *args: Any, **kwargs: Any) -> Any:
            if self.start is None:
                self.start = time.perf_counter()
            losses = kwargs.get("losses")
            before = float(losses.get(name, 0.0)) if losses is not None else 0.0
            result = update(examples, *args, **kwargs)
            if losses is not None:
                self.losses[name] = self.losses.get(name, 0.0) + float(losses.get(name, 0.0)) - before
            return result

        def timed_finish_update(*args: Any, **kwargs: Any) -> Any:
            result = finish_update(*args, **kwargs)
            self.end = time.perf_counter()
            return result

        pipe.update, pipe.finish_update = timed_update, timed_finish_update

    def take(self) -> Tuple[Optional[float], Dict[str, float]]:
        seconds = None if self.start is None or self.end is None else self.end - self.start
        losses, self.start, self.end, self.losses = self.losses, None, None, {}
        return seconds, losses


@registry.loggers("spacy-xlmrxl-bench.step_logger.v1")
def step_logger(path: str) -> Callable:
    """A spaCy training logger writing one JSON line per step to ``path`` (see the module docstring)."""

    def setup(nlp: Any, stdout: Any = sys.stdout, stderr: Any = sys.stderr) -> Tuple[Callable, Callable]:
        clock = _StepClock()
        for name, pipe in nlp.pipeline:
            if hasattr(pipe, "update") and hasattr(pipe, "finish_update"):
                clock.wrap(name, pipe)
        out = open(path, "w", encoding="utf8")
        step = 0

        def write(record: Dict[str, Any]) -> None:
            record.update(rss=current_rss(), peak_rss=peak_rss(), peak_gpu=peak_gpu_bytes())
            out.write(json.dumps(record) + "\n")
            out.flush()

        write({"step": None, "event": "training starts"})
        cuda = _cuda()
        if cuda is not None:  # from here on the GPU peak is the training steps'
            _GPU_PEAK_BEFORE_TRAINING["bytes"] = int(cuda.max_memory_allocated())
            cuda.reset_peak_memory_stats()

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            nonlocal step
            seconds, losses = clock.take()
            write({"step": step, "seconds": seconds, "losses": losses, "evaluated": info is not None,
                   "score": None if info is None else info.get("score")})
            step += 1

        return log_step, out.close

    return setup
