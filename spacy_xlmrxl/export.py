"""Every component's HF export: a trained spaCy component as a Hugging Face model directory.

Owns `export_ner_to_hf` (``XLMRobertaXLForTokenClassification``), `export_textcat_to_hf`
(``...ForSequenceClassification``), `export_qa_to_hf` (``...ForQuestionAnswering``) and
`export_fill_mask_to_hf` (``...ForMaskedLM``), and how they find a component's backbone (its own
or its upstream ``xlmrxl_transformer``'s). Each directory loads in HF transformers and as any
component's ``checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from spacy.language import Language
from thinc.api import Model

from .backbone.nodes import backbone_nodes, backbone_shim
from .backbone.weights import save_module_dir
from .pipeline.backbone_pipe import PathLike


# --------------------------------------------------------------------------- export to HF
def find_component(nlp_or_component: Any, factory: str, name: Optional[str]) -> Tuple[Any, Optional[Language]]:
    if isinstance(nlp_or_component, Language):
        nlp = nlp_or_component
        if name is not None:
            return nlp.get_pipe(name), nlp
        for pipe_name, pipe in nlp.pipeline:
            if nlp.get_pipe_meta(pipe_name).factory == factory:
                return pipe, nlp
        raise ValueError(f"the pipeline has no {factory} component (pipes: {nlp.pipe_names})")
    return nlp_or_component, None


def backbone_of(component: Any, nlp: Optional[Language]) -> Tuple[torch.nn.Module, bytes]:
    """The torch backbone a component uses: its own, or its upstream ``xlmrxl_transformer``'s."""
    nodes = [n for n in backbone_nodes(component.model) if backbone_shim(n).has_module]
    if not nodes and nlp is not None:
        for _, pipe in nlp.pipeline:
            if component.name in getattr(pipe, "listening_components", []):
                nodes = [n for n in backbone_nodes(pipe.model) if backbone_shim(n).has_module]
                break
    if not nodes:
        raise ValueError(f"component {getattr(component, 'name', component)!r} has no loaded backbone "
                         "(initialise or load it; a listening component needs the nlp object)")
    node = nodes[0]
    return backbone_shim(node).float_module, node.attrs["tokenizer_model"]


def _linear_weights(layer: Model) -> Tuple[torch.Tensor, torch.Tensor]:
    to_numpy = layer.ops.to_numpy
    return torch.from_numpy(to_numpy(layer.get_param("W")).copy()), torch.from_numpy(to_numpy(layer.get_param("b")).copy())


def _save_task_model(task_cls: Any, backbone: torch.nn.Module, config: Any, heads: Dict[str, torch.Tensor],
                     tokenizer_model: bytes, out_dir: PathLike) -> Path:
    """Assemble ``task_cls`` around the trained ``backbone`` (shared, not copied) and write it."""
    from modeling.checkpoint import parameters_on_meta

    with parameters_on_meta():
        task = task_cls(config)
    task.roberta = backbone
    for name, value in heads.items():
        module_name, _, attr = name.rpartition(".")
        setattr(task.get_submodule(module_name), attr, torch.nn.Parameter(value.to(backbone.dtype)))
    return save_module_dir(task, out_dir, tokenizer_model=tokenizer_model)


def export_ner_to_hf(nlp_or_component: Any, out_dir: PathLike, *, name: Optional[str] = None) -> Path:
    """Write a trained ``xlmrxl_ner`` as an HF ``XLMRobertaXLForTokenClassification`` directory.

    ``id2label`` holds the component's tags (``O``, ``B-PER``, ...). HF predicts per piece;
    the mean of the piece logits of a spaCy token equals the component's token logits (the
    head is linear and pools by mean), so the two agree token by token.
    """
    from modeling.heads import XLMRobertaXLForTokenClassification

    component, nlp = find_component(nlp_or_component, "xlmrxl_ner", name)
    backbone, tokenizer_model = backbone_of(component, nlp)
    tags = list(component.tag_names)
    config = backbone.config.copy(id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)},
                                  num_labels=len(tags))
    W, b = _linear_weights(component.model.get_ref("output_layer"))
    return _save_task_model(XLMRobertaXLForTokenClassification, backbone, config,
                            {"classifier.weight": W, "classifier.bias": b}, tokenizer_model, out_dir)


def export_textcat_to_hf(nlp_or_component: Any, out_dir: PathLike, *, name: Optional[str] = None) -> Path:
    """Write a trained ``xlmrxl_textcat`` as an HF ``XLMRobertaXLForSequenceClassification``
    directory (``problem_type`` single- or multi-label). For a doc that fits one window the HF
    logits equal the component's; longer docs are averaged over windows by the component only."""
    from modeling.heads import XLMRobertaXLForSequenceClassification

    component, nlp = find_component(nlp_or_component, "xlmrxl_textcat", name)
    backbone, tokenizer_model = backbone_of(component, nlp)
    labels = list(component.labels)
    problem = "single_label_classification" if component.exclusive_classes else "multi_label_classification"
    config = backbone.config.copy(id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)},
                                  num_labels=len(labels), problem_type=problem)
    dense_W, dense_b = _linear_weights(component.model.get_ref("dense"))
    out_W, out_b = _linear_weights(component.model.get_ref("output_layer"))
    heads = {"classifier.dense.weight": dense_W, "classifier.dense.bias": dense_b,
             "classifier.out_proj.weight": out_W, "classifier.out_proj.bias": out_b}
    return _save_task_model(XLMRobertaXLForSequenceClassification, backbone, config, heads, tokenizer_model, out_dir)


def export_task_model(nlp_or_component: Any, out_dir: Any, *, factory: str, name: Optional[str] = None) -> Path:
    """Write the torch model of a ``factory`` component (the first one, or pipe ``name``, of an
    ``nlp``; or the component itself) to ``out_dir`` as an HF checkpoint directory."""

    component, nlp = find_component(nlp_or_component, factory, name)
    module, tokenizer_model = backbone_of(component, nlp)
    return save_module_dir(module, out_dir, tokenizer_model=tokenizer_model)


def export_qa_to_hf(nlp_or_component: Any, out_dir: Any, *, name: Optional[str] = None) -> Path:
    """Write a trained ``xlmrxl_qa``'s model as an HF ``XLMRobertaXLForQuestionAnswering``
    directory (``config.json``, safetensors, ``sentencepiece.bpe.model``)."""
    return export_task_model(nlp_or_component, out_dir, factory="xlmrxl_qa", name=name)


def export_fill_mask_to_hf(nlp_or_component: Any, out_dir: Any, *, name: Optional[str] = None) -> Path:
    """Write a ``xlmrxl_fill_mask``'s model as an HF ``XLMRobertaXLForMaskedLM`` directory
    (``config.json``, safetensors, ``sentencepiece.bpe.model``); another component starts from
    the adapted weights with ``checkpoint = out_dir``."""
    return export_task_model(nlp_or_component, out_dir, factory="xlmrxl_fill_mask", name=name)
