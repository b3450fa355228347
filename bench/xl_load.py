"""Full-size XL checkpoint loading: load time and peak RSS, ours vs HF transformers, same files, same run.

Writes a random XLM-RoBERTa-XL checkpoint once (fp32 sharded safetensors, ~13.9 GB, generated and
written shard by shard: one ``--shard-size`` shard in memory at a time), then loads it in a fresh subprocess per
measurement — ours (`XLMRobertaXLModel.from_pretrained`) and HF's
(`transformers.XLMRobertaXLModel.from_pretrained(dir, torch_dtype=...)`), in fp32 and bf16 — each
followed by one forward on a short input. A child's peak RSS is its ``VmHWM`` (the high-water
mark of its own address space; ``ru_maxrss`` is not used because Linux carries the parent's
peak into a child across fork + exec). Before each child the files it reads are read once, so
every run starts with the same (warm) page cache.

``--pipeline`` adds the spaCy pipeline: an ``xlmrxl_transformer`` + ``xlmrxl_ner`` (listener)
pipeline built from the same checkpoint (in a child process) and saved once with ``nlp.to_disk``
under ``.scratch/xl-pipeline[-L<n>]``; then ``spacy.load`` of that directory is measured in a fresh
process (row ``spacy``; bf16 through the config override ``dtype = "bfloat16"``), followed by
``nlp(text)``, against HF ``from_pretrained`` of the original checkpoint in the same run. The
spaCy load includes building the real XLM-R sentencepiece tokenizer; its share is timed
separately in the same child (column ``tok s``; HF's fast tokenizer from ``tokenizer.json`` in
the HF child, not included in HF's load time).

    python bench/xl_load.py                      # full XL, fp32 + bf16, ours + HF
    python bench/xl_load.py --layers 4           # XL widths, 4 layers: a quick run
    python bench/xl_load.py --dtype bfloat16 --skip-hf
    python bench/xl_load.py --layers 4 --pipeline --skip-ours     # spacy.load vs HF
    python bench/xl_load.py --pipeline --quantize --dtype float32  # + spacy.load with quantize = "int8"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TOKENIZER_DIR = REPO.parent / "shared" / "data" / "tokenizer"
SHORT_TEXT = "The dog is cute and lives in the garden house"
PIPELINE_MARKER = "xl_load_source.json"

from bench.common import current_rss, peak_rss  # noqa: E402
from modeling import checkpoint as ck  # noqa: E402
from modeling.config import XLMRobertaXLConfig  # noqa: E402
from modeling.model import XLMRobertaXLModel  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# "<s> The dog is cute and lives in the garden house </s>" in fairseq ids
SHORT_INPUT = [[0, 581, 10323, 83, 142105, 136, 60742, 23, 70, 80583, 9205, 2]]
GB = 1e9


# ---------------------------------------------------------------------------------- checkpoint
def xl_config(layers: int, preset: str = "xl") -> XLMRobertaXLConfig:
    return XLMRobertaXLConfig.from_preset(
        preset, num_hidden_layers=layers, architectures=["XLMRobertaXLModel"], torch_dtype="float32"
    )


def random_tensor(name: str, shape: tuple) -> torch.Tensor:
    """LayerNorm weights 1, biases small, other weights N(0, 0.02): a forward stays finite."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith("bias"):
        return torch.randn(shape, generator=generator) * 0.01
    if "LayerNorm" in name or "layer_norm" in name:
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * 0.02


def write_checkpoint(directory: Path, layers: int, shard_size: str, *, preset: str = "xl") -> None:
    """Stream a random checkpoint into ``directory`` (atomically: a half-written one is never reused)."""
    config = xl_config(layers, preset)
    with ck.parameters_on_meta():
        model = XLMRobertaXLModel(config)
    specs = [ck.TensorSpec(name, torch.float32, tuple(t.shape)) for name, t in model.state_dict().items()]
    total = sum(spec.nbytes for spec in specs)
    print(f"writing a random {preset} checkpoint ({layers} layers, {total / GB:.1f} GB fp32) to {directory} ...", flush=True)
    start = time.perf_counter()
    shapes = {spec.name: spec.shape for spec in specs}
    with ck.atomic_directory(directory) as staging:
        config.save_pretrained(staging)
        ck.write_shards(staging, specs, lambda name: random_tensor(name, shapes[name]), max_shard_size=shard_size)
    print(f"written in {time.perf_counter() - start:.0f} s", flush=True)


def checkpoint_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def ensure_checkpoint(directory: Path, layers: int, shard_size: str, *, preset: str = "xl") -> None:
    """Write the random checkpoint unless ``directory`` holds one of these shapes already."""
    config_file = directory / "config.json"
    if config_file.is_file() and any((directory / name).is_file() for name in (ck.SAFE_INDEX_NAME, ck.SAFE_WEIGHTS_NAME)):
        found = json.loads(config_file.read_text())
        wanted = xl_config(layers, preset)
        if (found["num_hidden_layers"], found["hidden_size"]) == (layers, wanted.hidden_size):
            print(f"reusing {directory} ({checkpoint_bytes(directory) / GB:.1f} GB)", flush=True)
            return
    write_checkpoint(directory, layers, shard_size, preset=preset)


def warm_page_cache(directory: Path) -> None:
    """Read every shard once so each measurement starts from the same cache state."""
    buffer = bytearray(64 * 2**20)
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


# ---------------------------------------------------------------------------------- pipeline
def backbone_overrides(config: Dict, **settings: object) -> Dict:
    from bench.common import backbone_overrides as overrides

    return overrides(config, **settings)


def build_pipeline(checkpoint: Path, out: Path) -> None:
    """(child) ``xlmrxl_transformer`` + ``xlmrxl_ner`` on ``checkpoint``, initialised and saved."""
    import spacy
    from spacy.training import Example

    import spacy_xlmrxl  # noqa: F401
    from spacy_xlmrxl.pipeline.saving import save_pipeline_atomically

    nlp = spacy.blank("xx")
    nlp.add_pipe("xlmrxl_transformer", config={"model": {"backbone": {
        "checkpoint": str(checkpoint), "preset": None, "tokenizer": str(TOKENIZER_DIR / "sentencepiece.bpe.model")}}})
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {
        "@architectures": "spacy-xlmrxl.Listener.v1", "upstream": "*", "pooling": "mean"}}})
    for label in ("LOC", "ORG", "PER"):
        nlp.get_pipe("xlmrxl_ner").add_label(label)
    doc = nlp.make_doc("Mette Frederiksen visited Aarhus .")
    start = time.perf_counter()
    nlp.initialize(lambda: [Example.from_dict(doc, {"entities": [(0, 17, "PER"), (26, 32, "LOC")]})])
    initialised = time.perf_counter()
    save_pipeline_atomically(nlp, out)  # the marker last: without it the next run builds again
    (out / PIPELINE_MARKER).write_text(json.dumps({"checkpoint": str(checkpoint.resolve()),
                                                   "mtime": _mtime(checkpoint)}))
    print(f"pipeline initialised in {initialised - start:.1f} s, saved in {time.perf_counter() - initialised:.1f} s; "
          f"builder peak RSS {peak_rss() / GB:.2f} GB", flush=True)


def _mtime(directory: Path) -> float:
    return max(p.stat().st_mtime for p in directory.glob("*.safetensors"))


def ensure_pipeline(checkpoint: Path, out: Path) -> bool:
    """Build the pipeline directory unless it was built from this checkpoint; False without a tokenizer."""
    if not (TOKENIZER_DIR / "sentencepiece.bpe.model").is_file():
        print(f"--pipeline SKIPPED: {TOKENIZER_DIR}/sentencepiece.bpe.model is absent (../shared)")
        return False
    marker = out / PIPELINE_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == {"checkpoint": str(checkpoint.resolve()),
                                                               "mtime": _mtime(checkpoint)}:
        print(f"reusing the pipeline {out} ({checkpoint_bytes(out / 'xlmrxl_transformer' / 'backbone') / GB:.1f} GB)",
              flush=True)
        return True
    print(f"building the spaCy pipeline {out} from {checkpoint} (child process) ...", flush=True)
    command = [sys.executable, __file__, "--child", "build-pipeline", "--dir", str(checkpoint), "--out", str(out)]
    result = subprocess.run(command, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if result.returncode != 0:
        raise SystemExit("building the pipeline failed")
    return True


def files_of(impl: str, checkpoint: Path, pipeline: Path) -> Path:
    return pipeline / "xlmrxl_transformer" / "backbone" if impl.startswith("spacy") else checkpoint


# ---------------------------------------------------------------------------------- child
def child(impl: str, directory: Path, dtype_name: str) -> Dict[str, float]:
    if impl in ("spacy", "spacy-int8"):
        return child_spacy(directory, dtype_name, quantize=impl == "spacy-int8")
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
    tokenizer_s = float("nan")
    if impl == "hf" and (TOKENIZER_DIR / "tokenizer.json").is_file():  # for comparison with spacy.load
        from transformers import XLMRobertaTokenizerFast

        t0 = time.perf_counter()
        XLMRobertaTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"))
        tokenizer_s = time.perf_counter() - t0
    return {
        "load_s": loaded - start, "forward_s": forward - loaded, "baseline_rss": baseline,
        "rss_after_load": rss_loaded, "peak_rss": peak_rss(), "params": params,
        "weights_bytes": params * torch.empty((), dtype=dtype).element_size(), "tokenizer_s": tokenizer_s,
    }


def child_spacy(pipeline: Path, dtype_name: str, *, quantize: bool = False) -> Dict[str, float]:
    """``spacy.load`` of the saved pipeline (bf16 by the config override ``dtype``; int8 by the
    override ``quantize = "int8"``), then ``nlp(text)``."""
    import warnings

    import spacy

    import spacy_xlmrxl  # noqa: F401  (imported before the clock starts, as HF's class is)
    from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim

    dtype = DTYPES[dtype_name]
    settings = {**({"dtype": dtype_name} if dtype != torch.float32 else {}), **({"quantize": "int8"} if quantize else {})}
    overrides = backbone_overrides(spacy.util.load_config(pipeline / "config.cfg"), **settings) if settings else {}
    warnings.simplefilter("ignore")  # the slow-bf16 warning on CPUs without native bf16
    # spaCy's one-off set-up of any first pipeline in a process (its registries load every
    # installed plugin's entry points, e.g. spacy-transformers -> transformers -> torch._dynamo:
    # 15 s here), done before the clock as HF's import is; reported as setup_s
    t0 = time.perf_counter()
    spacy.blank("xx")
    setup_s = time.perf_counter() - t0
    baseline = current_rss()
    start = time.perf_counter()
    nlp = spacy.load(pipeline, config=overrides)
    loaded = time.perf_counter()
    rss_loaded = current_rss()
    doc = nlp(SHORT_TEXT)
    forward = time.perf_counter()
    shim = backbone_shim(backbone_nodes(nlp.get_pipe("xlmrxl_transformer").model)[0])
    module = shim.float_module
    assert next(module.parameters()).dtype == dtype, "the dtype override was not applied"
    assert (shim.module is not module) == quantize, "the quantize override was not applied"
    data = doc._.xlmrxl
    assert data is not None and numpy_finite(data.hidden if data.hidden is not None else data.cls), \
        "nlp(text) gave non-finite values"
    params = sum(p.numel() for p in module.parameters())
    from modeling.tokenizer import XLMRobertaTokenizer  # its build is part of spacy.load: time it alone

    t0 = time.perf_counter()
    XLMRobertaTokenizer(model_proto=(pipeline / "xlmrxl_transformer" / "backbone" / "sentencepiece.bpe.model").read_bytes())
    tokenizer_s = time.perf_counter() - t0
    return {
        "load_s": loaded - start, "forward_s": forward - loaded, "baseline_rss": baseline,
        "rss_after_load": rss_loaded, "peak_rss": peak_rss(), "params": params,
        "weights_bytes": params * torch.empty((), dtype=dtype).element_size(), "tokenizer_s": tokenizer_s,
        "setup_s": setup_s,
    }


def numpy_finite(array: object) -> bool:
    import numpy

    return bool(numpy.isfinite(numpy.asarray(array)).all())


def run_child(impl: str, directory: Path, dtype_name: str) -> Dict[str, float]:
    """Measure ``impl`` (ours / hf: a checkpoint directory; spacy: a pipeline directory) in a fresh process."""
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
    header = (f"{'impl':<10} {'dtype':<9} {'load s':>7} {'tok s':>6} {'fwd s':>6} {'peak RSS GB':>12} {'peak/ckpt':>9} "
              f"{'peak/weights':>12} {'RSS after load':>15} {'before load':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['impl']:<10} {r['dtype']:<9} {r['load_s']:>7.2f} {r.get('tokenizer_s', float('nan')):>6.2f} "
              f"{r['forward_s']:>6.2f} {r['peak_rss'] / GB:>12.2f} "
              f"{r['peak_rss'] / size:>9.2f} {r['peak_rss'] / r['weights_bytes']:>12.2f} {r['rss_after_load'] / GB:>15.2f} "
              f"{r['baseline_rss'] / GB:>12.2f}")
    spacy_rows = [r for r in rows if r["impl"].startswith("spacy")]
    if spacy_rows:
        print("(spacy: spacy.load of the saved pipeline; its load time includes building the tokenizer, whose "
              "share is 'tok s'; hf: 'tok s' is HF's fast tokenizer, not in its load time. Not in spacy's load time: "
              f"spaCy's one-off registry set-up of a process's first pipeline, {min(r['setup_s'] for r in spacy_rows):.1f} s "
              "here, done before the clock as HF's import is)")
    parts = []
    for dtype in DTYPES:
        hf = next((r for r in rows if r["impl"] == "hf" and r["dtype"] == dtype), None)
        for impl, label in (("ours", "ours"), ("spacy", "spacy.load"), ("spacy-int8", "spacy.load int8")):
            ours = next((r for r in rows if r["impl"] == impl and r["dtype"] == dtype), None)
            if ours is None:
                continue
            text = (f"{dtype}: {label} {ours['load_s']:.1f} s / {ours['peak_rss'] / GB:.2f} GB "
                    f"({ours['peak_rss'] / size:.2f}x ckpt)")
            if dtype == "bfloat16":
                budget = 1.1 * ours["weights_bytes"]
                text += f" [target <= {budget / GB:.2f} GB: {'met' if ours['peak_rss'] <= budget else 'MISSED'}]"
            if hf is not None:
                text += (f" vs HF {hf['load_s']:.1f} s / {hf['peak_rss'] / GB:.2f} GB -> time "
                         f"{ours['load_s'] / hf['load_s']:.2f}x")
                if impl.startswith("spacy") and ours.get("tokenizer_s") == ours.get("tokenizer_s"):
                    text += f" ({(ours['load_s'] - ours['tokenizer_s']) / hf['load_s']:.2f}x without the tokenizer"
                    if hf.get("tokenizer_s") == hf.get("tokenizer_s"):  # both ready to run: weights + tokenizer
                        text += (f"; model + tokenizer: {ours['load_s']:.2f} s vs HF "
                                 f"{hf['load_s'] + hf['tokenizer_s']:.2f} s = "
                                 f"{ours['load_s'] / (hf['load_s'] + hf['tokenizer_s']):.2f}x")
                    text += ")"
                text += f", memory {ours['peak_rss'] / hf['peak_rss']:.2f}x of HF"
            parts.append(text)
    print("\nsummary: " + " | ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="checkpoint folder (default .scratch/xl-random[-L<n>])")
    parser.add_argument("--dtype", choices=["both", *DTYPES], default="both")
    parser.add_argument("--skip-hf", action="store_true", help="do not measure HF transformers")
    parser.add_argument("--skip-ours", action="store_true", help="do not measure XLMRobertaXLModel.from_pretrained")
    parser.add_argument("--pipeline", action="store_true",
                        help="also measure spacy.load of an xlmrxl_transformer + xlmrxl_ner pipeline saved from the checkpoint")
    parser.add_argument("--quantize", action="store_true",
                        help="with --pipeline: also spacy.load with quantize = \"int8\" (float32 rows only)")
    parser.add_argument("--pipeline-dir", type=Path, default=None,
                        help="where the pipeline is saved (default .scratch/xl-pipeline[-L<n>])")
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=36, help="cut the layer stack for a quick run")
    parser.add_argument("--shard-size", default="4GB")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per configuration")
    parser.add_argument("--write-only", action="store_true", help="write (or find) the checkpoint, measure nothing")
    parser.add_argument("--child", choices=["ours", "hf", "spacy", "spacy-int8", "build-pipeline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "build-pipeline":
        build_pipeline(args.dir, args.out)
        return
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.dtype)))
        return
    suffix = "" if args.layers == 36 else f"-L{args.layers}"
    directory = args.dir or REPO / ".scratch" / f"xl-random{suffix}"
    ensure_checkpoint(directory, args.layers, args.shard_size)
    pipeline = args.pipeline_dir or REPO / ".scratch" / f"xl-pipeline{suffix}"
    with_pipeline = args.pipeline and ensure_pipeline(directory, pipeline)
    if args.write_only:
        return
    size = checkpoint_bytes(directory)
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    impls = [impl for impl, on in (("ours", not args.skip_ours), ("spacy", with_pipeline),
                                   ("spacy-int8", with_pipeline and args.quantize), ("hf", not args.skip_hf)) if on]
    results = []
    for dtype in dtypes:
        for _ in range(args.repeat):
            for impl in impls:
                if impl == "spacy-int8" and dtype != "float32":
                    continue
                source = files_of(impl, directory, pipeline)
                warm_page_cache(source)
                result = {"impl": impl, "dtype": dtype,
                          **run_child(impl, pipeline if impl.startswith("spacy") else directory, dtype)}
                print(f"  {impl} {dtype}: load {result['load_s']:.2f} s, peak RSS {result['peak_rss'] / GB:.2f} GB", flush=True)
                results.append(result)
    report(results, size)


if __name__ == "__main__":
    main()
