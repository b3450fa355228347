"""Folding a pipeline's LoRA adapters into its backbones: `merge_lora_pipeline`, `merge_lora_to_disk`.

After merging, each backbone that had adapters is a plain model whose adapted weights are
``W + (alpha / r) B A`` (`modeling.lora.merge_lora`, in the base's dtype), its ``lora`` setting
is null in the pipeline's config, and the saved pipeline is an ordinary one: its backbone
directories are HF checkpoints, loadable without this package's LoRA code, int8-quantisable,
predicting what the adapted pipeline predicted (float32: within float rounding of the merged sum).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from spacy.language import Language
from thinc.api import Model

from modeling.lora import lora_layers, merge_lora

from .backbone.nodes import backbone_nodes, backbone_shim
from .backbone.settings import backbone_blocks
from .backbone.source import PathLike


def merge_lora_pipeline(nlp: Language) -> List[str]:
    """Merge the adapters of every backbone of ``nlp`` into its base, in place, and set the
    ``lora`` setting of those components' backbone blocks to null. The merged weights train
    again as a whole (the settings ``freeze`` / ``freeze_word_embeddings`` still apply).
    Returns the names of the components whose backbones changed."""
    changed: List[str] = []
    for name, pipe in nlp.pipeline:
        model = getattr(pipe, "model", None)
        if not isinstance(model, Model):
            continue
        merged = False
        for node in backbone_nodes(model):
            shim = backbone_shim(node)
            if not shim.has_module or not lora_layers(shim.float_module):
                continue
            module = merge_lora(shim.float_module)
            module.requires_grad_(True)
            shim.lora, shim.base = None, None
            shim.set_module(module)
            merged = True
        if merged:
            for block in backbone_blocks(nlp.get_pipe_config(name)):
                block["lora"] = None
            changed.append(name)
    return changed


def merge_lora_to_disk(pipeline: PathLike, output: PathLike) -> Path:
    """`merge_lora_pipeline` on the pipeline saved at ``pipeline``, written to ``output``;
    raises `ValueError` when no backbone of it has adapters."""
    import spacy

    nlp = spacy.load(pipeline)
    if not merge_lora_pipeline(nlp):
        raise ValueError(f"{pipeline}: no backbone of this pipeline has LoRA adapters (every lora setting is null)")
    nlp.to_disk(output)
    return Path(output)
