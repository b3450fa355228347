"""SQuAD v1.1 / XQuAD JSON -> one Doc per (context, question) whose text is the context, with the
question and the gold answers set by `spacy_xlmrxl.pipeline.qa.annotation.set_qa_annotation`;
and the deterministic split by article (title) across all languages, so that no context leaks
between train, dev and test.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc

from ..pipeline.qa.annotation import set_qa_annotation
from .files import DataFormatError, PathLike, PathsArg, as_paths, set_lang, with_progress


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


def require(obj: Any, key: str, kind: Union[type, Tuple[type, ...]], where: str, path: Path) -> Any:
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
    for a, raw_article in enumerate(require(payload, "data", list, "top level", path)):
        where_a = f"data[{a}]"
        article = SquadArticle(require(raw_article, "title", str, where_a, path))
        for p, raw_par in enumerate(require(raw_article, "paragraphs", list, where_a, path)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = require(raw_par, "context", str, where_p, path)
            paragraph = SquadParagraph(context, [])
            for q, raw_qa in enumerate(require(raw_par, "qas", list, where_p, path)):
                where_q = f"{where_p}.qas[{q}]"
                question = SquadQuestion(
                    str(require(raw_qa, "id", (str, int), where_q, path)),
                    require(raw_qa, "question", str, where_q, path),
                    [],
                    [],
                )
                for n, raw_answer in enumerate(require(raw_qa, "answers", list, where_q, path)):
                    where_n = f"{where_q}.answers[{n}]"
                    start = require(raw_answer, "answer_start", int, where_n, path)
                    text = require(raw_answer, "text", str, where_n, path)
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

    pairs = [(a, p, q) for a in articles for p in a.paragraphs for q in p.questions]
    context: Optional[Doc] = None
    for article, paragraph, question in with_progress(pairs, desc=desc, total=len(pairs), enabled=progress, unit="questions"):
        if context is None or context.text != paragraph.context:
            context = nlp.make_doc(paragraph.context)  # tokenised once per paragraph
        doc = context.copy()
        set_qa_annotation(doc, question=question.question, answers=question.answers, qid=question.qid)
        doc.user_data["title"] = article.title
        yield set_lang(doc, lang)


def read_squad_files(paths: PathsArg) -> Dict[Path, List[SquadArticle]]:
    """Parse several SQuAD-style files (e.g. the XQuAD languages), keyed by path."""
    return {path: read_squad(path) for path in as_paths(paths)}


def split_squad_files(
    parsed: Dict[Path, List[SquadArticle]], *, seed: int, n_dev: int, n_test: int
) -> ArticleSplit:
    """`split_articles` over the union of the titles of all the files."""
    titles = [article.title for articles in parsed.values() for article in articles]
    return split_articles(titles, seed=seed, n_dev=n_dev, n_test=n_test)
