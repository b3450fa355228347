"""Tests for spacy_xlmrxl.components.transformer and .listener: one shared backbone, many heads."""

from __future__ import annotations

import numpy
import pytest
import torch
from spacy.training import Example
from spacy.util import fix_random_seed

from spacy_xlmrxl.ml.alignment import pool_pieces
from spacy_xlmrxl.ml.doc_data import XLMRDocData
from spacy_xlmrxl.ml.listener import XLMRListener

from .xlmr_helpers import blank, cats, entities, load_roundtrip, tiny_transformer_config, uner_examples

LISTENER = {"@architectures": "spacy-xlmrxl.Listener.v1", "upstream": "*", "pooling": "mean"}


@pytest.fixture(scope="module")
def shared(shared_data, spm_model_path):
    """xlmrxl_transformer + xlmrxl_ner and xlmrxl_textcat listening to it."""
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_transformer", config={"model": tiny_transformer_config(spm_model_path)})
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": LISTENER}})
    nlp.add_pipe("xlmrxl_textcat", config={"model": {"transformer": {
        "@architectures": "spacy-xlmrxl.DocDataListener.v1", "upstream": "xlmrxl_transformer"}}})
    examples = uner_examples(nlp, shared_data, 6)
    for eg in examples:  # give every doc a topic too
        eg.reference.cats = {"long": float(len(eg.reference) > 20), "short": float(len(eg.reference) <= 20)}
    transformer = nlp.get_pipe("xlmrxl_transformer")
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    module = transformer.model.shims[0].module
    before = module.embeddings.word_embeddings.weight.detach().clone()
    optimizer = nlp.resume_training()
    history = []
    for step in range(6):  # both heads, then the textcat alone (its loss is small beside NER's)
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses, exclude=["xlmrxl_ner"] if step >= 3 else [])
        history.append(losses)
    changed = not torch.equal(before, module.embeddings.word_embeddings.weight)
    return nlp, examples, history, changed


def test_listeners_are_linked_and_know_the_width(shared):
    nlp, _, _, _ = shared
    transformer = nlp.get_pipe("xlmrxl_transformer")
    assert transformer.listening_components == ["xlmrxl_ner", "xlmrxl_textcat"]
    assert all(isinstance(l, XLMRListener) and l.get_dim("nO") == 64 for l in transformer.listeners)


def test_both_heads_learn_and_their_gradients_reach_the_shared_backbone(shared):
    _, _, history, changed = shared
    assert history[2]["xlmrxl_ner"] < history[0]["xlmrxl_ner"]
    assert history[5]["xlmrxl_textcat"] < history[3]["xlmrxl_textcat"]
    assert "xlmrxl_ner" not in history[5]
    assert all(losses["xlmrxl_transformer"] > 0.0 for losses in history)  # gradients it received
    assert changed


def test_pipeline_annotates_docs_and_batches_like_single_docs(shared):
    nlp, examples, _, _ = shared
    texts = [eg.reference.text for eg in examples] + ["", " "]
    batch = list(nlp.pipe(texts, batch_size=3))
    single = [nlp(text) for text in texts]
    assert entities(batch) == entities(single)
    numpy.testing.assert_allclose(cats(batch), cats(single), atol=1e-5)
    for doc in batch:
        data = doc._.xlmrxl
        assert isinstance(data, XLMRDocData)
        assert data.hidden is None and data.align.lengths.shape == (len(doc),)  # no per-piece states kept
        assert set(data.tokvecs) == {"mean"} and data.tokvecs["mean"].shape == (len(doc), 64)
        assert set(doc.cats) == {"long", "short"}


def test_inference_pools_for_the_listeners_bit_identical_to_the_piece_states(shared):
    nlp, examples, _, _ = shared
    transformer = nlp.get_pipe("xlmrxl_transformer")
    assert transformer.inference_outputs() == (("mean",), False)
    docs = [nlp.make_doc(eg.reference.text) for eg in examples] + [nlp.make_doc(" ".join(["Ord"] * 300))]
    kept = transformer.predict(docs)
    full = transformer.model.predict(docs)  # the layer's own predict keeps every piece state
    tok2vec = nlp.get_pipe("xlmrxl_ner").model.get_ref("tok2vec")
    for doc, data, reference in zip(docs, kept, full):
        assert data.hidden is None and reference.hidden.shape == (reference.n_pieces, 64)
        expected, _ = pool_pieces(transformer.model.ops, reference.hidden, reference.align, mode="mean")
        assert numpy.array_equal(data.tokvecs["mean"], expected)
        numpy.testing.assert_array_equal(data.cls, reference.cls)
        assert data.nbytes() <= reference.nbytes()  # n_tokens x H instead of n_pieces x H
        doc._.xlmrxl = data
    assert all(numpy.array_equal(v, d.tokvecs["mean"]) for v, d in zip(tok2vec.predict(docs), kept))


def test_backbone_computes_only_the_real_pieces_in_inference_and_training(shared):
    """The window batches are padded, but the feed-forward parts see only the real positions
    (``skip_padding``): as many rows as the windows' pieces + ``<s></s>``, in both paths."""
    nlp, examples, _, _ = shared
    transformer = nlp.get_pipe("xlmrxl_transformer")
    module = transformer.model.shims[0].module
    docs = [nlp.make_doc(eg.reference.text) for eg in examples] + [nlp.make_doc("Kort.")]
    rows = []
    hook = module.encoder.layer[0].intermediate.register_forward_hook(lambda m, args, out: rows.append(out.shape))
    try:
        kept = transformer.model.predict(docs)
        real = sum(end - start + 2 for data in kept for start, end in data.windows)
        assert all(len(shape) == 2 for shape in rows) and sum(shape[0] for shape in rows) == real
        rows.clear()
        _, backprop = transformer.model.begin_update(docs)
        assert all(len(shape) == 2 for shape in rows) and sum(shape[0] for shape in rows) == real
    finally:
        hook.remove()


def test_piece_states_setting(shared_data, spm_model_path):
    from spacy_xlmrxl.ml.doc_data import XLMRDocData as Data

    nlp = blank("da")
    nlp.add_pipe("xlmrxl_transformer", config={"model": tiny_transformer_config(spm_model_path)})
    examples = uner_examples(nlp, shared_data, 2)
    nlp.initialize(lambda: examples)
    transformer = nlp.get_pipe("xlmrxl_transformer")
    assert transformer.inference_outputs() == ((), True)  # a bare transformer: its output is read directly
    doc = nlp("Kjeld bor i København")
    assert isinstance(doc._.xlmrxl, Data) and doc._.xlmrxl.hidden.shape == (doc._.xlmrxl.n_pieces, 64)
    transformer.piece_states = False
    assert nlp("Kjeld bor i København")._.xlmrxl.hidden is None
    with pytest.raises(ValueError, match="piece_states"):
        blank("da").add_pipe("xlmrxl_transformer", config={"piece_states": "maybe"})


def test_listener_without_upstream_output_gives_zeros(shared):
    nlp, _, _, _ = shared
    ner = nlp.get_pipe("xlmrxl_ner")
    doc = nlp.make_doc("Ingen har set dette før")
    (vectors,) = ner.model.get_ref("tok2vec").predict([doc])
    assert vectors.shape == (5, 64) and not vectors.any()


def test_shared_pipeline_round_trips_through_disk(shared, tmp_path):
    nlp, examples, _, _ = shared
    texts = [eg.reference.text for eg in examples]
    loaded = load_roundtrip(nlp, tmp_path / "pipeline")
    assert not (tmp_path / "pipeline" / "xlmrxl_ner" / "backbone").exists()  # listeners own no weights
    assert entities(loaded.pipe(texts)) == entities(nlp.pipe(texts))
    numpy.testing.assert_allclose(cats(loaded.pipe(texts)), cats(nlp.pipe(texts)), atol=1e-6)
    assert loaded.get_pipe("xlmrxl_transformer").listening_components == ["xlmrxl_ner", "xlmrxl_textcat"]


def test_spacy_ner_trains_on_our_listener_and_on_our_token_vectors(shared_data, spm_model_path):
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_transformer", config={"model": tiny_transformer_config(spm_model_path)})
    nlp.add_pipe("ner", config={"model": {"tok2vec": LISTENER}})
    nlp.add_pipe("ner", name="ner_own", config={"model": {"tok2vec": {
        "@architectures": "spacy-xlmrxl.TokenVectors.v1", "pooling": "first",
        "transformer": tiny_transformer_config(spm_model_path)}}})
    examples = uner_examples(nlp, shared_data, 4)
    history = []
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(5):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        history.append(losses)
    # spaCy's parser starts from a zero output layer: its loss rises after step 1, then falls
    for name in ("ner", "ner_own"):
        assert history[-1][name] < history[1][name]
    assert history[-1]["xlmrxl_transformer"] > 0.0
    assert nlp.get_pipe("xlmrxl_transformer").listening_components == ["ner"]
    doc = nlp(examples[0].reference.text)
    assert all(ent.label_ in {"PER", "ORG", "LOC"} for ent in doc.ents)


def test_update_with_mismatched_batch_is_refused(shared):
    nlp, examples, _, _ = shared
    transformer = nlp.get_pipe("xlmrxl_transformer")
    transformer.update(examples[:2])
    ner = nlp.get_pipe("xlmrxl_ner")
    with pytest.raises(ValueError):
        ner.update([Example(nlp.make_doc("Noget helt andet"), nlp.make_doc("Noget helt andet"))])
    for listener in transformer.listeners:
        listener.clear()  # leave the fixture clean


def test_replace_listeners_gives_the_component_its_own_backbone(shared_data, spm_model_path, tmp_path):
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_transformer", config={"model": tiny_transformer_config(spm_model_path)})
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": LISTENER}})
    examples = uner_examples(nlp, shared_data, 2)
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    texts = [eg.reference.text for eg in examples]
    before = [nlp.get_pipe("xlmrxl_ner").model.predict([nlp.make_doc(t)])[0] for t in texts]
    nlp.replace_listeners("xlmrxl_transformer", "xlmrxl_ner", ["model.tok2vec"])
    assert nlp.get_pipe("xlmrxl_transformer").listening_components == []
    tok2vec_cfg = nlp.config["components"]["xlmrxl_ner"]["model"]["tok2vec"]
    assert tok2vec_cfg["@architectures"] == "spacy-xlmrxl.TokenVectors.v1"
    nlp.remove_pipe("xlmrxl_transformer")
    loaded = load_roundtrip(nlp, tmp_path / "own")
    for text, expected in zip(texts, before):
        numpy.testing.assert_allclose(loaded.get_pipe("xlmrxl_ner").model.predict([loaded.make_doc(text)])[0],
                                      expected, atol=1e-5)
