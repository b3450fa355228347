"""``export-hf``: a trained NER / textcat / QA / fill-mask component -> a Hugging Face model
directory (`spacy_xlmrxl.export`).
"""

from __future__ import annotations

import argparse

from wasabi import msg

from ..export import export_fill_mask_to_hf, export_ner_to_hf, export_qa_to_hf, export_textcat_to_hf

#: task -> the function of `spacy_xlmrxl.export` that writes it
HF_EXPORTERS = {"ner": export_ner_to_hf, "textcat": export_textcat_to_hf, "qa": export_qa_to_hf,
                "fill-mask": export_fill_mask_to_hf}


def cmd_export_hf(args: argparse.Namespace) -> None:
    import spacy

    nlp = spacy.load(args.model)
    out = HF_EXPORTERS[args.task](nlp, args.output, name=args.name)
    msg.good(f"{args.task} component of {args.model} -> {out} (Hugging Face format)")
