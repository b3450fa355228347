"""CPU inference options: bf16 and dynamic int8 against fp32, for the backbone and the NER pipeline.

For each option it prints the speed ratio to fp32 measured in the same run (interleaved rounds,
medians) and how much the results move:

- backbone (`XLMRobertaXLModel`, XL-shaped 2-layer stack and the 6 x 768 pipeline shape):
  max |difference| of ``last_hidden_state`` to fp32 and the mean per-token cosine similarity;
- NER pipeline (``xlmrxl_ner`` on UNER test sentences, the random-init 6 x 768 model of
  ``bench/pipeline_throughput.py``): words/s ratio and the agreement (F1) of its entities with
  the fp32 pipeline's; with ``--trained DIR`` (a trained pipeline, e.g. ``training/ner/model-best``)
  also the entity F1 against the UNER gold annotation and its change.

Options: ``bf16`` = bf16 weights and activations (the component setting ``dtype = "bfloat16"``);
``int8`` = the backbone setting ``quantize = "int8"``: ``torch.ao.quantization.quantize_dynamic``
on every ``nn.Linear`` (int8 weights, activations quantised per batch, fp32 accumulation), done by
`spacy_xlmrxl.backbone.quantize_linear_int8` for the bare backbone and by the config switch for the
pipeline (``spacy.load(dir, config=...)`` with ``--trained``). bf16 is only measured in full on
CPUs with native bf16 matmuls (AVX-512 BF16 / AMX); elsewhere it is measured on the smallest
inputs only (``--bf16 on`` forces it everywhere, ``--bf16 off`` skips it).

    python bench/cpu_inference_options.py            # backbone + pipeline
    python bench/cpu_inference_options.py --quick    # small inputs, 1 round
    python bench/cpu_inference_options.py --trained training/ner/model-best
    python bench/cpu_inference_options.py --skip backbone --langs da --docs 10000   # F1 on all Danish test sentences
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (REPO, UnerSentence, add_clock_option, geomean, interleaved_medians, load_uner,  # noqa: E402
                          machine_line, native_bf16, print_table, backbone_overrides, use_clock)
from bench.pipeline_throughput import build_hf_dir, build_ours, count_entities, entity_agreement  # noqa: E402
from modeling import XLMRobertaXLConfig, XLMRobertaXLModel  # noqa: E402
from spacy_xlmrxl.backbone.quantize import is_quantized, quantize_linear_int8

BACKBONES = {
    "xl-2L": dict(hidden_size=2560, num_attention_heads=32, intermediate_size=10240, num_hidden_layers=2),
    "768-6L": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=6),
}
POINTS = {"quick": [(1, 16), (2, 64)], "default": [(1, 16), (4, 128), (1, 512)]}


def compare(out: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """max |out - ref| and the mean cosine similarity of the per-token vectors."""
    out = out.float()
    return (out - ref).abs().max().item(), F.cosine_similarity(out, ref, dim=-1).mean().item()


def backbone_variants(model: XLMRobertaXLModel) -> Dict[str, torch.nn.Module]:
    return {"int8": quantize_linear_int8(model), "bf16": copy.deepcopy(model).to(torch.bfloat16)}


def bench_backbones(points: List[Tuple[int, int]], rounds: int, bf16_mode: str, bf16_max_tokens: int) -> List[str]:
    rows: List[List[object]] = []
    speed: Dict[str, List[float]] = {"int8": [], "bf16": []}
    for name, shape in BACKBONES.items():
        torch.manual_seed(0)
        model = XLMRobertaXLModel(XLMRobertaXLConfig(vocab_size=8192, **shape), add_pooling_layer=False).eval()
        variants = backbone_variants(model)
        for batch, length in points:
            ids = torch.randint(3, 8192, (batch, length))
            contenders: Dict[str, Callable[[], object]] = {"fp32": lambda: model(input_ids=ids)}
            contenders["int8"] = lambda: variants["int8"](input_ids=ids)
            with_bf16 = bf16_mode == "on" or (bf16_mode == "auto" and (native_bf16() or batch * length <= bf16_max_tokens))
            if with_bf16:
                contenders["bf16"] = lambda: variants["bf16"](input_ids=ids)
            with torch.inference_mode():
                ref = model(input_ids=ids).last_hidden_state
                times = interleaved_medians(contenders, rounds=rounds)
                for option in ("int8", "bf16"):
                    if option not in contenders:
                        rows.append([name, f"{batch}x{length}", option, "-", "-", "-"])
                        continue
                    diff, cos = compare(variants[option](input_ids=ids).last_hidden_state, ref)
                    ratio = times["fp32"] / times[option]
                    speed[option].append(ratio)
                    rows.append([name, f"{batch}x{length}", option, ratio, f"{diff:.2e}", f"{cos:.5f}"])
    print("backbone (ratio = fp32 time / option time; differences to fp32 last_hidden_state)")
    print_table(["model", "BxL", "option", "x fp32", "max|diff|", "mean cosine"], rows)
    return [f"backbone {option} {geomean(r):.2f}x fp32" for option, r in speed.items() if r]


def gold_f1(docs: List[Any], sentences: List[UnerSentence]) -> float:
    """Entity F1 of ``docs`` against the UNER gold spans (character offsets)."""
    tp = n_pred = n_gold = 0
    for doc, sentence in zip(docs, sentences):
        pred = {(e.start_char, e.end_char, e.label_) for e in doc.ents}
        gold = set(sentence.entities)
        tp += len(pred & gold)
        n_pred += len(pred)
        n_gold += len(gold)
    return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 1.0


def bench_pipeline(sentences: List[UnerSentence], rounds: int, bf16_mode: str, bf16_docs: int,
                   trained: Optional[Path]) -> List[str]:
    import spacy

    import spacy_xlmrxl  # noqa: F401

    texts = [s.text for s in sentences]
    if trained is not None:
        fp32 = spacy.load(trained)
        # the config switches, as --components.<name>.model[...].backbone.quantize int8 would set them
        int8 = spacy.load(trained, config=backbone_overrides(fp32.config, quantize="int8"))
        bf16_factory: Callable[[], Any] = lambda: spacy.load(  # noqa: E731
            trained, config=backbone_overrides(fp32.config, dtype="bfloat16"))
        where = f"trained pipeline {trained}"
    else:
        hf_dir = build_hf_dir(6, 768, 12, 3072, 0)
        fp32 = build_ours(hf_dir, texts, max_batch_pieces=4096)
        int8 = build_ours(hf_dir, texts, max_batch_pieces=4096, quantize="int8")
        bf16_factory = lambda: build_ours(hf_dir, texts, max_batch_pieces=4096, dtype="bfloat16")  # noqa: E731
        where = f"random-init 6x768 model ({hf_dir.name}) and seeded random tag layer, the same for every option"
    assert all(is_quantized(m) for m in _backbones(int8)) and _backbones(int8), "quantize = int8 was not applied"
    n_words = sum(len(fp32.make_doc(t)) for t in texts)
    pipe = lambda nlp, xs=texts: list(nlp.pipe(xs))  # noqa: E731
    times = interleaved_medians({"fp32": lambda: pipe(fp32), "int8": lambda: pipe(int8)}, rounds=rounds)
    ref_docs, int8_docs = pipe(fp32), pipe(int8)
    rows = [["fp32", n_words / times["fp32"], 1.0, count_entities(ref_docs), 1.0],
            ["int8 (quantize = \"int8\")", n_words / times["int8"], times["fp32"] / times["int8"],
             count_entities(int8_docs), entity_agreement(ref_docs, int8_docs)]]
    headers = ["option", "words/s", "x fp32", "entities", "entity F1 vs fp32"]
    if trained is not None:
        headers.append("F1 vs gold")
        rows[0].append(gold_f1(ref_docs, sentences))
        rows[1].append(gold_f1(int8_docs, sentences))
    summary = [f"NER pipeline int8 {rows[1][2]:.2f}x fp32 (entity agreement {rows[1][4]:.3f})"]
    if bf16_mode != "off" and (bf16_mode == "on" or native_bf16() or bf16_docs > 0):
        bf16 = bf16_factory()
        sub = texts if (native_bf16() or bf16_mode == "on") else texts[:bf16_docs]
        sub_words = sum(len(fp32.make_doc(t)) for t in sub)
        t = interleaved_medians({"fp32": lambda: pipe(fp32, sub), "bf16": lambda: pipe(bf16, sub)},
                                rounds=max(1, rounds - 1))
        bf16_docs_out = pipe(bf16, sub)
        row = [f"bf16 (dtype setting){'' if len(sub) == len(texts) else f', {len(sub)} docs'}",
               sub_words / t["bf16"], t["fp32"] / t["bf16"], count_entities(bf16_docs_out),
               entity_agreement(ref_docs[:len(sub)], bf16_docs_out)]
        if trained is not None:
            row.append(gold_f1(bf16_docs_out, sentences[:len(sub)]))
        rows.append(row)
        summary.append(f"NER pipeline bf16 {row[2]:.2f}x fp32 (entity agreement {row[4]:.3f})")
    print(f"NER pipeline: {len(texts)} UNER sentences, {n_words} words; {where}")
    print_table(headers, rows)
    if not count_entities(ref_docs):
        print("note: the fp32 pipeline predicts no entities on these sentences (an untrained or barely "
              "trained model?), so the agreement and F1 columns say nothing about the options")
    return summary


def _backbones(nlp: Any) -> List[torch.nn.Module]:
    """The torch modules the pipeline's backbones run (the int8 copies when quantised)."""
    from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim

    modules = []
    for _, component in nlp.pipeline:
        model = getattr(component, "model", None)
        if model is not None:
            modules.extend(backbone_shim(node).module for node in backbone_nodes(model))
    return modules


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs, 1 round, 48 sentences")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=200, help="UNER sentences for the pipeline part")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--bf16-max-tokens", type=int, default=64, help="auto without native bf16: largest backbone input")
    parser.add_argument("--bf16-docs", type=int, default=0, help="auto without native bf16: pipeline sentences in bf16")
    parser.add_argument("--trained", type=Path, default=None, help="a trained xlmrxl NER pipeline directory")
    parser.add_argument("--langs", default="", help="UNER languages for the pipeline part, comma-separated "
                        "(default: all; e.g. da for the workflow's Danish-trained model)")
    parser.add_argument("--skip", choices=["backbone", "pipeline"], action="append", default=[])
    add_clock_option(parser)
    args = parser.parse_args(argv)
    use_clock(args.clock)
    rounds = 1 if args.quick else args.rounds
    docs = 48 if args.quick else args.docs
    if args.trained is None and (REPO / "training" / "ner" / "model-best").is_dir():
        args.trained = REPO / "training" / "ner" / "model-best"

    print(machine_line())
    summary: List[str] = []
    if "backbone" not in args.skip:
        summary += bench_backbones(POINTS["quick" if args.quick else "default"], rounds, args.bf16, args.bf16_max_tokens)
    if "pipeline" not in args.skip:
        sentences = load_uner()
        if sentences is not None and args.langs:
            sentences = [s for s in sentences if s.lang in set(args.langs.split(","))] or None
        if sentences is None:
            print("pipeline part SKIPPED: ../shared/data/ner/uner is absent")
        else:
            rng = random.Random(0)
            sample = rng.sample(sentences, min(docs, len(sentences)))
            summary += bench_pipeline(sample, rounds, args.bf16, args.bf16_docs, args.trained)
    if not native_bf16():
        summary.append("bf16 is slow on this CPU (no native bf16 matmul)")
    print("SUMMARY cpu_inference_options (reference: fp32 of the same model, same run): " + "; ".join(summary))


if __name__ == "__main__":
    main()
