"""SIB-200 TSV (CSV quoting, header ``index_id, category, text``) -> Docs with one-hot ``doc.cats``
over ``labels.txt``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.tokens import Doc

from .files import DataFormatError, PathLike, PathsArg, as_paths, infer_lang, read_lines, set_lang, with_progress

SIB200_COLUMNS: Tuple[str, ...] = ("index_id", "category", "text")


def read_labels(path: PathLike) -> List[str]:
    """Labels of a ``labels.txt`` (one per line; blank lines ignored; no duplicates allowed)."""
    path = Path(path)
    labels: List[str] = []
    for lineno, line in read_lines(path, progress=False):
        label = line.strip()
        if not label:
            continue
        if label in labels:
            raise DataFormatError(f"duplicate label {label!r}", path=path, line=lineno)
        labels.append(label)
    if not labels:
        raise DataFormatError("no labels", path=path)
    return labels


@dataclass
class Sib200Row:
    """One SIB-200 row: FLORES-200 sentence id, topic label, sentence."""

    index_id: str
    category: str
    text: str
    line: int


def csv_rows(reader: Any, path: Path) -> Iterator[Tuple[int, List[str]]]:
    """(first line number, fields) of each non-empty row of a csv reader; csv errors name the line."""
    while True:
        start_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataFormatError(f"bad TSV row: {err}", path=path, line=start_line) from None
        if row:
            yield start_line, row


def read_tsv(path: PathLike, *, columns: Sequence[str], progress: bool = False) -> Iterator[Tuple[int, Dict[str, str]]]:
    """(line number, {column: value}) for each row of a TSV with a header row, read with the csv
    module (tab delimiter, CSV quoting, as pandas writes it).

    Raises `DataFormatError` (file:line) when the header lacks one of `columns` or a row has a
    different number of fields than the header.
    """
    path = Path(path)
    with path.open(encoding="utf8", newline="") as handle:
        rows = csv_rows(csv.reader(handle, delimiter="\t"), path)
        header = next(rows, (1, []))[1]
        missing = [name for name in columns if name not in header]
        if missing:
            raise DataFormatError(f"header {header} lacks column(s) {missing}", path=path, line=1)
        index = {name: header.index(name) for name in columns}
        for line, row in with_progress(rows, desc=path.name, total=None, enabled=progress, unit="rows"):
            if len(row) != len(header):
                raise DataFormatError(
                    f"expected {len(header)} tab-separated fields ({', '.join(header)}), found {len(row)}: {row!r}",
                    path=path,
                    line=line,
                )
            yield line, {name: row[i] for name, i in index.items()}


def read_sib200(
    path: PathLike, *, labels: Optional[Sequence[str]] = None, progress: bool = False
) -> Iterator[Sib200Row]:
    """Parse a SIB-200 TSV (`read_tsv` with columns ``index_id``, ``category``, ``text``).

    Raises `DataFormatError` (file:line) for a missing column, a row with another number of
    fields, an empty text, or a category not in `labels` (when given).
    """
    allowed = None if labels is None else set(labels)
    for line, fields in read_tsv(path, columns=SIB200_COLUMNS, progress=progress):
        item = Sib200Row(fields["index_id"], fields["category"], fields["text"], line)
        if allowed is not None and item.category not in allowed:
            raise DataFormatError(f"unknown category {item.category!r} (labels: {sorted(allowed)})", path=path, line=line)
        if not item.text.strip():
            raise DataFormatError("empty text", path=path, line=line)
        yield item


def sib200_doc(nlp: Language, row: Sib200Row, labels: Sequence[str], *, lang: Optional[str] = None) -> Doc:
    """A gold Doc for one SIB-200 row: ``nlp.make_doc(text)`` with one-hot ``doc.cats``."""
    doc = nlp.make_doc(row.text)
    doc.cats = {label: float(label == row.category) for label in labels}
    doc.user_data["index_id"] = row.index_id
    return set_lang(doc, lang)


def sib200_docs(
    nlp: Language,
    paths: PathsArg,
    labels: Sequence[str],
    *,
    lang: Optional[str] = None,
    progress: bool = False,
) -> Iterator[Doc]:
    """Gold Docs of one or more SIB-200 TSVs, in order (language from `lang` or the folder)."""
    for path in as_paths(paths):
        file_lang = lang or infer_lang(path)
        for row in read_sib200(path, labels=labels, progress=progress):
            yield sib200_doc(nlp, row, labels, lang=file_lang)
