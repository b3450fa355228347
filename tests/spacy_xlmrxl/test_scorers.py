"""Tests of spacy_xlmrxl.scorers: the fill-mask scorer (masked-word top-1 / top-5 accuracy)."""

import pytest
import spacy
from spacy.training import Example
from spacy.util import registry

import spacy_xlmrxl.pipeline.fill_mask.component  # noqa: F401  (registers doc._.fill_mask)
from spacy_xlmrxl.pipeline.fill_mask.scoring import gold_piece, masked_word_accuracy, masked_words, score_fill_mask

W = "\u2581"
NLP = spacy.blank("en")


def fillers(*pieces):
    return [{"piece": p, "token": p.replace(W, " ").strip(), "token_id": i, "score": 0.1} for i, p in enumerate(pieces)]


def example(masked, original, predictions):
    predicted = NLP.make_doc(masked)
    predicted._.fill_mask = predictions
    return Example(predicted, NLP.make_doc(original))


def test_masked_word_accuracy_counts_top1_and_top5():
    pairs = [(fillers(W + "a", W + "b"), W + "a"),           # top-1
             (fillers(*(W + c for c in "bcdea")), W + "a"),  # 5th: top-5
             (fillers(*(W + c for c in "bcdefa")), W + "a"),  # 6th: miss
             ([], W + "a"), (None, W + "a")]                  # no fillers: miss
    assert masked_word_accuracy(pairs) == {"fill_mask_acc": 0.2, "fill_mask_top5": 0.4}
    assert masked_word_accuracy([(fillers("x", "y"), 1)], key="token_id") == {"fill_mask_acc": 0.0, "fill_mask_top5": 1.0}
    assert masked_word_accuracy([]) == {"fill_mask_acc": None, "fill_mask_top5": None}
    assert masked_word_accuracy(iter([]), empty=0.0) == {"fill_mask_acc": 0.0, "fill_mask_top5": 0.0}


def test_masked_words_align_the_masks_with_the_original_text():
    original = "Paris is the capital of France."
    assert masked_words("Paris is the <mask> of France.", original) == [(13, 20)]
    assert masked_words("<mask> is the capital of <mask>", original) == [(0, 5), (24, 31)]
    assert masked_words("Paris is the<mask> of France.", original) == [(12, 20)]  # the mask took the space
    assert masked_words("Paris is the capital of France.", original) == []
    assert masked_words("a <mask> a", "a a a a") == [(2, 5)]
    with pytest.raises(ValueError, match="reference text"):
        masked_words("Paris is the <mask> of Spain.", original)


def test_gold_piece_marks_word_starts():
    text = "Paris (capital) of France"
    assert gold_piece(text, 0, 5) == W + "Paris"
    assert gold_piece(text, 7, 14) == "capital"  # after "(": no word start, as sentencepiece splits it
    assert gold_piece(text, 5, 14) == W + "(capital"
    assert gold_piece("is the capital", 6, 14) == W + "capital"  # span with its leading space
    assert gold_piece("x \ufb01ne", 2, 5) == W + "fine"  # NFKC, as the tokenizer normalises


def test_score_fill_mask_on_examples():
    examples = [
        example("Paris is the <mask> of France.", "Paris is the capital of France.",
                [fillers(W + "capital", W + "city")]),
        example("<mask> is the capital of <mask>.", "Paris is the capital of France.",
                [fillers(W + "Berlin", W + "Paris"), fillers("France", W + "Spain")]),  # top-5; miss (no ▁)
        example("Walk<mask> home.", "Walking home.", [fillers("ing")]),
        example("no mask here", "no mask here", []),
        example("a <mask> b", "a København b", [fillers(W + "K")]),  # several pieces: never restored
    ]
    assert score_fill_mask(examples, top_k=5, fill_text=True) == {"fill_mask_acc": 0.4, "fill_mask_top5": 0.6}
    # predictions missing (component not run): every mask missed; no mask at all: None
    assert score_fill_mask([example("the <mask>", "the cat", None)]) == {"fill_mask_acc": 0.0, "fill_mask_top5": 0.0}
    assert score_fill_mask([example("x", "x", [])]) == {"fill_mask_acc": None, "fill_mask_top5": None}
    with pytest.raises(ValueError, match="original"):
        score_fill_mask([example("the <mask>", "a cat", [fillers(W + "cat")])])


def test_fill_mask_scorer_is_registered():
    assert registry.scorers.get("spacy-xlmrxl.fill_mask_scorer.v1")() is score_fill_mask


def test_entry_point_exposes_the_fill_mask_scorer():
    from importlib import metadata

    try:
        metadata.distribution("spacy-xlmrxl")
    except metadata.PackageNotFoundError:
        pytest.skip("spacy-xlmrxl is not installed (pip install -e .)")
    points = {ep.name: ep for ep in metadata.entry_points(group="spacy_scorers")}
    assert points["spacy-xlmrxl.fill_mask_scorer.v1"].load() is registry.scorers.get("spacy-xlmrxl.fill_mask_scorer.v1")
    architectures = {ep.name: ep for ep in metadata.entry_points(group="spacy_architectures")}
    assert architectures["spacy-xlmrxl.TextcatHead.v2"].load() is registry.architectures.get(
        "spacy-xlmrxl.TextcatHead.v2")
