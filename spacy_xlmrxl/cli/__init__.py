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
  directory (`spacy_xlmrxl.export`; LoRA adapters merged);
* ``merge-lora``: a pipeline trained with LoRA adapters -> the pipeline with the adapters folded
  into its backbones (`spacy_xlmrxl.merging`);
* ``export-peft``: a component's LoRA adapters and head -> an HF PEFT adapter directory.

One module per group of subcommands (`convert`, `evaluate`, `config`, `tables`, `export`,
`lora`); this one builds the parser.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from . import config, convert, evaluate, export, lora, tables


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spacy-xlmrxl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (convert, evaluate, config, tables, export, lora):
        module.add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``spacy-xlmrxl`` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)
