"""UNER v1 IOB2 (``.iob2``: 5 tab-separated columns, ``# text = `` comments; several files and
languages can go into one corpus) -> Docs with gold ``doc.ents`` (IOB2 repair: an ``I-X`` that
does not continue an ``X`` entity opens one). Every Doc carries its language code in
``doc.user_data["lang"]`` when it is known.

UNER's evaluation covers PER, ORG and LOC (`UNER_LABELS`, the default): a tag with another type
is an error naming the file and line. Some UNER v1 treebanks also tag ``OTH``; a label map
(``label_map={"OTH": "O"}``, ``--map OTH=O`` in ``convert-uner``) drops such entities, keeping
the data comparable with UNER's PER/ORG/LOC scores, or renames them (``OTH=MISC``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from spacy.tokens import Doc, Span
from spacy.vocab import Vocab

from .files import DataFormatError, PathLike, PathsArg, as_paths, infer_lang, read_lines, set_lang

UNER_LABELS: Tuple[str, ...] = ("PER", "ORG", "LOC")
UNER_COLUMNS = 5
_IOB_TAG = re.compile(r"^(?:O|([BI])-(\S+))$")
_ENTITY_TYPE = re.compile(r"^[^\s=]+$")
LabelMap = Mapping[str, str]


def check_label_map(label_map: Optional[LabelMap]) -> Dict[str, str]:
    """``label_map`` as a dict, after checking it: entity type -> new type, or ``O`` to drop."""
    checked: Dict[str, str] = {}
    for old, new in (label_map or {}).items():
        for value in (old, new):
            if not isinstance(value, str) or not _ENTITY_TYPE.match(value):
                raise ValueError(f"label map {old!r} -> {new!r}: an entity type is a non-empty word without "
                                 "spaces or '=' (the target may be O to drop the entities)")
        if old == "O":
            raise ValueError(f"label map {old!r} -> {new!r}: O is not an entity type and cannot be mapped")
        checked[old] = new
    return checked


def map_tag(tag: str, label_map: Mapping[str, str]) -> str:
    """``B-OTH`` -> ``O`` with ``{"OTH": "O"}``, -> ``B-MISC`` with ``{"OTH": "MISC"}``."""
    if tag == "O" or tag[2:] not in label_map:
        return tag
    new = label_map[tag[2:]]
    return "O" if new == "O" else f"{tag[:2]}{new}"


def parse_label_map(items: Sequence[str]) -> Dict[str, str]:
    """``["OTH=O", "GPE=LOC"]`` (``--map`` values) -> ``{"OTH": "O", "GPE": "LOC"}``."""
    label_map: Dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"--map expects TAG=NEW (e.g. OTH=O to drop OTH entities), got {item!r}")
        label_map[old.strip()] = new.strip()
    return check_label_map(label_map)


def _unknown_tag(tag: str, allowed: Optional[set]) -> str:
    if _IOB_TAG.match(tag) is None or allowed is None:
        return f"unknown tag {tag!r} in column 3 (expected O, B-X or I-X)"
    label = tag[2:]
    return (f"unknown tag {tag!r} in column 3 (expected O, B-X or I-X with X in {sorted(allowed)}): "
            f"UNER evaluates PER/ORG/LOC; drop {label} entities with --map {label}=O "
            f"(label_map={{{label!r}: 'O'}}), rename them with --map {label}=NEW, or keep every type "
            "with --labels any")


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
    path: PathLike, *, labels: Optional[Sequence[str]] = UNER_LABELS, label_map: Optional[LabelMap] = None,
    progress: bool = False,
) -> Iterator[UnerSentence]:
    """Parse a UNER ``.iob2`` file (column 2 = token, column 3 = IOB2 tag; 5 columns).

    `label_map`: entity type -> new type, or ``O`` to drop (``{"OTH": "O"}``), applied first;
    the sentences carry the mapped tags. `labels`: the entity types allowed after the map
    (None accepts any); the map's targets are allowed too.
    Raises `DataFormatError` (file:line) for a token line without exactly 5 tab-separated
    columns, a non-numeric token index, an empty token or an unknown tag.
    """
    path = Path(path)
    mapping = check_label_map(label_map)
    allowed = None if labels is None else set(labels) | (set(mapping.values()) - {"O"})
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
        word, tag = _token_line(line, mapping, allowed, path=path, lineno=lineno)
        if not words:
            first_line = lineno
        words.append(word)
        tags.append(tag)
    sentence = finish()
    if sentence is not None:
        yield sentence


def _token_line(line: str, mapping: Mapping[str, str], allowed: Optional[set], *, path: Path,
                lineno: int) -> Tuple[str, str]:
    """(word, mapped tag) of one token line of `read_uner`, checked."""
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
    mapped = map_tag(tag, mapping) if match is not None else tag
    if match is None or (mapped != "O" and allowed is not None and mapped[2:] not in allowed):
        raise DataFormatError(_unknown_tag(tag, allowed), path=path, line=lineno)
    return word, mapped


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
    label_map: Optional[LabelMap] = None,
    progress: bool = False,
) -> Iterator[Doc]:
    """Gold Docs of one or more UNER files, in order (language from `lang` or the file names;
    `labels` and `label_map` as in `read_uner`)."""
    for path in as_paths(paths):
        file_lang = lang or infer_lang(path)
        for sentence in read_uner(path, labels=labels, label_map=label_map, progress=progress):
            yield uner_doc(vocab, sentence, lang=file_lang)
