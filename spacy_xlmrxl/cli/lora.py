"""``merge-lora`` and ``export-peft``: a pipeline trained with LoRA adapters (backbone setting
``lora``) -> the same pipeline with the adapters folded into its backbones
(`spacy_xlmrxl.merging`), or a component's adapters in the HF PEFT format (`spacy_xlmrxl.export`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wasabi import msg

from .parsing import add_command


def cmd_merge_lora(args: argparse.Namespace) -> None:
    from ..merging import merge_lora_to_disk

    out = merge_lora_to_disk(args.pipeline, args.output)
    msg.good(f"{args.pipeline} -> {out}: LoRA adapters merged into the backbones (lora = null)")


def cmd_export_peft(args: argparse.Namespace) -> None:
    import spacy

    from ..export import export_peft

    out = export_peft(spacy.load(args.pipeline), args.component, args.output)
    msg.good(f"{args.component} of {args.pipeline} -> {out} (HF PEFT adapter)")


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the ``spacy-xlmrxl`` parser's subparsers."""
    command = add_command(sub, "merge-lora", cmd_merge_lora,
                          "a pipeline with LoRA adapters -> the pipeline with the adapters merged into its backbones")
    command.add_argument("pipeline", type=Path, help="pipeline directory (trained with a lora setting)")
    command.add_argument("output", type=Path, help="output pipeline directory")
    command = add_command(sub, "export-peft", cmd_export_peft,
                          "a component's LoRA adapters + head -> an HF PEFT adapter directory")
    command.add_argument("pipeline", type=Path, help="pipeline directory")
    command.add_argument("component", help="component name (an xlmrxl_ner, xlmrxl_textcat or xlmrxl_qa pipe)")
    command.add_argument("output", type=Path, help="output directory (adapter_config.json + adapter_model.safetensors)")
