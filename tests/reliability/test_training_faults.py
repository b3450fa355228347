"""Training faults: a NaN/inf loss stops the update with an error naming the batch (nothing is
trained on it), unknown labels are refused, and training resumed from a saved pipeline starts
from the saved weights."""

from __future__ import annotations

import pytest
import spacy
import torch
from safetensors.torch import load_file
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.training.initialize import init_nlp
from thinc.api import Adam

from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim

from ..spacy_xlmrxl.test_fill_mask import CORPUS, fill_nlp
from ..spacy_xlmrxl.test_qa import ask, qa_nlp
from .conftest import build_shared_pipeline, seed_examples

NON_FINITE = "(?i)(nan|non-finite|not finite)"


def _modules(nlp):
    return [backbone_shim(node).module for _, pipe in nlp.pipeline if hasattr(pipe, "model")
            for node in backbone_nodes(pipe.model) if backbone_shim(node).has_module]


def _poison(module) -> None:
    with torch.no_grad():
        module.get_parameter(next(n for n, _ in module.named_parameters() if "LayerNorm.weight" in n)).fill_(float("nan"))


def _state(nlp):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in _modules(nlp)]


def _unchanged(before, nlp) -> bool:
    return all(torch.equal(a[k], b[k], ) or (a[k].isnan() == b[k].isnan()).all() and
               torch.equal(a[k].nan_to_num(), b[k].nan_to_num()) for a, b in zip(before, _state(nlp)) for k in a)


@pytest.fixture(scope="module")
def trainable(spm_model_path):
    return build_shared_pipeline(spm_model_path)


def _qa(spm_model_path):
    nlp = qa_nlp(spm_model_path)
    nlp.initialize()
    text = "Anna lives in Paris and works in Oslo."
    gold = nlp.make_doc(text)
    from spacy_xlmrxl.pipeline.qa.annotation import set_qa_annotation

    set_qa_annotation(gold, question="Where does Anna live?", answers=[(14, 19)])
    return nlp, [Example(ask(nlp, text, "Where does Anna live?"), gold)]


def _fill(spm_model_path):
    nlp = fill_nlp(spm_model_path)
    nlp.initialize()
    return nlp, [Example(nlp.make_doc(t), nlp.make_doc(t)) for t in CORPUS]


@pytest.mark.parametrize("kind", ["transformer+ner+textcat", "qa", "fill_mask"])
def test_nan_loss_is_reported_with_the_batch_and_not_trained_on(kind, spm_model_path):
    if kind == "qa":
        nlp, examples = _qa(spm_model_path)
    elif kind == "fill_mask":
        nlp, examples = _fill(spm_model_path)
    else:
        nlp = build_shared_pipeline(spm_model_path)
        examples = seed_examples(nlp)
    for module in _modules(nlp):
        _poison(module)
    before = _state(nlp)
    with pytest.raises(ValueError, match=NON_FINITE) as caught:
        nlp.update(examples, sgd=Adam(0.001))
    assert examples[0].predicted.text[:20] in str(caught.value)  # the batch is named
    assert _unchanged(before, nlp)


def test_unknown_labels_are_refused(trainable):
    nlp = trainable
    before = _state(nlp)
    gold = nlp.make_doc("Anna lives in Paris .")
    gold.ents = [spacy.tokens.Span(gold, 3, 4, label="CITY")]
    with pytest.raises(ValueError, match="'CITY'.*does not know"):
        nlp.update([Example(nlp.make_doc(gold.text), gold)], sgd=Adam(0.001))
    gold = nlp.make_doc("Anna lives in Paris .")
    gold.cats = {"news": 0.0, "sport": 0.0, "travel": 0.0, "weather": 1.0}
    with pytest.raises(ValueError, match="'weather'.*does not know"):
        nlp.update([Example(nlp.make_doc(gold.text), gold)], sgd=Adam(0.001), exclude=["xlmrxl_ner"])
    assert _unchanged(before, nlp)


def test_resumed_training_starts_from_the_saved_weights(trainable, tmp_path):
    nlp = trainable
    examples = seed_examples(nlp)
    nlp.update(examples, sgd=Adam(0.01))  # weights that no fresh initialisation reproduces
    path = tmp_path / "pipeline"
    nlp.to_disk(path)
    DocBin(docs=[eg.reference for eg in examples]).to_disk(tmp_path / "train.spacy")
    config = spacy.util.load_config(path / "config.cfg")
    for name in nlp.pipe_names:
        config["components"][name] = {"source": str(path)}
    config["paths"]["train"] = config["paths"]["dev"] = str(tmp_path / "train.spacy")
    resumed = init_nlp(config)  # what `spacy train` does before step 0
    saved = load_file(str(path / "xlmrxl_transformer" / "backbone" / "model.safetensors"))
    state = backbone_shim(resumed.get_pipe("xlmrxl_transformer").model).module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert resumed.get_pipe("xlmrxl_ner").labels == nlp.get_pipe("xlmrxl_ner").labels
    doc_a, doc_b = nlp("Anna lives in Paris ."), resumed("Anna lives in Paris .")
    assert doc_a.cats == pytest.approx(doc_b.cats, abs=1e-6)
    resumed.update(examples, sgd=resumed.resume_training())  # and it trains on
