"""Tests for spacy_xlmrxl.backbone: checkpoint and tokenizer resolution, devices, precision, the shim."""

from __future__ import annotations

import copy
import pickle

import numpy
import pytest
import spacy
import torch
from thinc.api import Adam, NumpyOps

from modeling.config import XLMRobertaXLConfig
from modeling.model import XLMRobertaXLModel
from spacy_xlmrxl.backbone.devices import to_torch, to_xp
from spacy_xlmrxl.backbone.precision import LossScaler, normalise_mixed_precision
from spacy_xlmrxl.backbone.shim import TorchModuleShim
from spacy_xlmrxl.backbone.source import BackboneError, BackboneSource, resolve_checkpoint, resolve_tokenizer
from spacy_xlmrxl.backbone.weights import load_module_dir, save_module_dir

HUB_NAME = "facebook/xlm-roberta-xl"


def _tiny(seed: int = 0) -> XLMRobertaXLModel:
    model = XLMRobertaXLModel(XLMRobertaXLConfig.from_preset("tiny"), add_pooling_layer=False)
    model.init_weights(seed=seed)
    return model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, spm_model_path):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_module_dir(_tiny(), folder, tokenizer_model=spm_model_path.read_bytes())
    return folder


# --------------------------------------------------------------------------- resolution
def test_local_directory_and_file_are_used_as_they_are(saved_dir):
    assert resolve_checkpoint(saved_dir) == saved_dir
    assert resolve_checkpoint(str(saved_dir / "model.safetensors")) == saved_dir / "model.safetensors"


def test_hub_names_download_through_huggingface_hub_then_read_the_cache(local_hub, saved_dir, monkeypatch):
    from huggingface_hub import constants

    local_hub.add_repo(HUB_NAME, saved_dir)
    source = BackboneSource(checkpoint=HUB_NAME)
    tokenizer = source.tokenizer_path()  # fetched alone, before any weights
    assert local_hub.files_fetched() == ["sentencepiece.bpe.model"]
    module = source.build(XLMRobertaXLModel, model_kwargs={"add_pooling_layer": False})
    assert _same_weights(module, _tiny())
    snapshot = resolve_checkpoint(HUB_NAME)
    assert tokenizer == snapshot / "sentencepiece.bpe.model" and (snapshot / "model.safetensors").is_file()
    assert local_hub.files_fetched() == ["sentencepiece.bpe.model", "config.json", "model.safetensors"]
    local_hub.reset()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: the cache alone
    assert resolve_checkpoint(HUB_NAME) == snapshot and source.tokenizer_path() == tokenizer
    assert local_hub.requests == []


def test_hub_checkpoint_without_tokenizer_fails_before_its_weights_are_fetched(local_hub, saved_dir):
    local_hub.add_repo("org/no-tokenizer", {p.name: p.read_bytes() for p in saved_dir.iterdir()
                                            if p.name != "sentencepiece.bpe.model"})
    with pytest.raises(BackboneError, match="has no file 'sentencepiece.bpe.model'.*without its own sentencepiece.bpe.model needs tokenizer ="):
        BackboneSource(checkpoint="org/no-tokenizer").tokenizer_path()
    assert local_hub.files_fetched() == []


def test_unknown_checkpoint_error_says_what_to_pass(tmp_path):
    # tests run with HF_HUB_OFFLINE=1 and an empty cache (tests/conftest.py)
    with pytest.raises(BackboneError, match="no weights in the HF cache .* downloads are off .*preset = one of"):
        resolve_checkpoint(HUB_NAME)
    with pytest.raises(BackboneError, match="file system"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_pipeline_checkpoint_setting_downloads_from_the_hub(local_hub, saved_dir):
    local_hub.add_repo("org/tiny", saved_dir)
    text = "Mette Frederiksen besøgte Aarhus i går ."

    def hidden(checkpoint):
        nlp = spacy.blank("da")
        backbone = {"@misc": "spacy-xlmrxl.Backbone.v1", "checkpoint": checkpoint, "preset": None}
        nlp.add_pipe("xlmrxl_transformer", config={"model": {"backbone": backbone}})
        nlp.initialize()
        return nlp(text)._.xlmrxl.hidden

    from_hub = hidden("org/tiny")
    assert local_hub.files_fetched() == ["sentencepiece.bpe.model", "config.json", "model.safetensors"]
    numpy.testing.assert_array_equal(from_hub, hidden(str(saved_dir)))


def test_tokenizer_resolution(saved_dir, spm_model_path, tmp_path):
    assert resolve_tokenizer(str(spm_model_path)) == spm_model_path
    assert resolve_tokenizer(str(spm_model_path.parent)) == spm_model_path
    assert resolve_tokenizer(None, saved_dir / "model.safetensors") == saved_dir / "sentencepiece.bpe.model"
    with pytest.raises(BackboneError, match="needs tokenizer"):
        resolve_tokenizer(None, None)
    with pytest.raises(BackboneError, match="has no sentencepiece"):
        resolve_tokenizer(None, tmp_path)


@pytest.mark.parametrize("settings,message", [
    (dict(checkpoint="x", preset="tiny"), "both checkpoint"),
    (dict(checkpoint=None, preset=None), "neither checkpoint nor preset"),
    (dict(checkpoint=None, preset="huge"), "preset must be one of"),
    (dict(checkpoint=None, preset="tiny", dtype="float8"), "dtype must be one of"),
])
def test_impossible_settings_fail_at_config_time(settings, message):
    with pytest.raises(BackboneError, match=message):
        BackboneSource(**settings).validate()


def test_replace_switches_between_checkpoint_and_preset():
    source = BackboneSource().replace(preset="tiny", tokenizer="t.model")
    assert (source.checkpoint, source.preset, source.tokenizer) == (None, "tiny", "t.model")
    assert BackboneSource(checkpoint=None, preset="tiny").replace(checkpoint="dir").preset is None


def test_preset_and_checkpoint_builds(saved_dir):
    random = BackboneSource(checkpoint=None, preset="tiny", seed=0).build(
        XLMRobertaXLModel, model_kwargs={"add_pooling_layer": False})
    assert _same_weights(random, _tiny(0))
    loaded = BackboneSource(checkpoint=str(saved_dir), dtype="bfloat16").build(
        XLMRobertaXLModel, model_kwargs={"add_pooling_layer": False})
    assert loaded.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert loaded.config.hidden_size == 64 and loaded.pooler is None


def test_module_directory_round_trip_with_shards(tmp_path):
    model = _tiny(3)
    save_module_dir(model, tmp_path / "m", max_shard_size=4 * 1024**2)
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    loaded = load_module_dir(XLMRobertaXLModel, tmp_path / "m", add_pooling_layer=False)
    assert _same_weights(loaded, model)


# --------------------------------------------------------------------------- devices and precision
def test_arrays_cross_between_numpy_and_torch():
    ops = NumpyOps()
    array = numpy.arange(12, dtype="float32").reshape(3, 4)[:, ::2]  # not contiguous
    tensor = to_torch(array, device=torch.device("cpu"))
    numpy.testing.assert_array_equal(tensor.numpy(), array)
    back = to_xp(tensor.to(torch.bfloat16), ops)
    assert back.dtype == numpy.float32 and isinstance(back, numpy.ndarray)


@pytest.mark.parametrize("value,expected", [(None, "none"), (False, "none"), (True, "bf16"), ("bfloat16", "bf16"),
                                            ("fp16", "fp16"), ("float16", "fp16"), ("no", "none")])
def test_mixed_precision_values(value, expected):
    assert normalise_mixed_precision(value) == expected


def test_mixed_precision_value_errors():
    with pytest.raises(BackboneError, match="mixed_precision"):
        normalise_mixed_precision("int8")


def test_loss_scaler_skips_overflowing_steps_and_backs_off():
    scaler = LossScaler(enabled=True, init_scale=8.0, growth_interval=2)
    grads = [torch.full((3,), 16.0)]
    assert scaler.unscale_(grads) is False and torch.equal(grads[0], torch.full((3,), 2.0))
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 16.0
    assert scaler.unscale_([torch.tensor([float("inf")])]) is True
    scaler.update(True)
    assert scaler.scale == 8.0
    assert LossScaler(enabled=False).scale_grad(torch.ones(1)).item() == 1.0


def _train_step(shim: TorchModuleShim) -> None:
    ids = torch.randint(5, 1000, (2, 12))
    with shim.run(is_train=True) as tracking:
        out = shim.module(input_ids=ids).last_hidden_state
    assert tracking
    shim.backward([out], [torch.ones_like(out, dtype=torch.float32)])
    shim.finish_update(Adam(0.01))


@pytest.mark.parametrize("precision,checkpointing", [("none", True), ("bf16", False), ("fp16", True)])
def test_training_steps_update_weights_in_every_precision(precision, checkpointing):
    shim = TorchModuleShim(_tiny(), mixed_precision=precision, grad_checkpointing=checkpointing,
                           model_cls=XLMRobertaXLModel, model_kwargs={"add_pooling_layer": False})
    before = copy.deepcopy(shim.module)
    _train_step(shim)
    assert not _same_weights(before, shim.module)
    assert all(torch.isfinite(p).all() for p in shim.module.parameters())
    assert all(p.grad is None for p in shim.module.parameters())


def test_fp16_overflow_skips_the_step_instead_of_crashing():
    shim = TorchModuleShim(_tiny(), mixed_precision="fp16")
    shim.scaler.scale = 1e38  # every scaled gradient overflows
    before = copy.deepcopy(shim.module)
    _train_step(shim)
    assert _same_weights(before, shim.module)
    assert shim.scaler.scale < 1e38


def test_frozen_shim_runs_in_inference_mode_and_never_changes():
    shim = TorchModuleShim(_tiny(), frozen=True)
    with shim.run(is_train=True) as tracking:
        out = shim.module(input_ids=torch.randint(5, 100, (1, 5))).last_hidden_state
    assert not tracking and not out.requires_grad
    before = copy.deepcopy(shim.module)
    shim.finish_update(Adam(0.1))
    assert _same_weights(before, shim.module)


def test_shim_bytes_and_copies():
    shim = TorchModuleShim(_tiny(5), model_cls=XLMRobertaXLModel, model_kwargs={"add_pooling_layer": False})
    empty = TorchModuleShim(None, model_cls=XLMRobertaXLModel, model_kwargs={"add_pooling_layer": False})
    assert _same_weights(empty.from_bytes(shim.to_bytes()).module, shim.module)
    clone = copy.deepcopy(shim)
    assert clone.module is not shim.module and _same_weights(clone.module, shim.module)
    shim.external = True
    assert TorchModuleShim(None).from_bytes(shim.to_bytes()).has_module is False
    with pytest.raises(BackboneError, match="no weights yet"):
        TorchModuleShim(None).module


def test_loaded_modules_pickle_compactly(saved_dir):
    module = load_module_dir(XLMRobertaXLModel, saved_dir, add_pooling_layer=False)
    shim = TorchModuleShim(module, model_cls=XLMRobertaXLModel, model_kwargs={"add_pooling_layer": False})
    data = pickle.dumps(shim)
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    assert len(data) < 1.2 * n_bytes  # not the whole memory-mapped file once per tensor
    assert _same_weights(pickle.loads(data).module, module)
