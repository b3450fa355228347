"""Shared pytest fixtures: where ``../shared`` is, and skipping cleanly when it is absent; no
test reaches the Hugging Face Hub (huggingface_hub is offline with an empty cache unless a test
asks for ``local_hub``, a local stand-in of the Hub from `tests.hub_server`)."""

from pathlib import Path

import pytest

from tests.hub_server import LocalHub, local_hub_environment, offline_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED_DIR / "data"
TOKENIZER_DIR = SHARED_DATA / "tokenizer"
SPM_MODEL = TOKENIZER_DIR / "sentencepiece.bpe.model"
TOKENIZER_JSON = TOKENIZER_DIR / "tokenizer.json"

SHARED_REASON = (
    "../shared/data (the real XLM-R tokenizer and UNER/SIB-200/XQuAD data) is not beside the "
    "repository; it exists on the developers' machines and in CI only"
)


@pytest.fixture(scope="session")
def _offline_hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-home-offline")


@pytest.fixture(autouse=True)
def _no_hub_downloads(monkeypatch, _offline_hf_home):
    """Tests never touch the internet: Hub names resolve offline, against an empty cache."""
    offline_environment(monkeypatch, _offline_hf_home)


@pytest.fixture
def local_hub(tmp_path):
    """A `tests.hub_server.LocalHub` that huggingface_hub downloads from (online, a fresh cache
    under ``tmp_path``); add repositories with ``local_hub.add_repo(repo_id, directory)``."""
    with LocalHub() as hub, local_hub_environment(hub, tmp_path / "hf-home"):
        yield hub


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_REASON)
    return SHARED_DATA


@pytest.fixture(scope="session")
def spm_model_path() -> Path:
    if not SPM_MODEL.is_file():
        pytest.skip(SHARED_REASON)
    return SPM_MODEL


@pytest.fixture(scope="session")
def tokenizer_json_path() -> Path:
    if not TOKENIZER_JSON.is_file():
        pytest.skip(SHARED_REASON)
    return TOKENIZER_JSON


@pytest.fixture(scope="session")
def tiny_corpora(tmp_path_factory, shared_data):
    """A few real docs per task of configs/*.cfg, as .spacy files: {config name: (train, dev)}."""
    from itertools import islice

    import spacy

    from spacy_xlmrxl.training.docbin import write_docbin
    from spacy_xlmrxl.training.sib200 import read_labels, sib200_docs
    from spacy_xlmrxl.training.squad import read_squad, squad_docs
    from spacy_xlmrxl.training.text import text_docs
    from spacy_xlmrxl.training.uner import uner_docs

    out = tmp_path_factory.mktemp("corpora")
    nlp = spacy.blank("xx")
    data = shared_data
    labels = read_labels(data / "textcat" / "sib200" / "labels.txt")
    articles = read_squad(data / "qa" / "xquad" / "xquad.de.json")[:1]
    sources = {
        "ner": lambda: uner_docs(nlp.vocab, data / "ner" / "uner" / "da" / "dev.iob2"),
        "textcat": lambda: sib200_docs(nlp, data / "textcat" / "sib200" / "swh_Latn" / "dev.tsv", labels),
        "qa": lambda: squad_docs(nlp, articles),
        "fill_mask": lambda: text_docs(nlp, data / "textcat" / "sib200" / "hin_Deva" / "dev.tsv", column="text"),
    }
    corpora = {}
    for name, docs in sources.items():
        train, dev = out / f"{name}-train.spacy", out / f"{name}-dev.spacy"
        write_docbin(islice(docs(), 8), train)
        write_docbin(islice(docs(), 8, 12), dev)
        corpora[name] = (train, dev)
    return corpora
