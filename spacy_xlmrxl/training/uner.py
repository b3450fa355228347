"""UNER v1 IOB2 (``.iob2``: 5 tab-separated columns, ``# text = `` comments; several files and
languages can go into one corpus) -> Docs with gold ``doc.ents`` (IOB2 repair: an ``I-X`` that
does not continue an ``X`` entity opens one). Every Doc carries its language code in
``doc.user_data["lang"]`` when it is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from spacy.tokens import Doc, Span
from spacy.vocab import Vocab

from .files import (
    DataFormatError,
    PathLike,
    PathsArg,
    as_paths,
    infer_lang,
    read_lines,
    set_lang,
)

UNER_LABELS: Tuple[str, ...] = ("PER", "ORG", "LOC")
UNER_COLUMNS = 5
_IOB_TAG = re.compile(r"^(?:O|([BI])-(\S+))$")


@dataclass
class UnerSentence:
    """One sentence of a UNER file: word forms, raw IOB2 tags, the ``# text`` line if any."""

    words: List[str]
    tags: List[str]
    text: Optional[str]
    sent_id: Optional[str]
    path: Path
    line: int  # line number of the sentence's first token


def read_uner(
    path: PathLike, *, labels: Optional[Sequence[str]] = UNER_LABELS, progress: bool = False
) -> Iterator[UnerSentence]:
    """Parse a UNER ``.iob2`` file (column 2 = token, column 3 = IOB2 tag; 5 columns).

    `labels`: the entity types allowed after ``B-``/``I-`` (None accepts any).
    Raises `DataFormatError` (file:line) for a token line without exactly 5 tab-separated
    columns, a non-numeric token index, an empty token or an unknown tag.
    """
    path = Path(path)
    allowed = None if labels is None else set(labels)
    words: List[str] = []
    tags: List[str] = []
    text: Optional[str] = None
    sent_id: Optional[str] = None
    first_line = 0

    def finish() -> Optional[UnerSentence]:
        if not words:
            return None
        return UnerSentence(list(words), list(tags), text, sent_id, path, first_line)

    for lineno, line in read_lines(path, progress=progress):
        if not line.strip():
            sentence = finish()
            if sentence is not None:
                yield sentence
            words, tags, text, sent_id = [], [], None, None
            continue
        if line.startswith("#") and not words:
            key, sep, value = line[1:].strip().partition("=")
            if sep and key.strip() == "text":
                text = value.strip()
            elif sep and key.strip() == "sent_id":
                sent_id = value.strip()
            continue
        columns = line.split("\t")
        if len(columns) != UNER_COLUMNS:
            raise DataFormatError(
                f"expected {UNER_COLUMNS} tab-separated columns (index, token, IOB2 tag, XNER, "
                f"annotator), found {len(columns)}: {line!r}",
                path=path,
                line=lineno,
            )
        index, word, tag = columns[0], columns[1], columns[2]
        if not index.isdigit():
            raise DataFormatError(f"token index {index!r} is not a number", path=path, line=lineno)
        if not word:
            raise DataFormatError("empty token in column 2", path=path, line=lineno)
        match = _IOB_TAG.match(tag)
        if match is None or (match.group(2) is not None and allowed is not None and match.group(2) not in allowed):
            expected = "O, B-X or I-X" + (f" with X in {sorted(allowed)}" if allowed is not None else "")
            raise DataFormatError(f"unknown tag {tag!r} in column 3 (expected {expected})", path=path, line=lineno)
        if not words:
            first_line = lineno
        words.append(word)
        tags.append(tag)
    sentence = finish()
    if sentence is not None:
        yield sentence


def repair_iob2(tags: Sequence[str]) -> List[str]:
    """IOB2 repair: an ``I-X`` that does not follow ``B-X``/``I-X`` becomes ``B-X``."""
    repaired: List[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        repaired.append(tag)
        previous = tag
    return repaired


def iob2_spans(tags: Sequence[str]) -> List[Tuple[int, int, str]]:
    """Entity spans ``(start, end, label)`` (token offsets, end exclusive) of IOB2 tags.

    Tags are repaired first (`repair_iob2`), so the result is the same for raw and repaired tags.
    """
    spans: List[Tuple[int, int, str]] = []
    for i, tag in enumerate(repair_iob2(tags)):
        if tag.startswith("B-"):
            spans.append((i, i + 1, tag[2:]))
        elif tag.startswith("I-"):
            start, _, label = spans[-1]
            spans[-1] = (start, i + 1, label)
    return spans


def infer_spaces(words: Sequence[str], text: Optional[str]) -> List[bool]:
    """Whether each word is followed by whitespace in `text` (the ``# text =`` line).

    The words are found left to right in `text` (skipping whitespace only); if any word does not
    match there (e.g. a UD multi-word token), every word gets a single space after it except the
    last. Without `text`, the same single-space fallback is used.
    """
    fallback = [True] * (len(words) - 1) + [False] if words else []
    if not text:
        return fallback
    spaces: List[bool] = []
    pos = 0
    for word in words:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if not text.startswith(word, pos):
            return fallback
        pos += len(word)
        spaces.append(pos < len(text) and text[pos].isspace())
    if text[pos:].strip():
        return fallback
    return spaces


def uner_doc(vocab: Vocab, sentence: UnerSentence, *, lang: Optional[str] = None) -> Doc:
    """A gold Doc for one UNER sentence: its words (spacing from ``# text``) and ``doc.ents``."""
    doc = Doc(vocab, words=sentence.words, spaces=infer_spaces(sentence.words, sentence.text))
    doc.ents = [Span(doc, start, end, label=label) for start, end, label in iob2_spans(sentence.tags)]
    if sentence.sent_id:
        doc.user_data["sent_id"] = sentence.sent_id
    return set_lang(doc, lang)


def uner_docs(
    vocab: Vocab,
    paths: PathsArg,
    *,
    lang: Optional[str] = None,
    labels: Optional[Sequence[str]] = UNER_LABELS,
    progress: bool = False,
) -> Iterator[Doc]:
    """Gold Docs of one or more UNER files, in order (language from `lang` or the file names)."""
    for path in as_paths(paths):
        file_lang = lang or infer_lang(path)
        for sentence in read_uner(path, labels=labels, progress=progress):
            yield uner_doc(vocab, sentence, lang=file_lang)
