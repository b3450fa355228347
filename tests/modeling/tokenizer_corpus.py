"""The multilingual texts of ``../shared/data`` as plain strings, for tokenizer tests and benchmarks.

Owns reading the three corpora the way their formats demand (see ``../shared/data/SOURCES.md``):
UNER sentences from the ``# text = `` comment lines of the ``.iob2`` files, SIB-200 texts with a
CSV reader (the TSVs use CSV quoting), XQuAD contexts and questions from the SQuAD JSON.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List

_TEXT_COMMENT = "# text = "


def uner_texts(data_dir: Path) -> List[str]:
    """Every UNER sentence, in file order (``ner/uner/<lang>/<split>.iob2``)."""
    texts: List[str] = []
    for path in sorted((data_dir / "ner" / "uner").glob("*/*.iob2")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.startswith(_TEXT_COMMENT):
                    texts.append(line[len(_TEXT_COMMENT) :].rstrip("\n"))
    return texts


def sib200_texts(data_dir: Path) -> List[str]:
    """Every SIB-200 text (``textcat/sib200/<lang>/<split>.tsv``, column ``text``)."""
    texts: List[str] = []
    for path in sorted((data_dir / "textcat" / "sib200").glob("*/*.tsv")):
        with path.open(encoding="utf-8", newline="") as f:
            rows = csv.DictReader(f, delimiter="\t")
            texts.extend(row["text"] for row in rows)
    return texts


def xquad_texts(data_dir: Path) -> Dict[str, List[str]]:
    """XQuAD paragraph contexts and questions of every language file."""
    contexts: List[str] = []
    questions: List[str] = []
    for path in sorted((data_dir / "qa" / "xquad").glob("xquad.*.json")):
        with path.open(encoding="utf-8") as f:
            data = json.load(f)["data"]
        for article in data:
            for paragraph in article["paragraphs"]:
                contexts.append(paragraph["context"])
                questions.extend(qa["question"] for qa in paragraph["qas"])
    return {"XQuAD contexts": contexts, "XQuAD questions": questions}


def load_corpora(data_dir: Path) -> Dict[str, List[str]]:
    """All corpora by name: ``UNER``, ``SIB-200``, ``XQuAD contexts``, ``XQuAD questions``."""
    return {"UNER": uner_texts(data_dir), "SIB-200": sib200_texts(data_dir), **xquad_texts(data_dir)}


def sentences(data_dir: Path, n: int) -> List[str]:
    """``n`` sentence-sized texts (UNER, SIB-200, XQuAD questions, cycled in that order)."""
    pool = [t for name, texts in load_corpora(data_dir).items() if name != "XQuAD contexts" for t in texts]
    if not pool:
        raise ValueError(f"no texts found under {data_dir}")
    return [pool[i % len(pool)] for i in range(n)]
