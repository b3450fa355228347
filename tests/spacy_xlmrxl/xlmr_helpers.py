"""Shared helpers of the component tests: tiny backbones, real UNER / SIB-200 examples, training.

Every pipeline here uses the ``tiny`` preset (random init), the real XLM-R tokenizer and small
windows (32 pieces, stride 16) so that long-document paths run in milliseconds.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy
import spacy
from spacy.language import Language
from spacy.training import Example
from spacy.util import fix_random_seed
from thinc.api import Adam

from spacy_xlmrxl.training.sib200 import read_labels, sib200_docs
from spacy_xlmrxl.training.uner import uner_docs

WINDOW = {"window": 32, "stride": 16}
LONG_TEXT_WORDS = 160  # ~ 170 pieces: more than 3 windows of 32 pieces


def backbone_settings(spm_model_path: Path) -> Dict[str, Any]:
    """``[initialize.components.<name>]`` settings for a random tiny backbone."""
    return {"preset": "tiny", "tokenizer": str(spm_model_path)}


def tiny_backbone_config(spm_model_path: Path, **settings: Any) -> Dict[str, Any]:
    """A ``spacy-xlmrxl.Backbone.v1`` block: the tiny preset, the real tokenizer, ``settings``."""
    return {"@misc": "spacy-xlmrxl.Backbone.v1", "checkpoint": None, "preset": "tiny",
            "tokenizer": str(spm_model_path), **settings}


def tiny_transformer_config(spm_model_path: Path, **settings: Any) -> Dict[str, Any]:
    """A ``spacy-xlmrxl.Transformer.v2`` block for a config override (tiny, small windows;
    ``settings``: more backbone settings)."""
    return {"@architectures": "spacy-xlmrxl.Transformer.v2", "backbone": tiny_backbone_config(spm_model_path, **settings),
            "windows": {"@misc": "spacy-xlmrxl.strided_windows.v1", **WINDOW}}


def uner_examples(nlp: Language, shared_data: Path, n: int, *, split: str = "train") -> List[Example]:
    """The first ``n`` Danish UNER sentences with entities, as examples on untagged docs."""
    gold = uner_docs(nlp.vocab, shared_data / "ner" / "uner" / "da" / f"{split}.iob2", lang="da")
    with_ents = (doc for doc in gold if doc.ents)
    return [Example(nlp.make_doc(doc.text), doc) for doc in itertools.islice(with_ents, n)]


def sib_examples(nlp: Language, shared_data: Path, n: int, *, lang: str = "eng_Latn",
                 labels: Sequence[str] = ()) -> List[Example]:
    """The first ``n`` SIB-200 rows of ``lang`` (train split) as examples."""
    root = shared_data / "textcat" / "sib200"
    labels = list(labels) or read_labels(root / "labels.txt")
    docs = sib200_docs(nlp, root / lang / "train.tsv", labels)
    return [Example(nlp.make_doc(doc.text), doc) for doc in itertools.islice(docs, n)]


def train(nlp: Language, examples: List[Example], steps: int, *, learn_rate: Optional[float] = None,
          **settings: Any) -> List[float]:
    """Initialise (with ``settings`` per component name) and run ``steps`` updates (spaCy's
    default optimizer, or Adam with ``learn_rate``); the summed loss of every step."""
    for name, values in settings.items():
        nlp.config["initialize"]["components"][name] = values
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    if learn_rate is not None:
        optimizer = Adam(learn_rate)
    return update_steps(nlp, examples, optimizer, steps)


def update_steps(nlp: Language, examples: List[Example], optimizer: Any, steps: int) -> List[float]:
    """``steps`` calls of ``nlp.update(examples)``; the summed loss of every step."""
    totals = []
    for _ in range(steps):
        losses: Dict[str, float] = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        totals.append(sum(losses.values()))
    return totals


def long_text() -> str:
    return " ".join(f"Ord{i % 7} i København og Aarhus." for i in range(LONG_TEXT_WORDS // 5))


def entities(docs: Sequence[Any]) -> List[List[tuple]]:
    return [[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs]


def cats(docs: Sequence[Any]) -> numpy.ndarray:
    return numpy.asarray([[doc.cats[k] for k in sorted(doc.cats)] for doc in docs])


def load_roundtrip(nlp: Language, path: Path) -> Language:
    nlp.to_disk(path)
    return spacy.load(path)


def blank(lang: str = "da") -> Language:
    return spacy.blank(lang)

