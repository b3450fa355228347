"""Shared pytest fixtures: where ``../shared`` is, and skipping cleanly when it is absent."""

from pathlib import Path

import pytest

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
