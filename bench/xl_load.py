"""Full-size XL checkpoint loading: load time and peak RSS, ours vs HF transformers, same files, same run.

Writes a random XLM-RoBERTa-XL checkpoint once (fp32 sharded safetensors, ~13.9 GB, generated and
written tensor by tensor so that writing fits in memory), then loads it in a fresh subprocess per
measurement — ours (`XLMRobertaXLModel.from_pretrained`) and HF's
(`transformers.XLMRobertaXLModel.from_pretrained(dir, torch_dtype=...)`), in fp32 and bf16 — each
followed by one forward on a short input. A child's peak RSS is its ``VmHWM`` (the high-water
mark of its own address space; ``ru_maxrss`` is not used because Linux carries the parent's
peak into a child across fork + exec). Before each child the shard files are read once, so every
run starts with the same (warm) page cache.

    python bench/xl_load.py                      # full XL, fp32 + bf16, ours + HF
    python bench/xl_load.py --layers 4           # XL widths, 4 layers: a quick run
    python bench/xl_load.py --dtype bfloat16 --skip-hf
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modeling import checkpoint as ck  # noqa: E402
from modeling.config import XLMRobertaXLConfig  # noqa: E402
from modeling.model import XLMRobertaXLModel  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# "<s> The dog is cute and lives in the garden house </s>" in fairseq ids
SHORT_INPUT = [[0, 581, 10323, 83, 142105, 136, 60742, 23, 70, 80583, 9205, 2]]
GB = 1e9


# ---------------------------------------------------------------------------------- checkpoint
def xl_config(layers: int) -> XLMRobertaXLConfig:
    return XLMRobertaXLConfig.from_preset(
        "xl", num_hidden_layers=layers, architectures=["XLMRobertaXLModel"], torch_dtype="float32"
    )


def random_tensor(name: str, shape: tuple) -> torch.Tensor:
    """LayerNorm weights 1, biases small, other weights N(0, 0.02): a forward stays finite."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith("bias"):
        return torch.randn(shape, generator=generator) * 0.01
    if "LayerNorm" in name or "layer_norm" in name:
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * 0.02


def write_checkpoint(directory: Path, layers: int, shard_size: str) -> None:
    """Stream a random checkpoint into ``directory`` (atomically: a half-written one is never reused)."""
    config = xl_config(layers)
    with ck.parameters_on_meta():
        model = XLMRobertaXLModel(config)
    specs = [ck.TensorSpec(name, torch.float32, tuple(t.shape)) for name, t in model.state_dict().items()]
    total = sum(spec.nbytes for spec in specs)
    print(f"writing a random XL checkpoint ({layers} layers, {total / GB:.1f} GB fp32) to {directory} ...", flush=True)
    start = time.perf_counter()
    shapes = {spec.name: spec.shape for spec in specs}
    with ck.atomic_directory(directory) as staging:
        config.save_pretrained(staging)
        ck.write_shards(staging, specs, lambda name: random_tensor(name, shapes[name]), max_shard_size=shard_size)
    print(f"written in {time.perf_counter() - start:.0f} s", flush=True)


def checkpoint_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def ensure_checkpoint(directory: Path, layers: int, shard_size: str) -> None:
    config_file = directory / "config.json"
    if config_file.is_file() and any((directory / name).is_file() for name in (ck.SAFE_INDEX_NAME, ck.SAFE_WEIGHTS_NAME)):
        if json.loads(config_file.read_text())["num_hidden_layers"] == layers:
            print(f"reusing {directory} ({checkpoint_bytes(directory) / GB:.1f} GB)", flush=True)
            return
    write_checkpoint(directory, layers, shard_size)


def warm_page_cache(directory: Path) -> None:
    """Read every shard once so each measurement starts from the same cache state."""
    buffer = bytearray(64 * 2**20)
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


# ---------------------------------------------------------------------------------- child
def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """``VmHWM`` of this process (falls back to ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(impl: str, directory: Path, dtype_name: str) -> Dict[str, float]:
    dtype = DTYPES[dtype_name]
    if impl == "hf":
        from transformers import XLMRobertaXLModel as HFModel  # imported before the clock starts

        def load() -> torch.nn.Module:
            return HFModel.from_pretrained(directory, torch_dtype=dtype).eval()
    else:
        def load() -> torch.nn.Module:
            return XLMRobertaXLModel.from_pretrained(directory, dtype=dtype)
    baseline = current_rss()
    start = time.perf_counter()
    model = load()
    loaded = time.perf_counter()
    rss_loaded = current_rss()
    with torch.inference_mode():
        out = model(torch.tensor(SHORT_INPUT)).last_hidden_state
    forward = time.perf_counter()
    assert out.dtype == dtype and torch.isfinite(out).all(), "forward gave non-finite values"
    params = sum(p.numel() for p in model.parameters())
    return {
        "load_s": loaded - start, "forward_s": forward - loaded, "baseline_rss": baseline,
        "rss_after_load": rss_loaded, "peak_rss": peak_rss(), "params": params,
        "weights_bytes": params * torch.empty((), dtype=dtype).element_size(),
    }


def run_child(impl: str, directory: Path, dtype_name: str) -> Dict[str, float]:
    command = [sys.executable, __file__, "--child", impl, "--dir", str(directory), "--dtype", dtype_name]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"{impl} {dtype_name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- report
def aggregate(results: List[Dict]) -> List[Dict]:
    """One row per (impl, dtype): the fastest load / forward and the highest peak over repeats."""
    rows: Dict[tuple, Dict] = {}
    for r in results:
        key = (r["impl"], r["dtype"])
        if key not in rows:
            rows[key] = dict(r, runs=1)
            continue
        row = rows[key]
        row["runs"] += 1
        for field in ("load_s", "forward_s"):
            row[field] = min(row[field], r[field])
        for field in ("peak_rss", "rss_after_load"):
            row[field] = max(row[field], r[field])
    return list(rows.values())


def report(results: List[Dict], size: int) -> None:
    rows = aggregate(results)
    print(f"\ncheckpoint: {size / GB:.2f} GB fp32 safetensors; torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"{rows[0]['runs']} run(s) each: fastest time, highest peak")
    header = (f"{'impl':<5} {'dtype':<9} {'load s':>7} {'fwd s':>6} {'peak RSS GB':>12} {'peak/ckpt':>9} "
              f"{'peak/weights':>12} {'RSS after load':>15}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['impl']:<5} {r['dtype']:<9} {r['load_s']:>7.2f} {r['forward_s']:>6.2f} {r['peak_rss'] / GB:>12.2f} "
              f"{r['peak_rss'] / size:>9.2f} {r['peak_rss'] / r['weights_bytes']:>12.2f} {r['rss_after_load'] / GB:>15.2f}")
    parts = []
    for dtype in DTYPES:
        ours = next((r for r in rows if r["impl"] == "ours" and r["dtype"] == dtype), None)
        hf = next((r for r in rows if r["impl"] == "hf" and r["dtype"] == dtype), None)
        if ours is None:
            continue
        text = f"{dtype}: ours {ours['load_s']:.1f} s / {ours['peak_rss'] / GB:.2f} GB ({ours['peak_rss'] / size:.2f}x ckpt)"
        if dtype == "bfloat16":
            budget = 1.1 * ours["weights_bytes"]
            text += f" [target <= {budget / GB:.2f} GB: {'met' if ours['peak_rss'] <= budget else 'MISSED'}]"
        if hf is not None:
            text += (f" vs HF {hf['load_s']:.1f} s / {hf['peak_rss'] / GB:.2f} GB -> time {ours['load_s'] / hf['load_s']:.2f}x, "
                     f"memory {ours['peak_rss'] / hf['peak_rss']:.2f}x of HF")
        parts.append(text)
    print("\nsummary: " + " | ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="checkpoint folder (default .scratch/xl-random[-L<n>])")
    parser.add_argument("--dtype", choices=["both", *DTYPES], default="both")
    parser.add_argument("--skip-hf", action="store_true", help="measure ours only")
    parser.add_argument("--layers", type=int, default=36, help="cut the layer stack for a quick run")
    parser.add_argument("--shard-size", default="4GB")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per configuration")
    parser.add_argument("--write-only", action="store_true", help="write (or find) the checkpoint, measure nothing")
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.dtype)))
        return
    directory = args.dir or REPO / ".scratch" / ("xl-random" if args.layers == 36 else f"xl-random-L{args.layers}")
    ensure_checkpoint(directory, args.layers, args.shard_size)
    if args.write_only:
        return
    size = checkpoint_bytes(directory)
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    impls = ["ours"] if args.skip_hf else ["ours", "hf"]
    results = []
    for dtype in dtypes:
        for _ in range(args.repeat):
            for impl in impls:
                warm_page_cache(directory)
                result = {"impl": impl, "dtype": dtype, **run_child(impl, directory, dtype)}
                print(f"  {impl} {dtype}: load {result['load_s']:.2f} s, peak RSS {result['peak_rss'] / GB:.2f} GB", flush=True)
                results.append(result)
    report(results, size)


if __name__ == "__main__":
    main()
