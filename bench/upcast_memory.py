"""A bf16 base computed in float32 layer by layer (`modeling.upcast.compute_in_float32`, what a CPU
without native bf16 matmuls runs): peak RSS and seconds per LoRA training step, against the same
model computed in bf16.

Each contender is a fresh process that builds a random XL-shaped token classifier directly in its
dtype (no float32 copy of bf16 weights), adds LoRA (r = 8, query + value), turns on gradient checkpointing and runs
``--steps`` Adam steps on one batch of ``--batch`` x ``--length`` pieces. Contenders:

- ``fp32``: float32 weights (the speed reference);
- ``bf16``: computed in bf16 (native bf16 matmuls where the CPU has them, emulated where not);
- ``upcast``: `compute_in_float32` (float32 activations, each weight cast while its layer runs);
- ``upcast-mmap``: the same with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 16 MiB, so each
  layer's float32 weight copy is mapped and unmapped rather than carved from the heap (glibc's
  dynamic threshold otherwise moves up to 32 MiB after the first frees and the copies fragment
  the heap).

Prints a ``machine:`` line, per-step RSS and times, and one ``SUMMARY`` line with each contender's
peak and median s/step, the upcast ones also as ratios to ``bf16``'s peak and ``fp32``'s time.

    python bench/upcast_memory.py                 # XL widths, 36 layers (8 GB per process, 14 GB for fp32)
    python bench/upcast_memory.py --layers 4      # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import machine_line, peak_rss  # noqa: E402

#: name -> (weights dtype, computed in float32 layer by layer, extra environment)
CONTENDERS = {"fp32": ("float32", False, {}), "bf16": ("bfloat16", False, {}), "upcast": ("bfloat16", True, {}),
              "upcast-mmap": ("bfloat16", True, {"MALLOC_MMAP_THRESHOLD_": str(16 * 2**20)})}
GB = 1e9


def rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> Dict[str, Any]:
    """One contender: build, train ``args.steps`` steps, report RSS and times as JSON."""
    import torch

    from modeling.config import XLMRobertaXLConfig
    from modeling.heads import XLMRobertaXLForTokenClassification
    from modeling.lora import LoraConfig, apply_lora
    from modeling.upcast import compute_in_float32

    torch.manual_seed(0)
    config = XLMRobertaXLConfig.from_preset("xl")
    config.num_hidden_layers, config.num_labels = args.layers, 9
    dtype, upcast, _ = CONTENDERS[args.child]
    torch.set_default_dtype(getattr(torch, dtype))  # built in its dtype: no float32 copy of bf16 weights
    model = XLMRobertaXLForTokenClassification(config)
    torch.set_default_dtype(torch.float32)
    apply_lora(model, LoraConfig(r=8, alpha=16, targets=["query", "value"]), seed=0)
    if upcast:
        compute_in_float32(model)
    model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 250_000, (args.batch, args.length), generator=generator)
    labels = torch.randint(0, 9, (args.batch, args.length), generator=generator)
    built = rss()
    steps: List[Dict[str, float]] = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps.append({"seconds": time.perf_counter() - start, "loss": loss.item(), "rss": rss()})
    return {"contender": args.child, "built_rss": built, "peak_rss": peak_rss(), "steps": steps}


def run(args: argparse.Namespace, name: str) -> Dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, "--layers", str(args.layers), "--steps", str(args.steps),
               "--batch", str(args.batch), "--length", str(args.length)]
    env = {**os.environ, **CONTENDERS[name][2]}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"contender": name, "error": " | ".join(done.stderr.strip().splitlines()[-3:])}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_seconds(row: Dict[str, Any]) -> float:
    times = [step["seconds"] for step in row["steps"][1:]] or [row["steps"][0]["seconds"]]
    return statistics.median(times)


def summary(rows: Sequence[Dict[str, Any]], layers: int) -> str:
    """Each contender's peak and median s/step; the upcast ones also as ratios: peak to bf16's,
    time to fp32's (the claim: bf16's memory at float32's speed)."""
    found = {r["contender"]: r for r in rows if "error" not in r}
    parts = [f"layers={layers}"]
    for row in rows:
        if "error" in row:
            parts.append(f"{row['contender']}: FAILED")
            continue
        text = f"{row['contender']}: peak {row['peak_rss'] / GB:.2f} GB, {median_seconds(row):.1f} s/step"
        ratios = []
        if row["contender"].startswith("upcast") and "bf16" in found:
            ratios.append(f"{row['peak_rss'] / found['bf16']['peak_rss']:.2f}x bf16's peak")
        if row["contender"].startswith("upcast") and "fp32" in found:
            ratios.append(f"{median_seconds(row) / median_seconds(found['fp32']):.2f}x fp32's time")
        parts.append(text + (f" ({', '.join(ratios)})" if ratios else ""))
    return "SUMMARY upcast_memory: " + " | ".join(parts)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=47)
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {', '.join(CONTENDERS)}")
    parser.add_argument("--child", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    print(machine_line(), flush=True)
    rows = []
    for name in [c for c in args.contenders.split(",") if c]:
        row = run(args, name)
        rows.append(row)
        if "error" in row:
            print(f"  {name}: FAILED: {row['error']}", flush=True)
            continue
        steps = "  ".join(f"{s['seconds']:.1f} s {s['rss'] / GB:.2f} GB" for s in row["steps"])
        print(f"  {name}: built {row['built_rss'] / GB:.2f} GB; steps {steps}; peak {row['peak_rss'] / GB:.2f} GB",
              flush=True)
    print(summary(rows, args.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
