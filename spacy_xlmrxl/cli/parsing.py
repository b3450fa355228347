"""What the subcommand modules share to declare their arguments: `add_command` and the input /
output arguments of the converters (`add_io_arguments`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

DEFAULT_SPACY_LANG = "xx"


def add_command(sub: Any, name: str, func: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` running ``func(args)``."""
    command = sub.add_parser(name, help=help_, description=help_)
    command.set_defaults(func=func)
    return command


def add_io_arguments(command: argparse.ArgumentParser, *, per_file: bool = True) -> None:
    """Inputs, ``--output`` / ``--output-dir``, languages and progress bars of a converter."""
    command.add_argument("inputs", nargs="+", type=Path, help="input file(s)")
    command.add_argument("--output", "-o", type=Path, help="one .spacy file for all inputs")
    if per_file:
        command.add_argument("--output-dir", type=Path, help="one <split>-<lang>.spacy per input in this folder")
    command.add_argument("--lang", default=None, help="language code for doc.user_data['lang'] (default: from the file names)")
    command.add_argument("--spacy-lang", default=DEFAULT_SPACY_LANG, help="spaCy language whose tokenizer makes the docs (default: xx)")
    command.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
