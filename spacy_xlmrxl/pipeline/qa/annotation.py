"""The Doc side of extractive QA, shared by `xlmrxl_qa`, the SQuAD reader and scoring.

- ``doc._.question``: a question string, a list of question strings, or None (no question).
- ``doc._.answers``: one list per question of answer dicts ``{"text", "start", "end", "score"}``
  (character offsets in ``doc.text``), best first; ``[]`` for a question with no answer. A
  reference (gold) doc gives its answers the same way (``score`` not needed; several answers
  per question are alternatives, as in SQuAD dev sets; ``[]`` = unanswerable), or, instead, as
  spans in ``doc.spans["answers"]`` whose group attribute ``attrs["questions"]`` lists each
  span's question index (all spans answer question 0 when absent).

Owns the extensions' registration, reading questions and gold answers (`questions_of`,
`gold_answers_of`) and writing answers (`set_qa_annotation`). Imports no component.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc

ANSWERS_KEY = "answers"
QUESTIONS_ATTR = "questions"
SCORES_ATTR = "scores"


def register_qa_extensions() -> None:
    """Register ``doc._.question`` and ``doc._.answers`` (default None) unless already there."""
    for name in ("question", "answers"):
        if not Doc.has_extension(name):
            Doc.set_extension(name, default=None)


def questions_of(doc: Doc) -> List[str]:
    """The doc's questions as a list (``[]`` when ``doc._.question`` is unset)."""
    register_qa_extensions()
    question = doc._.question
    if question is None:
        return []
    if isinstance(question, str):
        return [question]
    if isinstance(question, (list, tuple)) and all(isinstance(q, str) for q in question):
        return list(question)
    raise TypeError(f"doc._.question must be a string or a list of strings, got {type(question).__name__}")


def gold_answers_of(doc: Doc) -> List[List[Tuple[int, int]]]:
    """Gold ``(start_char, end_char)`` alternatives per question of a reference doc."""
    n_questions = len(questions_of(doc))
    golds: List[List[Tuple[int, int]]] = [[] for _ in range(n_questions)]
    answers = doc._.answers
    if answers is not None:
        if n_questions == 1 and answers and all(isinstance(a, dict) for a in answers):
            answers = [answers]  # one question: a flat list of answer dicts is accepted
        for q, alternatives in enumerate(answers[:n_questions]):
            golds[q] = [gold_offsets(doc.text, a) for a in alternatives]
        return golds
    if ANSWERS_KEY in doc.spans:
        group = doc.spans[ANSWERS_KEY]
        indices = group.attrs.get(QUESTIONS_ATTR, [0] * len(group))
        for span, q in zip(group, indices):
            if 0 <= int(q) < n_questions:
                golds[int(q)].append((span.start_char, span.end_char))
    return golds


def gold_offsets(text: str, answer: Dict[str, Any]) -> Tuple[int, int]:
    start = int(answer["start"])
    end = int(answer["end"]) if "end" in answer else start + len(answer["text"])
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"gold answer {answer!r} is outside the doc text ({len(text)} characters)")
    if "text" in answer and text[start:end] != answer["text"]:
        raise ValueError(f"gold answer {answer!r} does not match doc.text[{start}:{end}] = {text[start:end]!r}")
    return start, end


def set_qa_annotation(doc: Doc, *, question: Union[str, Sequence[str]],
                      answers: Sequence[Any], qid: Optional[Union[str, Sequence[str]]] = None) -> Doc:
    """Put gold QA data on a (reference) doc: ``doc._.question`` and ``doc._.answers``.

    ``question``: one string, whose ``answers`` are ``[(start_char, end_char), ...]``
    (alternatives; ``[]`` = unanswerable), or a list of strings with one such list per question.
    ``qid`` (the SQuAD id, or one per question) goes to ``doc.user_data["qa_ids"]``.
    """
    register_qa_extensions()
    single = isinstance(question, str)
    questions = [question] if single else list(question)
    per_question = [list(answers)] if single else [list(a) for a in answers]
    if len(per_question) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(per_question)} answer lists")
    gold = []
    for alternatives in per_question:
        entries = []
        for start, end in alternatives:
            if not 0 <= start <= end <= len(doc.text):
                raise ValueError(f"answer span ({start}, {end}) is outside the doc text ({len(doc.text)} chars)")
            entries.append({"text": doc.text[start:end], "start": int(start), "end": int(end)})
        gold.append(entries)
    doc._.question = question if single else questions
    doc._.answers = gold
    if qid is not None:
        doc.user_data["qa_ids"] = [qid] if isinstance(qid, str) else list(qid)
    return doc
