"""Tests for spacy_xlmrxl.models: the Transformer layer, token vectors, heads, registrations."""

from __future__ import annotations

from importlib import metadata

import numpy
import pytest
import spacy
import torch
from spacy.util import registry

from spacy_xlmrxl.ml.doc_data import XLMRDocData, XLMRGrad
from spacy_xlmrxl.ml.heads import build_ner_head, build_textcat_head
from spacy_xlmrxl.ml.legacy import build_transformer
from spacy_xlmrxl.ml.token_vectors import build_token_vectors
from spacy_xlmrxl.ml.windows import make_strided_windows

from .xlmr_helpers import long_text

NLP = spacy.blank("da")
TEXTS = ["Kjeld Christensen bor i København.", "", "  \n", long_text(), "Hej  med dig!"]


def _transformer(spm_model_path, **settings):
    return build_transformer(checkpoint=None, preset="tiny", tokenizer=str(spm_model_path),
                             windows=make_strided_windows(window=32, stride=16), **settings)


@pytest.fixture(scope="module")
def transformer(spm_model_path):
    model = _transformer(spm_model_path)
    model.initialize()
    return model


@pytest.fixture(scope="module")
def docs():
    return [NLP.make_doc(text) for text in TEXTS]


def _reference(model, ids):
    """The torch module run directly on ``<s> ids </s>``: (len(ids) + 2, H)."""
    module = model.shims[0].module.eval()
    with torch.no_grad():
        return module(input_ids=torch.tensor([[0] + list(ids) + [2]])).last_hidden_state[0].numpy()


def test_doc_data_covers_every_piece_and_token(transformer, docs):
    outputs = transformer.predict(docs)
    assert transformer.get_dim("nO") == 64
    for doc, data in zip(docs, outputs):
        assert isinstance(data, XLMRDocData)
        assert data.hidden.shape == (data.n_pieces, 64) and data.cls.shape == (len(data.windows), 64)
        assert data.align.lengths.shape == (len(doc),)
        assert all(n > 0 for token, n in zip(doc, data.align.lengths) if not token.is_space)
        covered = numpy.zeros(data.n_pieces, dtype=bool)
        for start, end in data.windows:
            covered[start:end] = True
        assert covered.all()
    assert outputs[1].windows == [(0, 0)] and outputs[2].windows == [(0, 0)]  # "<s></s>" only
    assert len(outputs[3].windows) > 3


def test_outputs_equal_the_torch_model_and_overlaps_are_averaged(transformer, docs):
    short, _, _, long, _ = transformer.predict(docs)
    expected = _reference(transformer, short.piece_ids)
    numpy.testing.assert_allclose(short.hidden, expected[1:-1], atol=1e-5)
    numpy.testing.assert_allclose(short.cls[0], expected[0], atol=1e-5)
    (s0, e0), (s1, e1) = long.windows[:2]
    first, second = _reference(transformer, long.piece_ids[s0:e0]), _reference(transformer, long.piece_ids[s1:e1])
    numpy.testing.assert_allclose(long.hidden[s0:s1], first[1:1 + s1 - s0], atol=1e-5)  # first window only
    overlap = (first[1 + s1 - s0:1 + e0 - s0] + second[1:1 + e0 - s1]) / 2
    numpy.testing.assert_allclose(long.hidden[s1:e0], overlap[:e0 - s1], atol=1e-5)
    numpy.testing.assert_allclose(long.cls[1], second[0], atol=1e-5)


def test_batches_equal_single_docs(transformer, docs):
    batch = transformer.predict(docs)
    for doc, together in zip(docs, batch):
        (alone,) = transformer.predict([doc])
        numpy.testing.assert_allclose(together.hidden, alone.hidden, atol=1e-5)
        numpy.testing.assert_allclose(together.cls, alone.cls, atol=1e-5)


@pytest.mark.parametrize("which", ["hidden", "cls"])
def test_gradients_reach_the_torch_weights(transformer, docs, which):
    outputs, backprop = transformer.begin_update(docs[:4])
    grads = [XLMRGrad(**{which: numpy.ones_like(getattr(d, which))}) for d in outputs]
    backprop(grads)
    module = transformer.shims[0].module
    embedding_grad = module.embeddings.word_embeddings.weight.grad
    assert embedding_grad is not None and embedding_grad[outputs[0].piece_ids].abs().sum() > 0
    module.zero_grad(set_to_none=True)


def test_token_vectors_pool_pieces_and_zero_whitespace_tokens(transformer, docs):
    mean = build_token_vectors(transformer, "mean").predict(docs)
    first = build_token_vectors(transformer, "first").predict(docs)
    doc = docs[4]  # "Hej  med dig!": a whitespace token
    assert [v.shape for v in mean] == [(len(d), 64) for d in docs]
    space = [i for i, t in enumerate(doc) if t.is_space]
    assert space and not mean[4][space].any()
    assert not numpy.allclose(mean[0], first[0])  # some token has several pieces


def test_ner_head_gives_tag_probabilities(spm_model_path, docs):
    head = build_ner_head(build_token_vectors(_transformer(spm_model_path)), nO=7)
    head.initialize(X=docs[:1])
    probs = head.predict(docs)
    assert [p.shape for p in probs] == [(len(d), 7) for d in docs]
    assert numpy.allclose(probs[0].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("exclusive", [True, False])
def test_textcat_head_gives_one_row_per_doc(spm_model_path, docs, exclusive):
    head = build_textcat_head(_transformer(spm_model_path), nO=3, exclusive_classes=exclusive)
    head.initialize(X=docs[:1])
    assert head.get_ref("dense").get_dim("nI") == head.get_ref("dense").get_dim("nO") == 64
    probs = head.predict(docs)
    assert probs.shape == (len(docs), 3) and ((probs > 0) & (probs < 1)).all()
    assert numpy.allclose(probs.sum(axis=1), 1.0, atol=1e-5) == exclusive


def test_a_window_beyond_the_model_limit_fails_at_initialize(spm_model_path):
    model = build_transformer(checkpoint=None, preset="tiny", tokenizer=str(spm_model_path),
                              windows=make_strided_windows(window=600, stride=300, max_window=None))
    with pytest.raises(ValueError, match="window=600"):
        model.initialize()


def test_nothing_is_loaded_before_initialize(spm_model_path):
    model = _transformer(spm_model_path)
    assert not model.shims[0].has_module and not model.has_dim("nO")
    with pytest.raises(ValueError, match="initialize"):
        model.predict([NLP.make_doc("x")])


REGISTERED = {
    "architectures": ["Transformer.v1", "TokenVectors.v1", "Listener.v1", "DocDataListener.v1", "NerHead.v1",
                      "TextcatHead.v1"],
    "scorers": ["ner_scorer.v1", "textcat_scorer.v1"],
    "misc": ["strided_windows.v1"],
}


@pytest.mark.parametrize("kind", sorted(REGISTERED))
def test_registered_names(kind):
    for name in REGISTERED[kind]:
        assert registry.has(kind, f"spacy-xlmrxl.{name}")


def test_entry_points_expose_every_name():
    try:
        metadata.distribution("spacy-xlmrxl")
    except metadata.PackageNotFoundError:
        pytest.skip("spacy-xlmrxl is not installed (pip install -e .)")
    groups = {kind: {ep.name: ep for ep in metadata.entry_points(group=f"spacy_{kind}")} for kind in REGISTERED}
    for kind, names in REGISTERED.items():
        for name in names:
            assert groups[kind][f"spacy-xlmrxl.{name}"].load() is registry.get(kind, f"spacy-xlmrxl.{name}")
    factories = {ep.name for ep in metadata.entry_points(group="spacy_factories")}
    assert {"xlmrxl_transformer", "xlmrxl_ner", "xlmrxl_textcat"} <= factories
