"""Print the per-GPU memory plan of XL/XXL training (DDP vs FSDP, fp32 vs bf16, checkpointing)
and the LoRA rows (one GPU, bf16 base, fp32 adapters + Adam) with the smallest GPU each fits.

Usage: ``python bench/memory_plan.py [--preset xl --preset xxl | --config config.json]
[--gpus 8] [--batch 8] [--seq 512] [--gpu-gib 80] [--lora-r 8] [--lora-targets query,value]``.
The arithmetic lives in `spacy_xlmrxl.distributed.memory_plan`; this script only parses
arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeling.config import XLMRobertaXLConfig  # noqa: E402
from modeling.lora import LoraConfig  # noqa: E402
from spacy_xlmrxl.distributed.memory_plan import GPU_CLASSES_GIB, format_lora_table, format_table, lora_grid, plan_grid  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="xl, xxl, small, tiny (repeatable; default xl and xxl)")
    parser.add_argument("--config", action="append", default=[], help="a config.json or checkpoint directory")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="sequences per GPU")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank of the LoRA rows")
    parser.add_argument("--lora-targets", default="query,value", help="comma-separated LoRA targets")
    args = parser.parse_args(argv)
    lora = LoraConfig(r=args.lora_r, targets=args.lora_targets.split(","))
    configs = [(name, XLMRobertaXLConfig.from_preset(name)) for name in (args.preset or ([] if args.config else ["xl", "xxl"]))]
    configs += [(Path(path).name, XLMRobertaXLConfig.from_pretrained(path)) for path in args.config]
    plans = plan_grid(configs, num_gpus=args.gpus, batch_size=args.batch, seq_length=args.seq)
    print(f"Per-GPU memory (GiB) for Adam training, {args.batch} x {args.seq} pieces per GPU, {args.gpus} GPUs:\n")
    print(format_table(plans, gpu_gib=args.gpu_gib))
    print(f"\nLoRA on one GPU (GiB): frozen bf16 base, float32 adapters + Adam, {args.batch} x {args.seq} pieces; "
          f"smallest of the {' / '.join(map(str, GPU_CLASSES_GIB))} GiB classes that holds it "
          "(framework overhead not included):\n")
    print(format_lora_table(lora_grid(configs, lora, batch_size=args.batch, seq_length=args.seq)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
