"""Smoke tests of configs/*.cfg: each is `spacy debug config`-clean and trains for 2 steps (tiny
preset, a handful of real docs from ../shared/data) through spaCy's own `train`, so a broken
config fails CI. The trained pipeline is loaded back and run."""

from pathlib import Path

import pytest
import spacy
from spacy.cli.train import train as spacy_train
from spacy.schemas import ConfigSchemaTraining
from spacy.util import load_config, load_model_from_config, registry

from spacy_xlmrxl.training.sib200 import read_labels

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ("ner", "textcat", "qa", "fill_mask")


@pytest.mark.parametrize("name", CONFIGS + ("xl_gpu", "xl_lora_cpu"))
def test_config_files_exist(name):
    assert (REPO / "configs" / f"{name}.cfg").is_file()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_like_debug_config(name):
    """What `spacy debug config` checks: the pipeline builds from the filled config and the
    [training] block resolves against spaCy's schema (no weights are loaded)."""
    config = load_config(REPO / "configs" / f"{name}.cfg", interpolate=False)
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    filled = nlp.config.interpolate()
    registry.resolve(filled["training"], schema=ConfigSchemaTraining, validate=True)
    assert filled["paths"]["checkpoint"] is None and filled["paths"]["preset"] == "tiny"
    assert filled["paths"]["tokenizer"] == "assets/tokenizer/sentencepiece.bpe.model"
    assert filled["paths"]["train"].startswith("corpus/") and filled["paths"]["dev"].startswith("corpus/")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_two_steps(name, tiny_corpora, spm_model_path, tmp_path):
    train, dev = tiny_corpora[name]
    output = tmp_path / "model"
    spacy_train(
        REPO / "configs" / f"{name}.cfg",
        output,
        use_gpu=-1,
        overrides={
            "paths.train": str(train),
            "paths.dev": str(dev),
            "paths.tokenizer": str(spm_model_path),
            "paths.preset": "tiny",
            "training.max_steps": 2,
            "training.eval_frequency": 2,
        },
    )
    nlp = spacy.load(output / "model-last")
    assert nlp.pipe_names == load_config(REPO / "configs" / f"{name}.cfg")["nlp"]["pipeline"]
    doc = nlp.make_doc("Anna bor i Aarhus og arbejder for Novo Nordisk.")
    if name == "qa":
        doc._.question = "Hvor bor Anna?"
    if name == "fill_mask":
        doc = nlp.make_doc("Anna bor i <mask>.")
    for _, pipe in nlp.pipeline:
        doc = pipe(doc)
    if name == "ner":
        assert all(ent.label_ in ("PER", "ORG", "LOC") for ent in doc.ents)
    elif name == "textcat":
        assert set(doc.cats) == set(read_labels(spm_model_path.parents[1] / "textcat" / "sib200" / "labels.txt"))
        assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-4)
    elif name == "qa":
        assert len(doc._.answers) == 1 and len(doc._.answers[0]) == 1
    else:
        assert len(doc._.fill_mask) == 1 and len(doc._.fill_mask[0]) == 5


def _xl_lora_config():
    """configs/ner.cfg merged with configs/xl_lora_cpu.cfg, as `spacy-xlmrxl merge-config` writes it."""
    from thinc.api import Config

    from spacy_xlmrxl.cli.config import merge_config

    return merge_config(load_config(REPO / "configs" / "ner.cfg", interpolate=False),
                        Config().from_disk(REPO / "configs" / "xl_lora_cpu.cfg", interpolate=False))


def test_xl_lora_cpu_config_resolves_with_xl_shapes_and_lora():
    """The merged config builds (no weights: XL is not initialised here) with XL's preset, LoRA r=8
    on query and value, checkpointing and small model calls; its [training] block resolves."""
    from modeling.config import XLMRobertaXLConfig
    from modeling.lora import LoraConfig
    from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim

    merged = _xl_lora_config()
    nlp = load_model_from_config(merged, auto_fill=True, validate=True)
    registry.resolve(nlp.config.interpolate()["training"], schema=ConfigSchemaTraining, validate=True)
    node = backbone_nodes(nlp.get_pipe("transformer").model)[0]
    shim = backbone_shim(node)
    assert node.attrs["source"].preset == "xl" and node.attrs["source"].checkpoint is None
    assert shim.lora == LoraConfig(r=8, alpha=16, dropout=0.0, targets=("query", "value")) and shim.lora_save == "full"
    assert shim.grad_checkpointing and node.attrs["max_batch_pieces"] == 512
    xl = XLMRobertaXLConfig.from_preset("xl")
    assert (xl.num_hidden_layers, xl.hidden_size, xl.vocab_size) == (36, 2560, 250880)
    assert merged["training"]["max_steps"] <= 20


def test_xl_lora_cpu_config_trains_through_spacy_train_from_a_tiny_checkpoint(tiny_corpora, spm_model_path, tmp_path):
    """The same config with a tiny checkpoint in place of XL: `spacy train` changes the adapters and
    the head only (the saved base is bit-identical to the checkpoint)."""
    import torch

    from modeling.checkpoint import load_state_dict
    from spacy_xlmrxl.backbone.nodes import backbone_nodes, backbone_shim
    from tests.spacy_xlmrxl.test_lora import write_base

    base = write_base(tmp_path / "base", spm_model_path)
    merged_path = tmp_path / "ner-xl-lora.cfg"
    _xl_lora_config().to_disk(merged_path)
    train, dev = tiny_corpora["ner"]
    spacy_train(merged_path, tmp_path / "model", use_gpu=-1, overrides={
        "paths.train": str(train), "paths.dev": str(dev), "paths.tokenizer": str(spm_model_path),
        "paths.checkpoint": str(base), "training.max_steps": 3, "training.eval_frequency": 3})
    nlp = spacy.load(tmp_path / "model" / "model-last")
    module = backbone_shim(backbone_nodes(nlp.get_pipe("transformer").model)[0]).float_module
    state, checkpoint = module.state_dict(), load_state_dict(base)
    assert {k for k in state if ".lora_" not in k} == set(checkpoint)
    assert all(torch.equal(state[k], checkpoint[k]) for k in checkpoint)
    assert all(torch.count_nonzero(v) > 0 for k, v in state.items() if ".lora_B." in k)
