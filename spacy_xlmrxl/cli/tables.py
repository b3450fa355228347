"""``metrics-table``: metrics JSON files -> Markdown tables for the README.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from wasabi import msg

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
from .parsing import add_command


def split_metrics_name(path: Path) -> Tuple[str, str]:
    """``ner-baseline-da.json`` -> (``ner-baseline``, ``da``); ``qa.json`` -> (``qa``, ``-``)."""
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.stem
    task, sep, key = stem.rpartition("-")
    return (task, key) if sep else (stem, "-")


def metrics_table(paths: Sequence[Path], *, meta: Sequence[str] = ()) -> str:
    """Markdown: one table per task (rows: languages, columns: `TASK_COLUMNS` or, for other
    tasks, every top-level number but ``speed``), scores x 100; a ``mean`` row for several rows."""
    groups: Dict[str, List[Tuple[str, Dict[str, Any]]]] = collections.OrderedDict()
    for path in sorted(paths):
        task, key = split_metrics_name(path)
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


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the ``spacy-xlmrxl`` parser's subparsers."""
    command = add_command(sub, "metrics-table", cmd_metrics_table, "metrics JSON files -> Markdown tables")
    command.add_argument("metrics", nargs="+", type=Path, help="<task>-<lang>.json files")
    command.add_argument("--output", "-o", type=Path, default=None, help="also write the Markdown here")
    command.add_argument("--meta", action="append", default=[], help="a line above the tables, e.g. 'preset: small'")
