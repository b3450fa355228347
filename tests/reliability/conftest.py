"""Session-wide pipelines of the reliability suite: one initialised ``nlp`` per component type.

All use the ``tiny`` preset (random weights), the real XLM-R tokenizer (``spm_model_path``,
skipped without ``../shared``) and small windows, so that every code path of a long document
(many windows, recombination) runs in milliseconds. No test may change these objects; tests
that train or break something build their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Span
from spacy.training import Example
from spacy.util import fix_random_seed

from ..spacy_xlmrxl.test_fill_mask import fill_nlp
from ..spacy_xlmrxl.test_qa import qa_nlp
from ..spacy_xlmrxl.test_transformer import LISTENER
from ..spacy_xlmrxl.xlmr_helpers import tiny_transformer_config

NER_LABELS = ["LOC", "PER"]
CAT_LABELS = ["news", "sport", "travel"]


def seed_examples(nlp: Language) -> List[Example]:
    """Two hand-made gold examples with an entity and a category each."""
    examples = []
    for text, label, cat in [("Anna lives in Paris .", "PER", "travel"), ("Oslo won the cup .", "LOC", "sport")]:
        gold = nlp.make_doc(text)
        gold.ents = [Span(gold, 0, 1, label=label)]
        gold.cats = {c: float(c == cat) for c in CAT_LABELS}
        examples.append(Example(nlp.make_doc(text), gold))
    return examples


def build_shared_pipeline(spm_model_path: Path, lang: str = "xx", **windows: int) -> Language:
    """``xlmrxl_transformer`` + ``xlmrxl_ner`` and ``xlmrxl_textcat`` listening to it, initialised
    (``windows``: ``window`` / ``stride`` instead of the small test windows)."""
    nlp = spacy.blank(lang)
    transformer = tiny_transformer_config(spm_model_path)
    transformer["windows"].update(windows)
    nlp.add_pipe("xlmrxl_transformer", config={"model": transformer})
    nlp.add_pipe("xlmrxl_ner", config={"model": {"tok2vec": LISTENER}})
    nlp.add_pipe("xlmrxl_textcat", config={"model": {"transformer": {
        "@architectures": "spacy-xlmrxl.DocDataListener.v1", "upstream": "xlmrxl_transformer"}}})
    fix_random_seed(0)
    examples = seed_examples(nlp)
    nlp.initialize(lambda: examples)
    return nlp


def pytest_collection_modifyitems(config, items) -> None:
    """``slow`` cases run only from ``bench/reliability_big.py`` (or with XLMRXL_RUN_SLOW=1)."""
    if os.environ.get("XLMRXL_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run by bench/reliability_big.py (or set XLMRXL_RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_nlp(spm_model_path) -> Language:
    return build_shared_pipeline(spm_model_path)


@pytest.fixture(scope="session")
def qa_pipeline(spm_model_path) -> Language:
    fix_random_seed(0)
    nlp = qa_nlp(spm_model_path)
    nlp.initialize()
    return nlp


@pytest.fixture(scope="session")
def fill_pipeline(spm_model_path) -> Language:
    fix_random_seed(0)
    nlp = fill_nlp(spm_model_path, lang="xx")
    nlp.initialize()
    return nlp
