"""``spacy-xlmrxl.Backbone.v1`` (one block of backbone settings), the v2 architectures that take
it, and compatibility with the v1 architectures (settings as arguments) of the configs and
pipelines written before it: ``tests/data/configs_v1`` are copies of configs/*.cfg as they were."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import spacy
import torch
from spacy.training.initialize import init_nlp
from spacy.util import fix_random_seed, load_config, load_model_from_config, registry
from thinc.api import Config

from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim
from spacy_xlmrxl.backbone.settings import (
    BACKBONE_SETTINGS,
    SETTINGS_AS_ARGUMENTS,
    BackboneSettings,
    backbone_blocks,
    backbone_config,
    default_model_config,
)
from spacy_xlmrxl.backbone.source import BackboneError
from spacy_xlmrxl.cli.config import merge_config

from .xlmr_helpers import WINDOW, blank, long_text, tiny_backbone_config, uner_examples

REPO = Path(__file__).resolve().parents[2]
V1_CONFIGS = REPO / "tests" / "data" / "configs_v1"
CONFIGS = ("ner", "textcat", "qa", "fill_mask")
FACTORIES = ("xlmrxl_transformer", "xlmrxl_ner", "xlmrxl_textcat", "xlmrxl_qa", "xlmrxl_fill_mask")
WINDOWS = {"@misc": "spacy-xlmrxl.strided_windows.v1", **WINDOW}


def _layer_settings(node: Any) -> Dict[str, Any]:
    """What a backbone layer was built with: where its weights come from and its switches."""
    shim = backbone_shim(node)
    windows = node.attrs.get("windows")
    return {"name": node.name, "source": node.attrs["source"].to_dict(), "max_batch_pieces": node.attrs["max_batch_pieces"],
            "windows": repr(windows) if windows is not None else None, "precision": shim.precision,
            "frozen": shim.frozen, "grad_checkpointing": shim.grad_checkpointing, "quantize": shim.quantize,
            "freeze_word_embeddings": shim.freeze_word_embeddings, "model_cls": shim.model_cls.__name__,
            "model_kwargs": shim.model_kwargs}


def _predictions(docs: List[Any]) -> List[Dict[str, Any]]:
    """Everything a pipeline of configs/*.cfg writes on a doc, as plain Python values."""
    out = []
    for doc in docs:
        data = doc._.xlmrxl
        out.append({"ents": [(e.start, e.end, e.label_) for e in doc.ents], "cats": dict(doc.cats),
                    "answers": doc._.answers, "fill_mask": doc._.fill_mask,
                    "tokvecs": {k: v.tolist() for k, v in data.tokvecs.items()} if data is not None else None,
                    "cls": data.cls.tolist() if data is not None else None})
    return out


def _v1_config(name: str, corpora: Any, spm_model_path: Path) -> Config:
    train, dev = corpora[name]
    return load_config(V1_CONFIGS / f"{name}.cfg", interpolate=False, overrides={
        "paths.train": str(train), "paths.dev": str(dev), "paths.tokenizer": str(spm_model_path), "paths.preset": "tiny"})


# --------------------------------------------------------------------------- old configs and pipelines
@pytest.mark.parametrize("name", CONFIGS)
def test_v1_config_initialises_predicts_and_its_saved_pipeline_reloads_identically(name, tiny_corpora, spm_model_path,
                                                                                  tmp_path):
    """(a) today's configs before Backbone.v1 initialise and predict; (b) the pipeline they save
    (config.cfg naming the v1 architectures, as pipelines saved before the change) loads with
    ``spacy.load`` and predicts what it predicted before saving."""
    config = _v1_config(name, tiny_corpora, spm_model_path)
    blocks = backbone_blocks(config)
    assert blocks and all(b.get("@architectures") in SETTINGS_AS_ARGUMENTS for b in blocks)
    nlp = init_nlp(config)  # load_model_from_config + initialize, as `spacy train` does
    layers = [node for _, pipe in nlp.pipeline if hasattr(pipe, "model") for node in backbone_nodes(pipe.model)]
    assert layers and all(_layer_settings(n)["source"]["preset"] == "tiny" for n in layers)
    assert all(_layer_settings(n)["source"]["tokenizer"] == str(spm_model_path) for n in layers)
    dev = registry.resolve(nlp.config.interpolate()["corpora"])["dev"]
    docs = [eg.predicted for eg in dev(nlp)]
    if name == "fill_mask":
        docs = [nlp.make_doc("Anna bor i <mask> og arbejder for <mask> .")] + docs
    before = _predictions(list(nlp.pipe([d.copy() for d in docs])))
    assert any(p["tokvecs"] or p["cls"] or p["answers"] or p["fill_mask"] for p in before)
    nlp.to_disk(tmp_path / "pipeline")
    saved = (tmp_path / "pipeline" / "config.cfg").read_text()
    assert BACKBONE_SETTINGS not in saved and any(arch in saved for arch in SETTINGS_AS_ARGUMENTS)
    loaded = spacy.load(tmp_path / "pipeline")
    assert _predictions(list(loaded.pipe([d.copy() for d in docs]))) == before


# --------------------------------------------------------------------------- v1 block == v2 block
def _v1_and_v2(architecture: str, settings: Dict[str, Any], **others: Any) -> List[Dict[str, Any]]:
    """The v1 block (settings as arguments) and the v2 block (settings in Backbone.v1)."""
    return [{"@architectures": f"spacy-xlmrxl.{architecture}.v1", **settings, **others},
            {"@architectures": f"spacy-xlmrxl.{architecture}.v2", "backbone": {"@misc": BACKBONE_SETTINGS, **settings},
             **others}]


@pytest.mark.parametrize("architecture, others", [("Transformer", {"windows": WINDOWS}), ("QAModel", {}),
                                                  ("MaskedLM", {"windows": WINDOWS})])
@pytest.mark.parametrize("settings", [
    {"checkpoint": None, "preset": "small", "tokenizer": "spm.model", "max_batch_pieces": 100, "dtype": "float32",
     "mixed_precision": "bf16", "grad_checkpointing": True, "freeze": True, "freeze_word_embeddings": True},
    {"checkpoint": "some/model", "preset": None, "quantize": "int8", "max_batch_pieces": 7},
])
def test_every_v1_argument_reaches_the_layer_as_in_v2(architecture, others, settings):
    v1, v2 = (registry.resolve(Config({"model": block}))["model"] for block in _v1_and_v2(architecture, settings, **others))
    assert _layer_settings(v1) == _layer_settings(v2)
    layer = _layer_settings(v2)
    assert layer["max_batch_pieces"] == settings["max_batch_pieces"]
    assert layer["source"]["checkpoint"] == settings["checkpoint"] and layer["source"]["preset"] == settings["preset"]
    assert (layer["frozen"], layer["quantize"]) == (settings.get("freeze", False), settings.get("quantize"))
    assert layer["precision"] == ("bf16" if settings.get("mixed_precision") else "none")


def _ner_tokvecs(spm_model_path: Path, shared_data: Path, transformer: Dict[str, Any]) -> List[Any]:
    nlp = blank("da")
    ner = nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": transformer}}})
    examples = uner_examples(nlp, shared_data, 3)
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    docs = [eg.predicted for eg in examples] + [nlp.make_doc(long_text())]
    return [a.tolist() for a in ner.model.get_ref("tok2vec").predict(docs)] + [a.tolist() for a in ner.model.predict(docs)]


def test_v1_and_v2_transformer_blocks_give_identical_outputs(spm_model_path, shared_data):
    """(c) with small windows and batches (a long doc in several windows and calls)."""
    settings = {"checkpoint": None, "preset": "tiny", "tokenizer": str(spm_model_path), "max_batch_pieces": 48}
    v1, v2 = (_ner_tokvecs(spm_model_path, shared_data, block)
              for block in _v1_and_v2("Transformer", settings, windows=WINDOWS))
    assert len(v1) == 8 and v1 == v2


def test_v1_and_v2_task_model_blocks_give_identical_outputs(spm_model_path):
    """(c) for QAModel and MaskedLM, seeded presets."""
    settings = {"checkpoint": None, "preset": "tiny", "tokenizer": str(spm_model_path), "seed": 3, "max_batch_pieces": 64}
    text, question = long_text(), "Hvor ligger Aarhus?"
    answers = []
    for block in _v1_and_v2("QAModel", settings):
        nlp = spacy.blank("da")
        nlp.add_pipe("xlmrxl_qa", config={"model": block, "top_k": 3, "max_length": 48, "doc_stride": 16,
                                         "max_question_length": 16})
        nlp.initialize()
        doc = nlp.make_doc(text)
        doc._.question = question
        answers.append(nlp(doc)._.answers)
    assert len(answers[0][0]) == 3 and answers[0] == answers[1]
    fillers = []
    for block in _v1_and_v2("MaskedLM", settings, windows=WINDOWS):
        nlp = spacy.blank("da")
        nlp.add_pipe("xlmrxl_fill_mask", config={"model": block})
        nlp.initialize()
        fillers.append([d._.fill_mask for d in nlp.pipe(["Anna bor i <mask> .", long_text() + " <mask> ."])])
    assert len(fillers[0][1][0]) == 5 and fillers[0] == fillers[1]


def test_transformer_v2_takes_a_seed(spm_model_path):
    """New with the block: a seeded preset for the transformer too (v1 had no seed)."""
    def weights(seed: int, global_seed: int) -> Dict[str, torch.Tensor]:
        nlp = spacy.blank("da")
        nlp.add_pipe("xlmrxl_transformer", config={"model": {"backbone": tiny_backbone_config(spm_model_path, seed=seed)}})
        torch.manual_seed(global_seed)
        nlp.initialize()
        return backbone_shim(nlp.get_pipe("xlmrxl_transformer").model).module.state_dict()

    first, again, other = weights(3, 0), weights(3, 1), weights(4, 0)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# --------------------------------------------------------------------------- the block itself
def test_defaults_are_declared_once_and_every_default_config_holds_one_block():
    assert registry.resolve(Config({"b": backbone_config()}))["b"] == BackboneSettings()
    nlp = spacy.blank("xx")
    for factory in FACTORIES:
        nlp.add_pipe(factory)  # validates the default block; loads nothing
        blocks = backbone_blocks(nlp.config["components"][factory])
        assert blocks == [backbone_config()], factory
    assert default_model_config("spacy-xlmrxl.QAModel.v2", x=1) == {
        "@architectures": "spacy-xlmrxl.QAModel.v2", "backbone": backbone_config(), "x": 1}
    with pytest.raises(BackboneError, match="unknown backbone settings.*checkpiont"):
        backbone_config(checkpiont="x")


@pytest.mark.parametrize("settings, match", [
    ({"dtype": "float8"}, r"dtype must be one of .* got 'float8'"),
    ({"checkpoint": "org/model", "preset": "tiny"}, r"both checkpoint \('org/model'\) and preset \('tiny'\)"),
    ({"checkpoint": None, "preset": None}, "neither checkpoint nor preset"),
    ({"checkpoint": None, "preset": "huge"}, "preset must be one of"),
    ({"quantize": "int8", "dtype": "bfloat16"}, r"quantize = 'int8' needs float32 weights, but dtype = 'bfloat16'"),
    ({"quantize": "int8", "mixed_precision": "bf16"}, "cannot be combined with mixed_precision"),
    ({"quantize": "int4"}, "quantize must be null or one of"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
    ({"max_batch_pieces": 0}, "max_batch_pieces must be a positive integer, got 0"),
])
def test_bad_settings_fail_at_config_time_naming_the_setting(settings, match):
    """(d) when the block is resolved (no weights, no files), and so at ``add_pipe``."""
    with pytest.raises(BackboneError, match=match):
        registry.resolve(Config({"backbone": backbone_config(**settings)}))
    with pytest.raises(BackboneError, match=match):
        spacy.blank("xx").add_pipe("xlmrxl_qa", config={"model": {"backbone": settings}})


def test_settings_are_frozen_checked_and_keyword_only():
    settings = BackboneSettings(checkpoint=None, preset="tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.preset = "xl"  # type: ignore[misc]
    with pytest.raises(BackboneError, match="max_batch_pieces"):
        BackboneSettings(max_batch_pieces=True)
    with pytest.raises(BackboneError, match="seed must be an integer"):
        BackboneSettings(seed="3")  # type: ignore[arg-type]
    if sys.version_info >= (3, 10):
        with pytest.raises(TypeError):
            BackboneSettings("org/model")  # type: ignore[misc]
    assert BackboneSettings.from_arguments({"preset": "tiny", "checkpoint": None, "windows": object()}) == settings


# --------------------------------------------------------------------------- merge-config
def test_merge_config_sets_backbone_keys_in_new_and_old_blocks(spm_model_path):
    """(e) ``[backbone]`` reaches every Backbone.v1 block and every v1 architecture block (never
    the v2 architecture block around a Backbone.v1 block), also in one config holding both."""
    overrides = Config().from_str("[backbone]\nmax_batch_pieces = 8192\nfreeze = true\n")
    mixed = load_config(V1_CONFIGS / "ner.cfg", interpolate=False)
    mixed["nlp"]["pipeline"] = ["transformer", "ner", "qa"]
    mixed["components"]["qa"] = {"factory": "xlmrxl_qa", "model": default_model_config("spacy-xlmrxl.QAModel.v2")}
    mixed["components"]["qa"]["model"]["backbone"].update(checkpoint=None, preset="tiny")
    bases = [load_config(REPO / "configs" / f"{n}.cfg", interpolate=False) for n in CONFIGS]
    bases += [load_config(V1_CONFIGS / f"{n}.cfg", interpolate=False) for n in CONFIGS] + [mixed]
    for base in bases:
        merged = merge_config(base, overrides)
        blocks = backbone_blocks(merged)
        assert len(blocks) == len(backbone_blocks(base)) >= 1
        assert all(b["max_batch_pieces"] == 8192 and b["freeze"] is True for b in blocks)
        for component in merged["components"].values():
            assert "freeze" not in component["model"] or component["model"] in blocks
        nlp = load_model_from_config(merged, auto_fill=True, validate=True)  # builds, loads no weights
        layers = [backbone_shim(n) for _, p in nlp.pipeline if hasattr(p, "model") for n in backbone_nodes(p.model)]
        assert layers and all(shim.frozen for shim in layers)
    assert {b.get("@misc", b.get("@architectures")) for b in backbone_blocks(merge_config(mixed, overrides))} == {
        BACKBONE_SETTINGS, "spacy-xlmrxl.Transformer.v1"}


# --------------------------------------------------------------------------- registration
def test_pyproject_declares_an_entry_point_for_every_registered_name():
    """The names resolve through ``import spacy_xlmrxl`` (no re-install needed), and
    pyproject.toml's entry points name the same objects (what spaCy finds without the import)."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    wanted = {"architectures": ["Transformer.v1", "Transformer.v2", "QAModel.v1", "QAModel.v2", "MaskedLM.v1",
                                "MaskedLM.v2"], "misc": ["Backbone.v1", "strided_windows.v1"]}
    for kind, names in wanted.items():
        group = declared[f"spacy_{kind}"]
        for name in names:
            module, attr = group[f"spacy-xlmrxl.{name}"].split(":")
            assert getattr(importlib.import_module(module), attr) is registry.get(kind, f"spacy-xlmrxl.{name}"), name
    assert registry.get("misc", BACKBONE_SETTINGS) is BackboneSettings
