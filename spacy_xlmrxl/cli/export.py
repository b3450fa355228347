"""``export-hf``: a trained NER / textcat / QA / fill-mask component -> a Hugging Face model
directory (`spacy_xlmrxl.export`; LoRA adapters merged into the weights).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wasabi import msg

from ..export import export_fill_mask_to_hf, export_ner_to_hf, export_qa_to_hf, export_textcat_to_hf
from .parsing import add_command

#: task -> the function of `spacy_xlmrxl.export` that writes it
HF_EXPORTERS = {"ner": export_ner_to_hf, "textcat": export_textcat_to_hf, "qa": export_qa_to_hf,
                "fill-mask": export_fill_mask_to_hf}


def cmd_export_hf(args: argparse.Namespace) -> None:
    import spacy

    nlp = spacy.load(args.model)
    out = HF_EXPORTERS[args.task](nlp, args.output, name=args.name)
    msg.good(f"{args.task} component of {args.model} -> {out} (Hugging Face format)")


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the ``spacy-xlmrxl`` parser's subparsers."""
    command = add_command(sub, "export-hf", cmd_export_hf, "a trained pipeline's weights -> Hugging Face model directory")
    command.add_argument("model", help="pipeline directory")
    command.add_argument("output", type=Path, help="output directory")
    command.add_argument("--task", default="ner", choices=sorted(HF_EXPORTERS), help="which component to export")
    command.add_argument("--name", default=None, help="the component's name when the pipeline has several of that kind")
