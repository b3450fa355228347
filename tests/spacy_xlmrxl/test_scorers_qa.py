"""Tests of spacy_xlmrxl.scorers_qa: SQuAD normalisation, EM/F1, gold reading and the scorer."""

import pytest
import spacy
from spacy.tokens import Doc
from spacy.training import Example

NLP = spacy.blank("en")

from spacy_xlmrxl.pipeline.qa.annotation import gold_answers_of, questions_of, register_qa_extensions
from spacy_xlmrxl.pipeline.qa.scoring import exact_match, f1_score, normalize_answer, score_qa


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The Panthers!", "panthers"),
        ("  a  cat,  an apple and THE   dog. ", "cat apple and dog"),
        ("Theatre", "theatre"),  # articles only as whole words
        ("1,000", "1000"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Denver Broncos", ["Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    # pred {denver}, gold {denver broncos}: P=1, R=1/2 -> F1 = 2/3
    assert f1_score("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    # best over the golds
    assert f1_score("Denver", ["Broncos", "Denver"]) == 1.0
    # pred {a b c d} vs gold {c d e}: common 2, P=2/4, R=2/3 -> F1=4/7
    assert f1_score("w x y z", ["y z q"]) == pytest.approx(4 / 7)
    assert f1_score("cat cat", ["cat"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("nothing", ["else"]) == 0.0
    # SQuAD2: no gold answer; only the empty prediction is right
    assert exact_match("", []) == 1.0 and f1_score("", []) == 1.0
    assert exact_match("x", []) == 0.0 and f1_score("x", []) == 0.0
    assert f1_score("the", ["a"]) == 1.0  # both normalise to empty


def _doc(text, question=None, answers=None):
    register_qa_extensions()
    doc = NLP.make_doc(text)
    doc._.question = question
    doc._.answers = answers
    return doc


def test_questions_and_gold_from_extension_or_spans():
    text = "Paris is the capital of France."
    assert questions_of(_doc(text)) == []
    assert questions_of(_doc(text, "Where?")) == ["Where?"]
    assert questions_of(_doc(text, ["A?", "B?"])) == ["A?", "B?"]
    with pytest.raises(TypeError):
        questions_of(_doc(text, 3))
    gold = _doc(text, ["A?", "B?"], [[{"start": 0, "end": 5, "text": "Paris"}], []])
    assert gold_answers_of(gold) == [[(0, 5)], []]
    flat = _doc(text, "A?", [{"start": 24, "text": "France"}])
    assert gold_answers_of(flat) == [[(24, 30)]]
    with pytest.raises(ValueError, match="does not match"):
        gold_answers_of(_doc(text, "A?", [[{"start": 0, "end": 5, "text": "Rome"}]]))
    spans = _doc(text, ["A?", "B?"])
    group = spans.spans["answers"] = [spans[0:1], spans[5:6]]
    spans.spans["answers"].attrs["questions"] = [1, 0]
    assert group is not None
    assert gold_answers_of(spans) == [[(24, 30)], [(0, 5)]]


def test_score_qa():
    text = "Paris is the capital of France."
    reference = _doc(text, ["A?", "B?"], [[{"start": 0, "end": 5}], [{"start": 13, "end": 20}, {"start": 9, "end": 20}]])
    predicted = _doc(text, ["A?", "B?"], [[{"text": "Paris", "start": 0, "end": 5, "score": 0.9}], [{"text": "capital of", "start": 13, "end": 23, "score": 0.5}]])
    scores = score_qa([Example(predicted, reference)])
    assert scores["qa_exact"] == pytest.approx(0.5)
    # question 2: pred {capital of} vs {capital}: P=1/2 R=1 -> 2/3; vs {capital} "the capital" same
    assert scores["qa_f1"] == pytest.approx((1 + 2 / 3) / 2)
    unanswered = _doc(text, ["A?", "B?"], None)
    scores = score_qa([Example(unanswered, reference)])
    assert scores == {"qa_exact": 0.0, "qa_f1": 0.0}
    assert score_qa([Example(_doc(text), _doc(text))]) == {"qa_exact": None, "qa_f1": None}


def test_scorer_is_registered():
    scorer = spacy.registry.scorers.get("spacy-xlmrxl.qa_scorer.v1")()
    assert scorer is score_qa
    assert Doc.has_extension("question") and Doc.has_extension("answers")
