"""Tests for spacy_xlmrxl.components.textcat: exclusive and multi-label xlmrxl_textcat on SIB-200."""

from __future__ import annotations

import numpy
import pytest
from spacy.training import Example

from .xlmr_helpers import WINDOW, backbone_settings, blank, cats, long_text, sib_examples, train

MODEL = {"transformer": {"windows": WINDOW}}


@pytest.fixture(scope="module")
def exclusive(shared_data, spm_model_path):
    nlp = blank("en")
    nlp.add_pipe("xlmrxl_textcat", config={"model": MODEL})
    examples = sib_examples(nlp, shared_data, 8)
    # 8 steps: with the default Adam the loss of a random tiny model first overshoots (14 -> 24),
    # then falls below its start by step 4-5
    losses = train(nlp, examples, 8, xlmrxl_textcat=backbone_settings(spm_model_path))
    return nlp, examples, losses


def test_exclusive_training_lowers_the_loss(exclusive, shared_data):
    nlp, examples, losses = exclusive
    textcat = nlp.get_pipe("xlmrxl_textcat")
    assert set(textcat.labels) == set(examples[0].reference.cats) and len(textcat.labels) == 7
    assert textcat.exclusive_classes
    assert losses[-1] < losses[0]


def test_every_doc_gets_every_label_and_batch_equals_one_by_one(exclusive):
    nlp, examples, _ = exclusive
    texts = [eg.reference.text for eg in examples[:5]] + ["", "  \n ", long_text()]
    batch = list(nlp.pipe(texts, batch_size=3))
    single = [nlp(text) for text in texts]
    labels = nlp.get_pipe("xlmrxl_textcat").labels
    for doc in batch:
        assert set(doc.cats) == set(labels)
        assert numpy.isclose(sum(doc.cats.values()), 1.0, atol=1e-5)
    numpy.testing.assert_allclose(cats(batch), cats(single), atol=1e-5)
    assert cats(batch[-3:-1]).std(axis=0).max() < 1e-6  # "" and whitespace: both read "<s></s>"


def test_long_doc_averages_its_windows(exclusive):
    nlp, _, _ = exclusive
    textcat = nlp.get_pipe("xlmrxl_textcat")
    doc = nlp.make_doc(long_text())
    data = textcat.model.get_ref("transformer").predict([doc])[0]
    assert data.cls.shape[0] == len(data.windows) > 3
    probs = textcat.model.predict([doc])
    assert probs.shape == (1, len(textcat.labels))


def test_unknown_label_is_a_clear_error(exclusive):
    nlp, examples, _ = exclusive
    gold = examples[0].reference.copy()
    gold.cats = {**gold.cats, "weather": 0.0}
    with pytest.raises(ValueError, match="'weather'.*does not know"):
        nlp.update([Example(nlp.make_doc(gold.text), gold)])


def test_exclusive_scorer_matches_spacy_textcat_keys(exclusive):
    nlp, examples, _ = exclusive
    scores = nlp.evaluate(examples)
    assert {"cats_score", "cats_macro_f", "cats_f_per_type"} <= set(scores)
    assert 0.0 <= scores["cats_score"] <= 1.0


def test_multilabel_sigmoid_scores_and_auc(shared_data, spm_model_path):
    nlp = blank("en")
    nlp.add_pipe("xlmrxl_textcat", config={"model": {**MODEL, "exclusive_classes": False}, "threshold": 0.4})
    examples = sib_examples(nlp, shared_data, 6)
    losses = train(nlp, examples, 3, xlmrxl_textcat=backbone_settings(spm_model_path))
    assert losses[-1] < losses[0]
    textcat = nlp.get_pipe("xlmrxl_textcat")
    assert not textcat.exclusive_classes
    doc = nlp(examples[0].reference.text)
    assert len(doc.cats) == 7 and not numpy.isclose(sum(doc.cats.values()), 1.0)
    scores = nlp.evaluate(examples)
    assert "cats_macro_auc" in scores and scores["cats_score_desc"] == "macro AUC"


def test_missing_labels_are_ignored_in_multilabel_loss(shared_data, spm_model_path):
    nlp = blank("en")
    nlp.add_pipe("xlmrxl_textcat", config={"model": {**MODEL, "exclusive_classes": False}})
    examples = sib_examples(nlp, shared_data, 2)
    train(nlp, examples, 0, xlmrxl_textcat={**backbone_settings(spm_model_path), "labels": ["a", "b", "c"]})
    textcat = nlp.get_pipe("xlmrxl_textcat")
    assert textcat.labels == ("a", "b", "c")
    gold = nlp.make_doc("x")
    gold.cats = {"a": 1.0}
    probs = textcat.model.predict([gold])
    loss, d_scores = textcat.get_loss([Example(nlp.make_doc("x"), gold)], probs)
    assert d_scores[0, 1] == 0.0 and d_scores[0, 2] == 0.0 and d_scores[0, 0] != 0.0
    assert loss == pytest.approx(-numpy.log(probs[0, 0]), rel=1e-4)


# ------------------------------------------------------- nlp.replace_listeners (TextcatHead.v2)
def test_replace_listeners_gives_the_textcat_its_own_backbone(shared_data, spm_model_path, tmp_path):
    import spacy
    import torch

    from spacy_xlmrxl.backbone.nodes import backbone_nodes
    from spacy_xlmrxl.ml.listener import XLMRListener

    from .xlmr_helpers import tiny_transformer_config

    nlp = blank("en")
    nlp.add_pipe("xlmrxl_transformer", config={"model": tiny_transformer_config(spm_model_path)})
    nlp.add_pipe("xlmrxl_textcat", config={"model": {
        "@architectures": "spacy-xlmrxl.TextcatHead.v2",
        "tok2vec": {"@architectures": "spacy-xlmrxl.DocDataListener.v1", "upstream": "xlmrxl_transformer"}}})
    examples = sib_examples(nlp, shared_data, 6)
    train(nlp, examples, 2)  # trained through the listener first
    transformer, textcat = nlp.get_pipe("xlmrxl_transformer"), nlp.get_pipe("xlmrxl_textcat")
    assert transformer.listening_components == ["xlmrxl_textcat"]
    texts = [eg.reference.text for eg in examples] + [long_text()]
    before = cats(list(nlp.pipe(texts)))

    nlp.replace_listeners("xlmrxl_transformer", "xlmrxl_textcat", ["model.tok2vec"])

    assert transformer.listener_map == {}
    assert not any(isinstance(node, XLMRListener) for node in textcat.model.walk())
    assert textcat.model.get_ref("tok2vec") is textcat.model.get_ref("transformer")
    shared = transformer.model.shims[0].module
    [own_node] = backbone_nodes(textcat.model)
    own = own_node.shims[0].module
    assert own is not shared
    shared_ptrs = {p.data_ptr() for p in shared.parameters()}
    assert not shared_ptrs & {p.data_ptr() for p in own.parameters()}, "the copy shares no weights"
    block = nlp.config["components"]["xlmrxl_textcat"]["model"]["tok2vec"]
    assert block["@architectures"] == "spacy-xlmrxl.Transformer.v2" and block["backbone"]["preset"] == "tiny"
    numpy.testing.assert_allclose(cats(list(nlp.pipe(texts))), before, rtol=0, atol=1e-6)

    # training the textcat now changes its own copy only. The last joint step's gradient is still
    # pending in the shared backbone (nlp.update calls each component's finish_update right after
    # its own update, i.e. before the listeners downstream backpropagate): apply it first
    optimizer = nlp.resume_training()
    transformer.finish_update(optimizer)
    frozen = {name: p.detach().clone() for name, p in shared.named_parameters()}
    start = {name: p.detach().clone() for name, p in own.named_parameters()}
    for _ in range(2):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        assert losses["xlmrxl_textcat"] > 0
        assert all(p.grad is None for p in shared.parameters())
    assert all(torch.equal(p, frozen[name]) for name, p in shared.named_parameters())
    assert any(not torch.equal(p, start[name]) for name, p in own.named_parameters())
    trained = cats(list(nlp.pipe(texts)))
    assert numpy.abs(trained - before).max() > 1e-4

    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("xlmrxl_transformer").listener_map == {}
    assert loaded.config["components"]["xlmrxl_textcat"]["model"]["tok2vec"]["@architectures"] == \
        "spacy-xlmrxl.Transformer.v2"
    numpy.testing.assert_allclose(cats(list(loaded.pipe(texts))), trained, rtol=0, atol=1e-5)


def test_textcat_head_v2_with_an_own_backbone(shared_data, spm_model_path):
    from .xlmr_helpers import tiny_transformer_config

    nlp = blank("en")
    nlp.add_pipe("xlmrxl_textcat", config={"model": {
        "@architectures": "spacy-xlmrxl.TextcatHead.v2", "tok2vec": tiny_transformer_config(spm_model_path)}})
    examples = sib_examples(nlp, shared_data, 4)
    losses = train(nlp, examples, 3)
    assert losses[-1] < losses[0]
    assert len(nlp(examples[0].reference.text).cats) == 7
