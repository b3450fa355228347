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


@pytest.mark.parametrize("name", CONFIGS + ("xl_gpu",))
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
