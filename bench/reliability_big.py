"""Big reliability cases: peak memory for one long doc (1 M characters) and for 10 k tiny docs.

Each measurement runs in a fresh process: build the tiny transformer + ner + textcat pipeline
(real tokenizer from ``../shared``), warm it up, record the peak RSS, process the input, and
report the growth of the peak RSS (``ru_maxrss``) and the wall time. Doc sizes and window sizes
vary so the table shows what memory follows: the doc (pieces, tokens, per-piece hidden states
kept on the doc) or the window (activations of one padded batch of windows).
Then the ``slow`` tests of ``tests/reliability`` run (``--no-tests`` skips them).

    python bench/reliability_big.py            # the table, then the slow tests
    python bench/reliability_big.py --quick    # smaller sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPM = REPO.parent / "shared" / "data" / "tokenizer" / "sentencepiece.bpe.model"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(case: str, size: int, window: int) -> dict:
    """Run in this process: build, warm up, then process ``case`` of ``size``; memory in MiB."""
    sys.path.insert(0, str(REPO))
    from tests.reliability.conftest import build_shared_pipeline
    from tests.reliability.test_long_docs import long_text

    nlp = build_shared_pipeline(SPM, window=window, stride=window * 3 // 4)
    list(nlp.pipe([long_text(5_000), "warm up"]))
    before = _peak_mib()
    start = time.perf_counter()
    if case == "doc":
        doc = nlp(long_text(size))
        n_tokens, n_docs, n_pieces = len(doc), 1, doc._.xlmrxl.n_pieces
        assert len(doc._.xlmrxl.align.lengths) == len(doc)
    else:
        texts = [f"Doc {i} \u05e9\u05dc\u05d5\u05dd" if i % 7 else "" for i in range(size)]
        docs = list(nlp.pipe(texts, batch_size=256))
        assert [d.text for d in docs] == texts
        n_docs, n_tokens, n_pieces = len(docs), sum(map(len, docs)), sum(d._.xlmrxl.n_pieces for d in docs)
        del docs
    seconds = time.perf_counter() - start
    return {"case": case, "size": size, "window": window, "docs": n_docs, "tokens": n_tokens, "pieces": n_pieces,
            "rss_before_mib": round(before, 1), "peak_growth_mib": round(_peak_mib() - before, 1),
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 100 k characters / 1 k docs")
    parser.add_argument("--no-tests", action="store_true", help="only the memory table")
    parser.add_argument("--one", nargs=3, metavar=("CASE", "SIZE", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    if not SPM.is_file():
        sys.exit(f"needs the XLM-R tokenizer at {SPM} (../shared beside the repository)")
    scale = 10 if args.quick else 1
    runs = [("doc", 10_000, 510), ("doc", 100_000, 510), ("doc", 1_000_000 // scale, 510),
            ("doc", 1_000_000 // scale, 128), ("docs", 10_000 // scale, 510)]
    print(f"{'case':5} {'size':>9} {'window':>6} {'tokens':>8} {'pieces':>8} {'rss MiB':>8} {'peak +MiB':>9} {'s':>6}")
    for case, size, window in runs:
        out = subprocess.run([sys.executable, __file__, "--one", case, str(size), str(window)], cwd=REPO,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['case']:5} {r['size']:>9} {r['window']:>6} {r['tokens']:>8} {r['pieces']:>8} "
              f"{r['rss_before_mib']:>8} {r['peak_growth_mib']:>9} {r['seconds']:>6}", flush=True)
    if not args.no_tests:
        env = {**os.environ, "XLMRXL_RUN_SLOW": "1"}
        sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "slow", "tests/reliability"],
                                 cwd=REPO, env=env))


if __name__ == "__main__":
    main()
