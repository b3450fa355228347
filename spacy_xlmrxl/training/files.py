"""What every reader shares: input paths, line reading, progress bars, language codes, and
`DataFormatError`, the error that names the file and line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc

PathLike = Union[str, Path]
PathsArg = Union[PathLike, Sequence[PathLike]]
LANG_KEY = "lang"
_LANG_DIR = re.compile(r"^[a-z]{2,3}(?:_[A-Z][a-z]{3})?$")
_LANG_PREFIX = re.compile(r"^([a-z]{2,3})_")


class DataFormatError(ValueError):
    """A data file does not have the documented format; the message names the file and line."""

    def __init__(self, message: str, *, path: PathLike, line: Optional[int] = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def with_progress(items: Iterable[Any], *, desc: str, total: Optional[int], enabled: bool, unit: str) -> Iterable[Any]:
    """Wrap `items` in a tqdm progress bar on stderr when `enabled` (tqdm comes with spaCy)."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def as_paths(paths: PathsArg) -> List[Path]:
    """One path, or a sequence of them, as a list of `Path` (a config may give either)."""
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def infer_lang(path: PathLike) -> Optional[str]:
    """The language code a data file's name or folder implies, or None.

    ``da_ddt-ud-train.iob2`` -> ``da`` (UNER upstream names), ``uner/da/train.iob2`` -> ``da``,
    ``sib200/eng_Latn/test.tsv`` -> ``eng_Latn``, ``xquad.de.json`` -> ``de``.
    """
    path = Path(path)
    name = path.name
    parts = name.split(".")
    if len(parts) == 3 and _LANG_DIR.match(parts[1]):
        return parts[1]
    match = _LANG_PREFIX.match(name)
    if match:
        return match.group(1)
    if _LANG_DIR.match(path.parent.name):
        return path.parent.name
    return None


def read_lines(path: Path, *, progress: bool) -> Iterator[Tuple[int, str]]:
    """(1-based line number, line without its newline) for every line of a UTF-8 file."""
    try:
        text = path.read_text(encoding="utf8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"not UTF-8 ({err})", path=path) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    numbered = enumerate(lines, start=1)
    yield from with_progress(numbered, desc=path.name, total=len(lines), enabled=progress, unit="lines")


def set_lang(doc: Doc, lang: Optional[str]) -> Doc:
    if lang:
        doc.user_data[LANG_KEY] = lang
    return doc
