"""LoRA in the spaCy components (backbone settings ``lora`` / ``lora_save``): training changes only
the adapters and the heads, saving in both layouts, merging, PEFT and HF exports, and bad input.

Every pipeline here is tiny (the ``tiny`` preset's shapes, the real tokenizer); the NER and QA
pipelines start from a tiny base checkpoint written to disk, as an adapters-only save needs one.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Set

import numpy
import pytest
import spacy
import torch
from spacy.training.initialize import init_nlp
from spacy.util import fix_random_seed, load_config
from thinc.api import Adam, Config

from modeling.checkpoint import CheckpointError, load_state_dict, save_pretrained
from modeling.config import XLMRobertaXLConfig
from modeling.lora import LoraConfig, apply_lora, head_parameters, lora_parameters, save_peft_adapter
from modeling.model import XLMRobertaXLModel
from spacy_xlmrxl.backbone.adapters import BASE_FILE, base_fingerprint
from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim
from spacy_xlmrxl.backbone.settings import backbone_config
from spacy_xlmrxl.backbone.source import BackboneError
from spacy_xlmrxl.cli import main as cli_main
from spacy_xlmrxl.distributed.ddp import GradientSync
from spacy_xlmrxl.export import export_ner_to_hf, export_peft, export_textcat_to_hf

from .test_qa import xquad_examples
from .xlmr_helpers import WINDOW, sib_examples, tiny_backbone_config, uner_examples, update_steps

REPO = Path(__file__).resolve().parents[2]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"]}
FILL_CORPUS = ["The cat sat on the mat and looked at the dog.",
               "Paris is the capital of France, and Berlin is the capital of Germany."]


# --------------------------------------------------------------------------- helpers
class SpyOptimizer:
    """A thinc optimizer that records the parameter keys it is handed."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.keys: Set[Any] = set()

    def __call__(self, key: Any, weights: Any, gradient: Any, *, lr_scale: float = 1.0) -> Any:
        self.keys.add(key)
        return self.optimizer(key, weights, gradient, lr_scale=lr_scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def write_base(directory: Path, spm_model_path: Path, *, seed: int = 1, **overrides: Any) -> Path:
    """A tiny random XLMRobertaXLModel as an HF checkpoint directory (with the tokenizer)."""
    model = XLMRobertaXLModel(XLMRobertaXLConfig.from_preset("tiny", **overrides), add_pooling_layer=False)
    model.init_weights(seed=seed)
    save_pretrained(model, directory)
    shutil.copy(spm_model_path, directory / "sentencepiece.bpe.model")
    return directory


def shims_of(nlp: spacy.Language) -> List[Any]:
    return [backbone_shim(node) for _, pipe in nlp.pipeline if hasattr(pipe, "model")
            for node in backbone_nodes(pipe.model) if backbone_shim(node).has_module]


def base_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Every tensor of ``module`` but the adapters, copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if ".lora_" not in k}


def trained_torch_names(shim: Any, spy: SpyOptimizer) -> Set[str]:
    return {name for key_id, name in spy.keys if key_id == shim.id}


def assert_only_adapters_and_head_trained(shim: Any, before: Dict[str, torch.Tensor], spy: SpyOptimizer) -> None:
    """The base is bit-identical, every adapter moved, and the optimizer saw adapters + head only."""
    module = shim.float_module
    after = base_state(module)
    heads = set(head_parameters(module))
    head_memory = {param.data_ptr() for param in head_parameters(module).values()}
    head_keys = {k for k, v in module.state_dict().items() if v.data_ptr() in head_memory}  # tied names too
    assert after.keys() == before.keys()
    unchanged = {k for k in before if torch.equal(before[k], after[k])}
    assert unchanged == set(before) - head_keys, sorted(set(before) - unchanged - head_keys)[:3]
    adapters = dict(lora_parameters(module))
    assert adapters and all(param.dtype == torch.float32 for param in adapters.values())
    # B starts at zero: every adapter moved
    assert all(torch.count_nonzero(param) > 0 for name, param in adapters.items() if "lora_B" in name)
    assert trained_torch_names(shim, spy) == set(adapters) | heads


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, spm_model_path) -> Path:
    return write_base(tmp_path_factory.mktemp("base") / "tiny-base", spm_model_path)


def ner_config(corpora: Any, base: Path, spm_model_path: Path, **backbone: Any) -> Config:
    """configs/ner.cfg (transformer + listener NER) from the tiny base with LoRA and small windows."""
    train, dev = corpora["ner"]
    overrides = {"paths.train": str(train), "paths.dev": str(dev), "paths.checkpoint": str(base), "paths.tokenizer": str(spm_model_path), "paths.preset": "tiny",
                 "components.transformer.model.windows.window": WINDOW["window"],
                 "components.transformer.model.windows.stride": WINDOW["stride"],
                 "components.transformer.model.backbone.lora": LORA, "training.dropout": 0.0}
    overrides.update({f"components.transformer.model.backbone.{k}": v for k, v in backbone.items()})
    return load_config(REPO / "configs" / "ner.cfg", overrides=overrides, interpolate=False)


@pytest.fixture(scope="module")
def ner_trained(base_dir, spm_model_path, shared_data, tiny_corpora):
    """The NER pipeline of configs/ner.cfg with LoRA (+ checkpointing, frozen word embeddings),
    trained 6 steps on 4 UNER sentences with a recording optimizer."""
    nlp = init_nlp(ner_config(tiny_corpora, base_dir, spm_model_path, grad_checkpointing=True,
                              freeze_word_embeddings=True))
    shim = shims_of(nlp)[0]
    before = base_state(shim.float_module)
    head_before = {name: numpy.array(nlp.get_pipe("ner").model.get_ref("output_layer").get_param(name))
                   for name in ("W", "b")}
    examples = uner_examples(nlp, shared_data, 4)
    spy = SpyOptimizer(Adam(0.01))
    history = update_steps(nlp, examples, spy, 6)
    texts = [eg.reference.text for eg in examples] + ["Anna bor i Aarhus og arbejder i København."]
    return nlp, shim, before, head_before, spy, history, texts


def save_adapters_only(nlp: spacy.Language, path: Path) -> None:
    """``nlp.to_disk(path)`` as if its transformer were set to ``lora_save = "adapters"``."""
    shim = shims_of(nlp)[0]
    block = nlp.get_pipe_config("transformer")["model"]["backbone"]
    shim.lora_save = block["lora_save"] = "adapters"
    try:
        nlp.to_disk(path)
    finally:
        shim.lora_save = block["lora_save"] = "full"


def ner_probs(nlp: spacy.Language, texts: List[str]) -> List[numpy.ndarray]:
    """The NER head's tag probabilities per token (after the transformer it listens to)."""
    transformer, ner = nlp.get_pipe("transformer"), nlp.get_pipe("ner")
    probs = [ner.model.predict([transformer(nlp.make_doc(t))])[0] for t in texts]
    assert all(p.shape[0] == 0 or p[:, 0].std() > 1e-3 for p in probs)  # not a constant (listener without input)
    return probs


# --------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize("settings, match", [
    ({"lora": {"r": 0}}, r"lora\.r must be a positive integer, got 0"),
    ({"lora": {"r": -3}}, r"lora\.r must be a positive integer"),
    ({"lora": {"alpha": 0}}, r"lora\.alpha must be a positive number, got 0"),
    ({"lora": {"alpha": -2.0}}, r"lora\.alpha must be a positive number"),
    ({"lora": {"targets": ["query", "dense"]}}, r"lora\.targets must be names from .*unknown: \['dense'\]"),
    ({"lora": {"rank": 4}}, r"unknown lora settings \['rank'\]"),
    ({"lora": {"r": 4}, "quantize": "int8"}, r"lora cannot be combined with quantize = 'int8'"),
    ({"lora_save": "diff"}, r"lora_save must be one of \('full', 'adapters'\), got 'diff'"),
])
def test_bad_lora_settings_fail_at_config_time_naming_the_setting(settings, match):
    with pytest.raises(BackboneError, match=match):
        spacy.util.registry.resolve(Config({"backbone": backbone_config(**settings)}))
    with pytest.raises(BackboneError, match=match):
        spacy.blank("xx").add_pipe("xlmrxl_qa", config={"model": {"backbone": settings}})


def test_lora_setting_of_the_wrong_type_names_it():
    with pytest.raises(Exception, match="lora"):
        spacy.util.registry.resolve(Config({"backbone": backbone_config(lora=8)}))


# --------------------------------------------------------------------------- training
def test_ner_with_listener_trains_only_adapters_and_head(ner_trained):
    nlp, shim, before, head_before, spy, history, _ = ner_trained
    assert history[-1] < history[0] * 0.8
    assert shim.lora == LoraConfig(**LORA) and shim.grad_checkpointing and shim.freeze_word_embeddings
    assert_only_adapters_and_head_trained(shim, before, spy)
    head = nlp.get_pipe("ner").model.get_ref("output_layer")
    assert not numpy.array_equal(head.get_param("W"), head_before["W"])
    # DDP reduces exactly the Parameters that train: the adapters (and the thinc head)
    sync = GradientSync(nlp)
    assert {id(p) for p in sync.torch_params} == {id(p) for _, p in lora_parameters(shim.float_module)}


def test_textcat_with_bf16_base_and_mixed_precision_trains_float32_adapters(spm_model_path, shared_data):
    nlp = spacy.blank("en")
    nlp.add_pipe("xlmrxl_textcat", config={"model": {"transformer": {"windows": WINDOW, "backbone": tiny_backbone_config(
        spm_model_path, seed=0, dtype="bfloat16", mixed_precision="bf16", lora=LORA)}}})
    examples = sib_examples(nlp, shared_data, 4)
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    shim = shims_of(nlp)[0]
    assert {p.dtype for n, p in shim.float_module.named_parameters() if ".lora_" not in n} == {torch.bfloat16}
    before = base_state(shim.float_module)
    spy = SpyOptimizer(Adam(0.01))
    history = update_steps(nlp, examples, spy, 6)
    assert history[-1] < history[0]
    assert_only_adapters_and_head_trained(shim, before, spy)


def test_qa_trains_adapters_and_its_float32_head_over_a_bf16_base(base_dir, spm_model_path, shared_data):
    nlp = spacy.blank("en")
    nlp.add_pipe("xlmrxl_qa", config={"model": {"backbone": {
        "checkpoint": str(base_dir), "dtype": "bfloat16", "mixed_precision": "bf16", "lora": LORA, "seed": 0}},
        "max_length": 96, "doc_stride": 16, "max_question_length": 24})
    examples = xquad_examples(nlp, shared_data, n_paragraphs=1, n_questions=2)
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    shim = shims_of(nlp)[0]
    heads = head_parameters(shim.float_module)
    assert set(heads) == {"qa_outputs.weight", "qa_outputs.bias"}
    assert all(p.dtype == torch.float32 and p.requires_grad for p in heads.values())
    before = base_state(shim.float_module)
    spy = SpyOptimizer(Adam(0.01))
    history = update_steps(nlp, examples, spy, 6)
    assert history[-1] < history[0]
    assert_only_adapters_and_head_trained(shim, before, spy)


def test_bf16_head_without_mixed_precision_is_refused_with_a_hint(spm_model_path, shared_data):
    nlp = spacy.blank("en")
    nlp.add_pipe("xlmrxl_qa", config={"model": {"backbone": tiny_backbone_config(
        spm_model_path, seed=0, dtype="bfloat16", lora=LORA)}, "max_length": 96, "doc_stride": 16,
        "max_question_length": 24})
    examples = xquad_examples(nlp, shared_data, n_paragraphs=1, n_questions=1)
    nlp.initialize(lambda: examples)
    with pytest.raises(BackboneError, match=r"training needs float32 weights, qa_outputs\.\w+ is torch\.bfloat16.*"
                                            r"with lora, mixed_precision = \"bf16\" alone"):
        nlp.update(examples, sgd=Adam(0.01))


def fill_mask_nlp(spm_model_path: Path, **backbone: Any) -> spacy.Language:
    nlp = spacy.blank("xx")
    nlp.add_pipe("xlmrxl_fill_mask", config={"model": {"backbone": tiny_backbone_config(spm_model_path, seed=0, **backbone),
                                                       "windows": {"window": 16, "stride": 8}}, "top_k": 4})
    return nlp


def test_fill_mask_trains_adapters_and_lm_head_but_not_the_tied_decoder(spm_model_path):
    nlp = fill_mask_nlp(spm_model_path, lora={**LORA, "dropout": 0.1, "targets": ["query", "value", "output"]})
    examples = [spacy.training.Example(nlp.make_doc(t), nlp.make_doc(t)) for t in FILL_CORPUS]
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    shim = shims_of(nlp)[0]
    module = shim.float_module
    # the decoder weight is the word-embedding matrix (tied): frozen with the backbone
    assert module.lm_head.decoder.weight is module.roberta.embeddings.word_embeddings.weight
    assert set(head_parameters(module)) == {"lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias",
                                            "lm_head.layer_norm.weight", "lm_head.layer_norm.bias"}
    before = base_state(module)
    spy = SpyOptimizer(Adam(0.01))
    history = update_steps(nlp, examples, spy, 8)
    assert history[-1] < history[0]
    assert_only_adapters_and_head_trained(shim, before, spy)


# --------------------------------------------------------------------------- saving and loading
def test_full_save_is_self_contained_and_predicts_identically(ner_trained, tmp_path):
    nlp, shim, _, _, _, _, texts = ner_trained
    nlp.to_disk(tmp_path / "full")
    backbone = tmp_path / "full" / "transformer" / "backbone"
    assert sorted(p.name for p in backbone.iterdir()) == ["config.json", "lora", "model.safetensors",
                                                          "sentencepiece.bpe.model"]
    assert sorted(p.name for p in (backbone / "lora").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # the base is written without adapter tensors: an HF checkpoint of the base
    assert set(load_state_dict(backbone)) == set(base_state(shim.float_module))
    loaded = spacy.load(tmp_path / "full")
    for ours, theirs in zip(ner_probs(nlp, texts), ner_probs(loaded, texts)):
        numpy.testing.assert_array_equal(ours, theirs)
    assert shims_of(loaded)[0].lora == shim.lora


def test_adapters_only_save_references_the_base_and_predicts_identically(ner_trained, base_dir, tmp_path):
    nlp, shim, _, _, _, _, texts = ner_trained
    save_adapters_only(nlp, tmp_path / "small")
    backbone = tmp_path / "small" / "transformer" / "backbone"
    assert sorted(p.name for p in backbone.iterdir()) == [BASE_FILE, "config.json", "lora", "sentencepiece.bpe.model"]
    reference = json.loads((backbone / BASE_FILE).read_text())
    assert reference == {"path": str(base_dir.resolve()), "fingerprint": base_fingerprint(base_dir), "dtype": "float32"}
    size = sum(p.stat().st_size for p in backbone.rglob("*") if p.is_file())
    assert size < (base_dir / "model.safetensors").stat().st_size / 10
    loaded = spacy.load(tmp_path / "small")
    for ours, theirs in zip(ner_probs(nlp, texts), ner_probs(loaded, texts)):
        numpy.testing.assert_array_equal(ours, theirs)
    # loaded again from the base, it saves again in both layouts
    loaded.to_disk(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "transformer" / "backbone" / BASE_FILE).read_text()) == reference


def test_a_loaded_full_pipeline_saves_adapters_only_against_its_own_base(ner_trained, tmp_path):
    nlp, _, _, _, _, _, texts = ner_trained
    nlp.to_disk(tmp_path / "full")
    adapters_only = {"components": {"transformer": {"model": {"backbone": {"lora_save": "adapters"}}}}}
    loaded = spacy.load(tmp_path / "full", config=adapters_only)
    own_base = tmp_path / "full" / "transformer" / "backbone"
    assert shims_of(loaded)[0].base.path == str(own_base.resolve())
    with pytest.raises(BackboneError, match="lies in the directory being replaced"):
        loaded.to_disk(tmp_path / "full")
    assert (own_base / "model.safetensors").is_file()  # left as it was
    loaded.to_disk(tmp_path / "small")
    again = spacy.load(tmp_path / "small")
    for ours, theirs in zip(ner_probs(nlp, texts), ner_probs(again, texts)):
        numpy.testing.assert_array_equal(ours, theirs)


def test_adapters_only_pipeline_refuses_a_missing_or_changed_base(ner_trained, spm_model_path, tmp_path):
    nlp, shim, _, _, _, _, texts = ner_trained
    base = write_base(tmp_path / "base", spm_model_path)
    shim.base, recorded = type(shim.base).of(base, shim.float_module), shim.base  # as if trained on this copy
    try:
        save_adapters_only(nlp, tmp_path / "small")
    finally:
        shim.base = recorded
    fingerprint = base_fingerprint(base)
    # a changed base (other weights, same shapes and names): the error names both fingerprints
    write_base(base, spm_model_path, seed=7)
    changed = base_fingerprint(base)
    assert changed != fingerprint
    with pytest.raises(BackboneError, match=rf"trained on the base checkpoint {base.resolve()} \(fingerprint "
                                            rf"{fingerprint}\).*{base.resolve()}: fingerprint {changed}"):
        spacy.load(tmp_path / "small")
    # a missing base: the error names the recorded path and fingerprint
    moved = tmp_path / "moved"
    shutil.rmtree(base)
    write_base(moved, spm_model_path)  # the original weights, elsewhere
    with pytest.raises(BackboneError, match=rf"{base.resolve()} \(fingerprint {fingerprint}\).*{base.resolve()}: not found"):
        spacy.load(tmp_path / "small")
    # the moved base, given as the backbone's checkpoint, is found by its fingerprint
    loaded = spacy.load(tmp_path / "small", config={
        "components": {"transformer": {"model": {"backbone": {"checkpoint": str(moved), "preset": None}}}}})
    for ours, theirs in zip(ner_probs(nlp, texts), ner_probs(loaded, texts)):
        numpy.testing.assert_array_equal(ours, theirs)


def test_adapters_only_save_needs_a_base_on_disk(spm_model_path, tmp_path):
    nlp = fill_mask_nlp(spm_model_path, lora=LORA, lora_save="adapters")
    nlp.initialize()
    with pytest.raises(BackboneError, match="lora_save = \"adapters\" stores a reference to the base checkpoint"):
        nlp.to_disk(tmp_path / "p")
    assert not (tmp_path / "p" / "xlmrxl_fill_mask").exists()


def test_fill_mask_adapters_only_round_trip_carries_the_lm_head(spm_model_path, tmp_path):
    base = tmp_path / "mlm-base"
    donor = fill_mask_nlp(spm_model_path)
    donor.initialize()
    save_pretrained(shims_of(donor)[0].float_module, base)
    nlp = spacy.blank("xx")
    nlp.add_pipe("xlmrxl_fill_mask", config={"model": {"backbone": {
        "checkpoint": str(base), "tokenizer": str(spm_model_path), "lora": LORA, "lora_save": "adapters"}}, "top_k": 4})
    examples = [spacy.training.Example(nlp.make_doc(t), nlp.make_doc(t)) for t in FILL_CORPUS]
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    update_steps(nlp, examples, Adam(0.01), 3)
    nlp.to_disk(tmp_path / "p")
    assert not (tmp_path / "p" / "xlmrxl_fill_mask" / "backbone" / "model.safetensors").exists()
    loaded = spacy.load(tmp_path / "p")
    text = "Paris is the <mask> of France."
    assert loaded(text)._.fill_mask == nlp(text)._.fill_mask
    ours, theirs = shims_of(nlp)[0].float_module, shims_of(loaded)[0].float_module
    assert torch.equal(ours.lm_head.bias, theirs.lm_head.bias) and not torch.equal(ours.lm_head.bias, torch.zeros_like(ours.lm_head.bias))


def test_adapters_of_other_shapes_raise_naming_the_tensor(ner_trained, spm_model_path, tmp_path):
    nlp, _, _, _, _, _, _ = ner_trained
    nlp.to_disk(tmp_path / "p")
    other = XLMRobertaXLModel(XLMRobertaXLConfig.from_preset("tiny", hidden_size=32, intermediate_size=64),
                              add_pooling_layer=False)
    apply_lora(other, LoraConfig(**LORA))
    save_peft_adapter(other, tmp_path / "p" / "transformer" / "backbone" / "lora")
    with pytest.raises(CheckpointError, match=r"tensor 'base_model\.model\.encoder\.layer\.\d\.attention\.self\."
                                              r"(query|value)\.lora_[AB]\.weight' has shape \[\d+, \d+\], the model needs"):
        spacy.load(tmp_path / "p")


def test_backbone_with_adapters_refuses_a_lora_null_setting(ner_trained, tmp_path):
    nlp, _, _, _, _, _, _ = ner_trained
    nlp.to_disk(tmp_path / "p")
    with pytest.raises(BackboneError, match="has LoRA adapters .* but its setting is lora = null"):
        spacy.load(tmp_path / "p", config={"components": {"transformer": {"model": {"backbone": {"lora": None}}}}})
    with pytest.raises(BackboneError, match=r"adapters are \{'r': 4.*lora = \{'r': 2"):
        spacy.load(tmp_path / "p", config={"components": {"transformer": {"model": {"backbone": {"lora": {**LORA, "r": 2}}}}}})


def test_bytes_deepcopy_and_use_params_keep_the_adapters(ner_trained):
    nlp, shim, _, _, _, _, texts = ner_trained
    expected = ner_probs(nlp, texts)
    again = spacy.util.load_model_from_config(nlp.config)
    again.from_bytes(nlp.to_bytes())
    for ours, theirs in zip(expected, ner_probs(again, texts)):
        numpy.testing.assert_array_equal(ours, theirs)
    assert shims_of(again)[0].base == shim.base
    clone = copy.deepcopy(shim)
    assert clone.base == shim.base and clone.lora == shim.lora
    assert {n: p.requires_grad for n, p in clone.float_module.named_parameters()} == {
        n: p.requires_grad for n, p in shim.float_module.named_parameters()}
    # parameter averages of the adapters only: the base is neither copied nor changed
    name = "encoder.layer.0.attention.self.value.lora_B.weight"
    key = f"pytorch_{shim.id}_{name}"
    average = numpy.zeros(tuple(shim.float_module.get_parameter(name).shape), dtype="float32")
    before = base_state(shim.float_module)
    with shim.use_params({key: average}):
        assert torch.count_nonzero(shim.float_module.get_parameter(name)) == 0
    assert torch.count_nonzero(shim.float_module.get_parameter(name)) > 0
    after = base_state(shim.float_module)
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- merging and exports
def test_merge_lora_cli_writes_a_plain_pipeline_with_the_same_predictions(ner_trained, tmp_path):
    nlp, _, _, _, _, _, texts = ner_trained
    nlp.to_disk(tmp_path / "lora")
    cli_main(["merge-lora", str(tmp_path / "lora"), str(tmp_path / "merged")])
    merged = spacy.load(tmp_path / "merged")
    assert merged.config["components"]["transformer"]["model"]["backbone"]["lora"] is None
    assert not (tmp_path / "merged" / "transformer" / "backbone" / "lora").exists()
    module = shims_of(merged)[0].float_module
    assert shims_of(merged)[0].lora is None and not any(".lora_" in name for name in module.state_dict())
    # the merged backbone trains as a whole again (but for freeze_word_embeddings = true)
    assert [n for n, p in module.named_parameters() if not p.requires_grad] == ["embeddings.word_embeddings.weight"]
    for ours, theirs in zip(ner_probs(nlp, texts), ner_probs(merged, texts)):
        numpy.testing.assert_allclose(theirs, ours, atol=1e-5)
    with pytest.raises(ValueError, match="no backbone of this pipeline has LoRA adapters"):
        cli_main(["merge-lora", str(tmp_path / "merged"), str(tmp_path / "twice")])


def hf_token_probs(model: Any, nlp: spacy.Language, text: str) -> numpy.ndarray:
    """Per spaCy token, the softmax of the mean of its pieces' HF logits (as the component pools)."""
    doc = nlp.make_doc(text)
    data = nlp.get_pipe("transformer").model.predict([doc])[0]
    assert len(data.windows) == 1  # HF sees what we see
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[0] + data.piece_ids.tolist() + [2]])).logits[0].numpy()[1:-1]
    starts = numpy.concatenate([[0], numpy.cumsum(data.align.lengths)[:-1]])
    token_logits = numpy.stack([logits[data.align.dataXd[s:s + n]].mean(axis=0) for s, n in zip(starts, data.align.lengths)])
    return numpy.exp(token_logits) / numpy.exp(token_logits).sum(axis=1, keepdims=True)


def test_peft_export_and_merged_hf_export_give_our_ner_outputs(ner_trained, base_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    nlp, _, _, _, _, _, texts = ner_trained
    nlp.to_disk(tmp_path / "pipeline")
    cli_main(["export-peft", str(tmp_path / "pipeline"), "ner", str(tmp_path / "peft")])
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    # the loaded pipeline's base is its own backbone directory: an HF checkpoint of the base
    base = tmp_path / "pipeline" / "transformer" / "backbone"
    assert config["modules_to_save"] == ["classifier"] and config["base_model_name_or_path"] == str(base.resolve())
    assert base_fingerprint(base) == base_fingerprint(base_dir)
    tags = list(nlp.get_pipe("ner").tag_names)
    hf = transformers.XLMRobertaXLForTokenClassification.from_pretrained(config["base_model_name_or_path"],
                                                                         num_labels=len(tags)).eval()
    adapted = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    merged_dir = export_ner_to_hf(nlp, tmp_path / "hf")
    assert not (merged_dir / "lora").exists()
    merged = transformers.XLMRobertaXLForTokenClassification.from_pretrained(merged_dir).eval()
    short = ["Anna bor i Aarhus og arbejder i København.", "Mette Frederiksen besøgte Odense i går."]
    for text, ours in zip(short, ner_probs(nlp, short)):
        numpy.testing.assert_allclose(hf_token_probs(adapted, nlp, text), ours, atol=1e-5)
        numpy.testing.assert_allclose(hf_token_probs(merged, nlp, text), ours, atol=1e-5)


def test_peft_export_of_textcat_and_refusals(spm_model_path, shared_data, base_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    nlp = spacy.blank("en")
    nlp.add_pipe("xlmrxl_textcat", config={"model": {"transformer": {"windows": WINDOW, "backbone": {
        "checkpoint": str(base_dir), "tokenizer": str(spm_model_path), "lora": LORA}}}})
    examples = sib_examples(nlp, shared_data, 4)
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    update_steps(nlp, examples, Adam(0.01), 2)
    export_peft(nlp, "xlmrxl_textcat", tmp_path / "peft")
    textcat = nlp.get_pipe("xlmrxl_textcat")
    hf = transformers.XLMRobertaXLForSequenceClassification.from_pretrained(base_dir, num_labels=len(textcat.labels))
    adapted = peft.PeftModel.from_pretrained(hf.eval(), tmp_path / "peft").eval()
    merged = transformers.XLMRobertaXLForSequenceClassification.from_pretrained(
        export_textcat_to_hf(nlp, tmp_path / "hf")).eval()
    doc = nlp("The team won the cup in Berlin.")
    ids = textcat.model.get_ref("transformer").predict([doc])[0].piece_ids.tolist()
    ours = [doc.cats[label] for label in textcat.labels]
    for model in (adapted, merged):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[0] + ids + [2]])).logits[0].numpy()
        numpy.testing.assert_allclose(numpy.exp(logits) / numpy.exp(logits).sum(), ours, atol=1e-5)
    fill = fill_mask_nlp(spm_model_path, lora=LORA)
    fill.initialize()
    with pytest.raises(ValueError, match="export-peft writes .* is a xlmrxl_fill_mask: export it merged"):
        export_peft(fill, "xlmrxl_fill_mask", tmp_path / "x")
    plain = fill_mask_nlp(spm_model_path)
    plain.add_pipe("xlmrxl_qa", config={"model": {"backbone": tiny_backbone_config(spm_model_path)}})
    plain.initialize()
    with pytest.raises(ValueError, match="has no LoRA adapters"):
        export_peft(plain, "xlmrxl_qa", tmp_path / "y")
