"""Backbone forward throughput on CPU: our `XLMRobertaXLModel` vs HF transformers' on identical weights.

HF's ``XLMRobertaXLModel`` (``attn_implementation="sdpa"``) is the reference, measured in the same
run on the same inputs with the runs interleaved (absolute times on a shared machine are noise;
read the ratios). Per shape and batch x length point it prints HF fp32 and our fp32 time, the
ratio, our fp32 rate as a fraction of this CPU's plain ``torch.mm`` fp32 rate (XL-shaped
product), our bf16 inference (weights and activations bf16; torch's CPU LayerNorm and fused
attention accumulate in fp32) against HF fp32, and the output differences to HF fp32.

bf16 is only fast on CPUs with native bf16 matmuls (AVX-512 BF16 / AMX). Elsewhere torch's bf16
matmul is many times slower than fp32; the script then says so, prints both ``torch.mm`` rates,
and measures bf16 only at points of at most ``--bf16-max-tokens`` tokens (``--bf16 on`` forces
all points, ``--bf16 off`` skips it).

    python bench/backbone_forward.py                  # quick grid: XL-shaped 2-layer stack + small
    python bench/backbone_forward.py --grid full      # 1x16 ... 32x512 (slow on few cores)
    python bench/backbone_forward.py --quick          # smallest points only, 1 round
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (add_clock_option, geomean, interleaved_medians, machine_line, matmul_gflops,  # noqa: E402
                          native_bf16, print_table, use_clock)
from modeling import XLMRobertaXLConfig, XLMRobertaXLModel  # noqa: E402

GRIDS = {
    "quick": [(1, 16), (4, 128), (1, 512)],
    "full": [(1, 16), (1, 128), (8, 128), (32, 128), (1, 512), (8, 512), (32, 512)],
    "tiny": [(1, 16), (2, 64)],
}
SHAPES = {
    # an XL layer stack cut to a few layers; the vocabulary is cut too (it adds no FLOPs)
    "xl": dict(hidden_size=2560, num_attention_heads=32, intermediate_size=10240),
    "small": dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024),
}
DEFAULT_LAYERS = {"xl": 2, "small": 4}


def forward_flops(config: XLMRobertaXLConfig, batch: int, length: int) -> float:
    """FLOPs of the layer stack: projections, feed-forward, attention scores and values."""
    h, f, n = config.hidden_size, config.intermediate_size, batch * length
    per_layer = 2 * n * (4 * h * h + 2 * h * f) + 2 * 2 * batch * length * length * h
    return config.num_hidden_layers * per_layer


def build_pair(shape: Dict[str, int], layers: int, vocab: int) -> Tuple[XLMRobertaXLModel, torch.nn.Module, XLMRobertaXLConfig]:
    """Our model and HF's with the same random weights (HF initialises, we load its state dict)."""
    import transformers

    config = XLMRobertaXLConfig(vocab_size=vocab, num_hidden_layers=layers, **shape)
    hf_config = transformers.XLMRobertaXLConfig(vocab_size=vocab, num_hidden_layers=layers,
                                                attn_implementation="sdpa", **shape)
    hf = transformers.XLMRobertaXLModel(hf_config).eval()
    if hf.config._attn_implementation != "sdpa":
        raise RuntimeError(f"HF chose attention {hf.config._attn_implementation!r}, not sdpa")
    ours = XLMRobertaXLModel(config).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    if missing or [k for k in unexpected if not k.endswith("position_ids")]:
        raise RuntimeError(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    return ours, hf, config


def bf16_copy(model: XLMRobertaXLModel) -> XLMRobertaXLModel:
    clone = XLMRobertaXLModel(model.config).eval()
    clone.load_state_dict(model.state_dict())
    return clone.to(torch.bfloat16)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    parser.add_argument("--quick", action="store_true", help="tiny grid, 1 round (a smoke run)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["xl", "small"])
    parser.add_argument("--layers", type=int, default=None, help="layers per shape (default: xl 2, small 4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--bf16-max-tokens", type=int, default=128,
                        help="with --bf16 auto on a CPU without native bf16: largest batch*length measured")
    add_clock_option(parser)
    args = parser.parse_args(argv)
    use_clock(args.clock)
    grid = GRIDS["tiny" if args.quick else args.grid]
    rounds = 1 if args.quick else args.rounds

    torch.manual_seed(0)
    print(machine_line())
    peak32 = matmul_gflops(torch.float32, m=512, k=2560, n=10240, rounds=rounds)
    peak16 = matmul_gflops(torch.bfloat16, m=512 if native_bf16() else 16, k=2560, n=2560, rounds=1)
    print(f"torch.mm rate (XL-shaped): fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s"
          + ("" if native_bf16() else "  -- no native bf16 on this CPU: bf16 compute is emulated"))
    headers = ["shape", "BxL", "HF fp32 ms", "ours fp32 ms", "HF/ours", "% mm peak", "ours bf16 ms",
               "bf16 vs HF32", "max|d| fp32", "max|d| bf16"]
    rows: List[List[object]] = []
    summary: List[str] = []
    for name in args.shapes:
        layers = args.layers or DEFAULT_LAYERS[name]
        ours, hf, config = build_pair(SHAPES[name], layers, args.vocab)
        ours16 = bf16_copy(ours) if args.bf16 != "off" else None
        ratios32, ratios16, utils, diffs = [], [], [], []
        for batch, length in grid:
            ids = torch.randint(3, args.vocab, (batch, length))
            mask = torch.ones_like(ids)
            run16 = ours16 is not None and (args.bf16 == "on" or native_bf16() or batch * length <= args.bf16_max_tokens)
            with torch.inference_mode():
                ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
                diff32 = (ours(input_ids=ids, attention_mask=mask).last_hidden_state - ref).abs().max().item()
                contenders = {
                    "hf": lambda: hf(input_ids=ids, attention_mask=mask),
                    "ours": lambda: ours(input_ids=ids, attention_mask=mask),
                }
                times = interleaved_medians(contenders, rounds=rounds)
                t16: Optional[float] = None
                diff16: Optional[float] = None
                if run16:
                    out16 = ours16(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                    diff16 = (out16 - ref).abs().max().item()
                    t16 = interleaved_medians({"bf16": lambda: ours16(input_ids=ids, attention_mask=mask)},
                                              rounds=max(1, rounds - 1))["bf16"]
            util = forward_flops(config, batch, length) / times["ours"] / 1e9 / peak32 * 100
            ratios32.append(times["hf"] / times["ours"])
            utils.append(util)
            diffs.append(diff32)
            if t16 is not None:
                ratios16.append(times["hf"] / t16)
            rows.append([f"{name}-{layers}L", f"{batch}x{length}", times["hf"] * 1e3, times["ours"] * 1e3,
                         times["hf"] / times["ours"], util,
                         "-" if t16 is None else t16 * 1e3, "-" if t16 is None else times["hf"] / t16,
                         f"{diff32:.1e}", "-" if diff16 is None else f"{diff16:.1e}"])
        part = (f"{name}: ours/HF fp32 speed {geomean(ratios32):.2f}x (max|diff| {max(diffs):.1e}), "
                f"{max(utils):.0f}% of mm peak at best")
        if ratios16:
            part += f", ours bf16 vs HF fp32 {geomean(ratios16):.2f}x over {len(ratios16)} point(s)"
        summary.append(part)
    print_table(headers, rows)
    print("SUMMARY backbone_forward (reference: HF transformers XLMRobertaXLModel sdpa fp32, same run; "
          ">1x = faster; geometric mean over the grid): " + "; ".join(summary))


if __name__ == "__main__":
    main()
