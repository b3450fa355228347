"""Batch-encoding speed of `modeling.tokenizer.XLMRobertaTokenizer` against the HF ``tokenizers`` library.

Owns one measurement: sentences per second for a batch of real multilingual sentences from
``../shared/data`` (UNER, SIB-200, XQuAD questions), ours (``tokenizer(texts, return_offsets_mapping=True,
return_special_tokens_mask=True)``: ids, attention mask, character offsets, special tokens) against ``tokenizers.Tokenizer.from_file(tokenizer.json)``
(``encode_batch``, which also computes offsets), best of ``--repeats`` runs each, printed as one
line. Run from the repository root: ``python bench/tokenizer_speed.py [--n 10000]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, List

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from modeling.tokenizer import XLMRobertaTokenizer  # noqa: E402
from tests.modeling.tokenizer_corpus import sentences  # noqa: E402


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall-clock time of ``repeats`` calls (after one warm-up call)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of sentences (default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tokenizer (default 3)")
    parser.add_argument("--threads", type=int, default=-1, help="threads for both tokenizers (default: all cores)")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data", help="shared data folder")
    args = parser.parse_args(argv)
    if args.threads > 0:  # read by the tokenizers library's thread pool when it starts
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    from tokenizers import Tokenizer  # the reference; not a run-time dependency of the project

    texts = sentences(args.data, args.n)
    ours = XLMRobertaTokenizer.from_pretrained(args.data / "tokenizer", num_threads=args.threads)
    reference = Tokenizer.from_file(str(args.data / "tokenizer" / "tokenizer.json"))
    ours_s = best_seconds(lambda: ours(texts, return_offsets_mapping=True, return_special_tokens_mask=True),
                          args.repeats)
    reference_s = best_seconds(lambda: reference.encode_batch(texts), args.repeats)
    n_chars = sum(map(len, texts))
    print(
        f"tokenizer_speed: {len(texts)} sentences ({n_chars / len(texts):.0f} chars avg), "
        f"threads {args.threads if args.threads > 0 else 'all'}, best of {args.repeats}: "
        f"ours {len(texts) / ours_s:,.0f} sent/s ({ours_s:.3f} s) | "
        f"HF tokenizers {len(texts) / reference_s:,.0f} sent/s ({reference_s:.3f} s) | "
        f"ours/HF speed {reference_s / ours_s:.2f}x"
    )


if __name__ == "__main__":
    main()
