"""The ``spacy-xlmrxl`` command line: data conversion, data checks, evaluation, baselines, tables.

Owns the subcommands the project workflow (``project.yml``) runs:

* ``convert-uner``, ``convert-sib200``, ``convert-squad``, ``convert-text``: raw data ->
  ``.spacy`` DocBin files (`spacy_xlmrxl.training`), with progress bars;
* ``check-data``: verify the assets' sha256 (``project.yml``), copying missing ones from a local
  data folder such as ``../shared/data`` (`spacy_xlmrxl.training.data_check`);
* ``evaluate``: spaCy's ``Language.evaluate`` (what ``spacy evaluate`` runs) on one or more
  ``.spacy`` files with the model loaded once, writing ALL scores per file as JSON (``spacy
  evaluate`` keeps only a fixed list of keys and drops e.g. ``qa_f1``); QA questions reach the
  predicted docs (`TaskCorpus`);
* ``baseline-ner``: the majority-tag baseline (each word's most frequent training tag);
* ``evaluate-fill-mask``: masked-word accuracy of a fill-mask pipeline (and its baseline);
* ``merge-config``: a training config + a partial override file (``configs/xl_gpu.cfg``);
* ``metrics-table``: metrics JSON files -> Markdown tables for the README;
* ``export-hf``: a trained NER / textcat / QA / fill-mask component -> a Hugging Face model
  directory (`spacy_xlmrxl.export`).

One module per group of subcommands (`convert`, `evaluate`, `config`, `tables`, `export`); this
one builds the parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..training.uner import UNER_LABELS
from .config import cmd_merge_config
from .convert import (
    DEFAULT_SPACY_LANG,
    cmd_check_data,
    cmd_convert_sib200,
    cmd_convert_squad,
    cmd_convert_text,
    cmd_convert_uner,
)
from .evaluate import cmd_baseline_ner, cmd_evaluate, cmd_evaluate_fill_mask
from .export import HF_EXPORTERS, cmd_export_hf
from .tables import cmd_metrics_table


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

    _add_convert_commands(add, add_io)

    command = add("check-data", cmd_check_data, "verify assets by sha256; copy missing ones from --data-dir")
    command.add_argument("--project", type=Path, default=Path("project.yml"), help="project.yml listing the assets")
    command.add_argument("--data-dir", type=Path, default=None, help="local copy of the data, e.g. ../shared/data")
    command.add_argument("--sums", type=Path, default=None, help="also compare with this SHA256SUMS file")
    command.add_argument("--link", action="store_true", help="symlink instead of copying")
    command.add_argument("--no-progress", dest="progress", action="store_false")

    _add_evaluate_commands(add)

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


def _add_evaluate_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """``evaluate``, ``baseline-ner``, ``evaluate-fill-mask``."""
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


def _add_convert_commands(add: Callable[..., argparse.ArgumentParser],
                          add_io: Callable[..., None]) -> None:
    """``convert-uner``, ``convert-sib200``, ``convert-squad``, ``convert-text``."""
    command = add("convert-uner", cmd_convert_uner, "UNER .iob2 file(s) -> .spacy (gold doc.ents; IOB2 repaired)")
    add_io(command)
    command.add_argument("--labels", default=",".join(UNER_LABELS),
                         help="allowed entity types after --map, comma-separated, or 'any' (default: UNER's "
                              "evaluated types PER,ORG,LOC)")
    command.add_argument("--map", action="append", default=[], metavar="TAG=NEW",
                         help="rename an entity type before the check, or drop it with NEW=O; repeatable "
                              "(e.g. --map OTH=O for UNER v1 treebanks that tag OTH)")

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


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``spacy-xlmrxl`` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)
