"""Corpus readers and converters for the project's data sets.

Owns: parsing the four on-disk formats the workflow trains on, with errors that name the file
and line (`DataFormatError`):

* UNER v1 IOB2 (``.iob2``: 5 tab-separated columns, ``# text = `` comments; several files and
  languages can go into one corpus) -> Docs with gold ``doc.ents`` (IOB2 repair: an ``I-X`` that
  does not continue an ``X`` entity opens one);
* SIB-200 TSV (CSV quoting, header ``index_id, category, text``) -> Docs with one-hot
  ``doc.cats`` over ``labels.txt``;
* SQuAD v1.1 / XQuAD JSON -> one Doc per (context, question) whose text is the context, with
  the question and the gold answers set by the QA component's ``set_qa_annotation``; and the
  deterministic split by article (title) across all languages, so that no context leaks
  between train, dev and test;
* raw text (one doc per line or per blank-line separated paragraph, or a named TSV column)
  -> plain Docs for fill-mask adaptation.

It also writes and reads DocBin ``.spacy`` files (`FastDocBin`: user data without srsly's
per-doc entry-point scan) and registers, in ``spacy.registry.readers``,
``spacy-xlmrxl.Corpus.v1`` (``spacy.Corpus.v1`` over ``.spacy`` files whose examples carry the
QA question on the predicted doc too; the training configs use it) and the raw-format readers
``spacy-xlmrxl.UnerReader.v1``, ``spacy-xlmrxl.Sib200Reader.v1``,
``spacy-xlmrxl.SquadReader.v1`` and ``spacy-xlmrxl.RawTextReader.v1``. Every Doc carries its
language code in ``doc.user_data["lang"]`` when it is known.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Corpus, Example
from spacy.util import registry
from spacy.vocab import Vocab

from .scorers_qa import register_qa_extensions

PathLike = Union[str, Path]
PathsArg = Union[PathLike, Sequence[PathLike]]

UNER_LABELS: Tuple[str, ...] = ("PER", "ORG", "LOC")
UNER_COLUMNS = 5
SIB200_COLUMNS: Tuple[str, ...] = ("index_id", "category", "text")
LANG_KEY = "lang"

_IOB_TAG = re.compile(r"^(?:O|([BI])-(\S+))$")
_LANG_DIR = re.compile(r"^[a-z]{2,3}(?:_[A-Z][a-z]{3})?$")
_LANG_PREFIX = re.compile(r"^([a-z]{2,3})_")


class DataFormatError(ValueError):
    """A data file does not have the documented format; the message names the file and line."""

    def __init__(self, message: str, *, path: PathLike, line: Optional[int] = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def _progress(items: Iterable[Any], *, desc: str, total: Optional[int], enabled: bool, unit: str) -> Iterable[Any]:
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


def _read_lines(path: Path, *, progress: bool) -> Iterator[Tuple[int, str]]:
    """(1-based line number, line without its newline) for every line of a UTF-8 file."""
    try:
        text = path.read_text(encoding="utf8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"not UTF-8 ({err})", path=path) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    numbered = enumerate(lines, start=1)
    yield from _progress(numbered, desc=path.name, total=len(lines), enabled=progress, unit="lines")


def _set_lang(doc: Doc, lang: Optional[str]) -> Doc:
    if lang:
        doc.user_data[LANG_KEY] = lang
    return doc


# ---------------------------------------------------------------------------------------------
# UNER IOB2


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

    for lineno, line in _read_lines(path, progress=progress):
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
    return _set_lang(doc, lang)


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


# ---------------------------------------------------------------------------------------------
# SIB-200 TSV


def read_labels(path: PathLike) -> List[str]:
    """Labels of a ``labels.txt`` (one per line; blank lines ignored; no duplicates allowed)."""
    path = Path(path)
    labels: List[str] = []
    for lineno, line in _read_lines(path, progress=False):
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


def _csv_rows(reader: Any, path: Path) -> Iterator[Tuple[int, List[str]]]:
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
        rows = _csv_rows(csv.reader(handle, delimiter="\t"), path)
        header = next(rows, (1, []))[1]
        missing = [name for name in columns if name not in header]
        if missing:
            raise DataFormatError(f"header {header} lacks column(s) {missing}", path=path, line=1)
        index = {name: header.index(name) for name in columns}
        for line, row in _progress(rows, desc=path.name, total=None, enabled=progress, unit="rows"):
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
    return _set_lang(doc, lang)


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


# ---------------------------------------------------------------------------------------------
# SQuAD / XQuAD JSON


@dataclass
class SquadQuestion:
    """One question with its gold answers as character spans ``(start, end)`` in the context."""

    qid: str
    question: str
    answers: List[Tuple[int, int]]
    answer_texts: List[str]


@dataclass
class SquadParagraph:
    context: str
    questions: List[SquadQuestion]


@dataclass
class SquadArticle:
    title: str
    paragraphs: List[SquadParagraph] = field(default_factory=list)


def _require(obj: Any, key: str, kind: Union[type, Tuple[type, ...]], where: str, path: Path) -> Any:
    """``obj[key]`` if `obj` is a dict holding a `kind` there, else a `DataFormatError`."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataFormatError(f"{where}: missing key {key!r}", path=path)
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataFormatError(f"{where}.{key}: expected {expected}, found {type(value).__name__}", path=path)
    return value


def read_squad(path: PathLike) -> List[SquadArticle]:
    """Parse SQuAD v1.1-style JSON (``data[].title/paragraphs[].context/qas[].answers[]``).

    Raises `DataFormatError` naming the file and the JSON location (e.g.
    ``data[3].paragraphs[0].qas[2]: missing key 'question'``) for missing keys, wrong types, or an
    answer whose ``answer_start``/``text`` does not match the context.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=err.lineno) from None
    articles: List[SquadArticle] = []
    for a, raw_article in enumerate(_require(payload, "data", list, "top level", path)):
        where_a = f"data[{a}]"
        article = SquadArticle(_require(raw_article, "title", str, where_a, path))
        for p, raw_par in enumerate(_require(raw_article, "paragraphs", list, where_a, path)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _require(raw_par, "context", str, where_p, path)
            paragraph = SquadParagraph(context, [])
            for q, raw_qa in enumerate(_require(raw_par, "qas", list, where_p, path)):
                where_q = f"{where_p}.qas[{q}]"
                question = SquadQuestion(
                    str(_require(raw_qa, "id", (str, int), where_q, path)),
                    _require(raw_qa, "question", str, where_q, path),
                    [],
                    [],
                )
                for n, raw_answer in enumerate(_require(raw_qa, "answers", list, where_q, path)):
                    where_n = f"{where_q}.answers[{n}]"
                    start = _require(raw_answer, "answer_start", int, where_n, path)
                    text = _require(raw_answer, "text", str, where_n, path)
                    if context[start : start + len(text)] != text:
                        raise DataFormatError(
                            f"{where_n}: answer {text!r} is not at answer_start={start} of the context",
                            path=path,
                        )
                    question.answers.append((start, start + len(text)))
                    question.answer_texts.append(text)
                paragraph.questions.append(question)
            article.paragraphs.append(paragraph)
        articles.append(article)
    return articles


@dataclass(frozen=True)
class ArticleSplit:
    """Titles of the train / dev / test articles (disjoint)."""

    train: Tuple[str, ...]
    dev: Tuple[str, ...]
    test: Tuple[str, ...]

    def split_of(self, title: str) -> str:
        for name in ("train", "dev", "test"):
            if title in getattr(self, name):
                return name
        raise KeyError(title)

    def to_dict(self) -> Dict[str, List[str]]:
        return {"train": list(self.train), "dev": list(self.dev), "test": list(self.test)}


def split_articles(titles: Iterable[str], *, seed: int, n_dev: int, n_test: int) -> ArticleSplit:
    """Split article titles deterministically: sort the unique titles, shuffle with `seed`,
    take `n_test` for test, the next `n_dev` for dev and the rest for train.

    XQuAD's languages are translations with the same titles, so splitting the union of the
    titles of all language files keeps every article's content (in every language) in one split.
    """
    unique = sorted(set(titles))
    if n_dev < 0 or n_test < 0 or n_dev + n_test >= len(unique):
        raise ValueError(f"cannot take {n_dev} dev + {n_test} test articles out of {len(unique)} and keep some for training")
    random.Random(seed).shuffle(unique)
    test = tuple(sorted(unique[:n_test]))
    dev = tuple(sorted(unique[n_test : n_test + n_dev]))
    train = tuple(sorted(unique[n_test + n_dev :]))
    return ArticleSplit(train=train, dev=dev, test=test)


def squad_docs(
    nlp: Language,
    articles: Iterable[SquadArticle],
    *,
    lang: Optional[str] = None,
    progress: bool = False,
    desc: str = "squad",
) -> Iterator[Doc]:
    """One gold Doc per (context, question): text = context; the question, its gold answer
    spans and id set by the QA component's ``set_qa_annotation`` (``doc._.question``,
    ``doc._.answers``, ``user_data["qa_ids"]``); ``user_data["title"]`` keeps the article."""
    from .components.qa import set_qa_annotation

    pairs = [(a, p, q) for a in articles for p in a.paragraphs for q in p.questions]
    context: Optional[Doc] = None
    for article, paragraph, question in _progress(pairs, desc=desc, total=len(pairs), enabled=progress, unit="questions"):
        if context is None or context.text != paragraph.context:
            context = nlp.make_doc(paragraph.context)  # tokenised once per paragraph
        doc = context.copy()
        set_qa_annotation(doc, question=question.question, answers=question.answers, qid=question.qid)
        doc.user_data["title"] = article.title
        yield _set_lang(doc, lang)


def read_squad_files(paths: PathsArg) -> Dict[Path, List[SquadArticle]]:
    """Parse several SQuAD-style files (e.g. the XQuAD languages), keyed by path."""
    return {path: read_squad(path) for path in as_paths(paths)}


def split_squad_files(
    parsed: Dict[Path, List[SquadArticle]], *, seed: int, n_dev: int, n_test: int
) -> ArticleSplit:
    """`split_articles` over the union of the titles of all the files."""
    titles = [article.title for articles in parsed.values() for article in articles]
    return split_articles(titles, seed=seed, n_dev=n_dev, n_test=n_test)


# ---------------------------------------------------------------------------------------------
# Raw text


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
    for _, line in _read_lines(path, progress=progress):
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
            yield _set_lang(nlp.make_doc(text), file_lang)


# ---------------------------------------------------------------------------------------------
# DocBin output and registered readers


class FastDocBin(DocBin):
    """A ``DocBin`` that (de)serialises each doc's user data with ONE msgpack hook chain.

    ``srsly.msgpack_dumps`` / ``msgpack_loads`` rebuild their encoder / decoder chain for every
    call, re-reading the installed entry points: milliseconds per doc, which dominated loading
    a corpus with user data (QA questions, languages). Same bytes, same docs, same file format
    as ``DocBin(store_user_data=True)``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("store_user_data", True)
        super().__init__(**kwargs)
        self._packer: Any = None
        self._object_hook: Any = None

    def add(self, doc: Doc) -> None:
        store = self.store_user_data
        self.store_user_data = False
        try:
            super().add(doc)
        finally:
            self.store_user_data = store
        if store:
            if self._packer is None:
                from srsly.msgpack import Packer

                self._packer = Packer(use_bin_type=True)
            self.user_data.append(self._packer.pack(doc.user_data))

    def _unpack(self, packed: bytes) -> Any:
        import functools

        from srsly import msgpack

        if self._object_hook is None:
            hook = None
            for decoder in msgpack.msgpack_decoders.get_all().values():
                hook = functools.partial(decoder, chain=hook)
            self._object_hook = hook
        return msgpack.unpackb(packed, raw=False, use_list=False, object_pairs_hook=None, object_hook=self._object_hook)

    def get_docs(self, vocab: Vocab) -> Iterator[Doc]:
        packed, self.user_data = self.user_data, []  # spaCy's loop then skips its own unpacking
        try:
            for i, doc in enumerate(super().get_docs(vocab)):
                if i < len(packed) and packed[i] is not None:
                    doc.user_data.update(self._unpack(packed[i]))
                yield doc
        finally:
            self.user_data = packed


def write_docbin(docs: Iterable[Doc], path: PathLike) -> int:
    """Write Docs (with user data: language, QA gold, ids) to a ``.spacy`` file; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docbin = FastDocBin()
    for doc in docs:
        docbin.add(doc)
    docbin.to_disk(path)
    return len(docbin)


# Doc extensions that are model INPUTS (not annotation): copied from the gold doc onto the
# predicted one, since ``nlp.make_doc(text)`` cannot know them (the QA question).
INPUT_EXTENSIONS: Tuple[str, ...] = ("question",)
register_qa_extensions()  # ``doc._.question`` / ``doc._.answers`` readable in any process


def make_example(predicted: Doc, reference: Doc) -> Example:
    """``Example(predicted, reference)`` with the `INPUT_EXTENSIONS` of the reference also set
    on the predicted doc (so that `xlmrxl_qa` sees the question, at evaluation too)."""
    for name in INPUT_EXTENSIONS:
        if reference._.get(name) is not None:
            predicted._.set(name, reference._.get(name))
    return Example(predicted, reference)


class TaskCorpus(Corpus):
    """``spacy.Corpus`` over ``.spacy`` files that reads them with `FastDocBin` and whose
    Examples carry the task inputs (`INPUT_EXTENSIONS`) on the predicted doc as well."""

    def read_docbin(self, vocab: Vocab, locs: Iterable[PathLike]) -> Iterator[Doc]:
        count = 0
        for loc in locs:
            if not str(loc).endswith(".spacy"):
                continue
            for doc in FastDocBin().from_disk(loc).get_docs(vocab):
                if len(doc):
                    yield doc
                    count += 1
                    if self.limit >= 1 and count >= self.limit:
                        return

    def _make_example(self, nlp: Language, reference: Doc, gold_preproc: bool) -> Example:
        example = super()._make_example(nlp, reference, gold_preproc)
        return make_example(example.predicted, reference)


class DocsCorpus:
    """A corpus reader over gold Docs built once (on first use) and kept as a DocBin.

    Calling it with an ``nlp`` yields `Example`s like ``spacy.Corpus.v1`` does (predicted =
    ``nlp.make_doc`` of the gold text, plus the task inputs, see `make_example`); `limit` keeps
    the first Docs only.
    """

    def __init__(self, build: Callable[[Language], Iterable[Doc]], *, limit: int = 0) -> None:
        self.build = build
        self.limit = limit
        self._docbin: Optional[DocBin] = None

    def reference_docs(self, nlp: Language) -> Iterator[Doc]:
        if self._docbin is None:
            docbin = FastDocBin()
            for i, doc in enumerate(self.build(nlp)):
                if self.limit and i >= self.limit:
                    break
                docbin.add(doc)
            self._docbin = docbin
        return self._docbin.get_docs(nlp.vocab)

    def __call__(self, nlp: Language) -> Iterator[Example]:
        for reference in self.reference_docs(nlp):
            yield make_example(nlp.make_doc(reference.text), reference)


@registry.readers("spacy-xlmrxl.Corpus.v1")
def create_task_corpus(
    path: Optional[Path], limit: int = 0, max_length: int = 0, gold_preproc: bool = False, shuffle: bool = False
) -> TaskCorpus:
    """``spacy.Corpus.v1`` with the task inputs (the QA question) on the predicted docs."""
    if path is None:
        raise ValueError("spacy-xlmrxl.Corpus.v1 needs a path to a .spacy file or a folder of them")
    return TaskCorpus(path, limit=limit, max_length=max_length, gold_preproc=gold_preproc, shuffle=shuffle)


@registry.readers("spacy-xlmrxl.UnerReader.v1")
def create_uner_reader(
    path: Union[str, List[str]], limit: int = 0, lang: Optional[str] = None, progress: bool = True
) -> DocsCorpus:
    """UNER ``.iob2`` file(s) (a path or a list of paths, languages may differ) as a corpus."""
    return DocsCorpus(lambda nlp: uner_docs(nlp.vocab, path, lang=lang, progress=progress), limit=limit)


@registry.readers("spacy-xlmrxl.Sib200Reader.v1")
def create_sib200_reader(
    path: Union[str, List[str]], labels_path: str, limit: int = 0, progress: bool = True
) -> DocsCorpus:
    """SIB-200 TSV file(s) as a textcat corpus (one-hot ``doc.cats`` over `labels_path`)."""
    return DocsCorpus(
        lambda nlp: sib200_docs(nlp, path, read_labels(labels_path), progress=progress), limit=limit
    )


@registry.readers("spacy-xlmrxl.SquadReader.v1")
def create_squad_reader(
    path: Union[str, List[str]],
    split: str = "all",
    seed: int = 0,
    n_dev_articles: int = 4,
    n_test_articles: int = 12,
    limit: int = 0,
    progress: bool = True,
) -> DocsCorpus:
    """SQuAD/XQuAD file(s) as a QA corpus; `split` (``train``, ``dev``, ``test`` or ``all``)
    keeps the articles `split_squad_files` assigns to it, over the union of the files' titles."""
    if split not in ("train", "dev", "test", "all"):
        raise ValueError(f"split must be train, dev, test or all, not {split!r}")

    def build(nlp: Language) -> Iterator[Doc]:
        parsed = read_squad_files(path)
        if split == "all":
            keep = None
        else:
            chosen = split_squad_files(parsed, seed=seed, n_dev=n_dev_articles, n_test=n_test_articles)
            keep = set(getattr(chosen, split))
        for file_path, articles in parsed.items():
            selected = [a for a in articles if keep is None or a.title in keep]
            yield from squad_docs(nlp, selected, lang=infer_lang(file_path), progress=progress, desc=file_path.name)

    return DocsCorpus(build, limit=limit)


@registry.readers("spacy-xlmrxl.RawTextReader.v1")
def create_raw_text_reader(
    path: Union[str, List[str]],
    paragraphs: bool = False,
    column: Optional[str] = None,
    limit: int = 0,
    progress: bool = True,
) -> DocsCorpus:
    """Raw text file(s) (one doc per line or paragraph, or a TSV column) for fill-mask."""
    return DocsCorpus(
        lambda nlp: text_docs(nlp, path, paragraphs=paragraphs, column=column, progress=progress), limit=limit
    )
