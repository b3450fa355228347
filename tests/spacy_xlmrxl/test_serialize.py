"""Tests for spacy_xlmrxl.pipeline.backbone_pipe and spacy_xlmrxl.export: component directories, atomic saves, bytes, export to HF."""

from __future__ import annotations

import json

import numpy
import pytest
import spacy
import torch

from spacy_xlmrxl.backbone import weights
from spacy_xlmrxl.export import export_ner_to_hf, export_textcat_to_hf
from spacy_xlmrxl.pipeline import backbone_pipe

from .xlmr_helpers import (
    WINDOW,
    backbone_settings,
    blank,
    cats,
    entities,
    load_roundtrip,
    long_text,
    sib_examples,
    train,
    uner_examples,
)


def _ner_probs(nlp, texts):
    return [nlp.get_pipe("xlmrxl_ner").model.predict([nlp.make_doc(t)])[0] for t in texts]


@pytest.fixture(scope="module")
def ner_nlp(shared_data, spm_model_path):
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    examples = uner_examples(nlp, shared_data, 4)
    train(nlp, examples, 2, xlmrxl_ner=backbone_settings(spm_model_path))
    texts = [eg.reference.text for eg in examples] + ["", long_text()]
    return nlp, texts


@pytest.fixture(scope="module")
def textcat_nlp(shared_data, spm_model_path):
    nlp = blank("en")
    nlp.add_pipe("xlmrxl_textcat", config={"model": {"transformer": {"windows": WINDOW}}})
    examples = sib_examples(nlp, shared_data, 4)
    train(nlp, examples, 1, xlmrxl_textcat=backbone_settings(spm_model_path))
    return nlp, [eg.reference.text for eg in examples]


def test_ner_round_trip_gives_identical_predictions(ner_nlp, tmp_path):
    nlp, texts = ner_nlp
    loaded = load_roundtrip(nlp, tmp_path / "ner")
    for ours, theirs in zip(_ner_probs(nlp, texts), _ner_probs(loaded, texts)):
        numpy.testing.assert_array_equal(ours, theirs)
    assert entities(loaded.pipe(texts)) == entities(nlp.pipe(texts))
    assert loaded.get_pipe("xlmrxl_ner").labels == nlp.get_pipe("xlmrxl_ner").labels
    folder = tmp_path / "ner" / "xlmrxl_ner"
    assert sorted(p.name for p in (folder / "backbone").iterdir()) == [
        "config.json", "model.safetensors", "sentencepiece.bpe.model"]
    assert json.loads((folder / "backbone" / "config.json").read_text())["hidden_size"] == 64
    # the weights are not pickled or packed into the model's msgpack
    assert (folder / "model").stat().st_size < 100_000
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


def test_textcat_round_trip_gives_identical_predictions(textcat_nlp, tmp_path):
    nlp, texts = textcat_nlp
    loaded = load_roundtrip(nlp, tmp_path / "textcat")
    numpy.testing.assert_array_equal(cats(loaded.pipe(texts)), cats(nlp.pipe(texts)))
    assert loaded.get_pipe("xlmrxl_textcat").exclusive_classes


def test_large_backbones_are_sharded(ner_nlp, tmp_path, monkeypatch):
    nlp, texts = ner_nlp
    monkeypatch.setattr(weights, "DEFAULT_MAX_SHARD_SIZE", 8 * 1024**2)
    loaded = load_roundtrip(nlp, tmp_path / "sharded")
    backbone = tmp_path / "sharded" / "xlmrxl_ner" / "backbone"
    index = json.loads((backbone / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((backbone / s).is_file() for s in shards)
    assert entities(loaded.pipe(texts)) == entities(nlp.pipe(texts))


def test_interrupted_save_leaves_the_old_directory_intact(ner_nlp, tmp_path, monkeypatch):
    nlp, texts = ner_nlp
    ner = nlp.get_pipe("xlmrxl_ner")
    ner.to_disk(tmp_path / "ner")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(backbone_pipe, "save_module_dir", fail)
    with pytest.raises(OSError, match="disk full"):
        ner.to_disk(tmp_path / "ner")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    monkeypatch.undo()
    fresh = blank("da").add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    fresh.from_disk(tmp_path / "ner")
    assert fresh.labels == ner.labels


def test_missing_weights_give_a_clear_error_and_leave_the_component_alone(ner_nlp, tmp_path):
    nlp, _ = ner_nlp
    nlp.get_pipe("xlmrxl_ner").to_disk(tmp_path / "ner")
    (tmp_path / "ner" / "backbone" / "model.safetensors").unlink()
    fresh = blank("da").add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    with pytest.raises(Exception, match="backbone"):
        fresh.from_disk(tmp_path / "ner")
    assert fresh.labels == ()
    with pytest.raises(FileNotFoundError, match="missing"):
        import shutil

        shutil.rmtree(tmp_path / "ner" / "backbone")
        fresh.from_disk(tmp_path / "ner")


def test_bytes_round_trip(ner_nlp):
    nlp, texts = ner_nlp
    ner = nlp.get_pipe("xlmrxl_ner")
    fresh = blank("da").add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    fresh.from_bytes(ner.to_bytes())
    docs = [nlp.make_doc(t) for t in texts]
    for ours, theirs in zip(ner.model.predict(docs), fresh.model.predict(docs)):
        numpy.testing.assert_array_equal(ours, theirs)


def _hf_logits(model_cls, folder, ids):
    model = model_cls.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[0] + ids + [2]])).logits[0].numpy()


def _export(export, fixture, name, target):
    """Export component ``name`` (from the nlp object for NER, from the component for textcat)."""
    nlp, texts = fixture
    component = nlp.get_pipe(name)
    out = export(nlp if name == "xlmrxl_ner" else component, target)
    return nlp, texts, component, out, json.loads((out / "config.json").read_text())


def test_export_ner_loads_in_transformers_and_agrees_per_token(ner_nlp, tmp_path):
    transformers = pytest.importorskip("transformers")
    nlp, texts, ner, out, config = _export(export_ner_to_hf, ner_nlp, "xlmrxl_ner", tmp_path / "hf-ner")
    assert config["id2label"]["0"] == "O" and len(config["id2label"]) == len(ner.tag_names)
    assert (out / "sentencepiece.bpe.model").is_file()
    doc = nlp.make_doc(texts[0])
    data = ner.model.get_ref("tok2vec").get_ref("transformer").predict([doc])[0]
    logits = _hf_logits(transformers.XLMRobertaXLForTokenClassification, out, data.piece_ids.tolist())[1:-1]
    starts = numpy.concatenate([[0], numpy.cumsum(data.align.lengths)[:-1]])
    token_logits = numpy.stack([logits[data.align.dataXd[s:s + n]].mean(axis=0)
                                for s, n in zip(starts, data.align.lengths)])
    expected = numpy.exp(token_logits) / numpy.exp(token_logits).sum(axis=1, keepdims=True)
    numpy.testing.assert_allclose(ner.model.predict([doc])[0], expected, atol=1e-4)


def test_export_textcat_loads_in_transformers_and_agrees(textcat_nlp, tmp_path):
    transformers = pytest.importorskip("transformers")
    nlp, _, textcat, out, config = _export(export_textcat_to_hf, textcat_nlp, "xlmrxl_textcat", tmp_path / "hf-tc")
    assert config["problem_type"] == "single_label_classification"
    assert [config["id2label"][str(i)] for i in range(len(textcat.labels))] == list(textcat.labels)
    doc = nlp("The team won the cup in Berlin.")  # one window: HF sees exactly what we see
    data = textcat.model.get_ref("transformer").predict([doc])[0]
    assert len(data.windows) == 1
    ids = data.piece_ids.tolist()
    logits = _hf_logits(transformers.XLMRobertaXLForSequenceClassification, out, ids)
    expected = numpy.exp(logits) / numpy.exp(logits).sum()
    numpy.testing.assert_allclose([doc.cats[label] for label in textcat.labels], expected, atol=1e-4)


def test_spacy_load_needs_no_import_of_the_package(ner_nlp, tmp_path):
    nlp, texts = ner_nlp
    nlp.to_disk(tmp_path / "p")
    config = spacy.util.load_config(tmp_path / "p" / "config.cfg")
    assert config["components"]["xlmrxl_ner"]["factory"] == "xlmrxl_ner"
