"""Shared helpers of the benchmark scripts: interleaved timing, machine description, UNER texts.

Owns the timing discipline every script follows on a shared machine (warm-up, then rounds in
which each contender runs once in a rotating order, medians reported), the one-line machine
description printed above each table, a process's current and peak resident memory, the reconstruction of UNER test sentences from
``../shared/data/ner/uner/*/test.iob2`` (``# text =`` lines plus the gold entity spans), the
CPU feature check for native bf16 matmuls, and plain-text table printing.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
UNER_DIR = SHARED / "data" / "ner" / "uner"
TOKENIZER_DIR = SHARED / "data" / "tokenizer"


# --------------------------------------------------------------------------------- timing
CLOCKS: Dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = {"name": "wall"}  # the clock `interleaved_medians` uses; scripts set it from --clock


def add_clock_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (all its threads), "
                             "steadier when other processes load the machine")


def use_clock(name: str) -> None:
    CLOCK["name"] = name


def interleaved_medians(
    contenders: Mapping[str, Callable[[], object]], *, rounds: int = 3, min_seconds: float = 0.0, max_rounds: int = 30
) -> Dict[str, float]:
    """Median seconds per call of each contender, on the clock chosen with `use_clock`.

    Every contender runs once as a warm-up; then each round runs every contender once, the
    order rotating from round to round, so that a burst of load from other processes hits all
    of them alike. Rounds continue past ``rounds`` until ``min_seconds`` have passed (at most
    ``max_rounds``).
    """
    clock = CLOCKS[CLOCK["name"]]
    names = list(contenders)
    for name in names:
        contenders[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    start = time.perf_counter()
    done = 0
    while done < rounds or (time.perf_counter() - start < min_seconds and done < max_rounds):
        shift = done % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = clock()
            contenders[name]()
            times[name].append(clock() - t0)
        done += 1
    return {name: statistics.median(values) for name, values in times.items()}


def geomean(values: Sequence[float]) -> float:
    return statistics.geometric_mean(values) if values else float("nan")


# --------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX; Arm bf16); without it torch's
    bf16 matmul falls back to a slow path, many times slower than fp32. The same check as the
    components' slow-bf16 warning (`spacy_xlmrxl.backbone.native_bf16_matmul`)."""
    from spacy_xlmrxl.backbone.precision import native_bf16_matmul

    return native_bf16_matmul()


def backbone_overrides(config: Mapping, **settings: object) -> Dict:
    """Config overrides (for ``spacy.load(path, config=...)``) that set ``settings`` (e.g.
    ``quantize="int8"``, ``dtype="bfloat16"``) on every backbone settings block of a pipeline
    ``config`` (``spacy-xlmrxl.Backbone.v1``, or a v1 architecture block of an older pipeline),
    whatever the components are called: what ``--components.<name>.model[...].backbone.quantize
    int8`` does on the command line."""
    from spacy_xlmrxl.backbone.settings import is_backbone_block

    def visit(node: Mapping) -> Optional[Dict]:
        if is_backbone_block(node):
            return dict(settings)
        found = {key: sub for key, child in node.items() if isinstance(child, Mapping)
                 for sub in [visit(child)] if sub}
        return found or None

    return {"components": visit(config.get("components", {})) or {}}


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16 matmul: {'yes' if native_bf16() else 'NO'}), load average {load:.1f}, "
        f"timed on the {CLOCK['name']} clock"
    )


def current_rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """``VmHWM`` of this process, the high-water mark of its own address space (``ru_maxrss``,
    the fallback where /proc is missing, carries the parent's peak into a child across fork +
    exec on Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def matmul_gflops(dtype: torch.dtype, *, m: int = 1024, k: int = 2560, n: int = 2560, rounds: int = 3) -> float:
    """Plain ``torch.mm`` rate of this CPU for an (m, k) x (k, n) product, GFLOP/s."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    seconds = interleaved_medians({"mm": lambda: torch.mm(a, b)}, rounds=rounds)["mm"]
    return 2 * m * k * n / seconds / 1e9


# --------------------------------------------------------------------------------- UNER
@dataclass
class UnerSentence:
    """One UNER test sentence: ``text``, its gold ``words`` and ``entities`` as
    (start_char, end_char, label) spans of ``text``."""

    lang: str
    text: str
    words: List[str]
    entities: List[Tuple[int, int, str]]


def load_uner(limit_per_lang: Optional[int] = None) -> Optional[List[UnerSentence]]:
    """The UNER test sentences of every language under ``../shared``, or None when absent."""
    files = sorted(UNER_DIR.glob("*/test.iob2")) if UNER_DIR.is_dir() else []
    if not files:
        return None
    sentences: List[UnerSentence] = []
    for path in files:
        lang = path.parent.name
        count = 0
        for block in path.read_text(encoding="utf8").split("\n\n"):
            if limit_per_lang is not None and count >= limit_per_lang:
                break
            sentence = _parse_block(lang, block)
            if sentence is not None:
                sentences.append(sentence)
                count += 1
    return sentences


def _parse_block(lang: str, block: str) -> Optional[UnerSentence]:
    text: Optional[str] = None
    rows: List[Tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("# text = "):
            text = line[len("# text = "):]
        elif line and not line.startswith("#"):
            cols = line.split("\t")
            if len(cols) >= 3:
                rows.append((cols[1], cols[2]))
    if not rows:
        return None
    if text is None:
        text = " ".join(word for word, _ in rows)
    words, entities, cursor, open_entity = [], [], 0, None
    for word, tag in rows:
        start = text.find(word, cursor)
        if start < 0:  # the text and the words disagree: keep the words, drop the spans
            return UnerSentence(lang, text, [w for w, _ in rows], [])
        end = start + len(word)
        cursor = end
        words.append(word)
        if tag.startswith("B-") or (tag.startswith("I-") and (open_entity is None or open_entity[2] != tag[2:])):
            if open_entity is not None:
                entities.append(tuple(open_entity))
            open_entity = [start, end, tag[2:]]
        elif tag.startswith("I-") and open_entity is not None:
            open_entity[1] = end
        else:
            if open_entity is not None:
                entities.append(tuple(open_entity))
            open_entity = None
    if open_entity is not None:
        entities.append(tuple(open_entity))
    return UnerSentence(lang, text, words, entities)


# --------------------------------------------------------------------------------- output
def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Right-aligned plain-text table; floats printed with 3 significant digits."""

    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
