"""``merge-config``: a training config + a partial override file (``configs/xl_gpu.cfg``), with the
override's ``[backbone]`` settings set on every backbone block (``spacy-xlmrxl.Backbone.v1``, and
the v1 architecture blocks of older configs: `spacy_xlmrxl.backbone.settings.backbone_blocks`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from wasabi import msg

from ..backbone.settings import BACKBONE_SETTINGS, backbone_blocks
from .parsing import add_command


def deep_update(target: Dict[str, Any], updates: Dict[str, Any]) -> None:
    """Set `updates` into `target` by path, keeping `target`'s order; a block whose registered
    function (``@...`` key) changes is replaced as a whole."""
    for key, value in updates.items():
        current = target.get(key)
        same_function = isinstance(current, dict) and isinstance(value, dict) and all(
            current.get(k) == v for k, v in value.items() if k.startswith("@")
        )
        if same_function:
            deep_update(current, value)  # type: ignore[arg-type]
        else:
            target[key] = value


def merge_config(base: Any, overrides: Any) -> Any:
    """`base` (a training config) updated by `overrides` (a partial config): every section but
    ``[backbone]`` is merged by path; ``[backbone]`` keys are set on every block of backbone
    settings (`backbone_blocks`), whatever the component is called. Variables stay uninterpolated."""
    from thinc.api import Config

    updates = Config(overrides).copy()
    backbone = dict(updates.pop("backbone", {}))
    merged = Config(base).copy()
    deep_update(merged, updates)
    blocks = backbone_blocks(merged) if backbone else []
    if backbone and not blocks:
        raise ValueError(f"[backbone] settings given but the config has no block of backbone settings "
                         f"({BACKBONE_SETTINGS!r}, or a v1 architecture with them as arguments)")
    for block in blocks:
        block.update(backbone)
    return merged


def cmd_merge_config(args: argparse.Namespace) -> None:
    from thinc.api import Config

    merged = merge_config(Config().from_disk(args.base, interpolate=False), Config().from_disk(args.overrides, interpolate=False))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    merged.to_disk(args.output)
    msg.good(f"{args.base} + {args.overrides} -> {args.output}")


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the ``spacy-xlmrxl`` parser's subparsers."""
    command = add_command(sub, "merge-config", cmd_merge_config, "a training config + a partial override config (e.g. configs/xl_gpu.cfg) -> a new config")
    command.add_argument("base", type=Path, help="training config, e.g. configs/ner.cfg")
    command.add_argument("overrides", type=Path, help="partial config; its [backbone] keys go to every backbone block")
    command.add_argument("--output", "-o", type=Path, required=True)
