"""``freeze_word_embeddings``: every backbone trains except the vocab x hidden embedding matrix."""

from __future__ import annotations

import pytest
import torch
from thinc.api import Adam

from modeling.config import XLMRobertaXLConfig
from modeling.heads import XLMRobertaXLForMaskedLM
from modeling.model import XLMRobertaXLModel
from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim
from spacy_xlmrxl.backbone.shim import TorchModuleShim, freeze_word_embeddings

from .xlmr_helpers import WINDOW, backbone_settings, blank, load_roundtrip, train, uner_examples


def test_freeze_word_embeddings_on_backbone_and_head_models():
    for model in (XLMRobertaXLModel(XLMRobertaXLConfig.from_preset("tiny")),
                  XLMRobertaXLForMaskedLM(XLMRobertaXLConfig.from_preset("tiny"))):
        freeze_word_embeddings(model)
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen == [n for n in frozen if n.endswith("word_embeddings.weight")] and len(frozen) == 1


def test_shim_copies_keep_the_setting():
    shim = TorchModuleShim(XLMRobertaXLModel(XLMRobertaXLConfig.from_preset("tiny")), freeze_word_embeddings=True,
                           model_cls=XLMRobertaXLModel)
    import copy
    import pickle

    for clone in (copy.deepcopy(shim), pickle.loads(pickle.dumps(shim))):
        assert not clone.module.get_input_embeddings().weight.requires_grad
        assert clone.module.embeddings.position_embeddings.weight.requires_grad


@pytest.mark.parametrize("freeze", [True, False])
def test_ner_trains_everything_but_the_word_embeddings(tmp_path, spm_model_path, shared_data, freeze):
    nlp = blank()
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {
        "backbone": {"freeze_word_embeddings": freeze}, "windows": {"@misc": "spacy-xlmrxl.strided_windows.v1", **WINDOW}}}}})
    examples = uner_examples(nlp, shared_data, 8)
    train(nlp, examples, 0, **{"xlmrxl_ner": backbone_settings(spm_model_path)})  # initialise only
    module = backbone_shim(backbone_nodes(nlp.get_pipe("xlmrxl_ner").model)[0]).module
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    optimizer = Adam(1e-3)
    losses = []
    for _ in range(6):
        step: dict = {}
        nlp.update(examples, sgd=optimizer, losses=step)
        losses.append(step["xlmrxl_ner"])
    module = backbone_shim(backbone_nodes(nlp.get_pipe("xlmrxl_ner").model)[0]).module
    after = dict(module.named_parameters())
    word = "embeddings.word_embeddings.weight"
    assert losses[-1] < losses[0]
    assert torch.equal(before[word], after[word].detach()) is freeze
    assert not torch.equal(before["embeddings.position_embeddings.weight"],
                           after["embeddings.position_embeddings.weight"].detach())
    reloaded = load_roundtrip(nlp, tmp_path / "nlp")
    shim = backbone_shim(backbone_nodes(reloaded.get_pipe("xlmrxl_ner").model)[0])
    assert shim.module.get_input_embeddings().weight.requires_grad is not freeze
