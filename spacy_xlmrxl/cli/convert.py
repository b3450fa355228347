"""``convert-uner``, ``convert-sib200``, ``convert-squad``, ``convert-text`` (raw data -> ``.spacy``
DocBin files, with progress bars) and ``check-data`` (the assets' sha256, copying missing ones
from a local data folder such as ``../shared/data``).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence

from wasabi import msg

from ..training.data_check import DataCheckError, check_assets, compare_with_sums, load_asset_specs, read_sha256sums
from ..training.docbin import write_docbin
from ..training.files import DataFormatError, infer_lang
from ..training.sib200 import read_labels, sib200_docs
from ..training.squad import read_squad_files, split_squad_files, squad_docs
from ..training.text import text_docs
from ..training.uner import UNER_LABELS, parse_label_map, uner_docs
from .parsing import DEFAULT_SPACY_LANG, add_command, add_io_arguments


def output_name(path: Path) -> str:
    """``<split>-<lang>`` for ``.../<lang>/<split>.<ext>`` (or ``<name>`` when no language)."""
    lang = infer_lang(path)
    stem = path.name.split(".")[0]
    return f"{stem}-{lang}" if lang and lang != stem else stem


def write_groups(
    inputs: Sequence[Path],
    output: Optional[Path],
    output_dir: Optional[Path],
    make_docs: Callable[[List[Path]], Iterable[Any]],
) -> None:
    """Write all inputs into `output`, or each input to ``<output_dir>/<split>-<lang>.spacy``."""
    if (output is None) == (output_dir is None):
        msg.fail("give exactly one of --output (all inputs in one file) and --output-dir (one file per input)", exits=1)
    groups = [(output, list(inputs))] if output is not None else [
        (output_dir / f"{output_name(path)}.spacy", [path]) for path in inputs  # type: ignore[operator]
    ]
    for target, paths in groups:
        try:
            count = write_docbin(make_docs(paths), target)
        except DataFormatError as err:
            msg.fail(str(err), exits=1)
        msg.good(f"{count} docs -> {target}")


def blank_nlp(lang: str) -> Any:
    import spacy

    return spacy.blank(lang)


def cmd_convert_uner(args: argparse.Namespace) -> None:
    labels = None if args.labels == "any" else [label for label in args.labels.split(",") if label]
    try:
        label_map = parse_label_map(args.map or [])
    except ValueError as err:
        msg.fail(str(err), exits=1)
    vocab = blank_nlp(args.spacy_lang).vocab
    write_groups(
        args.inputs,
        args.output,
        args.output_dir,
        lambda paths: uner_docs(vocab, paths, lang=args.lang, labels=labels, label_map=label_map,
                                progress=args.progress),
    )


def cmd_convert_sib200(args: argparse.Namespace) -> None:
    nlp = blank_nlp(args.spacy_lang)
    try:
        labels = read_labels(args.labels_file)
    except DataFormatError as err:
        msg.fail(str(err), exits=1)
    write_groups(
        args.inputs,
        args.output,
        args.output_dir,
        lambda paths: sib200_docs(nlp, paths, labels, lang=args.lang, progress=args.progress),
    )


def cmd_convert_squad(args: argparse.Namespace) -> None:
    nlp = blank_nlp(args.spacy_lang)
    try:
        parsed = read_squad_files(args.inputs)
        split = split_squad_files(parsed, seed=args.seed, n_dev=args.dev_articles, n_test=args.test_articles)
    except (DataFormatError, ValueError) as err:
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
            yield from squad_docs(nlp, articles, lang=infer_lang(path), progress=args.progress, desc=f"{which} {path.name}")

    for which in ("train", "dev"):
        count = write_docbin(docs_of(which, parsed), out / f"{which}.spacy")
        msg.good(f"{count} docs -> {out / f'{which}.spacy'}")
    for path in parsed:
        target = out / f"test-{infer_lang(path) or path.stem}.spacy"
        count = write_docbin(docs_of("test", [path]), target)
        msg.good(f"{count} docs -> {target}")


def cmd_convert_text(args: argparse.Namespace) -> None:
    nlp = blank_nlp(args.spacy_lang)
    write_groups(
        args.inputs,
        args.output,
        args.output_dir,
        lambda paths: text_docs(
            nlp, paths, paragraphs=args.paragraphs, column=args.column, lang=args.lang, progress=args.progress
        ),
    )


def cmd_check_data(args: argparse.Namespace) -> None:
    project_file: Path = args.project
    try:
        specs = load_asset_specs(project_file)
    except (OSError, DataCheckError) as err:
        msg.fail(str(err), exits=1)
    problems: List[str] = []
    if args.sums is not None:
        problems += compare_with_sums(specs, read_sha256sums(args.sums))
    data_dir = args.data_dir
    if data_dir is not None and not data_dir.is_dir():
        msg.warn(f"data folder {data_dir} does not exist: only checking what is in assets/")
    statuses = check_assets(specs, project_file.parent, data_dir, link=args.link, progress=args.progress)
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


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the ``spacy-xlmrxl`` parser's subparsers."""
    command = add_command(sub, "convert-uner", cmd_convert_uner, "UNER .iob2 file(s) -> .spacy (gold doc.ents; IOB2 repaired)")
    add_io_arguments(command)
    command.add_argument("--labels", default=",".join(UNER_LABELS),
                         help="allowed entity types after --map, comma-separated, or 'any' (default: UNER's "
                              "evaluated types PER,ORG,LOC)")
    command.add_argument("--map", action="append", default=[], metavar="TAG=NEW",
                         help="rename an entity type before the check, or drop it with NEW=O; repeatable "
                              "(e.g. --map OTH=O for UNER v1 treebanks that tag OTH)")

    command = add_command(sub, "convert-sib200", cmd_convert_sib200, "SIB-200 .tsv file(s) -> .spacy (one-hot doc.cats)")
    add_io_arguments(command)
    command.add_argument("--labels-file", type=Path, required=True, help="labels.txt (one label per line)")

    command = add_command(sub, "convert-squad", cmd_convert_squad, "SQuAD/XQuAD JSON file(s) -> train/dev .spacy and test-<lang>.spacy, split by article")
    command.add_argument("inputs", nargs="+", type=Path, help="SQuAD-format JSON files (e.g. one per XQuAD language)")
    command.add_argument("--output-dir", type=Path, required=True)
    command.add_argument("--seed", type=int, default=0, help="seed of the article split")
    command.add_argument("--dev-articles", type=int, default=4)
    command.add_argument("--test-articles", type=int, default=12)
    command.add_argument("--spacy-lang", default=DEFAULT_SPACY_LANG)
    command.add_argument("--no-progress", dest="progress", action="store_false")

    command = add_command(sub, "convert-text", cmd_convert_text, "raw text -> .spacy (one doc per line / paragraph / TSV row)")
    add_io_arguments(command)
    command.add_argument("--paragraphs", action="store_true", help="one doc per blank-line separated paragraph")
    command.add_argument("--column", default=None, help="read this column of a TSV with a header (CSV quoting)")

    command = add_command(sub, "check-data", cmd_check_data, "verify assets by sha256; copy missing ones from --data-dir")
    command.add_argument("--project", type=Path, default=Path("project.yml"), help="project.yml listing the assets")
    command.add_argument("--data-dir", type=Path, default=None, help="local copy of the data, e.g. ../shared/data")
    command.add_argument("--sums", type=Path, default=None, help="also compare with this SHA256SUMS file")
    command.add_argument("--link", action="store_true", help="symlink instead of copying")
    command.add_argument("--no-progress", dest="progress", action="store_false")
