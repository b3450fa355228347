"""Tests for spacy_xlmrxl.components.ner: tagging scheme, constrained decoding, the xlmrxl_ner pipe."""

from __future__ import annotations

import itertools

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.training import Example
from thinc.api import Adam

from spacy_xlmrxl.backbone.source import BackboneError
from spacy_xlmrxl.pipeline.ner import constrained_viterbi, tag_names, tags_to_entities, transition_constraints

from .xlmr_helpers import WINDOW, backbone_settings, blank, entities, long_text, train, uner_examples

LABELS = ["LOC", "ORG", "PER"]


# --------------------------------------------------------------------------- scheme and decoding
def _valid(tags, scheme):
    allowed, start, end = transition_constraints(tag_names(LABELS, scheme), scheme)
    index = {t: i for i, t in enumerate(tag_names(LABELS, scheme))}
    ids = [index[t] for t in tags]
    return (not ids or (start[ids[0]] and end[ids[-1]])) and all(allowed[a, b] for a, b in zip(ids, ids[1:]))


@pytest.mark.parametrize("scheme", ["BILUO", "IOB"])
def test_constraints_accept_gold_and_refuse_broken_sequences(scheme):
    good = ["O", "B-PER", "L-PER", "U-LOC", "O"] if scheme == "BILUO" else ["O", "B-PER", "I-PER", "B-LOC", "O"]
    bad = ["O", "I-PER", "O"] if scheme == "IOB" else ["B-PER", "O"]
    assert _valid(good, scheme)
    assert not _valid(bad, scheme)
    assert not _valid(["B-PER", "I-ORG"], scheme)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=2**31 - 1),
       st.sampled_from(["BILUO", "IOB"]))
def test_viterbi_finds_the_best_valid_sequence(n, seed, scheme):
    names = tag_names(LABELS[:2], scheme)
    allowed, start, end = transition_constraints(names, scheme)
    log_probs = numpy.log(numpy.random.default_rng(seed).dirichlet(numpy.ones(len(names)), size=n))
    path = constrained_viterbi(log_probs, allowed, start, end)
    best = max(
        (seq for seq in itertools.product(range(len(names)), repeat=n)
         if start[seq[0]] and end[seq[-1]] and all(allowed[a, b] for a, b in zip(seq, seq[1:]))),
        key=lambda seq: sum(log_probs[i, t] for i, t in enumerate(seq)),
    )
    assert numpy.isclose(log_probs[numpy.arange(n), path].sum(), sum(log_probs[i, t] for i, t in enumerate(best)))


def test_tags_to_entities_both_schemes():
    assert tags_to_entities(["B-PER", "I-PER", "L-PER", "O", "U-LOC"]) == [(0, 3, "PER"), (4, 5, "LOC")]
    assert tags_to_entities(["B-PER", "I-PER", "B-PER", "O", "B-LOC"]) == [(0, 2, "PER"), (2, 3, "PER"), (4, 5, "LOC")]


# --------------------------------------------------------------------------- the pipe
@pytest.fixture(scope="module")
def trained(shared_data, spm_model_path):
    """Default-config xlmrxl_ner, tiny backbone given at initialize, trained a few steps."""
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    examples = uner_examples(nlp, shared_data, 8)
    losses = train(nlp, examples, 4, xlmrxl_ner=backbone_settings(spm_model_path))
    return nlp, examples, losses


def test_training_lowers_the_loss_and_learns_the_labels(trained):
    nlp, _, losses = trained
    assert nlp.get_pipe("xlmrxl_ner").labels == tuple(LABELS)
    assert losses[-1] < losses[0]


def test_predictions_are_valid_entities_and_batch_equals_one_by_one(trained, shared_data):
    nlp, examples, _ = trained
    texts = [eg.reference.text for eg in uner_examples(nlp, shared_data, 6, split="dev")]
    texts += ["", "   ", "\n", long_text()]
    batch = list(nlp.pipe(texts, batch_size=4))
    single = [nlp(text) for text in texts]
    assert entities(batch) == entities(single)
    for doc in batch:
        assert all(ent.label_ in LABELS and not ent[0].is_space and not ent[-1].is_space for ent in doc.ents)
    assert entities(batch[-4:-1]) == [[], [], []]  # empty and whitespace-only docs


def test_a_frozen_backbone_is_not_updated_and_the_head_still_learns(shared_data, spm_model_path):
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW, "backbone": {"freeze": True}}}}})
    examples = uner_examples(nlp, shared_data, 3)
    train(nlp, examples, 15, learn_rate=0.05, xlmrxl_ner=backbone_settings(spm_model_path))
    assert nlp.evaluate(examples)["ents_f"] > 0.5
    module = nlp.get_pipe("xlmrxl_ner").model.get_ref("tok2vec").get_ref("transformer").shims[0].module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    nlp.update(examples, sgd=Adam(0.05))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_long_doc_gets_a_tag_for_every_token(trained):
    nlp, _, _ = trained
    ner = nlp.get_pipe("xlmrxl_ner")
    doc = nlp.make_doc(long_text())
    (probs,) = ner.model.predict([doc])
    assert probs.shape == (len(doc), len(ner.tag_names))
    assert numpy.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    data = ner.model.get_ref("tok2vec").get_ref("transformer").predict([doc])[0]
    assert len(data.windows) > 3


def test_unknown_label_in_training_data_is_a_clear_error(trained):
    nlp, examples, _ = trained
    gold = examples[0].reference.copy()
    gold.ents = [gold.char_span(gold.ents[0].start_char, gold.ents[0].end_char, label="MISC")]
    with pytest.raises(ValueError, match="'MISC'.*does not know"):
        nlp.update([Example(nlp.make_doc(gold.text), gold)])


def test_labels_given_at_initialize_and_iob_scheme(shared_data, spm_model_path):
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_ner", config={"scheme": "IOB", "model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    examples = uner_examples(nlp, shared_data, 3)
    train(nlp, examples, 1, xlmrxl_ner={**backbone_settings(spm_model_path), "labels": ["PER", "ORG", "LOC", "MISC"]})
    ner = nlp.get_pipe("xlmrxl_ner")
    assert ner.labels == ("PER", "ORG", "LOC", "MISC")
    assert ner.tag_names[:3] == ["O", "B-PER", "I-PER"] and len(ner.tag_names) == 9
    with pytest.raises(ValueError, match="after initialization"):
        ner.add_label("EVENT")


def test_missing_checkpoint_tells_what_to_pass(shared_data):
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_ner")  # default: facebook/xlm-roberta-xl; tests run offline with an empty HF cache
    examples = uner_examples(nlp, shared_data, 2)
    with pytest.raises(BackboneError, match="'facebook/xlm-roberta-xl'.* in the HF cache .*downloads are off.*preset = one of"):
        nlp.initialize(lambda: examples)
    with pytest.raises(BackboneError, match="both checkpoint"):
        nlp.add_pipe("xlmrxl_ner", name="ner2", config={"model": {"tok2vec": {"transformer": {"backbone": {"preset": "tiny"}}}}})


def test_scorer_reports_entity_prf(trained):
    nlp, examples, _ = trained
    scores = nlp.get_pipe("xlmrxl_ner").score([Example(nlp(eg.reference.text), eg.reference) for eg in examples])
    assert {"ents_p", "ents_r", "ents_f", "ents_per_type"} <= set(scores)
