"""The ``spacy-xlmrxl`` command line: data conversion, data checks, evaluation, baselines, tables.

Owns the subcommands the project workflow (``project.yml``) runs:

* ``convert-uner``, ``convert-sib200``, ``convert-squad``, ``convert-text``: raw data ->
  ``.spacy`` DocBin files (`spacy_xlmrxl.readers`), with progress bars;
* ``check-data``: verify the assets' sha256 (``project.yml``), copying missing ones from a local
  data folder such as ``../shared/data`` (`spacy_xlmrxl.data_check`);
* ``evaluate``: spaCy's ``Language.evaluate`` (what ``spacy evaluate`` runs) on one or more
  ``.spacy`` files with the model loaded once, writing ALL scores per file as JSON (``spacy
  evaluate`` keeps only a fixed list of keys and drops e.g. ``qa_f1``); QA questions reach the
  predicted docs (`readers.TaskCorpus`);
* ``baseline-ner``: the majority-tag baseline (each word's most frequent training tag);
* ``evaluate-fill-mask``: masked-word accuracy of a fill-mask pipeline (and its baseline);
* ``merge-config``: a training config + a partial override file (``configs/xl_gpu.cfg``);
* ``metrics-table``: metrics JSON files -> Markdown tables for the README;
* ``export-hf``: a trained NER / textcat / fill-mask component -> a Hugging Face model
  directory (the exporters of `spacy_xlmrxl.serialize` and the fill-mask component).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from wasabi import msg

from . import data_check, readers

DEFAULT_SPACY_LANG = "xx"


def _output_name(path: Path) -> str:
    """``<split>-<lang>`` for ``.../<lang>/<split>.<ext>`` (or ``<name>`` when no language)."""
    lang = readers.infer_lang(path)
    stem = path.name.split(".")[0]
    return f"{stem}-{lang}" if lang and lang != stem else stem


def _write_groups(
    inputs: Sequence[Path],
    output: Optional[Path],
    output_dir: Optional[Path],
    make_docs: Callable[[List[Path]], Iterable[Any]],
) -> None:
    """Write all inputs into `output`, or each input to ``<output_dir>/<split>-<lang>.spacy``."""
    if (output is None) == (output_dir is None):
        msg.fail("give exactly one of --output (all inputs in one file) and --output-dir (one file per input)", exits=1)
    groups = [(output, list(inputs))] if output is not None else [
        (output_dir / f"{_output_name(path)}.spacy", [path]) for path in inputs  # type: ignore[operator]
    ]
    for target, paths in groups:
        try:
            count = readers.write_docbin(make_docs(paths), target)
        except readers.DataFormatError as err:
            msg.fail(str(err), exits=1)
        msg.good(f"{count} docs -> {target}")


def _blank(lang: str) -> Any:
    import spacy

    return spacy.blank(lang)


def cmd_convert_uner(args: argparse.Namespace) -> None:
    labels = None if args.labels == "any" else [label for label in args.labels.split(",") if label]
    vocab = _blank(args.spacy_lang).vocab
    _write_groups(
        args.inputs,
        args.output,
        args.output_dir,
        lambda paths: readers.uner_docs(vocab, paths, lang=args.lang, labels=labels, progress=args.progress),
    )


def cmd_convert_sib200(args: argparse.Namespace) -> None:
    nlp = _blank(args.spacy_lang)
    try:
        labels = readers.read_labels(args.labels_file)
    except readers.DataFormatError as err:
        msg.fail(str(err), exits=1)
    _write_groups(
        args.inputs,
        args.output,
        args.output_dir,
        lambda paths: readers.sib200_docs(nlp, paths, labels, lang=args.lang, progress=args.progress),
    )


def cmd_convert_squad(args: argparse.Namespace) -> None:
    nlp = _blank(args.spacy_lang)
    try:
        parsed = readers.read_squad_files(args.inputs)
        split = readers.split_squad_files(parsed, seed=args.seed, n_dev=args.dev_articles, n_test=args.test_articles)
    except (readers.DataFormatError, ValueError) as err:
        msg.fail(str(err), exits=1)
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    split_info = {"seed": args.seed, "inputs": [str(p) for p in args.inputs], **split.to_dict()}
    (out / "split.json").write_text(json.dumps(split_info, indent=2, ensure_ascii=False) + "\n", encoding="utf8")
    msg.info(f"articles: {len(split.train)} train, {len(split.dev)} dev, {len(split.test)} test (seed {args.seed}) -> {out / 'split.json'}")

    def docs_of(which: str, paths: Iterable[Path]) -> Iterable[Any]:
        keep = set(getattr(split, which))
        for path in paths:
            articles = [a for a in parsed[path] if a.title in keep]
            yield from readers.squad_docs(nlp, articles, lang=readers.infer_lang(path), progress=args.progress, desc=f"{which} {path.name}")

    for which in ("train", "dev"):
        count = readers.write_docbin(docs_of(which, parsed), out / f"{which}.spacy")
        msg.good(f"{count} docs -> {out / f'{which}.spacy'}")
    for path in parsed:
        target = out / f"test-{readers.infer_lang(path) or path.stem}.spacy"
        count = readers.write_docbin(docs_of("test", [path]), target)
        msg.good(f"{count} docs -> {target}")


def cmd_convert_text(args: argparse.Namespace) -> None:
    nlp = _blank(args.spacy_lang)
    _write_groups(
        args.inputs,
        args.output,
        args.output_dir,
        lambda paths: readers.text_docs(
            nlp, paths, paragraphs=args.paragraphs, column=args.column, lang=args.lang, progress=args.progress
        ),
    )


def cmd_check_data(args: argparse.Namespace) -> None:
    project_file: Path = args.project
    try:
        specs = data_check.load_asset_specs(project_file)
    except (OSError, data_check.DataCheckError) as err:
        msg.fail(str(err), exits=1)
    problems: List[str] = []
    if args.sums is not None:
        problems += data_check.compare_with_sums(specs, data_check.read_sha256sums(args.sums))
    data_dir = args.data_dir
    if data_dir is not None and not data_dir.is_dir():
        msg.warn(f"data folder {data_dir} does not exist: only checking what is in assets/")
    statuses = data_check.check_assets(specs, project_file.parent, data_dir, link=args.link, progress=args.progress)
    counts = collections.Counter(status.status for status in statuses)
    for status in statuses:
        if not status.good:
            problems.append(f"{status.spec.dest}: {status.status}: {status.detail}")
    summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    if problems:
        for problem in problems:
            msg.fail(problem)
        msg.fail(
            f"data check failed ({summary}). With internet, run `spacy project assets`; "
            f"without, pass --data-dir pointing at a copy of the data (e.g. ../shared/data)",
            exits=1,
        )
    msg.good(f"all {len(statuses)} assets verified by sha256 ({summary})")


def _metrics_name(prefix: str, data_path: Path) -> str:
    """``<prefix><lang>`` for ``test-<lang>.spacy`` (``<prefix><stem>`` otherwise)."""
    stem = data_path.name.split(".")[0]
    return prefix + (stem.split("-", 1)[1] if "-" in stem else stem)


def evaluate_files(
    model: str, data_paths: Sequence[Path], *, gold_preproc: bool = False, gpu_id: int = -1, limit: int = 0
) -> Dict[Path, Dict[str, Any]]:
    """``nlp.evaluate`` on each ``.spacy`` file (model loaded once); all scores per file, plus
    ``n_examples``. The examples come from `readers.TaskCorpus` (QA questions included); `limit`
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
        examples = list(readers.TaskCorpus(path, gold_preproc=gold_preproc, limit=limit)(nlp))
        # similar lengths in each batch: less padding in the model's batches, same scores
        examples.sort(key=lambda eg: len(eg.reference.text))
        scores = nlp.evaluate(examples)
        scores["n_examples"] = len(examples)
        results[path] = scores
    return results


def _headline(scores: Dict[str, Any]) -> str:
    keys = [k for k in ("ents_f", "cats_macro_f", "qa_exact", "qa_f1") if isinstance(scores.get(k), (int, float))]
    keys = keys or [k for k, v in scores.items() if isinstance(v, float) and k != "speed"][:3]
    return ", ".join(f"{k} {scores[k] * 100:.2f}" for k in keys)


def cmd_evaluate(args: argparse.Namespace) -> None:
    results = evaluate_files(args.model, args.data, gold_preproc=args.gold_preproc, gpu_id=args.gpu_id, limit=args.limit)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path, scores in results.items():
        target = args.output_dir / f"{_metrics_name(args.prefix, path)}.json"
        target.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n", encoding="utf8")
        msg.good(f"{path}: {_headline(scores)} -> {target}")


def majority_tag_baseline(train_docs: Iterable[Any], docs: Iterable[Any]) -> List[Any]:
    """Predictions of the majority-tag baseline: each token of `docs` gets the IOB2 tag its word
    form has most often in `train_docs` (``O`` for unseen words); returns `Example`s."""
    from spacy.tokens import Doc, Span
    from spacy.training import Example

    counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for doc in train_docs:
        for token, tag in zip(doc, _iob_tags(doc)):
            counts[token.text][tag] += 1
    examples = []
    for gold in docs:
        predicted = Doc(gold.vocab, words=[t.text for t in gold], spaces=[bool(t.whitespace_) for t in gold])
        tags = [counts[t.text].most_common(1)[0][0] if t.text in counts else "O" for t in gold]
        predicted.ents = [Span(predicted, s, e, label=label) for s, e, label in readers.iob2_spans(tags)]
        examples.append(Example(predicted, gold))
    return examples


def _iob_tags(doc: Any) -> List[str]:
    return ["O" if t.ent_iob_ in ("O", "") else f"{t.ent_iob_}-{t.ent_type_}" for t in doc]


def baseline_scores(examples: Sequence[Any]) -> Dict[str, Any]:
    """Entity P/R/F (spaCy's NER scorer) and token accuracy of baseline `examples`, plus the
    trivial all-``O`` baseline (no entities: F1 0) and its token accuracy."""
    from spacy.scorer import get_ner_prf

    pairs = [(p, g) for eg in examples for p, g in zip(_iob_tags(eg.predicted), _iob_tags(eg.reference))]
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
    train_docs = list(readers.FastDocBin().from_disk(args.train).get_docs(vocab))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path in args.data:
        examples = majority_tag_baseline(train_docs, readers.FastDocBin().from_disk(path).get_docs(vocab))
        scores = baseline_scores(examples)
        scores.update(baseline="majority tag per word form in the training data", train=str(args.train))
        target = args.output_dir / f"{_metrics_name(args.prefix, path)}.json"
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

    from .models import get_tokenizer

    names = [n for n, pipe in nlp.pipeline if type(pipe).__name__ == "XLMRFillMask"]
    component = nlp.get_pipe(name or names[0])
    tokenizer = get_tokenizer(component.model)
    rng = random.Random(seed)
    probes = [probe for probe in (mask_probe(text, tokenizer, rng) for text in texts) if probe is not None]
    frequent = collections.Counter(
        probe[1] for probe in (mask_probe(text, tokenizer, random.Random(seed)) for text in train_texts) if probe is not None
    ).most_common(5)
    baseline = [token_id for token_id, _ in frequent]
    from .scorers import masked_word_accuracy  # the counting of the fill-mask scorer

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
        return [doc.text for doc in readers.FastDocBin().from_disk(path).get_docs(nlp.vocab)]

    scores = evaluate_fill_mask(nlp, texts(args.data), texts(args.train), seed=args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n", encoding="utf8")
    msg.good(
        f"masked-word accuracy top-1 {scores['fill_mask_acc'] * 100:.2f} / top-5 {scores['fill_mask_top5'] * 100:.2f} "
        f"(most-frequent-word baseline {scores['baseline_acc'] * 100:.2f} / {scores['baseline_top5'] * 100:.2f}) -> {args.output}"
    )


# Architectures that own a backbone: `[backbone]` settings of an override file go to each of them.
BACKBONE_ARCHITECTURES = ("spacy-xlmrxl.Transformer.v1", "spacy-xlmrxl.QAModel.v1", "spacy-xlmrxl.MaskedLM.v1")


def _deep_update(target: Dict[str, Any], updates: Dict[str, Any]) -> None:
    """Set `updates` into `target` by path, keeping `target`'s order; a block whose registered
    function (``@...`` key) changes is replaced as a whole."""
    for key, value in updates.items():
        current = target.get(key)
        same_function = isinstance(current, dict) and isinstance(value, dict) and all(
            current.get(k) == v for k, v in value.items() if k.startswith("@")
        )
        if same_function:
            _deep_update(current, value)  # type: ignore[arg-type]
        else:
            target[key] = value


def merge_config(base: Any, overrides: Any) -> Any:
    """`base` (a training config) updated by `overrides` (a partial config): every section but
    ``[backbone]`` is merged by path; ``[backbone]`` keys are set on every backbone block
    (`BACKBONE_ARCHITECTURES`), whatever the component is called. Variables stay uninterpolated."""
    from thinc.api import Config

    updates = Config(overrides).copy()
    backbone = dict(updates.pop("backbone", {}))
    merged = Config(base).copy()
    _deep_update(merged, updates)

    def visit(node: Any) -> int:
        found = 0
        if isinstance(node, dict):
            if node.get("@architectures") in BACKBONE_ARCHITECTURES:
                node.update(backbone)
                found += 1
            for value in node.values():
                found += visit(value)
        return found

    if backbone and not visit(merged):
        raise ValueError(f"[backbone] settings given but the config has no block of {BACKBONE_ARCHITECTURES}")
    return merged


def cmd_merge_config(args: argparse.Namespace) -> None:
    from thinc.api import Config

    merged = merge_config(Config().from_disk(args.base, interpolate=False), Config().from_disk(args.overrides, interpolate=False))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    merged.to_disk(args.output)
    msg.good(f"{args.base} + {args.overrides} -> {args.output}")


# Columns of the README tables per task (the metrics file name's part before the language).
TASK_COLUMNS: Dict[str, List[Tuple[str, str]]] = {
    "ner": [("ents_p", "P"), ("ents_r", "R"), ("ents_f", "F1")],
    "ner-baseline": [
        ("ents_p", "P"),
        ("ents_r", "R"),
        ("ents_f", "F1"),
        ("token_acc", "token acc."),
        ("all_o_ents_f", "all-O F1"),
        ("all_o_token_acc", "all-O token acc."),
    ],
    "textcat": [("cats_macro_f", "macro F1"), ("cats_micro_f", "micro F1 (= accuracy)"), ("cats_macro_auc", "macro AUC")],
    "qa": [("qa_exact", "exact match"), ("qa_f1", "F1")],
    "fill-mask": [
        ("fill_mask_acc", "masked word top-1"),
        ("fill_mask_top5", "top-5"),
        ("baseline_acc", "most-frequent-word top-1"),
        ("baseline_top5", "top-5"),
    ],
}


def _split_metrics_name(path: Path) -> Tuple[str, str]:
    """``ner-baseline-da.json`` -> (``ner-baseline``, ``da``); ``qa.json`` -> (``qa``, ``-``)."""
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.stem
    task, sep, key = stem.rpartition("-")
    return (task, key) if sep else (stem, "-")


def metrics_table(paths: Sequence[Path], *, meta: Sequence[str] = ()) -> str:
    """Markdown: one table per task (rows: languages, columns: `TASK_COLUMNS` or, for other
    tasks, every top-level number but ``speed``), scores x 100; a ``mean`` row for several rows."""
    groups: Dict[str, List[Tuple[str, Dict[str, Any]]]] = collections.OrderedDict()
    for path in sorted(paths):
        task, key = _split_metrics_name(path)
        groups.setdefault(task, []).append((key, json.loads(path.read_text(encoding="utf8"))))
    lines: List[str] = []
    if meta:
        lines += ["; ".join(meta), ""]
    for task, rows in groups.items():
        columns = TASK_COLUMNS.get(task) or [
            (k, k) for k in sorted({k for _, s in rows for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
            if k not in ("speed", "n_examples")
        ]
        columns = [(k, name) for k, name in columns if any(isinstance(s.get(k), (int, float)) for _, s in rows)]
        lines.append(f"**{task}**")
        lines.append("")
        lines.append("| language | " + " | ".join(name for _, name in columns) + " | examples |")
        lines.append("|---|" + "---:|" * (len(columns) + 1))
        for key, scores in rows:
            cells = [f"{scores[k] * 100:.1f}" if isinstance(scores.get(k), (int, float)) else "-" for k, _ in columns]
            lines.append(f"| {key} | " + " | ".join(cells) + f" | {scores.get('n_examples', '-')} |")
        if len(rows) > 1:
            means = []
            for k, _ in columns:
                values = [s[k] for _, s in rows if isinstance(s.get(k), (int, float))]
                means.append(f"{sum(values) / len(values) * 100:.1f}" if values else "-")
            lines.append("| mean | " + " | ".join(means) + " | |")
        lines.append("")
    return "\n".join(lines)


def cmd_metrics_table(args: argparse.Namespace) -> None:
    paths = [p for p in args.metrics if p.is_file()]
    if not paths:
        msg.fail("no metrics files found", ", ".join(map(str, args.metrics)), exits=1)
    table = metrics_table(paths, meta=args.meta)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table + "\n", encoding="utf8")
        msg.good(f"table of {len(paths)} metrics files -> {args.output}")
    print(table)


# task -> (module, function) of the HF exporters (the components' owners write them)
HF_EXPORTERS: Dict[str, Tuple[str, str]] = {
    "ner": ("spacy_xlmrxl.serialize", "export_ner_to_hf"),
    "textcat": ("spacy_xlmrxl.serialize", "export_textcat_to_hf"),
    "fill-mask": ("spacy_xlmrxl.components.fill_mask", "export_fill_mask_to_hf"),
}


def cmd_export_hf(args: argparse.Namespace) -> None:
    import importlib

    import spacy

    module_name, function = HF_EXPORTERS[args.task]
    exporter = getattr(importlib.import_module(module_name), function)
    nlp = spacy.load(args.model)
    out = exporter(nlp, args.output, name=args.name)
    msg.good(f"{args.task} component of {args.model} -> {out} (Hugging Face format)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spacy-xlmrxl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_, description=help_)
        command.set_defaults(func=func)
        return command

    def add_io(command: argparse.ArgumentParser, *, per_file: bool = True) -> None:
        command.add_argument("inputs", nargs="+", type=Path, help="input file(s)")
        command.add_argument("--output", "-o", type=Path, help="one .spacy file for all inputs")
        if per_file:
            command.add_argument("--output-dir", type=Path, help="one <split>-<lang>.spacy per input in this folder")
        command.add_argument("--lang", default=None, help="language code for doc.user_data['lang'] (default: from the file names)")
        command.add_argument("--spacy-lang", default=DEFAULT_SPACY_LANG, help="spaCy language whose tokenizer makes the docs (default: xx)")
        command.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    command = add("convert-uner", cmd_convert_uner, "UNER .iob2 file(s) -> .spacy (gold doc.ents; IOB2 repaired)")
    add_io(command)
    command.add_argument("--labels", default=",".join(readers.UNER_LABELS), help="allowed entity types, comma-separated, or 'any'")

    command = add("convert-sib200", cmd_convert_sib200, "SIB-200 .tsv file(s) -> .spacy (one-hot doc.cats)")
    add_io(command)
    command.add_argument("--labels-file", type=Path, required=True, help="labels.txt (one label per line)")

    command = add("convert-squad", cmd_convert_squad, "SQuAD/XQuAD JSON file(s) -> train/dev .spacy and test-<lang>.spacy, split by article")
    command.add_argument("inputs", nargs="+", type=Path, help="SQuAD-format JSON files (e.g. one per XQuAD language)")
    command.add_argument("--output-dir", type=Path, required=True)
    command.add_argument("--seed", type=int, default=0, help="seed of the article split")
    command.add_argument("--dev-articles", type=int, default=4)
    command.add_argument("--test-articles", type=int, default=12)
    command.add_argument("--spacy-lang", default=DEFAULT_SPACY_LANG)
    command.add_argument("--no-progress", dest="progress", action="store_false")

    command = add("convert-text", cmd_convert_text, "raw text -> .spacy (one doc per line / paragraph / TSV row)")
    add_io(command)
    command.add_argument("--paragraphs", action="store_true", help="one doc per blank-line separated paragraph")
    command.add_argument("--column", default=None, help="read this column of a TSV with a header (CSV quoting)")

    command = add("check-data", cmd_check_data, "verify assets by sha256; copy missing ones from --data-dir")
    command.add_argument("--project", type=Path, default=Path("project.yml"), help="project.yml listing the assets")
    command.add_argument("--data-dir", type=Path, default=None, help="local copy of the data, e.g. ../shared/data")
    command.add_argument("--sums", type=Path, default=None, help="also compare with this SHA256SUMS file")
    command.add_argument("--link", action="store_true", help="symlink instead of copying")
    command.add_argument("--no-progress", dest="progress", action="store_false")

    command = add("evaluate", cmd_evaluate, "evaluate a pipeline on .spacy file(s); all scores as JSON per file")
    command.add_argument("model", help="pipeline directory or package name")
    command.add_argument("data", nargs="+", type=Path, help=".spacy file(s), e.g. corpus/ner/test-*.spacy")
    command.add_argument("--output-dir", type=Path, default=Path("metrics"))
    command.add_argument("--prefix", default="", help="metrics file name prefix: <prefix><lang>.json for test-<lang>.spacy")
    command.add_argument("--gold-preproc", action="store_true", help="use the gold tokenisation")
    command.add_argument("--limit", type=int, default=0, help="evaluate the first N examples of each file (0: all)")
    command.add_argument("--gpu-id", type=int, default=-1)

    command = add("baseline-ner", cmd_baseline_ner, "majority-tag NER baseline (each word's most frequent training tag)")
    command.add_argument("train", type=Path, help="training .spacy file")
    command.add_argument("data", nargs="+", type=Path, help="evaluation .spacy file(s)")
    command.add_argument("--output-dir", type=Path, default=Path("metrics"))
    command.add_argument("--prefix", default="ner-baseline-")

    command = add("evaluate-fill-mask", cmd_evaluate_fill_mask, "masked-word accuracy of a fill-mask pipeline, with a most-frequent-word baseline")
    command.add_argument("model", help="pipeline directory with an xlmrxl_fill_mask component")
    command.add_argument("data", type=Path, help=".spacy file of raw texts (one word of each is masked)")
    command.add_argument("--train", type=Path, required=True, help=".spacy training texts (for the baseline)")
    command.add_argument("--output", type=Path, required=True, help="metrics JSON")
    command.add_argument("--seed", type=int, default=0, help="seed of the choice of masked words")
    command.add_argument("--gpu-id", type=int, default=-1)

    command = add("merge-config", cmd_merge_config, "a training config + a partial override config (e.g. configs/xl_gpu.cfg) -> a new config")
    command.add_argument("base", type=Path, help="training config, e.g. configs/ner.cfg")
    command.add_argument("overrides", type=Path, help="partial config; its [backbone] keys go to every backbone block")
    command.add_argument("--output", "-o", type=Path, required=True)

    command = add("metrics-table", cmd_metrics_table, "metrics JSON files -> Markdown tables")
    command.add_argument("metrics", nargs="+", type=Path, help="<task>-<lang>.json files")
    command.add_argument("--output", "-o", type=Path, default=None, help="also write the Markdown here")
    command.add_argument("--meta", action="append", default=[], help="a line above the tables, e.g. 'preset: small'")

    command = add("export-hf", cmd_export_hf, "a trained pipeline's weights -> Hugging Face model directory")
    command.add_argument("model", help="pipeline directory")
    command.add_argument("output", type=Path, help="output directory")
    command.add_argument("--task", default="ner", choices=sorted(HF_EXPORTERS), help="which component to export")
    command.add_argument("--name", default=None, help="the component's name when the pipeline has several of that kind")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``spacy-xlmrxl`` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
