"""The ``spacy-xlmrxl`` command line: data conversion, data checks, evaluation, baselines, tables.

Owns the subcommands the project workflow (``project.yml``) runs:

* ``convert-uner``, ``convert-sib200``, ``convert-squad``, ``convert-text``: raw data ->
  ``.spacy`` DocBin files (`spacy_xlmrxl.readers`), with progress bars;
* ``check-data``: verify the assets' sha256 (``project.yml``), copying missing ones from a local
  data folder such as ``../shared/data`` (`spacy_xlmrxl.data_check`);
* ``evaluate``: spaCy's ``Language.evaluate`` (what ``spacy evaluate`` runs) on one or more
  ``.spacy`` files with the model loaded once, writing ALL scores per file as JSON (``spacy
  evaluate`` keeps only a fixed list of keys and drops e.g. ``qa_f1``); QA questions reach the
  predicted docs (`readers.TaskCorpus`);
* ``baseline-ner``: the majority-tag baseline (each word's most frequent training tag);
* ``evaluate-fill-mask``: masked-word accuracy of a fill-mask pipeline (and its baseline);
* ``merge-config``: a training config + a partial override file (``configs/xl_gpu.cfg``);
* ``metrics-table``: metrics JSON files -> Markdown tables for the README;
* ``export-hf``: a trained NER / textcat / fill-mask component -> a Hugging Face model
  directory (the exporters of `spacy_xlmrxl.serialize` and the fill-mask component).
"""

from __future__ import annotations

import argparse
from typing import Dict, Tuple

from wasabi import msg

# task -> (module, function) of the HF exporters (the components' owners write them)
HF_EXPORTERS: Dict[str, Tuple[str, str]] = {
    "ner": ("spacy_xlmrxl.serialize", "export_ner_to_hf"),
    "textcat": ("spacy_xlmrxl.serialize", "export_textcat_to_hf"),
    "fill-mask": ("spacy_xlmrxl.components.fill_mask", "export_fill_mask_to_hf"),
}

def cmd_export_hf(args: argparse.Namespace) -> None:
    import importlib

    import spacy

    module_name, function = HF_EXPORTERS[args.task]
    exporter = getattr(importlib.import_module(module_name), function)
    nlp = spacy.load(args.model)
    out = exporter(nlp, args.output, name=args.name)
    msg.good(f"{args.task} component of {args.model} -> {out} (Hugging Face format)")
