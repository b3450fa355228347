"""Raw text (one doc per line or per blank-line separated paragraph, or a named TSV column) ->
plain Docs for fill-mask adaptation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional

from spacy.language import Language
from spacy.tokens import Doc

from .files import PathLike, PathsArg, as_paths, infer_lang, read_lines, set_lang
from .sib200 import read_tsv


def read_text(
    path: PathLike, *, paragraphs: bool = False, column: Optional[str] = None, progress: bool = False
) -> Iterator[str]:
    """Texts of a raw file: one per non-empty line, or per blank-line separated paragraph
    (`paragraphs`), or (`column`) the named column of a TSV with a header (CSV quoting)."""
    path = Path(path)
    if column is not None:
        for _, fields in read_tsv(path, columns=[column], progress=progress):
            if fields[column].strip():
                yield fields[column].strip()
        return
    block: List[str] = []
    for _, line in read_lines(path, progress=progress):
        if not paragraphs:
            if line.strip():
                yield line.strip()
        elif line.strip():
            block.append(line.strip())
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def text_docs(
    nlp: Language,
    paths: PathsArg,
    *,
    paragraphs: bool = False,
    column: Optional[str] = None,
    lang: Optional[str] = None,
    progress: bool = False,
) -> Iterator[Doc]:
    """Plain Docs (``nlp.make_doc``) for the texts of one or more raw files."""
    for path in as_paths(paths):
        file_lang = lang or infer_lang(path)
        for text in read_text(path, paragraphs=paragraphs, column=column, progress=progress):
            yield set_lang(nlp.make_doc(text), file_lang)
