"""Big reliability cases: peak memory for one long doc (1 M characters) and for 10 k tiny docs.

Each measurement runs in a fresh process: build the tiny transformer + ner + textcat pipeline
(real tokenizer from ``../shared``), warm it up, record the peak RSS, process the input, and
report the growth of the peak RSS (``ru_maxrss``) and the wall time. Doc sizes and window sizes
vary so the table shows what memory follows: the doc (tokens, pieces) or the window (one padded
batch of windows, ``max_batch_pieces`` positions). Per doc the columns split what stays:
``ours/tok`` is ``doc._.xlmrxl`` (token vectors the listeners read, ``<s>`` states, int32 ids,
offsets and alignment) per spaCy token, ``ours/pc`` the part of it besides the token vectors per
piece, ``spaCy/tok`` spaCy's own Doc per token (``nlp.make_doc``, traced), ``peak B/pc`` the
peak RSS growth per piece, and ``batch KiB`` the hidden states of one window batch.
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
import tracemalloc
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
    texts = [long_text(size)] if case == "doc" else [
        f"Doc {i} \u05e9\u05dc\u05d5\u05dd" if i % 7 else "" for i in range(size)]
    before = _peak_mib()
    start = time.perf_counter()
    if case == "doc":
        docs = [nlp(texts[0])]
        assert len(docs[0]._.xlmrxl.align.lengths) == len(docs[0])
    else:
        docs = list(nlp.pipe(texts, batch_size=256))
        assert [d.text for d in docs] == texts
    seconds = time.perf_counter() - start
    peak_growth = _peak_mib() - before
    data = [d._.xlmrxl for d in docs]
    n_docs, n_tokens, n_pieces = len(docs), sum(map(len, docs)), sum(d.n_pieces for d in data)
    ours = sum(d.nbytes() for d in data)
    vectors = sum(v.nbytes for d in data for v in d.tokvecs.values())
    assert all(d.hidden is None for d in data)  # no per-piece states kept: the listeners read token vectors
    del docs, data
    tracemalloc.start()
    made = [nlp.make_doc(text) for text in texts]
    spacy_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del made
    model = nlp.get_pipe("xlmrxl_transformer").model
    batch_bytes = model.attrs["max_batch_pieces"] * model.get_dim("nO") * 4
    return {"case": case, "size": size, "window": window, "docs": n_docs, "tokens": n_tokens, "pieces": n_pieces,
            "rss_before_mib": round(before, 1), "peak_growth_mib": round(peak_growth, 1),
            "ours_b_per_token": round(ours / max(n_tokens, 1), 1),
            "ours_besides_vectors_b_per_piece": round((ours - vectors) / max(n_pieces, 1), 1),
            "spacy_doc_b_per_token": round(spacy_bytes / max(n_tokens, 1), 1),
            "peak_b_per_piece": round(peak_growth * 2**20 / max(n_pieces, 1)),
            "batch_kib": round(batch_bytes / 1024), "seconds": round(seconds, 1)}


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
    print(f"{'case':5} {'size':>9} {'window':>6} {'tokens':>8} {'pieces':>8} {'rss MiB':>8} {'peak +MiB':>9} "
          f"{'peak B/pc':>9} {'ours/tok':>8} {'ours/pc':>7} {'spaCy/tok':>9} {'batch KiB':>9} {'s':>6}")
    results = []
    for case, size, window in runs:
        out = subprocess.run([sys.executable, __file__, "--one", case, str(size), str(window)], cwd=REPO,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['case']:5} {r['size']:>9} {r['window']:>6} {r['tokens']:>8} {r['pieces']:>8} "
              f"{r['rss_before_mib']:>8} {r['peak_growth_mib']:>9} {r['peak_b_per_piece']:>9} "
              f"{r['ours_b_per_token']:>8} {r['ours_besides_vectors_b_per_piece']:>7} "
              f"{r['spacy_doc_b_per_token']:>9} {r['batch_kib']:>9} {r['seconds']:>6}", flush=True)
    small, big = [r for r in results if r["case"] == "doc" and r["window"] == 510][::2][:2]
    slope = (big["peak_growth_mib"] - small["peak_growth_mib"]) * 2**20 / (big["pieces"] - small["pieces"])
    print(f"peak RSS growth per extra piece ({small['size']} -> {big['size']} characters, window 510): "
          f"{slope:.0f} B", flush=True)
    if not args.no_tests:
        env = {**os.environ, "XLMRXL_RUN_SLOW": "1"}
        sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "slow", "tests/reliability"],
                                 cwd=REPO, env=env))


if __name__ == "__main__":
    main()
