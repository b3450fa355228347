"""CPU inference options of the backbone: ``quantize = "int8"`` and the slow-bf16 warning."""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import numpy
import pytest
import spacy
import torch
from safetensors.torch import load_file
from spacy.training import Example
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from modeling import cpu_features
from modeling.config import XLMRobertaXLConfig
from modeling.model import XLMRobertaXLModel
from modeling.upcast import computes_in_float32
from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim
from spacy_xlmrxl.backbone.precision import SlowBF16Warning
from spacy_xlmrxl.backbone.quantize import is_quantized, quantize_linear_int8
from spacy_xlmrxl.backbone.shim import TorchModuleShim
from spacy_xlmrxl.backbone.source import BackboneError

from .xlmr_helpers import WINDOW, backbone_settings, blank, entities, long_text, train, uner_examples

KWARGS = {"model_cls": XLMRobertaXLModel, "model_kwargs": {"add_pooling_layer": False}}
QUANTIZED = {"model": {"tok2vec": {"transformer": {"backbone": {"quantize": "int8"}}}}}


def _tiny(seed: int = 0) -> XLMRobertaXLModel:
    model = XLMRobertaXLModel(XLMRobertaXLConfig.from_preset("tiny"), add_pooling_layer=False)
    model.init_weights(seed=seed)
    return model.eval()


def _cosine(a, b) -> float:
    a, b = torch.as_tensor(numpy.asarray(a)).float(), torch.as_tensor(numpy.asarray(b)).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()


def _linears(module: torch.nn.Module, kind: type) -> list:
    return [name for name, sub in module.named_modules() if type(sub) is kind]


def _token_vectors(nlp, texts):
    tok2vec = nlp.get_pipe("xlmrxl_ner").model.get_ref("tok2vec")
    return [tok2vec.predict([nlp.make_doc(t)])[0] for t in texts]


def _ner_shim(nlp) -> TorchModuleShim:
    return backbone_shim(backbone_nodes(nlp.get_pipe("xlmrxl_ner").model)[0])


# --------------------------------------------------------------------------- the torch side
def test_int8_copy_quantises_every_linear_and_shares_the_rest():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize_linear_int8(model)
    float_linears = _linears(model, torch.nn.Linear)
    assert float_linears and _linears(quantized, DynamicQuantizedLinear) == float_linears
    assert not _linears(quantized, torch.nn.Linear) and is_quantized(quantized) and not is_quantized(model)
    # the float module is unchanged; embeddings and LayerNorms are shared, not copied
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert quantized.embeddings.word_embeddings.weight is model.embeddings.word_embeddings.weight
    ids = torch.randint(5, 1000, (3, 40))
    with torch.inference_mode():
        ref = model(input_ids=ids).last_hidden_state
        out = quantized(input_ids=ids).last_hidden_state
        again = quantize_linear_int8(model)(input_ids=ids).last_hidden_state
    assert not torch.equal(out, ref) and _cosine(out, ref) > 0.99
    assert torch.equal(out, again)  # deterministic: the same weights give the same int8 model


def test_int8_needs_float32_weights_on_the_cpu():
    with pytest.raises(BackboneError, match="needs float32 weights"):
        quantize_linear_int8(_tiny().to(torch.bfloat16))


def test_quantised_shim_runs_int8_keeps_float_weights_and_refuses_training():
    model = _tiny()
    shim = TorchModuleShim(model, quantize="int8", **KWARGS)
    assert shim.float_module is model and is_quantized(shim.module)
    with shim.run(is_train=False) as tracking:
        out = shim.module(input_ids=torch.randint(5, 100, (1, 8))).last_hidden_state
    assert not tracking and torch.isfinite(out).all()
    with pytest.raises(BackboneError, match=r"quantize = 'int8'.*inference only.*quantize = null"):
        with shim.run(is_train=True):
            pass
    # bytes, copies and pickles carry the float weights and quantise again
    empty = TorchModuleShim(None, quantize="int8", **KWARGS).from_bytes(shim.to_bytes())
    assert is_quantized(empty.module) and not is_quantized(empty.float_module)
    clone = copy.deepcopy(shim)
    assert is_quantized(clone.module) and clone.float_module is not model
    unpickled = pickle.loads(pickle.dumps(shim))
    assert is_quantized(unpickled.module) and not is_quantized(unpickled.float_module)
    ids = torch.randint(5, 1000, (2, 16))
    with torch.inference_mode():
        outs = [s.module(input_ids=ids).last_hidden_state for s in (shim, empty, clone, unpickled)]
    assert all(torch.equal(outs[0], out) for out in outs[1:])
    # re-installing the same module keeps the int8 copy
    runner = shim.module
    shim.set_module(model)
    assert shim.module is runner


@pytest.mark.parametrize("settings,match", [
    ({"quantize": "int4"}, "quantize must be null or one of"),
    ({"quantize": "int8", "mixed_precision": "bf16"}, "cannot be combined with mixed_precision"),
    ({"quantize": "int8", "dtype": "bfloat16"}, "needs float32 weights"),
])
def test_bad_quantize_settings_fail_at_add_pipe(spm_model_path, settings, match):
    nlp = blank("da")
    with pytest.raises(BackboneError, match=match):
        nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"backbone": settings}}}})


# --------------------------------------------------------------------------- pipelines
@pytest.fixture(scope="module")
def trained(shared_data, spm_model_path, tmp_path_factory):
    """A trained float tiny NER pipeline saved to disk, and some texts."""
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"windows": WINDOW}}}})
    examples = uner_examples(nlp, shared_data, 4)
    train(nlp, examples, 2, xlmrxl_ner=backbone_settings(spm_model_path))
    path = tmp_path_factory.mktemp("quantize") / "float"
    nlp.to_disk(path)
    texts = [eg.reference.text for eg in examples] + ["", long_text()]
    return nlp, path, texts, examples


def test_config_switch_quantises_a_loaded_pipeline_and_stays_close_to_fp32(trained):
    nlp, path, texts, _ = trained
    int8 = spacy.load(path, config={"components": {"xlmrxl_ner": QUANTIZED}})
    assert int8.config["components"]["xlmrxl_ner"]["model"]["tok2vec"]["transformer"]["backbone"]["quantize"] == "int8"
    shim = _ner_shim(int8)
    assert is_quantized(shim.module) and not is_quantized(shim.float_module)
    assert not is_quantized(_ner_shim(nlp).module)
    for ours, ref in zip(_token_vectors(int8, texts), _token_vectors(nlp, texts)):
        assert ours.shape == ref.shape
        if len(ref):
            assert _cosine(ours, ref) > 0.99


def test_quantised_pipeline_saves_float_weights_and_reloads_identically(trained, tmp_path):
    nlp, path, texts, _ = trained
    int8 = spacy.load(path, config={"components": {"xlmrxl_ner": QUANTIZED}})
    int8.to_disk(tmp_path / "int8")
    saved = tmp_path / "int8" / "xlmrxl_ner" / "backbone"
    # the backbone directory is the float HF checkpoint, the same tensors as the float pipeline's
    original = load_file(path / "xlmrxl_ner" / "backbone" / "model.safetensors")
    written = load_file(saved / "model.safetensors")
    assert written.keys() == original.keys()
    for key, tensor in original.items():
        assert written[key].dtype == torch.float32 and torch.equal(written[key], tensor), key
    assert json.loads((saved / "config.json").read_text())["hidden_size"] == 64
    # the setting travels in the pipeline's config, and reloading reproduces the predictions exactly
    assert "quantize = \"int8\"" in (tmp_path / "int8" / "config.cfg").read_text()
    again = spacy.load(tmp_path / "int8")
    assert is_quantized(_ner_shim(again).module)
    for ours, theirs in zip(_token_vectors(again, texts), _token_vectors(int8, texts)):
        numpy.testing.assert_array_equal(ours, theirs)
    assert entities(again.pipe(texts)) == entities(int8.pipe(texts))
    # bytes round trip too
    from_bytes = spacy.load(path, config={"components": {"xlmrxl_ner": QUANTIZED}})
    from_bytes.from_bytes(int8.to_bytes())
    assert is_quantized(_ner_shim(from_bytes).module)
    for ours, theirs in zip(_token_vectors(from_bytes, texts), _token_vectors(int8, texts)):
        numpy.testing.assert_array_equal(ours, theirs)


def test_update_on_a_quantised_backbone_raises_naming_the_setting(trained):
    _, path, _, examples = trained
    # the dotted override form, as on the command line (--components.xlmrxl_ner.model....backbone.quantize int8)
    int8 = spacy.load(path, config={"components.xlmrxl_ner.model.tok2vec.transformer.backbone.quantize": "int8"})
    assert is_quantized(_ner_shim(int8).module)
    fresh = [Example(int8.make_doc(eg.reference.text), eg.reference) for eg in examples]
    with pytest.raises(BackboneError, match=r"quantize = 'int8'.*inference only"):
        int8.update(fresh, sgd=int8.resume_training())


def test_dtype_override_at_load_converts_the_saved_float_weights(trained):
    nlp, path, texts, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowBF16Warning)
        bf16 = spacy.load(path, config={"components.xlmrxl_ner.model.tok2vec.transformer.backbone.dtype": "bfloat16"})
    assert {p.dtype for p in _ner_shim(bf16).float_module.parameters()} == {torch.bfloat16}
    for ours, ref in zip(_token_vectors(bf16, texts[:2]), _token_vectors(nlp, texts[:2])):
        assert _cosine(ours, ref) > 0.99


def test_quantize_at_initialize_for_shared_transformer_and_textcat(spm_model_path):
    nlp = blank("da")
    transformer = {"backbone": {"checkpoint": None, "preset": "tiny", "tokenizer": str(spm_model_path), "quantize": "int8"}}
    nlp.add_pipe("xlmrxl_transformer", config={"model": transformer})
    nlp.add_pipe("xlmrxl_textcat", config={"model": {"transformer": dict(transformer, windows=WINDOW)}})
    docs = [nlp.make_doc("Mette Frederiksen besøgte Aarhus i går.")]
    nlp.get_pipe("xlmrxl_textcat").add_label("a")
    nlp.get_pipe("xlmrxl_textcat").add_label("b")
    nlp.initialize(lambda: [Example.from_dict(docs[0], {"cats": {"a": 1.0, "b": 0.0}})])
    for name in ("xlmrxl_transformer", "xlmrxl_textcat"):
        for node in backbone_nodes(nlp.get_pipe(name).model):
            assert is_quantized(backbone_shim(node).module)
    doc = nlp(docs[0].text)
    assert doc._.xlmrxl is not None and set(doc.cats) == {"a", "b"}


# --------------------------------------------------------------------------- bf16 warning
@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu_features, "native_bf16_matmul", lambda: False)


def test_bf16_weights_on_a_cpu_without_native_bf16_compute_in_float32(no_native_bf16):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowBF16Warning)  # stored in bf16, computed in float32: no warning
        shim = TorchModuleShim(_tiny().to(torch.bfloat16), **KWARGS)
    assert computes_in_float32(shim.module) and all(p.dtype == torch.bfloat16 for p in shim.module.parameters())
    ids = torch.tensor([[0, 5, 6, 2]])
    with shim.run(is_train=False):
        out = shim.module(input_ids=ids).last_hidden_state
    reference = _tiny().to(torch.bfloat16).float().eval()
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference(input_ids=ids).last_hidden_state, atol=1e-5)
    with pytest.warns(SlowBF16Warning, match=r"mixed_precision = \"bf16\".*emulated.*slower than float32") as record:
        TorchModuleShim(_tiny(), mixed_precision="bf16", **KWARGS)
    assert len([w for w in record if issubclass(w.category, SlowBF16Warning)]) == 1


def test_bf16_weights_through_the_component_setting(no_native_bf16, spm_model_path):
    nlp = blank("da")
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": {"transformer": {"backbone": {"dtype": "bfloat16"},
                                                                             "windows": WINDOW}}}})
    nlp.get_pipe("xlmrxl_ner").add_label("PER")
    nlp.config["initialize"]["components"]["xlmrxl_ner"] = backbone_settings(spm_model_path)
    doc = nlp.make_doc("Mette Frederiksen")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowBF16Warning)
        nlp.initialize(lambda: [Example.from_dict(doc, {"entities": [(0, 17, "PER")]})])
    (node,) = backbone_nodes(nlp.get_pipe("xlmrxl_ner").model)
    module = backbone_shim(node).module
    assert computes_in_float32(module) and next(module.parameters()).dtype == torch.bfloat16
    assert nlp("Mette Frederiksen bor i Danmark").ents is not None


def test_no_bf16_warning_with_native_bf16_or_float32(monkeypatch):
    monkeypatch.setattr(cpu_features, "native_bf16_matmul", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowBF16Warning)
        shim = TorchModuleShim(_tiny().to(torch.bfloat16), **KWARGS)
        assert not computes_in_float32(shim.module)  # native bf16: computed in bf16
        monkeypatch.setattr(cpu_features, "native_bf16_matmul", lambda: False)
        TorchModuleShim(_tiny(), **KWARGS)  # float32: nothing to warn about
