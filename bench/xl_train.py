"""XL at its real size on CPU: LoRA NER training through `spacy train`, then `nlp.pipe` of the result.

1. Writes a random XLM-RoBERTa-XL checkpoint once into ``.scratch/`` (fp32 safetensors, written
   shard by shard: bench/xl_load.py's writer) or reuses it; converts UNER Danish
   (``../shared/data/ner/uner/da``) with ``spacy-xlmrxl convert-uner`` into ``.scratch/``.
2. Measures the runtime of a training process without weights (a child that builds the pipeline
   from the config, the tokenizer and the corpus): the planner's ``runtime`` term.
3. For each mode (``lora-fp32``: LoRA over a float32 base; ``lora-bf16``: over a bf16 base,
   ``dtype = "bfloat16"``; ``lora-bf16-emulated``: the same as on a CPU without native bf16
   matmuls, ``$XLMRXL_BF16_MATMUL=emulated``, where the bf16 base is computed in float32 layer by
   layer; ``full-fp32``: full fine-tuning, for small models), runs
   ``python -m spacy train`` on ``configs/ner.cfg`` merged with ``configs/xl_lora_cpu.cfg``
   (``spacy-xlmrxl merge-config``'s merge) and this script's settings (steps, dtype, paths, the
   per-step logger of bench/train_hooks.py). ``--repeat-batch`` (default) trains on one batch of
   ``--batch-sentences`` sentences, repeated. Reported: the child's peak RSS (``VmHWM``: load,
   training and the final save), median seconds per step (steps after the first, without
   evaluation), the loss of every step (finite? falling?), next to the planner's estimate
   (`spacy_xlmrxl.distributed.memory_plan.plan_cpu_training`) and its figure for full fine-tuning.
4. Runs the trained pipeline (``model-last`` of the first mode) over ``--sentences`` UNER Danish
   test sentences with ``nlp.pipe`` in a fresh process per variant: fp32, ``quantize = "int8"``,
   bf16 (``dtype = "bfloat16"``: computed in float32 layer by layer where the CPU lacks native bf16
   matmuls) and, on a CPU with them, ``bf16-emulated`` (what a CPU without them does): words/s and
   peak RSS.

Prints whether the CPU has native bf16 and one ``SUMMARY`` line; ``--json FILE`` writes every figure.

    python bench/xl_train.py                      # full XL: 36 layers, 10 steps per mode
    python bench/xl_train.py --layers 2           # XL widths, 2 layers: a quick run
    python bench/xl_train.py --preset tiny --steps 2 --sentences 5 --scratch /tmp/x   # smoke run
    python bench/xl_train.py --skip-pipe --modes lora-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import SHARED, TOKENIZER_DIR, machine_line, native_bf16, peak_rss  # noqa: E402
from bench.spacy_train import log_tail, merged_config, run_logged, train_child  # noqa: E402
from bench.xl_load import ensure_checkpoint, xl_config  # noqa: E402

UNER_DA = SHARED / "data" / "ner" / "uner" / "da"
SPM = TOKENIZER_DIR / "sentencepiece.bpe.model"
BASE_CONFIG = REPO / "configs" / "ner.cfg"
LORA_OVERRIDES = REPO / "configs" / "xl_lora_cpu.cfg"
MODES = {"lora-fp32": ("float32", True), "lora-bf16": ("bfloat16", True), "full-fp32": ("float32", False),
         "lora-bf16-emulated": ("bfloat16", True)}
VARIANTS = {"fp32": {}, "int8": {"quantize": "int8"}, "bf16": {"dtype": "bfloat16"}, "bf16-emulated": {"dtype": "bfloat16"}}
#: the modes and variants run as on a CPU without native bf16 matmuls (the detection overridden):
#: the bf16 base is computed in float32 layer by layer
EMULATED = {"lora-bf16-emulated", "bf16-emulated"}
GiB = 1024 ** 3


def lora_setting_available() -> bool:
    """Whether the backbone settings block has the ``lora`` setting."""
    from spacy_xlmrxl.backbone.settings import BackboneSettings

    return "lora" in {f.name for f in fields(BackboneSettings)}


# ------------------------------------------------------------------------------------ data
def convert_uner(scratch: Path) -> Dict[str, Path]:
    """UNER Danish train / dev / test as .spacy files under ``scratch`` (converted once)."""
    out = {split: scratch / "uner-da" / f"{split}.spacy" for split in ("train", "dev", "test")}
    for split, path in out.items():
        if path.is_file():
            continue
        source = UNER_DA / f"{split}.iob2"
        if not source.is_file():
            raise SystemExit(f"{source} is missing: ../shared/data (UNER) must be beside the repository")
        partial = path.with_suffix(".partial.spacy")
        partial.parent.mkdir(parents=True, exist_ok=True)
        log = path.with_suffix(".log")
        if run_logged([sys.executable, "-m", "spacy_xlmrxl.cli", "convert-uner", str(source), "--output",
                       str(partial), "--no-progress"], log=log) != 0:
            raise SystemExit(f"convert-uner {source} failed: {log_tail(log)}")
        partial.replace(path)
    return out


# ---------------------------------------------------------------------------------- config
def mode_settings(args: argparse.Namespace, mode: str, corpus: Dict[str, Path], checkpoint: Path) -> Dict[str, Any]:
    """This script's part of the training config of ``mode`` (merged over ner.cfg + the LoRA overrides)."""
    dtype, lora = MODES[mode]
    backbone: Dict[str, Any] = {"dtype": dtype}
    if lora_setting_available():
        if not lora:
            backbone["lora"] = None
        elif args.lora_save:
            backbone["lora_save"] = args.lora_save
    training: Dict[str, Any] = {
        "max_steps": args.steps - 1, "eval_frequency": args.steps, "patience": 0, "max_epochs": 0,
        "optimizer": {"learn_rate": {"warmup_steps": 1}},
    }
    corpora: Dict[str, Any] = {"dev": {"limit": args.dev_sentences}}
    if args.repeat_batch:  # one epoch = the first N sentences = one batch, repeated every step
        corpora["train"] = {"limit": args.batch_sentences}
        training["batcher"] = {"size": 1_000_000}
    return {"paths": {"train": str(corpus["train"]), "dev": str(corpus["dev"]), "checkpoint": str(checkpoint),
                      "tokenizer": str(SPM)},
            "backbone": backbone, "training": training, "corpora": corpora}


def mode_config(args: argparse.Namespace, mode: str, corpus: Dict[str, Path], checkpoint: Path) -> Any:
    """configs/ner.cfg + the LoRA overrides + `mode_settings`."""
    return merged_config(BASE_CONFIG, [args.overrides], mode_settings(args, mode, corpus, checkpoint))


# ------------------------------------------------------------------------------- training
def train(args: argparse.Namespace, mode: str, corpus: Dict[str, Path], checkpoint: Path) -> Dict[str, Any]:
    """One ``spacy train`` child for ``mode``: its peak RSS, step times and losses."""
    out = args.scratch / "xl-train" / f"{args.tag}-{mode}"
    print(f"  {mode}: spacy train {out / 'config.cfg'} ({args.steps} steps) ...", flush=True)
    result = {"mode": mode, "pipeline": str(out / "model" / "model-last"),
              **train_child(mode_config(args, mode, corpus, checkpoint), out, env=child_env(mode))}
    if "error" in result:
        print(f"  {mode}: FAILED ({result['returncode']}): {result['error']}", flush=True)
        return result
    print(f"  {mode}: peak RSS {result['peak_rss'] / GiB:.2f} GiB, {result['seconds_per_step']:.2f} s/step, "
          f"loss {fmt_losses(result['losses'])}", flush=True)
    return result


def fmt_losses(losses: Sequence[float]) -> str:
    return " ".join(f"{x:.3g}" for x in losses) if len(losses) <= 12 else f"{losses[0]:.3g} ... {losses[-1]:.3g}"


# ------------------------------------------------------------------------------- children
def child_baseline(config_path: Path, train_path: Path, batch_sentences: int) -> Dict[str, Any]:
    """A training process without weights: the pipeline built from the config (no initialize),
    the tokenizer, the corpus; and the (docs, pieces) shape of the repeated batch."""
    import spacy
    from spacy.tokens import DocBin

    import spacy_xlmrxl  # noqa: F401
    from modeling.tokenizer import XLMRobertaTokenizer

    config = spacy.util.load_config(config_path, interpolate=True)
    spacy.util.load_model_from_config(config, auto_fill=True)
    tokenizer = XLMRobertaTokenizer(model_proto=SPM.read_bytes())
    nlp = spacy.blank("xx")
    docs = list(DocBin().from_disk(train_path).get_docs(nlp.vocab))[:batch_sentences]
    pieces = [len(tokenizer.encode_pieces(doc.text)) + 2 for doc in docs]
    return {"runtime": peak_rss(), "batch_size": len(docs), "seq_length": max(pieces)}


def child_pipe(pipeline: Path, variant: str, count: int) -> Dict[str, Any]:
    """``spacy.load`` of ``pipeline`` with the ``variant``'s backbone settings, then ``nlp.pipe``
    over ``count`` UNER Danish test sentences: words/s and peak RSS."""
    import warnings

    import spacy

    import spacy_xlmrxl  # noqa: F401
    from bench.common import backbone_overrides, load_uner

    warnings.simplefilter("ignore")
    settings = VARIANTS[variant]
    overrides = backbone_overrides(spacy.util.load_config(pipeline / "config.cfg"), **settings) if settings else {}
    texts = [s.text for s in load_uner(limit_per_lang=count) or [] if s.lang == "da"][:count]
    start = time.perf_counter()
    nlp = spacy.load(pipeline, config=overrides)
    loaded = time.perf_counter()
    nlp("Mette Frederiksen besøgte Aarhus.")  # warm-up
    t0 = time.perf_counter()
    docs = list(nlp.pipe(texts))
    seconds = time.perf_counter() - t0
    words = sum(len(doc) for doc in docs)
    return {"variant": variant, "load_s": loaded - start, "sentences": len(docs), "words": words,
            "seconds": seconds, "words_per_s": words / seconds, "entities": sum(len(doc.ents) for doc in docs),
            "peak_rss": peak_rss()}


def child_env(name: str) -> Dict[str, str]:
    """The environment of the child running mode or variant ``name``."""
    from modeling.cpu_features import BF16_MATMUL_ENV

    return {BF16_MATMUL_ENV: "emulated"} if name in EMULATED else {}


def run_child(args: List[str], log: Path, *, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    code = run_logged([sys.executable, __file__, "--child", *args], log=log, env=env)
    lines = log.read_text(errors="replace").strip().splitlines()
    if code != 0 or not lines:
        return {"error": " | ".join(lines[-3:]) or f"exit status {code}"}
    return json.loads(lines[-1])


# -------------------------------------------------------------------------------- planner
def backbone_block(config_path: Path) -> Dict[str, Any]:
    """The first backbone settings block of a training config."""
    from thinc.api import Config

    from spacy_xlmrxl.backbone.settings import backbone_blocks

    blocks = backbone_blocks(Config().from_disk(config_path, interpolate=False))
    return dict(blocks[0]) if blocks else {}


def planned(model_config: Any, mode: str, config_path: Path, shape: Dict[str, Any]) -> Any:
    """The planner's estimate for the training config of ``mode`` on the measured batch shape."""
    from modeling.lora import LoraConfig
    from spacy_xlmrxl.distributed.memory_plan import plan_cpu_training

    block = backbone_block(config_path)
    lora = block.get("lora")
    return plan_cpu_training(model_config, lora=LoraConfig.from_dict(lora) if lora else None,
                             base_dtype=MODES[mode][0], batch_size=shape["batch_size"],
                             seq_length=shape["seq_length"], runtime_bytes=shape["runtime"],
                             checkpointing=bool(block.get("grad_checkpointing")),
                             compute_dtype="float32" if mode in EMULATED else None,
                             freeze_word_embeddings=bool(block.get("freeze_word_embeddings")))


def memory_total() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --------------------------------------------------------------------------------- report
def summary(results: Dict[str, Any]) -> str:
    parts = [f"layers={results['layers']} native_bf16={'yes' if results['native_bf16'] else 'no'}"]
    for row in results["train"]:
        if "error" in row:
            parts.append(f"{row['mode']}: FAILED")
            continue
        plan = row.get("planned_total")
        parts.append(f"{row['mode']}: peak RSS {row['peak_rss'] / GiB:.2f} GiB"
                     + (f" (plan {plan / GiB:.2f}, {row['peak_rss'] / plan:.2f}x)" if plan else "")
                     + f", {row['seconds_per_step']:.2f} s/step, loss {row['losses'][0]:.3g}->{row['losses'][-1]:.3g}"
                     + f" ({'finite' if row['loss_finite'] else 'NOT FINITE'}, "
                     + f"{'falling' if row['loss_falling'] else 'NOT FALLING'})")
    full = results.get("full_plan")
    if full:
        fits = "fits" if full <= results["memory"] else "does not fit"
        parts.append(f"full fine-tuning plan {full / GiB:.1f} GiB ({fits} {results['memory'] / GiB:.0f} GiB)")
    for row in results["pipe"]:
        parts.append(f"pipe {row['variant']}: " + ("FAILED" if "error" in row else
                     f"{row['words_per_s']:.1f} words/s, peak RSS {row['peak_rss'] / GiB:.2f} GiB"))
    return "SUMMARY xl_train: " + " | ".join(parts)


def pipe_variants(args: argparse.Namespace) -> List[str]:
    variants = ["fp32", "int8", "bf16"] + (["bf16-emulated"] if native_bf16() else [])
    return [v for v in variants if v not in args.skip_variant]


def merged_pipeline(pipeline: Path) -> Path:
    """``pipeline`` with its LoRA adapters folded into the base (``spacy-xlmrxl merge-lora``), the
    form int8 inference needs (int8 layers carry no adapters); ``pipeline`` itself if it has none."""
    merged = pipeline.parent / f"{pipeline.name}-merged"
    if not merged.is_dir():
        done = subprocess.run([sys.executable, "-m", "spacy_xlmrxl.cli", "merge-lora", str(pipeline), str(merged)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  merge-lora: not merged ({' | '.join(done.stderr.strip().splitlines()[-3:])}); int8 runs on {pipeline}",
                  flush=True)
            return pipeline
    return merged


def run_pipes(args: argparse.Namespace, pipeline: Path) -> List[Dict[str, Any]]:
    rows = []
    for variant in pipe_variants(args):
        source = merged_pipeline(pipeline) if variant == "int8" else pipeline
        print(f"  nlp.pipe {variant}: {args.sentences} sentences of {source.name} ...", flush=True)
        row = {"variant": variant, **run_child(["pipe", "--dir", str(source), "--variant", variant,
                                                "--sentences", str(args.sentences)],
                                               pipeline.parent.parent / f"pipe-{variant}.log", env=child_env(variant))}
        print(f"  nlp.pipe {variant}: " + (f"FAILED: {row['error']}" if "error" in row else
              f"{row['words_per_s']:.1f} words/s, peak RSS {row['peak_rss'] / GiB:.2f} GiB"), flush=True)
        rows.append(row)
    return rows


def run_all(args: argparse.Namespace) -> Dict[str, Any]:
    from modeling.config import XLMRobertaXLConfig

    full_depth = XLMRobertaXLConfig.from_preset(args.preset).num_hidden_layers
    layers = args.layers or full_depth
    model_config = xl_config(layers, args.preset)
    checkpoint = args.checkpoint or args.scratch / f"{args.preset}-random{'' if layers == full_depth else f'-L{layers}'}"
    ensure_checkpoint(checkpoint, layers, "4GB", preset=args.preset)
    corpus = convert_uner(args.scratch)
    results: Dict[str, Any] = {"layers": layers, "preset": args.preset, "native_bf16": native_bf16(),
                               "memory": memory_total(), "train": [], "pipe": []}
    modes = [m for m in args.modes.split(",") if m]
    if not args.skip_train and modes:
        out = args.scratch / "xl-train" / f"{args.tag}-baseline"
        out.mkdir(parents=True, exist_ok=True)
        config = out / "config.cfg"
        mode_config(args, modes[0], corpus, checkpoint).to_disk(config)
        shape = run_child(["baseline", "--dir", str(config), "--train", str(corpus["train"]),
                           "--batch-sentences", str(args.batch_sentences)], out / "baseline.log")
        if "error" in shape:
            raise SystemExit(f"the baseline child failed: {shape['error']}")
        results["baseline"] = shape
        print(f"  runtime without weights {shape['runtime'] / GiB:.2f} GiB; batch {shape['batch_size']} x "
              f"{shape['seq_length']} pieces", flush=True)
        for mode in modes:
            row = train(args, mode, corpus, checkpoint)
            if "error" not in row:
                plan = planned(model_config, mode, args.scratch / "xl-train" / f"{args.tag}-{mode}" / "config.cfg", shape)
                row["planned_total"] = plan.total
                from spacy_xlmrxl.distributed.memory_plan import format_cpu_plan

                print(f"  {mode}: planner {format_cpu_plan(plan)}", flush=True)
            results["train"].append(row)
        from spacy_xlmrxl.distributed.memory_plan import plan_cpu_training

        results["full_plan"] = plan_cpu_training(model_config, lora=None, batch_size=shape["batch_size"],
                                                 seq_length=shape["seq_length"], runtime_bytes=shape["runtime"]).total
    trained = next((Path(r["pipeline"]) for r in results["train"] if "error" not in r), None)
    if not args.skip_pipe:
        pipeline = args.pipeline or trained
        if pipeline is None:
            print("  nlp.pipe SKIPPED: no trained pipeline (give --pipeline DIR)")
        else:
            results["pipe"] = run_pipes(args, pipeline)
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="xl", help="architecture of the random checkpoint (xl; tiny for a smoke run)")
    parser.add_argument("--layers", type=int, default=None, help="cut the layer stack (default: the preset's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default .scratch/<preset>-random[-L<n>])")
    parser.add_argument("--scratch", type=Path, default=REPO / ".scratch", help="where checkpoints, corpora and runs go")
    parser.add_argument("--overrides", type=Path, default=LORA_OVERRIDES, help="partial config merged over configs/ner.cfg")
    parser.add_argument("--modes", default="lora-fp32,lora-bf16", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=10, help="training steps per mode (>= 2)")
    parser.add_argument("--repeat-batch", action=argparse.BooleanOptionalAction, default=True,
                        help="train on one batch of --batch-sentences sentences, repeated (default); "
                             "--no-repeat-batch trains on the whole corpus")
    parser.add_argument("--batch-sentences", type=int, default=8)
    parser.add_argument("--dev-sentences", type=int, default=8, help="sentences of the one evaluation (step 0)")
    parser.add_argument("--lora-save", default="adapters", help="lora_save of the LoRA modes (full / adapters; '' keeps the config's)")
    parser.add_argument("--sentences", type=int, default=100, help="UNER Danish test sentences for nlp.pipe")
    parser.add_argument("--pipeline", type=Path, default=None, help="run nlp.pipe on this pipeline (default: the first trained)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-pipe", action="store_true")
    parser.add_argument("--skip-variant", action="append", default=[], choices=sorted(VARIANTS))
    parser.add_argument("--tag", default="run", help="names this run's folders under <scratch>/xl-train")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--child", choices=["baseline", "pipe"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    unknown = sorted(set(args.modes.split(",")) - set(MODES) - {""})
    if unknown:
        parser.error(f"unknown --modes {unknown}: use {', '.join(MODES)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child == "baseline":
        print(json.dumps(child_baseline(args.dir, args.train, args.batch_sentences)))
        return 0
    if args.child == "pipe":
        print(json.dumps(child_pipe(args.dir, args.variant, args.sentences)))
        return 0
    print(machine_line(), flush=True)
    print(f"native bf16 matmuls: {'yes' if native_bf16() else 'NO (a bf16 base is computed in float32 layer by layer)'}")
    if any(MODES[m][1] for m in args.modes.split(",") if m) and not lora_setting_available():
        raise SystemExit("the backbone settings have no 'lora' setting yet: run --modes full-fp32 only")
    args.scratch.mkdir(parents=True, exist_ok=True)
    results = run_all(args)
    line = summary(results)
    print(line)
    if args.json:
        args.json.write_text(json.dumps({**results, "summary": line}, indent=1))
    failed = any("error" in row for row in results["train"] + results["pipe"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
