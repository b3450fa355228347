"""``to_disk`` is atomic: a save that fails halfway through the weights leaves the existing
pipeline directory loadable, with the predictions it had."""

from __future__ import annotations

import numpy
import pytest
import spacy
import torch

import modeling.checkpoint.safetensors as checkpoint  # where write_shards looks up write_safetensors
from spacy_xlmrxl.backbone.nodes import backbone_shim

from .conftest import build_shared_pipeline

TEXTS = ["Anna lives in Paris .", "Oslo won the cup . " * 30, ""]


def _outputs(nlp):
    docs = list(nlp.pipe(TEXTS))
    return [d._.xlmrxl.tokvecs["mean"] for d in docs], [d.cats for d in docs]


def test_save_failing_halfway_through_the_weights_keeps_the_old_pipeline(spm_model_path, tmp_path, monkeypatch):
    nlp = build_shared_pipeline(spm_model_path)
    path = tmp_path / "pipeline"
    nlp.to_disk(path)
    hidden, cats = _outputs(spacy.load(path))
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with torch.no_grad():  # the nlp object now differs from what is on disk
        for param in backbone_shim(nlp.get_pipe("xlmrxl_transformer").model).module.parameters():
            param.mul_(1.5)
    written = []
    original = checkpoint.write_safetensors

    def fail_halfway(target, specs, produce, **kwargs):
        def produce_some(name):
            if len(written) >= len(specs) // 2:
                raise OSError(f"{target}: no space left on device")
            written.append(name)
            return produce(name)

        return original(target, specs, produce_some, **kwargs)

    monkeypatch.setattr(checkpoint, "write_safetensors", fail_halfway)
    with pytest.raises(OSError, match="no space left"):
        nlp.to_disk(path)
    assert written  # it did fail in the middle of the weights file
    monkeypatch.undo()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files  # no leftovers
    again_hidden, again_cats = _outputs(spacy.load(path))
    assert all(numpy.array_equal(a, b) for a, b in zip(hidden, again_hidden))
    assert again_cats == cats
    nlp.to_disk(path)  # and a save that succeeds replaces it
    new_hidden, _ = _outputs(spacy.load(path))
    assert not numpy.array_equal(new_hidden[0], hidden[0])
