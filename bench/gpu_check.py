"""The GPU check: the figures of one run on the lent GPU machine, written as one JSON file.

Started by ``bench/gpu_check.sh run`` there (after the carried spaCy / thinc wheels are installed),
or anywhere with ``--cpu-dry-run`` (tiny preset, tiny shapes, CPU), so that the first GPU minutes
measure rather than debug. Steps, each timed; a failure is recorded and the next step runs; the
JSON (``<out>/gpu_check.json``, ``--out`` or ``$OUT``) is rewritten after every step:

- ``environment``: torch, CUDA, the GPU, spaCy, thinc, CuPy;
- ``tiny_train``: ``spacy train configs/ner.cfg --gpu-id 0`` (tiny preset, 100 steps) on the carried
  UNER Danish sentences: seconds per step, the last dev score, peak GPU memory;
- ``xl_forward``: `XLMRobertaXLModel` (preset xl, random init) in bf16, inference on 8 x 512
  pieces: ms per forward, TFLOP/s, MFU against the H200's dense bf16 peak (989 TFLOP/s);
- ``xl_lora_ner``: configs/ner.cfg + configs/xl_gpu.cfg (bf16 autocast, checkpointing) with LoRA
  (r=8, query + value) over a bf16 base, 20 steps: seconds per step, losses, peak GPU memory;
- ``xl_full_finetune``: the same config with a float32 base trained fully (frozen word
  embeddings), 5 steps: the same figures.
The training steps run ``spacy train`` children measured by bench/spacy_train.py and
bench/train_hooks.py; their logs are copied beside the JSON (``<step>.log``), everything else
stays in a scratch folder (``--work``, default a new temporary folder). ``--prepare-carry`` (run by ``bench/gpu_check.sh prepare``) writes the
carried data: the gzipped sentencepiece model and the first UNER Danish train / dev sentences.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.spacy_train import merged_config, train_child  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
BASE_CONFIG = REPO / "configs" / "ner.cfg"
XL_GPU = REPO / "configs" / "xl_gpu.cfg"
H200_BF16_DENSE_FLOPS = 989e12
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}
STEPS = ("environment", "tiny_train", "xl_forward", "xl_lora_ner", "xl_full_finetune")


@dataclass(frozen=True)
class Profile:
    """What the run does: on the GPU, or its CPU dry run at tiny shapes."""

    gpu_id: int
    preset: str
    forward_shape: Tuple[int, int]
    tiny_steps: int
    lora_steps: int
    full_steps: int
    mixed_precision: Optional[str]
    peak_flops: Optional[float]
    timeout_s: float  # per training child


GPU = Profile(gpu_id=0, preset="xl", forward_shape=(8, 512), tiny_steps=100, lora_steps=20, full_steps=5,
              mixed_precision="bf16", peak_flops=H200_BF16_DENSE_FLOPS, timeout_s=200)
DRY_RUN = Profile(gpu_id=-1, preset="tiny", forward_shape=(2, 16), tiny_steps=4, lora_steps=2, full_steps=2,
                  mixed_precision=None, peak_flops=None, timeout_s=300)


class Skipped(Exception):
    """A step that cannot run here; its message says why."""


# ------------------------------------------------------------------------------------ data
def first_sentences(path: Path, count: int) -> str:
    """The first ``count`` blank-line-separated blocks (sentences) of an .iob2 file."""
    blocks = [b for b in path.read_text(encoding="utf8").split("\n\n") if b.strip()]
    return "\n\n".join(blocks[:count]) + "\n\n"


def prepare_carry(carry: Path, *, train_sentences: int, dev_sentences: int) -> None:
    """The carried data: ``tokenizer/sentencepiece.bpe.model.gz`` and ``uner/{train,dev}.iob2``."""
    (carry / "tokenizer").mkdir(parents=True, exist_ok=True)
    (carry / "uner").mkdir(parents=True, exist_ok=True)
    model = (SHARED / "tokenizer" / "sentencepiece.bpe.model").read_bytes()
    (carry / "tokenizer" / "sentencepiece.bpe.model.gz").write_bytes(gzip.compress(model, compresslevel=9, mtime=0))
    for split, count in (("train", train_sentences), ("dev", dev_sentences)):
        text = first_sentences(SHARED / "ner" / "uner" / "da" / f"{split}.iob2", count)
        (carry / "uner" / f"{split}.iob2").write_text(text, encoding="utf8")


def corpus(work: Path, carry: Path, *, train_sentences: int, dev_sentences: int) -> Dict[str, Path]:
    """``train`` / ``dev`` .spacy files and the ``tokenizer``: from the carry folder when it holds
    them (the GPU machine), else from ../shared/data (a dry run here)."""
    from spacy.vocab import Vocab

    from spacy_xlmrxl.training.docbin import write_docbin
    from spacy_xlmrxl.training.uner import uner_docs

    work.mkdir(parents=True, exist_ok=True)
    spm = work / "sentencepiece.bpe.model"
    if (carry / "uner" / "train.iob2").is_file():
        spm.write_bytes(gzip.decompress((carry / "tokenizer" / "sentencepiece.bpe.model.gz").read_bytes()))
        sources = {split: carry / "uner" / f"{split}.iob2" for split in ("train", "dev")}
    elif (SHARED / "tokenizer" / "sentencepiece.bpe.model").is_file():
        shutil.copyfile(SHARED / "tokenizer" / "sentencepiece.bpe.model", spm)
        sources = {}
        for split, count in (("train", train_sentences), ("dev", dev_sentences)):
            sources[split] = work / f"{split}.iob2"
            sources[split].write_text(first_sentences(SHARED / "ner" / "uner" / "da" / f"{split}.iob2", count),
                                      encoding="utf8")
    else:
        raise SystemExit(f"no data: {carry} (bench/gpu_check.sh prepare) nor {SHARED} is there")
    out = {"tokenizer": spm}
    for split, source in sources.items():
        out[split] = work / f"{split}.spacy"
        write_docbin(uner_docs(Vocab(), source), out[split])
    return out


# ----------------------------------------------------------------------------------- steps
def environment(profile: Profile, **_: Any) -> Dict[str, Any]:
    import spacy
    import thinc
    import torch

    info: Dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "spacy": spacy.__version__, "thinc": thinc.__version__,
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory"] = torch.cuda.get_device_properties(0).total_memory
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except ImportError:
        info["cupy"] = None
    if profile.gpu_id >= 0 and not info["cuda_available"]:
        raise RuntimeError("torch sees no GPU")
    return info


def tiny_train(profile: Profile, *, data: Dict[str, Path], work: Path) -> Dict[str, Any]:
    steps = profile.tiny_steps
    settings = {"paths": {"train": str(data["train"]), "dev": str(data["dev"]), "tokenizer": str(data["tokenizer"])},
                "training": {"max_steps": steps - 1, "eval_frequency": max(1, steps // 2), "patience": 0}}
    return _trained(train_child(merged_config(BASE_CONFIG, [], settings), work / "tiny_train",
                                gpu_id=profile.gpu_id, save=False, timeout=profile.timeout_s))


def xl_forward(profile: Profile, **_: Any) -> Dict[str, Any]:
    """Inference of the random XL (tiny in a dry run) in bf16 on ``forward_shape`` pieces."""
    import torch

    from bench.backbone_forward import forward_flops
    from modeling.config import XLMRobertaXLConfig
    from modeling.model import XLMRobertaXLModel

    device = torch.device("cuda" if profile.gpu_id >= 0 else "cpu")
    config = XLMRobertaXLConfig.from_preset(profile.preset)
    with torch.device(device):
        model = XLMRobertaXLModel(config, add_pooling_layer=False).to(torch.bfloat16).eval()
    batch, length = profile.forward_shape
    ids = torch.randint(5, config.vocab_size, (batch, length), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            model(input_ids=ids)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs, start = 10, time.perf_counter()
        for _ in range(runs):
            out = model(input_ids=ids).last_hidden_state
        sync()
        seconds = (time.perf_counter() - start) / runs
    flops = forward_flops(config, batch, length)
    result = {"batch": batch, "length": length, "layers": config.num_hidden_layers, "ms_per_forward": seconds * 1e3,
              "tflops": flops / seconds / 1e12, "finite": bool(torch.isfinite(out).all()),
              "mfu": None if profile.peak_flops is None else flops / seconds / profile.peak_flops,
              "peak_gpu": int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None}
    del model, out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _xl_settings(profile: Profile, data: Dict[str, Path], steps: int, backbone: Dict[str, Any],
                 learn_rate: float) -> Dict[str, Any]:
    return {"paths": {"train": str(data["train"]), "dev": str(data["dev"]), "tokenizer": str(data["tokenizer"]),
                      "preset": profile.preset, "checkpoint": None},
            "backbone": {"mixed_precision": profile.mixed_precision, "grad_checkpointing": True, **backbone},
            "training": {"max_steps": steps - 1, "eval_frequency": steps, "patience": 0,
                         "optimizer": {"learn_rate": {"warmup_steps": 1, "initial_rate": learn_rate}}}}


def xl_lora_ner(profile: Profile, *, data: Dict[str, Path], work: Path) -> Dict[str, Any]:
    from spacy_xlmrxl.backbone.settings import BackboneSettings

    if "lora" not in {f.name for f in dataclasses.fields(BackboneSettings)}:
        raise Skipped("BackboneSettings has no 'lora' setting yet (branch lora-spacy adds it)")
    settings = _xl_settings(profile, data, profile.lora_steps, {"dtype": "bfloat16", "lora": dict(LORA)}, 1e-3)
    return _trained(train_child(merged_config(BASE_CONFIG, [XL_GPU], settings), work / "xl_lora_ner",
                                gpu_id=profile.gpu_id, save=False, timeout=profile.timeout_s))


def xl_full_finetune(profile: Profile, *, data: Dict[str, Path], work: Path) -> Dict[str, Any]:
    from spacy_xlmrxl.backbone.settings import BackboneSettings

    backbone: Dict[str, Any] = {"dtype": None, "freeze_word_embeddings": True}
    if "lora" in {f.name for f in dataclasses.fields(BackboneSettings)}:
        backbone["lora"] = None
    settings = _xl_settings(profile, data, profile.full_steps, backbone, 1e-5)
    return _trained(train_child(merged_config(BASE_CONFIG, [XL_GPU], settings), work / "xl_full_finetune",
                                gpu_id=profile.gpu_id, save=False, timeout=profile.timeout_s))


def _trained(result: Dict[str, Any]) -> Dict[str, Any]:
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _copy_log(work: Path, name: str, out: Path) -> None:
    log = work / name / "train.log"
    if log.is_file():
        shutil.copyfile(log, out / f"{name}.log")


# ------------------------------------------------------------------------------------ main
def run_steps(profile: Profile, args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    figures: Dict[str, Any] = {"profile": dataclasses.asdict(profile), "cpu_dry_run": args.cpu_dry_run,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": {}}
    data: Dict[str, Path] = {}
    functions: Dict[str, Callable[..., Dict[str, Any]]] = {
        "environment": environment, "tiny_train": tiny_train, "xl_forward": xl_forward,
        "xl_lora_ner": xl_lora_ner, "xl_full_finetune": xl_full_finetune}
    for name in STEPS:
        start = time.perf_counter()
        try:
            if name in args.skip:
                raise Skipped("--skip")
            if name in ("tiny_train", "xl_lora_ner", "xl_full_finetune") and not data:
                data.update(corpus(work / "data", args.carry, train_sentences=args.train_sentences,
                                   dev_sentences=args.dev_sentences))
            row = {"status": "ok", **functions[name](profile, data=data, work=work)}
        except Skipped as skipped:
            row = {"status": "skipped", "reason": str(skipped)}
        except Exception as error:  # noqa: BLE001 - recorded; the next step still runs
            row = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc()[-2000:]}
        row["wall_s"] = time.perf_counter() - start
        figures["steps"][name] = row
        _copy_log(work, name, out)
        print(f"{name}: {row['status']} ({row['wall_s']:.0f} s) " + json.dumps(
            {k: v for k, v in row.items() if k not in ("traceback", "losses", "status", "wall_s")}, default=str)[:600],
            flush=True)
        (out / "gpu_check.json").write_text(json.dumps(figures, indent=1, default=str))
    return figures


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny preset and shapes on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="folder of gpu_check.json (default $OUT)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default <out>/work)")
    parser.add_argument("--carry", type=Path, default=REPO / ".gpu_carry", help="the carried data folder")
    parser.add_argument("--skip", action="append", default=[], choices=STEPS)
    parser.add_argument("--train-sentences", type=int, default=400)
    parser.add_argument("--dev-sentences", type=int, default=100)
    parser.add_argument("--prepare-carry", action="store_true", help="write the carried data (here) and stop")
    args = parser.parse_args(argv)
    if args.prepare_carry:
        prepare_carry(args.carry, train_sentences=args.train_sentences, dev_sentences=args.dev_sentences)
        return 0
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        parser.error("give --out DIR (or set $OUT)")
    out.mkdir(parents=True, exist_ok=True)
    figures = run_steps(DRY_RUN if args.cpu_dry_run else GPU, args, out)
    failed = [name for name, row in figures["steps"].items() if row["status"] == "failed"]
    print(f"SUMMARY gpu_check: {len(figures['steps']) - len(failed)}/{len(STEPS)} steps ran"
          + (f", FAILED: {', '.join(failed)}" if failed else "") + f"; figures in {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
