"""Faulty weight files and pipeline directories: one clear error naming the file (and key),
never a half-loaded component, never unpickled code.

Each case is checked twice: as the ``checkpoint`` a component is initialised from, and inside a
saved pipeline that ``spacy.load`` / ``from_disk`` reads.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Callable, Dict

import numpy
import pytest
import spacy
import srsly
import torch
from safetensors.torch import load_file, save_file
from spacy.util import fix_random_seed

from modeling.checkpoint import CheckpointError, load_pretrained
from modeling.model import XLMRobertaXLModel
from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim

from ..spacy_xlmrxl.xlmr_helpers import WINDOW
from .conftest import build_shared_pipeline, seed_examples

WEIGHTS = "model.safetensors"
ERRORS = (CheckpointError, OSError, ValueError)  # what a faulty file may raise
KEY = "encoder.layer.1.attention.self.query.weight"
TEXTS = ["Anna lives in Paris .", "", "\u05e9\u05dc\u05d5\u05dd world 123 \U0001F600"]


class Payload:
    """Unpickling this runs ``os.mkdir(path)``: the marker that must never appear."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# --------------------------------------------------------------------------- corruptions
def _truncate(folder: Path) -> str:
    path = folder / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return WEIGHTS


def _bad_header(folder: Path) -> str:
    path = folder / WEIGHTS
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00garbage, not a JSON header....."
    path.write_bytes(bytes(data))
    return WEIGHTS


def _bad_length(folder: Path) -> str:
    path = folder / WEIGHTS
    data = bytearray(path.read_bytes())
    data[0:8] = (2**40).to_bytes(8, "little")  # header length far beyond the file
    path.write_bytes(bytes(data))
    return WEIGHTS


def _rewrite(folder: Path, change: Callable[[Dict[str, torch.Tensor]], None]) -> None:
    state = load_file(str(folder / WEIGHTS))
    change(state)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})


def _wrong_shape(folder: Path) -> str:
    _rewrite(folder, lambda s: s.__setitem__(KEY, torch.zeros(64, 32)))
    return KEY


def _missing_key(folder: Path) -> str:
    _rewrite(folder, lambda s: s.pop(KEY))
    return KEY


def _config_mismatch(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    return "config.json"


def _missing_weights(folder: Path) -> str:
    (folder / WEIGHTS).unlink()
    return str(folder.name)


CORRUPTIONS = {"truncated": _truncate, "bad-header": _bad_header, "bad-header-length": _bad_length,
               "wrong-shape": _wrong_shape, "missing-key": _missing_key, "config-mismatch": _config_mismatch,
               "missing-weights": _missing_weights}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def saved(spm_model_path, tmp_path_factory) -> Path:
    """A saved transformer + ner + textcat pipeline whose weights differ from `shared_nlp`'s."""
    fix_random_seed(7)
    nlp = build_shared_pipeline(spm_model_path)
    module = backbone_shim(nlp.get_pipe("xlmrxl_transformer").model).module
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn_like(param))  # other weights than a fresh pipeline's
    path = tmp_path_factory.mktemp("saved") / "pipeline"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def victim(spm_model_path):
    """A pipeline that failed loads must leave exactly as it was."""
    return build_shared_pipeline(spm_model_path)


def _predictions(nlp):
    docs = list(nlp.pipe(TEXTS))
    return ([d._.xlmrxl.tokvecs["mean"].copy() for d in docs], [[(e.start, e.end, e.label_) for e in d.ents] for d in docs],
            [d.cats for d in docs])


def _same(a, b) -> bool:
    return all(numpy.array_equal(x, y) for x, y in zip(a[0], b[0])) and a[1:] == b[1:]


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "pipeline"
    shutil.copytree(saved, target)
    return target


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_backbone_in_a_saved_pipeline(case, saved, victim, tmp_path):
    path = _copy(saved, tmp_path)
    folder = path / "xlmrxl_transformer" / "backbone"
    named = CORRUPTIONS[case](folder)
    with pytest.raises(ERRORS) as caught:
        spacy.load(path)
    message = str(caught.value)
    assert named in message, message
    assert "backbone" in message, message  # the file is named with its folder
    before = _predictions(victim)
    transformer = victim.get_pipe("xlmrxl_transformer")
    with pytest.raises(ERRORS):
        transformer.from_disk(path / "xlmrxl_transformer")
    assert _same(_predictions(victim), before)  # not half-loaded


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_given_to_initialize(case, saved, spm_model_path, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(saved / "xlmrxl_transformer" / "backbone", folder)
    named = CORRUPTIONS[case](folder)
    nlp = spacy.blank("xx")
    ner = nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    nlp.config["initialize"]["components"]["xlmrxl_ner"] = {"checkpoint": str(folder), "labels": ["PER"]}
    with pytest.raises(ERRORS) as caught:
        nlp.initialize(lambda: seed_examples(nlp))
    assert named in str(caught.value) and str(folder.name) in str(caught.value), str(caught.value)
    assert not any(backbone_shim(node).has_module for node in backbone_nodes(ner.model))


def test_intact_checkpoint_given_to_initialize_loads_the_saved_weights(saved):
    folder = saved / "xlmrxl_transformer" / "backbone"
    nlp = spacy.blank("xx")
    ner = nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    nlp.config["initialize"]["components"]["xlmrxl_ner"] = {"checkpoint": str(folder), "labels": ["PER"]}
    nlp.initialize(lambda: seed_examples(nlp))
    expected = load_file(str(folder / WEIGHTS))
    state = backbone_shim(backbone_nodes(ner.model)[0]).module.state_dict()
    assert all(torch.equal(state[key], value) for key, value in expected.items())


@pytest.mark.parametrize("zipped", [False, True], ids=["plain-pickle", "torch-zip"])
def test_pickle_with_code_is_refused_and_never_run(zipped, saved, spm_model_path, tmp_path):
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(saved / "xlmrxl_transformer" / "backbone" / "config.json", folder / "config.json")
    state = {KEY: torch.zeros(64, 64), "evil": Payload(str(marker))}
    if zipped:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(state))
    with pytest.raises(CheckpointError, match=re.escape("pytorch_model.bin")):
        load_pretrained(XLMRobertaXLModel, folder)
    assert not marker.exists()
    nlp = spacy.blank("xx")
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    nlp.config["initialize"]["components"]["xlmrxl_ner"] = {
        "checkpoint": str(folder), "tokenizer": str(spm_model_path), "labels": ["PER"]}
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        nlp.initialize(lambda: seed_examples(nlp))
    assert not marker.exists()


@pytest.mark.parametrize("missing", ["xlmrxl_transformer/model", "xlmrxl_transformer/backbone/config.json",
                                     "xlmrxl_transformer/backbone/sentencepiece.bpe.model", "xlmrxl_ner/model",
                                     "xlmrxl_transformer/backbone"])
def test_missing_file_in_a_pipeline_directory(missing, saved, victim, tmp_path):
    path = _copy(saved, tmp_path)
    target = path / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ERRORS) as caught:
        spacy.load(path)
    assert Path(missing).name in str(caught.value), str(caught.value)
    before = _predictions(victim)
    component = missing.split("/")[0]
    with pytest.raises(ERRORS):
        victim.get_pipe(component).from_disk(path / component)
    assert _same(_predictions(victim), before)


def test_intact_pipeline_loads_with_the_saved_weights(saved, victim):
    loaded = spacy.load(saved)
    assert not _same(_predictions(loaded), _predictions(victim))  # the corruption tests compare something
    expected = load_file(str(saved / "xlmrxl_transformer" / "backbone" / WEIGHTS))
    state = backbone_shim(loaded.get_pipe("xlmrxl_transformer").model).module.state_dict()
    assert all(torch.equal(state[key], value) for key, value in expected.items())


# --------------------------------------------------------------------------- cfg, model and tokenizer files
LABEL_EDITS = {  # (component, cfg change, labels-derived outputs, saved output width)
    "textcat-one-label": ("xlmrxl_textcat", {"labels": ["news"]}, 1, 3),
    "textcat-four-labels": ("xlmrxl_textcat", {"labels": ["news", "sport", "travel", "x"]}, 4, 3),
    "ner-one-label": ("xlmrxl_ner", {"labels": ["LOC"]}, 5, 9),
    "ner-three-labels": ("xlmrxl_ner", {"labels": ["LOC", "ORG", "PER"]}, 13, 9),
    "ner-other-scheme": ("xlmrxl_ner", {"scheme": "IOB"}, 5, 9),
}


@pytest.mark.parametrize("case", sorted(LABEL_EDITS))
def test_cfg_labels_that_do_not_fit_the_output_layer_are_refused(case, saved, victim, tmp_path):
    component, edit, expected, width = LABEL_EDITS[case]
    path = _copy(saved, tmp_path)
    cfg_path = path / component / "cfg"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(edit)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as caught:
        spacy.load(path)
    message = str(caught.value)
    assert str(cfg_path) in message and f"need {expected} outputs" in message and f"has {width}" in message, message
    before = _predictions(victim)
    with pytest.raises(ValueError, match=re.escape(str(cfg_path))):
        victim.get_pipe(component).from_disk(path / component)
    assert _same(_predictions(victim), before)  # not half-loaded
    # the same through to_bytes / from_bytes
    data = srsly.msgpack_loads(spacy.load(saved).get_pipe(component).to_bytes())
    data["cfg"] = srsly.json_dumps({**srsly.json_loads(data["cfg"]), **edit})
    with pytest.raises(ValueError, match=f"need {expected} outputs.*has {width}"):
        victim.get_pipe(component).from_bytes(srsly.msgpack_dumps(data))
    assert _same(_predictions(victim), before)


def _truncate_file(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name, keep, cause", [("xlmrxl_ner/model", 0.5, "incomplete input"),
                                               ("xlmrxl_transformer/model", 0.5, "incomplete input"),
                                               ("xlmrxl_textcat/cfg", 0.0, "Expected object or value"),
                                               ("xlmrxl_ner/cfg", 0.5, ""),
                                               ("xlmrxl_transformer/backbone/sentencepiece.bpe.model", 0.5, "")])
def test_truncated_component_file_is_named(name, keep, cause, saved, victim, tmp_path):
    path = _copy(saved, tmp_path)
    _truncate_file(path / name, keep)
    with pytest.raises(ValueError) as caught:
        spacy.load(path)
    assert str(path / name) in str(caught.value), str(caught.value)
    assert cause in str(caught.value.__cause__ or caught.value)  # the original error is kept
    before = _predictions(victim)
    component = name.split("/")[0]
    with pytest.raises(ValueError, match=re.escape(str(path / name))):
        victim.get_pipe(component).from_disk(path / component)
    assert _same(_predictions(victim), before)
