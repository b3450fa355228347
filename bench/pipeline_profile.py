"""Where the NER pipeline's time goes: padded positions, time per position, fp32 ceiling, overhead.

Answers, on the contenders of ``bench/pipeline_throughput.py`` (same UNER sentences, same
6 x 768 XLM-R-XL-architecture weights; ours ``xlmrxl_ner``, spacy-transformers ``transformer`` +
``ner``, HF's bare forward on length-sorted batches):

1. **Padded positions.** A forward hook on each contender's torch module records every model
   call (batch x padded length, real = attended positions, time on the chosen clock). Printed
   per contender, for one pass over the texts: calls, padded and real positions, padding
   factor, forward time per padded and per real position, the forward's share of the whole
   pass, the forward's GFLOP/s (FLOPs counted from the config, attention included). Also a
   row for ours with a prototype batching rule (``--prototype``, see 5).
2. **The fp32 ceiling.** One layer's ``F.linear`` calls at the model's shapes (q/k/v/o
   768->768, 768->3072, 3072->768) on 128..8192 rows: the best rate is what the forward could
   reach were it nothing but full-size matmuls; divided by the linear FLOPs per position and the
   real positions (pieces + ``<s></s>``) per word, it gives the words/s no fp32 pipeline beats
   here. The rate at small row counts shows what small batches cost.
3. **Our time outside the forward.** Timers wrapped around the stages of ``xlmrxl_ner``'s
   inference in this process only (no file is changed): spaCy tokenisation, sentencepiece
   encoding, alignment, window planning/batching, torch -> numpy, recombination, pooling, the
   tag layer, decoding, Viterbi, ``set_annotations``; each as % of the pass (wall clock).
4. **spacy-transformers' batching.** Its span getter (strided spans, window 128 / stride 96
   spaCy tokens) and ``Transformer.pipe``, which re-batches each ``nlp.pipe`` batch by length
   (``batch_by_length``: ascending spaCy length, at most ``max_batch_items`` = 4096 padded
   spaCy tokens per model call).
5. **Batching policies of ours**, interleaved: ``batch_windows``' ``max_batch_pieces`` and its
   padding rule (close a batch when padding would exceed ``max_padding`` once the batch holds
   ``min_batch_pieces``; shipped: 4096, 0.1, 2048 — 256 before this script's findings), or the prototype `batch_windows_dp`
   (``dp:<call cost>:<max_batch_pieces>``: batches cut to minimise padded positions + call cost
   x calls), forced through a wrapper of ``spacy_xlmrxl.models.batch_windows`` in this process
   (no file is changed).

Both ``nlp.pipe`` calls use ``nlp.batch_size`` (1000) unless ``--batch-size`` is given, like
``pipeline_throughput.py``; HF's bare forward uses batches of 64 sorted sentences (as there).

    python bench/pipeline_profile.py --clock cpu      # 200 sentences, 3 rounds, process CPU time
    python bench/pipeline_profile.py                  # the same on the wall clock
    python bench/pipeline_profile.py --quick          # 48 sentences, 1 round, 2 policies
    python bench/pipeline_profile.py --sweep 4096:0.1:256,4096:0.1:2048,4096 --prototype 4096:0.1:2048
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (CLOCK, CLOCKS, add_clock_option, interleaved_medians, load_uner,  # noqa: E402
                          machine_line, matmul_gflops, print_table, use_clock)
from bench.pipeline_throughput import (add_contender_options, build_hf_dir, build_ours, build_spacy_transformers,  # noqa: E402
                                      hf_sorted_forward_and_model)


# --------------------------------------------------------------------------------- texts
def sample_texts(n_docs: int, seed: int) -> Optional[Tuple[List[str], List[str]]]:
    """The balanced UNER sample of ``pipeline_throughput.py`` (same seed -> same texts)."""
    sentences = load_uner()
    if sentences is None:
        return None
    by_lang: Dict[str, List[str]] = {}
    for s in sentences:
        by_lang.setdefault(s.lang, []).append(s.text)
    rng = random.Random(seed)
    per_lang = max(1, n_docs // len(by_lang))
    texts = [t for lang in sorted(by_lang) for t in rng.sample(by_lang[lang], min(per_lang, len(by_lang[lang])))]
    rng.shuffle(texts)
    return texts, sorted(by_lang)


# --------------------------------------------------------------------------------- model calls
class CallRecorder:
    """Forward hooks on a torch module: per call (batch, padded length, real positions, wall s,
    cpu s). ``active`` switches recording on/off; ``reset`` starts a new list."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: List[Tuple[int, int, int, float, float]] = []
        self.active = False
        self._start: List[Tuple[float, float, int, int, int]] = []
        module.register_forward_pre_hook(self._pre, with_kwargs=True)
        module.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module: Any, args: Tuple, kwargs: Dict) -> None:
        if not self.active:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        batch, length = ids.shape
        real = int(mask.sum()) if mask is not None else batch * length
        self._start.append((time.perf_counter(), time.process_time(), batch, length, real))

    def _post(self, module: Any, args: Tuple, kwargs: Dict, output: Any) -> None:
        if not self.active or not self._start:
            return
        wall, cpu, batch, length, real = self._start.pop()
        self.calls.append((batch, length, real, time.perf_counter() - wall, time.process_time() - cpu))

    def reset(self) -> None:
        self.calls = []


def model_flops(config: Any, batch: int, length: int) -> float:
    """Forward FLOPs (multiply-add = 2) of one call: the linear layers per position plus the
    attention products (QK^T and weights x V) over the padded length."""
    h, f = config.hidden_size, config.intermediate_size
    per_position = 2 * (4 * h * h + 2 * h * f) + 2 * 2 * length * h
    return float(batch * length * per_position * config.num_hidden_layers)


def linear_flops_per_position(config: Any) -> float:
    h, f = config.hidden_size, config.intermediate_size
    return float(2 * (4 * h * h + 2 * h * f) * config.num_hidden_layers)


def torch_module_of_ours(nlp: Any) -> torch.nn.Module:
    from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim

    return backbone_shim(backbone_nodes(nlp.get_pipe("xlmrxl_ner").model)[0]).module


def transformer_node_of_ours(nlp: Any) -> Any:
    from spacy_xlmrxl.backbone.nodes import backbone_nodes

    return backbone_nodes(nlp.get_pipe("xlmrxl_ner").model)[0]


def hf_bare(hf_dir: Path, texts: List[str], batch_size: int) -> Tuple[Callable[[], None], torch.nn.Module]:
    """HF's bare model over ``texts`` in length-sorted batches of ``batch_size`` (the contender of
    ``pipeline_throughput.py``); the module is returned too, for the hooks."""
    return hf_sorted_forward_and_model(hf_dir, texts, batch_size)


# --------------------------------------------------------------------------------- batching policies
Policy = Tuple[str, int, float, int]  # ("greedy", max_batch_pieces, max_padding, min_batch_pieces) or ("dp", max_batch_pieces, call_cost, 0)


def parse_policy(text: str) -> Policy:
    """``"4096"`` or ``"4096:0.1:256"`` -> batch_windows' greedy packing with (max_batch_pieces,
    max_padding, min_batch_pieces), no max_padding meaning no padding limit (``inf``: batches
    filled to the budget); ``"dp:300:4096"`` -> the prototype `batch_windows_dp` with a call
    cost of 300 positions and a budget of 4096 padded positions."""
    parts = text.split(":")
    if parts[0] == "dp":
        return "dp", int(parts[2]) if len(parts) > 2 else 4096, float(parts[1]) if len(parts) > 1 else 300.0, 0
    pieces = int(parts[0])
    max_padding = float(parts[1]) if len(parts) > 1 else float("inf")
    min_pieces = int(parts[2]) if len(parts) > 2 else 256
    return "greedy", pieces, max_padding, min_pieces


def policy_label(policy: Policy) -> str:
    kind, pieces, value, min_pieces = policy
    if kind == "dp":
        return f"dp: min padded + {value:g} x calls, <= {pieces}"
    if value == float("inf"):
        return f"{pieces} (no padding limit)"
    return f"{pieces} (padding <= {value:g} once >= {min_pieces})"


def batch_windows_dp(doc_piece_ids: Sequence[Sequence[int]], make_windows: Callable[[int], List[Tuple[int, int]]],
                     *, max_batch_pieces: int = 4096, call_cost: float = 300.0, bos_id: int = 0, eos_id: int = 2,
                     pad_id: int = 1, **ignored: Any) -> Any:
    """Prototype of ``spacy_xlmrxl.windows.batch_windows`` for inference on CPU: the same windows,
    sorted longest first, but cut into batches by dynamic programming to minimise
    ``padded positions + call_cost x calls`` (each batch at most ``max_batch_pieces`` padded
    positions). ``call_cost`` prices what a model call loses to small matmuls (measured here:
    F.linear on 256 rows runs at about half the rate of 4096 rows, i.e. a call costs a few
    hundred positions' worth), so short windows are neither split into many small batches
    (the shipped padding rule) nor lumped under one long one (plain filling to the budget)."""
    import numpy as np
    from spacy_xlmrxl.ml.windows import WindowPlan, WindowSpan, _make_batch

    ids = [np.asarray(piece_ids, dtype=np.int64).reshape(-1) for piece_ids in doc_piece_ids]
    doc_windows = [list(make_windows(len(piece_ids))) for piece_ids in ids]
    windows = [WindowSpan(d, s, e) for d, spans in enumerate(doc_windows) for s, e in spans]
    order = sorted(range(len(windows)), key=lambda i: windows[i].start - windows[i].end)
    lengths = [windows[i].end - windows[i].start + 2 for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):  # the last batch is order[i:j], padded to lengths[i] (longest first)
        for i in range(j - 1, -1, -1):
            rows = j - i
            if rows > 1 and rows * lengths[i] > max_batch_pieces:
                break
            cost = best[i] + rows * lengths[i] + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: List[List[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    groups.reverse()
    batches = [_make_batch(group, windows, ids, None, bos_id, eos_id, pad_id) for group in groups]
    return WindowPlan(windows, doc_windows, [len(piece_ids) for piece_ids in ids], batches)


def with_policy(node: Any, policy: Policy, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``batch_windows`` (as ``predict_doc_data`` calls it) forced to ``policy``:
    a prototype of a different batching rule, in this process only."""
    import spacy_xlmrxl.ml.transformer as models

    kind, pieces, value, min_pieces = policy

    def run() -> object:
        original = models.batch_windows

        def batch_windows(*args: Any, **kwargs: Any) -> Any:
            if kind == "dp":
                kwargs.update(max_batch_pieces=pieces, call_cost=value)
                return batch_windows_dp(*args, **kwargs)
            kwargs.update(max_batch_pieces=pieces, max_padding=value, min_batch_pieces=min_pieces)
            return original(*args, **kwargs)

        models.batch_windows = batch_windows
        try:
            return fn()
        finally:
            models.batch_windows = original

    return run


def measure(runs: Dict[str, Tuple[CallRecorder, Callable[[], object]]], rounds: int, config: Any,
            clock: Callable[[], float]) -> Dict[str, Dict[str, Any]]:
    """Interleaved passes (`interleaved_medians`) with each pass's model calls recorded; per
    contender the medians over the timed passes (the warm-up pass dropped) of the pass time
    (``total``), the time inside the forward (``fwd``, same clock) and its share, plus the
    (deterministic) calls, padded / real positions, FLOPs and batch shapes of one pass."""
    clock_key = 4 if clock is time.process_time else 3
    logs: Dict[str, List[Tuple[float, List]]] = {name: [] for name in runs}

    def recorded(name: str) -> Callable[[], None]:
        rec, fn = runs[name]

        def run() -> None:
            rec.active = True
            first = len(rec.calls)
            t0 = clock()
            fn()
            logs[name].append((clock() - t0, rec.calls[first:]))
            rec.active = False

        return run

    interleaved_medians({name: recorded(name) for name in runs}, rounds=rounds)
    out: Dict[str, Dict[str, Any]] = {}
    for name, log in logs.items():
        timed = log[1:]
        calls = timed[0][1]
        fwd = [sum(c[clock_key] for c in cs) for _, cs in timed]
        shapes = sorted({(b, n) for b, n, _, _, _ in calls}, key=lambda x: (-x[1], -x[0]))
        out[name] = {
            "total": statistics.median(t for t, _ in timed),
            "fwd": statistics.median(fwd),
            "fwd_share": statistics.median(f / t for f, (t, _) in zip(fwd, timed)),
            "calls": len(calls),
            "padded": sum(b * n for b, n, _, _, _ in calls),
            "real": sum(r for _, _, r, _, _ in calls),
            "flops": sum(model_flops(config, b, n) for b, n, _, _, _ in calls),
            "shapes": ", ".join(f"{b}x{n}" for b, n in shapes[:14]) + (" ..." if len(shapes) > 14 else ""),
        }
    return out


# --------------------------------------------------------------------------------- ceiling
def linear_rates(config: Any, rows: Sequence[int], rounds: int) -> Dict[int, float]:
    """GFLOP/s of one layer's ``F.linear`` calls (q, k, v, o, up, down) at ``rows`` positions,
    on the chosen clock."""
    h, f = config.hidden_size, config.intermediate_size
    shapes = [(h, h)] * 4 + [(h, f), (f, h)]
    weights = [(torch.randn(o, i) * 0.02, torch.zeros(o)) for i, o in shapes]
    rates = {}
    for n in rows:
        inputs = {i: torch.randn(n, i) for i in (h, f)}

        def layer() -> None:
            with torch.inference_mode():
                for (w, b), (i, _) in zip(weights, shapes):
                    F.linear(inputs[i], w, b)

        seconds = interleaved_medians({"layer": layer}, rounds=rounds)["layer"]
        rates[n] = 2.0 * n * (4 * h * h + 2 * h * f) / seconds / 1e9
    return rates


# --------------------------------------------------------------------------------- stage timers
class StageTimers:
    """Wall-clock totals of named stages, by wrapping functions / methods in this process."""

    def __init__(self) -> None:
        self.totals: Dict[str, float] = defaultdict(float)
        self.active = False
        self._undo: List[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        original = getattr(owner, attr)
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not timers.active:
                return original(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.totals[stage] += time.perf_counter() - t0

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def undo(self) -> None:
        for fn in reversed(self._undo):
            fn()
        self._undo = []


def instrument_ours(nlp: Any, timers: StageTimers) -> None:
    """Wrap the stages of ``xlmrxl_ner`` inference (module globals and methods, this process only)."""
    import spacy_xlmrxl.ml.transformer as models
    from spacy_xlmrxl.ml.alignment import StreamingPooler
    from spacy_xlmrxl.pipeline import ner as ner_module
    from spacy_xlmrxl.ml.windows import StreamingRecombiner
    from modeling.tokenizer import XLMRobertaTokenizer

    timers.wrap(XLMRobertaTokenizer, "encode_arrays", "sentencepiece encode (encode_arrays)")
    timers.wrap(models, "align_tokens_to_pieces", "alignment (align_tokens_to_pieces)")
    timers.wrap(models, "batch_windows", "windows + batches (batch_windows)")
    timers.wrap(models, "to_xp", "torch -> numpy (to_xp)")
    timers.wrap(StreamingRecombiner, "__init__", "recombine (StreamingRecombiner)")
    timers.wrap(StreamingRecombiner, "add", "recombine (StreamingRecombiner)")
    timers.wrap(StreamingPooler, "__init__", "pool (StreamingPooler)")
    timers.wrap(StreamingPooler, "add", "pool (StreamingPooler)")
    timers.wrap(models, "predict_doc_data", "_predict_doc_data")
    timers.wrap(ner_module.XLMRNer, "predict", "_ner_predict")
    timers.wrap(ner_module.XLMRNer, "_decode", "_decode")
    timers.wrap(ner_module, "constrained_viterbi", "Viterbi (constrained_viterbi)")
    timers.wrap(ner_module.XLMRNer, "set_annotations", "set_annotations")
    timers.wrap(nlp, "make_doc", "spaCy tokenizer (make_doc)")


def breakdown(timers: StageTimers, forward_wall: float, total: float) -> List[Tuple[str, float]]:
    """(stage, seconds) with nested stages made exclusive; sums to ``total``."""
    t = dict(timers.totals)
    inner = ["sentencepiece encode (encode_arrays)", "alignment (align_tokens_to_pieces)",
             "windows + batches (batch_windows)", "torch -> numpy (to_xp)", "recombine (StreamingRecombiner)",
             "pool (StreamingPooler)"]
    pdd = t.get("_predict_doc_data", 0.0)
    rest_pdd = pdd - forward_wall - sum(t.get(k, 0.0) for k in inner)
    decode_rest = t.get("_decode", 0.0) - t.get("Viterbi (constrained_viterbi)", 0.0)
    head = t.get("_ner_predict", 0.0) - pdd - t.get("_decode", 0.0)
    rows = [("torch forward (module calls)", forward_wall)]
    rows += [(k, t.get(k, 0.0)) for k in inner]
    rows += [("rest of predict_doc_data (loop, slicing, <s> copies)", rest_pdd),
             ("tag layer (Softmax, with_array) + ner.predict glue", head),
             ("decode prep (content idx, log, tags->entities)", decode_rest),
             ("Viterbi (constrained_viterbi)", t.get("Viterbi (constrained_viterbi)", 0.0)),
             ("set_annotations", t.get("set_annotations", 0.0)),
             ("spaCy tokenizer (make_doc)", t.get("spaCy tokenizer (make_doc)", 0.0))]
    rows.append(("spaCy nlp.pipe and everything else", total - sum(v for _, v in rows)))
    return rows


# --------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_contender_options(parser)
    parser.add_argument("--sweep", default="4096:0.1:256,4096:0.1:2048,1024,2048,4096,8192",
                        help="batching policies of ours to compare, comma-separated: max_batch_pieces[:max_padding"
                             "[:min_batch_pieces]], no max_padding = no padding limit (empty: skip)")
    parser.add_argument("--prototype", default="4096",
                        help="policy of the prototype row of table 1 (same syntax as --sweep)")
    parser.add_argument("--quick", action="store_true", help="48 sentences, 1 round, 2 policies")
    add_clock_option(parser)
    args = parser.parse_args(argv)
    use_clock(args.clock)
    if args.quick:
        args.docs, args.rounds, args.sweep = 48, 1, "4096:0.1:256,4096"
    clock = CLOCKS[CLOCK["name"]]

    sampled = sample_texts(args.docs, args.seed)
    if sampled is None:
        print("SKIPPED pipeline_profile: ../shared/data/ner/uner is absent (the UNER test sentences are needed)")
        return
    texts, langs = sampled
    print(machine_line())
    hf_dir = build_hf_dir(args.layers, args.hidden, args.hidden // 64, args.hidden * 4, args.seed)
    ours = build_ours(hf_dir, texts, max_batch_pieces=args.max_batch_pieces)
    theirs = build_spacy_transformers(hf_dir, texts)
    hf_run, hf_model = hf_bare(hf_dir, texts, args.batch_size or 64)
    config = hf_model.config
    n_words = sum(len(ours.make_doc(t)) for t in texts)
    batch_size = args.batch_size or ours.batch_size
    print(f"{len(texts)} UNER test sentences ({', '.join(langs)}), {n_words} words; model {args.layers} layers "
          f"x {args.hidden} (ffn {config.intermediate_size}), same weights ({hf_dir.name}); nlp.pipe batch_size "
          f"{batch_size} for both pipelines; HF bare forward: sorted batches of {args.batch_size or 64}")

    # ---- 1. padded positions and time per position
    theirs_module = theirs.get_pipe("transformer").model.transformer
    rec_theirs, rec_ours, rec_hf = (CallRecorder(theirs_module), CallRecorder(torch_module_of_ours(ours)),
                                    CallRecorder(hf_model))
    node = transformer_node_of_ours(ours)
    proto = parse_policy(args.prototype)
    runs: Dict[str, Tuple[CallRecorder, Callable[[], object]]] = {
        "spacy-transformers": (rec_theirs, lambda: list(theirs.pipe(texts, batch_size=args.batch_size))),
        "xlmrxl_ner": (rec_ours, lambda: list(ours.pipe(texts, batch_size=args.batch_size))),
        f"xlmrxl_ner, prototype batching {policy_label(proto)}":
            (rec_ours, with_policy(node, proto, lambda: list(ours.pipe(texts, batch_size=args.batch_size)))),
        "HF bare sorted": (rec_hf, hf_run),
    }
    stats = measure(runs, args.rounds, config, clock)
    ref = stats["spacy-transformers"]
    print("\n1. model calls per pass over the texts (medians over the timed passes, "
          f"{CLOCK['name']} clock; us = microseconds)")
    print_table(["contender", "words/s", "x spacy-trf", "calls", "padded pos", "real pos", "pad x", "us/padded pos",
                 "us/real pos", "fwd % of total", "fwd GFLOP/s"],
                [[name, n_words / s["total"], ref["total"] / s["total"], s["calls"], s["padded"], s["real"],
                  s["padded"] / s["real"], 1e6 * s["fwd"] / s["padded"], 1e6 * s["fwd"] / s["real"],
                  100 * s["fwd_share"], s["flops"] / s["fwd"] / 1e9] for name, s in stats.items()])
    for name, s in stats.items():
        print(f"  {name} batch shapes (rows x padded length): {s['shapes']}")
    hf = stats["HF bare sorted"]
    us = stats["xlmrxl_ner"]

    # ---- 2. ceiling
    rows_grid = [128, 256, 512, 1024, 2048, 4096, 8192]
    rates = linear_rates(config, rows_grid, rounds=max(3, args.rounds))
    mm = matmul_gflops(torch.float32, m=2048, k=config.hidden_size, n=config.intermediate_size,
                       rounds=max(3, args.rounds))
    best = max(rates.values())
    lin_per_pos = linear_flops_per_position(config)
    positions_per_word = us["real"] / n_words
    ceiling = best * 1e9 / (lin_per_pos * positions_per_word)
    target = 3 * n_words / ref["total"]
    print(f"\n2. fp32 ceiling ({CLOCK['name']} clock): one layer's F.linear calls (q, k, v, o, up, down) at N "
          "rows, GFLOP/s: " + ", ".join(f"N={n} {r:.1f}" for n, r in rates.items())
          + f"; torch.mm 2048x{config.hidden_size}x{config.intermediate_size} {mm:.1f}")
    print(f"   linear FLOPs per position {lin_per_pos / 1e6:.1f} M ({args.layers} layers; attention adds "
          f"{100 * (us['flops'] / us['padded'] / lin_per_pos - 1):.1f} % at our shapes); real positions per word "
          f"{positions_per_word:.3f} (pieces + <s></s>)")
    print(f"   ceiling = {best:.1f} GFLOP/s / ({lin_per_pos / 1e6:.1f} M x {positions_per_word:.3f}) = "
          f"{ceiling:.0f} words/s; spacy-transformers at {100 * n_words / ref['total'] / ceiling:.0f} % of it, "
          f"xlmrxl_ner {100 * n_words / us['total'] / ceiling:.0f} %, HF bare {100 * n_words / hf['total'] / ceiling:.0f} %; "
          f"3x spacy-transformers = {target:.0f} words/s = {target / ceiling:.2f}x the ceiling")

    # ---- 3. our time outside the forward
    timers = StageTimers()
    instrument_ours(ours, timers)
    rec_ours.reset()
    rec_ours.active = True
    timers.active = True
    pipe_times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        list(ours.pipe(texts, batch_size=args.batch_size))
        pipe_times.append(time.perf_counter() - t0)
    timers.active = False
    rec_ours.active = False
    timers.undo()
    total = sum(pipe_times)
    fwd_wall = sum(c[3] for c in rec_ours.calls)
    parts = breakdown(timers, fwd_wall, total)
    print(f"\n3. xlmrxl_ner nlp.pipe broken down (wall clock, {args.rounds} passes, "
          f"{total / args.rounds:.2f} s per pass; stage timers add ~1 us per wrapped call)")
    print_table(["stage", "s per pass", "% of total"], [[k, v / args.rounds, 100 * v / total] for k, v in parts])
    outside = 100 * (total - fwd_wall) / total

    # ---- 4. spacy-transformers' batching
    from spacy_transformers.util import batch_by_length

    trf = theirs.get_pipe("transformer")
    docs = [theirs.make_doc(t) for t in texts]
    groups = batch_by_length(docs, trf.cfg["max_batch_items"])
    spans = trf.model.attrs["get_spans"](docs)
    getter = trf.model.attrs["get_spans"]
    print(f"\n4. spacy-transformers: span getter {getattr(getter, 'func', getter).__name__}"
          f"({', '.join(f'{k}={v}' for k, v in getattr(getter, 'keywords', {}).items())}): "
          f"{sum(len(s) for s in spans)} spans for {len(docs)} docs (longest doc {max(len(d) for d in docs)} "
          f"spaCy tokens); nlp.pipe batch_size {batch_size} for both pipelines; Transformer.pipe re-batches each "
          f"nlp.pipe batch by spaCy length (batch_by_length, max_batch_items={trf.cfg['max_batch_items']} padded "
          f"spaCy tokens): {len(groups)} model calls of {min(len(g) for g in groups)}-{max(len(g) for g in groups)} "
          f"docs, each call padded to its longest span's pieces")

    # ---- 5. batching policies of ours
    policies = [parse_policy(v) for v in args.sweep.split(",") if v.strip()]
    if policies:
        sweep = measure({policy_label(p): (rec_ours, with_policy(node, p, lambda: list(
            ours.pipe(texts, batch_size=args.batch_size)))) for p in policies}, args.rounds, config, clock)
        print(f"\n5. xlmrxl_ner batching policies (max_batch_pieces, padding rule; {CLOCK['name']} clock, "
              f"interleaved, median of {args.rounds}; the shipped rule is padding <= 0.1 once >= 2048)")
        print_table(["policy", "words/s", "calls", "pad x", "us/padded pos", "us/real pos", "fwd GFLOP/s",
                     "fwd % of total"],
                    [[name, n_words / s["total"], s["calls"], s["padded"] / s["real"], 1e6 * s["fwd"] / s["padded"],
                      1e6 * s["fwd"] / s["real"], s["flops"] / s["fwd"] / 1e9, 100 * s["fwd_share"]]
                     for name, s in sweep.items()])
        for name, s in sweep.items():
            print(f"  {name}: {s['shapes']}")

    pname = f"xlmrxl_ner, prototype batching {policy_label(proto)}"
    st, pr = ref, stats[pname]
    print(f"SUMMARY pipeline_profile ({CLOCK['name']} clock, reference: spacy-transformers "
          f"{n_words / st['total']:.0f} words/s, same run): padded positions per pass spacy-transformers "
          f"{st['padded']} (x{st['padded'] / st['real']:.2f} real), xlmrxl_ner {us['padded']} "
          f"(x{us['padded'] / us['real']:.2f}), HF bare {hf['padded']} (x{hf['padded'] / hf['real']:.2f}); "
          f"us per padded position {1e6 * st['fwd'] / st['padded']:.0f} / {1e6 * us['fwd'] / us['padded']:.0f} / "
          f"{1e6 * hf['fwd'] / hf['padded']:.0f}; xlmrxl_ner {st['total'] / us['total']:.2f}x, with prototype "
          f"batching {policy_label(proto)} {st['total'] / pr['total']:.2f}x; fp32 ceiling {ceiling:.0f} words/s "
          f"({best:.0f} GFLOP/s F.linear), 3x target = {target / ceiling:.2f}x the ceiling; xlmrxl_ner time "
          f"outside the forward {outside:.1f} %")


if __name__ == "__main__":
    main()
