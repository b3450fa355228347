"""Tiny deterministic spaCy components for the distributed tests (imported by Ray actors too).

Owns: ``toy_cats`` (sets ``doc.cats`` from the text), ``toy_answers`` (sets ``doc._.answers``),
``toy_crash_once`` (kills its process on the first document unless its marker file exists), and
`build_toy_pipeline`, which saves ``blank en + entity_ruler + those`` to a directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import spacy
from spacy.language import Language
from spacy.tokens import Doc

if not Doc.has_extension("answers"):
    Doc.set_extension("answers", default=None)

PATTERNS = [
    {"label": "ORG", "pattern": "Acme"},
    {"label": "ORG", "pattern": [{"LOWER": "open"}, {"LOWER": "lab"}]},
    {"label": "GPE", "pattern": "Paris"},
    {"label": "PERSON", "pattern": [{"TEXT": {"REGEX": "^Dr[a-z]+$"}}]},
]


@Language.component("toy_cats")
def toy_cats(doc: Doc) -> Doc:
    score = (sum(map(ord, doc.text)) % 97) / 97.0
    doc.cats = {"POSITIVE": score, "NEGATIVE": 1.0 - score, "QUESTION": float(doc.text.endswith("?"))}
    return doc


@Language.component("toy_answers")
def toy_answers(doc: Doc) -> Doc:
    doc._.answers = [{"text": span.text, "start": span.start_char, "end": span.end_char, "score": 0.5}
                     for span in doc.ents[:1]]
    return doc


class CrashOnce:
    """Calls ``os._exit`` on its first document when ``marker`` does not exist (creating it)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, doc: Doc) -> Doc:
        if self.marker and not Path(self.marker).exists():
            Path(self.marker).write_text("crashed\n")
            os._exit(1)
        return doc


@Language.factory("toy_crash_once", default_config={"marker": ""})
def make_crash_once(nlp: Language, name: str, marker: str) -> CrashOnce:
    return CrashOnce(marker)


def build_toy_pipeline(path: Path, *, crash_marker: Optional[Path] = None) -> Path:
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(PATTERNS)
    nlp.add_pipe("toy_cats")
    nlp.add_pipe("toy_answers")
    if crash_marker is not None:
        nlp.add_pipe("toy_crash_once", config={"marker": str(crash_marker)})
    nlp.to_disk(path)
    return path
