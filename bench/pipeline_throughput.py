"""spaCy NER pipeline throughput (``nlp.pipe``, words/s): ``xlmrxl_ner`` vs spacy-transformers.

Both pipelines run the SAME weights: a random-init XLM-RoBERTa-XL-architecture model (default
6 layers, 768 wide, 12 heads, ffn 3072, vocab 250880) written once by HF transformers
(``XLMRobertaXLModel(config).save_pretrained``) together with an HF tokenizer built from
``../shared/data/tokenizer/tokenizer.json``, into ``.scratch/`` (git-ignored). Ours loads that
directory through its ``checkpoint`` setting; spacy-transformers loads it by name
(``transformer`` + ``ner`` with a ``TransformerListener``). The texts are real multilingual UNER
test sentences of mixed lengths (``../shared/data/ner/uner/*/test.iob2``), a balanced sample
over the languages. Also printed: HF's bare forward over the same texts in length-sorted batches
(a reference point for the pure model cost), ours with bf16 weights (``dtype = "bfloat16"``) and
ours with dynamic int8 ``nn.Linear`` layers (the backbone setting ``quantize = "int8"``).

Runs are interleaved (each round runs every contender once) and medians reported; words are
spaCy tokens of the blank ``xx`` tokenizer, the same for every contender.

    python bench/pipeline_throughput.py              # 200 sentences, 3 rounds
    python bench/pipeline_throughput.py --quick      # 48 sentences, 1 round, no int8/bf16 rows
    python bench/pipeline_throughput.py --docs 1000 --rounds 5 --batch-size 128
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (REPO, TOKENIZER_DIR, add_clock_option, interleaved_medians, load_uner,  # noqa: E402
                          machine_line, native_bf16, print_table, use_clock)

LABELS = ["LOC", "ORG", "PER"]


def build_hf_dir(layers: int, hidden: int, heads: int, ffn: int, seed: int) -> Path:
    """An HF checkpoint directory (weights + config + tokenizer) for both pipelines; cached."""
    import transformers

    folder = REPO / ".scratch" / f"bench-xlmrxl-L{layers}-H{hidden}-s{seed}"
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.XLMRobertaXLConfig(
        vocab_size=250880, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=514,
    )
    torch.manual_seed(seed)
    transformers.XLMRobertaXLModel(config).save_pretrained(folder)
    tokenizer = transformers.XLMRobertaTokenizerFast(
        vocab_file=str(TOKENIZER_DIR / "sentencepiece.bpe.model"),
        tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"),
    )
    tokenizer.save_pretrained(folder)
    return folder


def examples_for_init(nlp: Any, texts: List[str]) -> Callable[[], List[Any]]:
    from spacy.training import Example

    docs = [nlp.make_doc(t) for t in texts[:8]]
    return lambda: [Example(d, d.copy()) for d in docs]


def build_ours(hf_dir: Path, texts: List[str], *, max_batch_pieces: int, dtype: Optional[str] = None,
               quantize: Optional[str] = None) -> Any:
    """``xlmrxl_ner`` with its own backbone loaded from ``hf_dir``; ``dtype`` / ``quantize`` are the
    backbone settings of the same names (``quantize = "int8"``: dynamic int8 Linear layers)."""
    import spacy

    import spacy_xlmrxl  # noqa: F401  (registers the factories)

    nlp = spacy.blank("xx")
    backbone = {"checkpoint": str(hf_dir), "preset": None,
                "tokenizer": str(TOKENIZER_DIR / "sentencepiece.bpe.model"),
                "max_batch_pieces": max_batch_pieces, "dtype": dtype, "quantize": quantize}
    ner = nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"backbone": backbone}}}})
    for label in LABELS:
        ner.add_label(label)
    nlp.initialize(examples_for_init(nlp, texts))
    randomise_head(ner.model.get_ref("output_layer"))
    return nlp


def randomise_head(layer: Any, seed: int = 0, scale: float = 3.0) -> None:
    """Random weights for the tag layer (thinc initialises it to zeros, which would predict the
    same tags whatever the backbone says, making entity agreement meaningless)."""
    import numpy

    n_out, n_in = layer.get_param("W").shape
    weights = numpy.random.default_rng(seed).normal(0.0, scale / n_in ** 0.5, (n_out, n_in))
    layer.set_param("W", layer.ops.asarray2f(weights.astype("float32")))


def build_spacy_transformers(hf_dir: Path, texts: List[str]) -> Any:
    import spacy

    nlp = spacy.blank("xx")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(hf_dir),
        "tokenizer_config": {"use_fast": True},
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96},
    }})
    nlp.add_pipe("ner", config={"model": {
        "@architectures": "spacy.TransitionBasedParser.v2",
        "state_type": "ner", "extra_state_tokens": False, "hidden_width": 64, "maxout_pieces": 2,
        "use_upper": False, "nO": None,
        "tok2vec": {"@architectures": "spacy-transformers.TransformerListener.v1", "grad_factor": 1.0,
                    "pooling": {"@layers": "reduce_mean.v1"}, "upstream": "*"},
    }})
    ner = nlp.get_pipe("ner")
    for label in LABELS:
        ner.add_label(label)
    nlp.initialize(examples_for_init(nlp, texts))
    return nlp


def hf_sorted_forward(hf_dir: Path, texts: List[str], batch_size: int) -> Callable[[], None]:
    """HF's bare model over ``texts`` in length-sorted batches (no spaCy, no alignment)."""
    return hf_sorted_forward_and_model(hf_dir, texts, batch_size)[0]


def hf_sorted_forward_and_model(hf_dir: Path, texts: List[str], batch_size: int
                                ) -> Tuple[Callable[[], None], torch.nn.Module]:
    """`hf_sorted_forward` and the HF module it runs (for hooks)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = transformers.AutoModel.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
    encoded = tokenizer(texts, truncation=True, max_length=512)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        batches.append((ids, mask))

    def run() -> None:
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)

    return run, model


def count_entities(docs: List[Any]) -> int:
    return sum(len(doc.ents) for doc in docs)


def entity_agreement(reference: List[Any], other: List[Any]) -> float:
    """F1 of ``other``'s entities (start, end, label) against ``reference``'s, over all docs."""
    tp = n_ref = n_other = 0
    for a, b in zip(reference, other):
        sa = {(e.start_char, e.end_char, e.label_) for e in a.ents}
        sb = {(e.start_char, e.end_char, e.label_) for e in b.ents}
        tp += len(sa & sb)
        n_ref += len(sa)
        n_other += len(sb)
    if n_ref == n_other == 0:
        return 1.0
    return 2 * tp / (n_ref + n_other)


def add_contender_options(parser: argparse.ArgumentParser) -> None:
    """The options that fix the texts and the contenders (model size, weights, batching), shared
    with ``bench/pipeline_profile.py`` so that both scripts measure the same thing by default."""
    parser.add_argument("--docs", type=int, default=200, help="UNER sentences (balanced over languages)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="nlp.pipe batch size for both pipelines (default: spaCy's, nlp.batch_size = 1000)")
    parser.add_argument("--max-batch-pieces", type=int, default=4096, help="ours: padded pieces per model call")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_contender_options(parser)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="auto: measure bf16 only on CPUs with native bf16 matmuls; on: always, "
                             "on --bf16-docs sentences where the CPU lacks them")
    parser.add_argument("--bf16-docs", type=int, default=4)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--quick", action="store_true", help="48 sentences, 1 round, fp32 only")
    add_clock_option(parser)
    args = parser.parse_args(argv)
    use_clock(args.clock)
    if args.quick:
        args.docs, args.rounds, args.bf16, args.no_int8 = 48, 1, "off", True

    sentences = load_uner()
    if sentences is None:
        print("SKIPPED pipeline_throughput: ../shared/data/ner/uner is absent (the UNER test sentences are needed)")
        return
    by_lang: Dict[str, List[str]] = {}
    for s in sentences:
        by_lang.setdefault(s.lang, []).append(s.text)
    rng = random.Random(args.seed)
    per_lang = max(1, args.docs // len(by_lang))
    texts = [t for lang in sorted(by_lang) for t in rng.sample(by_lang[lang], min(per_lang, len(by_lang[lang])))]
    rng.shuffle(texts)

    print(machine_line())
    hf_dir = build_hf_dir(args.layers, args.hidden, args.hidden // 64, args.hidden * 4, args.seed)
    ours = build_ours(hf_dir, texts, max_batch_pieces=args.max_batch_pieces)
    theirs = build_spacy_transformers(hf_dir, texts)
    n_words = sum(len(ours.make_doc(t)) for t in texts)
    print(f"{len(texts)} UNER test sentences ({', '.join(sorted(by_lang))}), {n_words} words; model "
          f"{args.layers} layers x {args.hidden}, vocab 250880, same weights ({hf_dir.name}); "
          f"nlp.pipe batch_size {args.batch_size or ours.batch_size}")

    def piping(nlp: Any) -> Callable[[], List[Any]]:
        return lambda: list(nlp.pipe(texts, batch_size=args.batch_size))

    contenders: Dict[str, Callable[[], object]] = {
        "spacy-transformers transformer+ner (fp32)": piping(theirs),
        "xlmrxl_ner (fp32)": piping(ours),
        "HF bare forward, length-sorted (fp32)": hf_sorted_forward(hf_dir, texts, args.batch_size or 64),
    }
    times = interleaved_medians(contenders, rounds=args.rounds)
    reference_docs = piping(ours)()
    ref_name = "spacy-transformers transformer+ner (fp32)"
    rows = [[name, n_words / t, times[ref_name] / t, "-"] for name, t in times.items()]

    extra: Dict[str, float] = {}
    if not args.no_int8:
        int8 = build_ours(hf_dir, texts, max_batch_pieces=args.max_batch_pieces, quantize="int8")
        t = interleaved_medians({"int8": piping(int8), "fp32": piping(ours)}, rounds=args.rounds)
        agreement = entity_agreement(reference_docs, piping(int8)())
        extra["int8"] = t["fp32"] / t["int8"]
        rows.append(["xlmrxl_ner, quantize = \"int8\"", n_words / t["int8"],
                     times[ref_name] / times["xlmrxl_ner (fp32)"] * t["fp32"] / t["int8"],
                     f"{agreement:.3f}"])
    if args.bf16 == "auto" and not native_bf16():
        print("bf16 not measured: this CPU has no native bf16 matmul (AVX-512 BF16 / AMX), where torch's "
              "bf16 matmul is far slower than fp32 (see bench/backbone_forward.py); --bf16 on measures it anyway")
    elif args.bf16 != "off":
        bf16_texts = texts if native_bf16() else texts[:args.bf16_docs]
        bf16 = build_ours(hf_dir, texts, max_batch_pieces=args.max_batch_pieces, dtype="bfloat16")
        sub_words = sum(len(ours.make_doc(t)) for t in bf16_texts)
        t = interleaved_medians({
            "bf16": lambda: list(bf16.pipe(bf16_texts, batch_size=args.batch_size)),
            "fp32": lambda: list(ours.pipe(bf16_texts, batch_size=args.batch_size)),
        }, rounds=max(1, args.rounds - 2))
        bf16_docs = list(bf16.pipe(bf16_texts, batch_size=args.batch_size))
        agreement = entity_agreement(reference_docs[:len(bf16_texts)], bf16_docs)
        extra["bf16"] = t["fp32"] / t["bf16"]
        note = "" if len(bf16_texts) == len(texts) else f" on {len(bf16_texts)} docs (no native bf16)"
        rows.append([f"xlmrxl_ner, dtype bfloat16{note}", sub_words / t["bf16"],
                     times[ref_name] / times["xlmrxl_ner (fp32)"] * t["fp32"] / t["bf16"], f"{agreement:.3f}"])
    print_table(["pipeline", "words/s", "x spacy-transformers", "entity F1 vs ours fp32"], rows)
    print(f"(ours fp32 predicts {count_entities(reference_docs)} entities with its random tag layer)")
    ratio = times[ref_name] / times["xlmrxl_ner (fp32)"]
    summary = (f"SUMMARY pipeline_throughput (reference: spacy-transformers transformer+ner, "
               f"{n_words / times[ref_name]:.0f} words/s, same run, same weights): xlmrxl_ner fp32 "
               f"{ratio:.2f}x ({n_words / times['xlmrxl_ner (fp32)']:.0f} words/s); HF bare sorted forward "
               f"{times[ref_name] / times['HF bare forward, length-sorted (fp32)']:.2f}x")
    for name, speedup in extra.items():
        summary += f"; xlmrxl_ner {name} {ratio * speedup:.2f}x"
    print(summary)


if __name__ == "__main__":
    main()
