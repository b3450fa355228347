"""Wrong types and impossible values fail at config time (resolve / add_pipe / initialize) with
the name of the setting in the message."""

from __future__ import annotations

import json
import shutil

import pytest
import spacy
from thinc.api import Config

from modeling.checkpoint import CheckpointError
from modeling.config import ConfigError, XLMRobertaXLConfig
from spacy_xlmrxl.backbone.source import BackboneError

from ..spacy_xlmrxl.xlmr_helpers import WINDOW, tiny_transformer_config
from .conftest import seed_examples

ERRORS = (ValueError, ConfigError, CheckpointError, BackboneError)


def _ner_with(spm_model_path, windows=None, **backbone):
    """``xlmrxl_ner`` with a tiny backbone: ``windows`` replaces the windows block, ``backbone``
    settings go into the ``Backbone.v1`` block."""
    transformer = tiny_transformer_config(spm_model_path, **backbone)
    if windows is not None:
        transformer["windows"] = windows
    nlp = spacy.blank("xx")
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": transformer}}})
    return nlp


@pytest.mark.parametrize("setting, value, name", [
    ("preset", "huge", "preset"),
    ("windows", {"@misc": "spacy-xlmrxl.strided_windows.v1", "window": 16, "stride": 32}, "stride"),
    ("windows", {"@misc": "spacy-xlmrxl.strided_windows.v1", "window": 0, "stride": 0}, "window"),
    ("windows", {"@misc": "spacy-xlmrxl.strided_windows.v1", "window": "wide", "stride": 8}, "window"),
    ("max_batch_pieces", 0, "max_batch_pieces"),
    ("max_batch_pieces", "many", "max_batch_pieces"),
    ("dtype", "float8", "dtype"),
    ("mixed_precision", "fp8", "mixed_precision"),
])
def test_bad_backbone_settings_fail_at_add_pipe(spm_model_path, setting, value, name):
    with pytest.raises(ERRORS) as caught:
        _ner_with(spm_model_path, **{setting: value})
    assert name in str(caught.value), str(caught.value)


def test_bad_settings_fail_when_the_registry_resolves_the_block(spm_model_path):
    block = {"model": {**tiny_transformer_config(spm_model_path), "windows": {
        "@misc": "spacy-xlmrxl.strided_windows.v1", "window": 16, "stride": 32}}}
    with pytest.raises(ERRORS, match="stride"):
        spacy.util.registry.resolve(Config(block))


def test_window_beyond_the_model_limit_fails_at_add_pipe_or_initialize(spm_model_path):
    with pytest.raises(ERRORS, match="window=600"):
        nlp = _ner_with(spm_model_path, windows={"@misc": "spacy-xlmrxl.strided_windows.v1", "window": 600, "stride": 300})
        nlp.config["initialize"]["components"]["xlmrxl_ner"] = {"labels": ["PER"]}
        nlp.initialize(lambda: seed_examples(nlp))


def test_unknown_preset_given_to_initialize(spm_model_path):
    nlp = _ner_with(spm_model_path)
    nlp.config["initialize"]["components"]["xlmrxl_ner"] = {"labels": ["PER"], "preset": "huge"}
    with pytest.raises(ERRORS, match="preset"):
        nlp.initialize(lambda: seed_examples(nlp))


@pytest.mark.parametrize("overrides, name", [
    ({"num_attention_heads": 5}, "num_attention_heads"),
    ({"hidden_size": 66}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
])
def test_impossible_model_configs(overrides, name):
    with pytest.raises(ConfigError, match=name):
        XLMRobertaXLConfig.from_preset("tiny", **overrides)


def test_checkpoint_config_with_impossible_heads_fails_at_initialize(spm_model_path, tmp_path):
    """hidden size not divisible by the heads, read from a checkpoint's config.json."""
    folder = tmp_path / "ckpt"
    nlp = _ner_with(spm_model_path)
    nlp.config["initialize"]["components"]["xlmrxl_ner"] = {"labels": ["PER"]}
    nlp.initialize(lambda: seed_examples(nlp))
    from spacy_xlmrxl.export import export_ner_to_hf

    export_ner_to_hf(nlp, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    again = spacy.blank("xx")
    again.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    again.config["initialize"]["components"]["xlmrxl_ner"] = {"labels": ["PER"], "checkpoint": str(folder)}
    with pytest.raises(ERRORS) as caught:
        again.initialize(lambda: seed_examples(again))
    assert "num_attention_heads" in str(caught.value) and "config.json" in str(caught.value), str(caught.value)
    shutil.rmtree(folder)


@pytest.mark.parametrize("factory, config, name", [
    ("xlmrxl_qa", {"max_length": 64, "doc_stride": 48, "max_question_length": 16}, "doc_stride"),
    ("xlmrxl_qa", {"top_k": 0}, "top_k"),
    ("xlmrxl_fill_mask", {"top_k": 0}, "top_k"),
    ("xlmrxl_textcat", {"threshold": 1.5}, "threshold"),
    ("xlmrxl_ner", {"scheme": "BIO2"}, "scheme"),
])
def test_bad_component_settings_fail_at_add_pipe(spm_model_path, factory, config, name):
    model = {"backbone": {"checkpoint": None, "preset": "tiny", "tokenizer": str(spm_model_path)}}
    if factory in ("xlmrxl_qa", "xlmrxl_fill_mask"):
        config = {"model": model, **config}
    with pytest.raises(ERRORS) as caught:
        spacy.blank("xx").add_pipe(factory, config=config)
    assert name in str(caught.value), str(caught.value)
