"""``evaluate`` (spaCy's ``Language.evaluate`` on one or more ``.spacy`` files with the model loaded
once, writing ALL scores per file as JSON: ``spacy evaluate`` keeps only a fixed list of keys and
drops e.g. ``qa_f1``), ``baseline-ner`` (each word's most frequent training tag) and
``evaluate-fill-mask`` (masked-word accuracy of a fill-mask pipeline and its baseline).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from wasabi import msg

from ..backbone.nodes import get_tokenizer
from ..pipeline.fill_mask.scoring import masked_word_accuracy
from ..training.corpus import TaskCorpus
from ..training.docbin import FastDocBin
from ..training.uner import iob2_spans
from .parsing import DEFAULT_SPACY_LANG, add_command


def metrics_name(prefix: str, data_path: Path) -> str:
    """``<prefix><lang>`` for ``test-<lang>.spacy`` (``<prefix><stem>`` otherwise)."""
    stem = data_path.name.split(".")[0]
    return prefix + (stem.split("-", 1)[1] if "-" in stem else stem)


def evaluate_files(
    model: str, data_paths: Sequence[Path], *, gold_preproc: bool = False, gpu_id: int = -1, limit: int = 0
) -> Dict[Path, Dict[str, Any]]:
    """``nlp.evaluate`` on each ``.spacy`` file (model loaded once); all scores per file, plus
    ``n_examples``. The examples come from `TaskCorpus` (QA questions included); `limit`
    keeps the first ones of each file (0: all)."""
    import spacy
    from spacy.cli._util import setup_gpu
    from spacy.util import fix_random_seed

    fix_random_seed()
    setup_gpu(gpu_id, silent=True)
    nlp = spacy.load(model)
    results: Dict[Path, Dict[str, Any]] = {}
    for path in data_paths:
        if not path.exists():
            msg.fail("Evaluation data not found", str(path), exits=1)
        examples = list(TaskCorpus(path, gold_preproc=gold_preproc, limit=limit)(nlp))
        # similar lengths in each batch: less padding in the model's batches, same scores
        examples.sort(key=lambda eg: len(eg.reference.text))
        scores = nlp.evaluate(examples)
        scores["n_examples"] = len(examples)
        results[path] = scores
    return results


def headline(scores: Dict[str, Any]) -> str:
    keys = [k for k in ("ents_f", "cats_macro_f", "qa_exact", "qa_f1") if isinstance(scores.get(k), (int, float))]
    keys = keys or [k for k, v in scores.items() if isinstance(v, float) and k != "speed"][:3]
    return ", ".join(f"{k} {scores[k] * 100:.2f}" for k in keys)


def cmd_evaluate(args: argparse.Namespace) -> None:
    results = evaluate_files(args.model, args.data, gold_preproc=args.gold_preproc, gpu_id=args.gpu_id, limit=args.limit)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path, scores in results.items():
        target = args.output_dir / f"{metrics_name(args.prefix, path)}.json"
        target.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n", encoding="utf8")
        msg.good(f"{path}: {headline(scores)} -> {target}")


def majority_tag_baseline(train_docs: Iterable[Any], docs: Iterable[Any]) -> List[Any]:
    """Predictions of the majority-tag baseline: each token of `docs` gets the IOB2 tag its word
    form has most often in `train_docs` (``O`` for unseen words); returns `Example`s."""
    from spacy.tokens import Doc, Span
    from spacy.training import Example

    counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for doc in train_docs:
        for token, tag in zip(doc, iob_tags(doc)):
            counts[token.text][tag] += 1
    examples = []
    for gold in docs:
        predicted = Doc(gold.vocab, words=[t.text for t in gold], spaces=[bool(t.whitespace_) for t in gold])
        tags = [counts[t.text].most_common(1)[0][0] if t.text in counts else "O" for t in gold]
        predicted.ents = [Span(predicted, s, e, label=label) for s, e, label in iob2_spans(tags)]
        examples.append(Example(predicted, gold))
    return examples


def iob_tags(doc: Any) -> List[str]:
    return ["O" if t.ent_iob_ in ("O", "") else f"{t.ent_iob_}-{t.ent_type_}" for t in doc]


def baseline_scores(examples: Sequence[Any]) -> Dict[str, Any]:
    """Entity P/R/F (spaCy's NER scorer) and token accuracy of baseline `examples`, plus the
    trivial all-``O`` baseline (no entities: F1 0) and its token accuracy."""
    from spacy.scorer import get_ner_prf

    pairs = [(p, g) for eg in examples for p, g in zip(iob_tags(eg.predicted), iob_tags(eg.reference))]
    n = max(len(pairs), 1)
    scores = dict(get_ner_prf(examples))
    scores.update(
        token_acc=sum(p == g for p, g in pairs) / n,
        all_o_ents_f=0.0,
        all_o_token_acc=sum(g == "O" for _, g in pairs) / n,
        n_examples=len(examples),
    )
    return scores


def cmd_baseline_ner(args: argparse.Namespace) -> None:
    import spacy

    vocab = spacy.blank(DEFAULT_SPACY_LANG).vocab
    train_docs = list(FastDocBin().from_disk(args.train).get_docs(vocab))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path in args.data:
        examples = majority_tag_baseline(train_docs, FastDocBin().from_disk(path).get_docs(vocab))
        scores = baseline_scores(examples)
        scores.update(baseline="majority tag per word form in the training data", train=str(args.train))
        target = args.output_dir / f"{metrics_name(args.prefix, path)}.json"
        target.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n", encoding="utf8")
        msg.good(f"{path}: ents_f {scores['ents_f'] * 100:.2f} (all-O: 0.00) -> {target}")


def mask_probe(text: str, tokenizer: Any, rng: Any) -> Optional[Tuple[str, int]]:
    """``(text with one word replaced by <mask>, that word's piece id)`` or None.

    The word is drawn with `rng` among the alphabetic words that are ONE piece (``▁word``
    followed by a word start or the end), so a single ``<mask>`` stands for the whole word.
    """
    encoding = tokenizer.encode_pieces(text)
    pieces = tokenizer.convert_ids_to_tokens(encoding.ids)
    candidates = [
        i
        for i, piece in enumerate(pieces)
        if piece.startswith("\u2581") and piece[1:].isalpha() and (i + 1 == len(pieces) or pieces[i + 1].startswith("\u2581"))
    ]
    if not candidates:
        return None
    i = candidates[rng.randrange(len(candidates))]
    start, end = encoding.offsets[i]
    return text[:start] + "<mask>" + text[end:], int(encoding.ids[i])


def evaluate_fill_mask(nlp: Any, texts: Sequence[str], train_texts: Sequence[str], *, seed: int = 0, name: Optional[str] = None) -> Dict[str, Any]:
    """Masked-word accuracy of a ``xlmrxl_fill_mask`` pipeline: one single-piece word per text is
    masked (`mask_probe`, seeded) and must be the top-1 / a top-5 filler; the baseline always
    predicts the most frequent such words of `train_texts`."""
    import random

    names = [n for n, pipe in nlp.pipeline if type(pipe).__name__ == "XLMRFillMask"]
    component = nlp.get_pipe(name or names[0])
    tokenizer = get_tokenizer(component.model)
    rng = random.Random(seed)
    probes = [probe for probe in (mask_probe(text, tokenizer, rng) for text in texts) if probe is not None]
    frequent = collections.Counter(
        probe[1] for probe in (mask_probe(text, tokenizer, random.Random(seed)) for text in train_texts) if probe is not None
    ).most_common(5)
    baseline = [token_id for token_id, _ in frequent]

    docs = nlp.pipe([masked for masked, _ in probes])
    pairs = (((doc._.fill_mask or [[]])[0], gold) for doc, (_, gold) in zip(docs, probes))
    n = max(len(probes), 1)
    return {
        **masked_word_accuracy(pairs, key="token_id", empty=0.0),
        "baseline_acc": sum(gold == baseline[0] for _, gold in probes) / n if baseline else 0.0,
        "baseline_top5": sum(gold in baseline for _, gold in probes) / n,
        "n_examples": len(probes),
        "seed": seed,
    }


def cmd_evaluate_fill_mask(args: argparse.Namespace) -> None:
    import spacy
    from spacy.cli._util import setup_gpu

    setup_gpu(args.gpu_id, silent=True)
    nlp = spacy.load(args.model)

    def texts(path: Path) -> List[str]:
        return [doc.text for doc in FastDocBin().from_disk(path).get_docs(nlp.vocab)]

    scores = evaluate_fill_mask(nlp, texts(args.data), texts(args.train), seed=args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n", encoding="utf8")
    msg.good(
        f"masked-word accuracy top-1 {scores['fill_mask_acc'] * 100:.2f} / top-5 {scores['fill_mask_top5'] * 100:.2f} "
        f"(most-frequent-word baseline {scores['baseline_acc'] * 100:.2f} / {scores['baseline_top5'] * 100:.2f}) -> {args.output}"
    )


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the ``spacy-xlmrxl`` parser's subparsers."""
    command = add_command(sub, "evaluate", cmd_evaluate, "evaluate a pipeline on .spacy file(s); all scores as JSON per file")
    command.add_argument("model", help="pipeline directory or package name")
    command.add_argument("data", nargs="+", type=Path, help=".spacy file(s), e.g. corpus/ner/test-*.spacy")
    command.add_argument("--output-dir", type=Path, default=Path("metrics"))
    command.add_argument("--prefix", default="", help="metrics file name prefix: <prefix><lang>.json for test-<lang>.spacy")
    command.add_argument("--gold-preproc", action="store_true", help="use the gold tokenisation")
    command.add_argument("--limit", type=int, default=0, help="evaluate the first N examples of each file (0: all)")
    command.add_argument("--gpu-id", type=int, default=-1)

    command = add_command(sub, "baseline-ner", cmd_baseline_ner, "majority-tag NER baseline (each word's most frequent training tag)")
    command.add_argument("train", type=Path, help="training .spacy file")
    command.add_argument("data", nargs="+", type=Path, help="evaluation .spacy file(s)")
    command.add_argument("--output-dir", type=Path, default=Path("metrics"))
    command.add_argument("--prefix", default="ner-baseline-")

    command = add_command(sub, "evaluate-fill-mask", cmd_evaluate_fill_mask, "masked-word accuracy of a fill-mask pipeline, with a most-frequent-word baseline")
    command.add_argument("model", help="pipeline directory with an xlmrxl_fill_mask component")
    command.add_argument("data", type=Path, help=".spacy file of raw texts (one word of each is masked)")
    command.add_argument("--train", type=Path, required=True, help=".spacy training texts (for the baseline)")
    command.add_argument("--output", type=Path, required=True, help="metrics JSON")
    command.add_argument("--seed", type=int, default=0, help="seed of the choice of masked words")
    command.add_argument("--gpu-id", type=int, default=-1)
