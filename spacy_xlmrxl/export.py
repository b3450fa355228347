"""Every component's HF export: a trained spaCy component as a Hugging Face model directory.

Owns `export_ner_to_hf` (``XLMRobertaXLForTokenClassification``), `export_textcat_to_hf`
(``...ForSequenceClassification``), `export_qa_to_hf` (``...ForQuestionAnswering``) and
`export_fill_mask_to_hf` (``...ForMaskedLM``), and how they find a component's backbone (its own
or its upstream ``xlmrxl_transformer``'s). Each directory loads in HF transformers and as any
component's ``checkpoint``; a backbone with LoRA adapters is written merged (``W + scaling B A``
per adapted layer; the pipeline itself is left as it was). `export_peft` writes the adapters
instead, in the HF PEFT format, with the component's head as ``modules_to_save``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from spacy.language import Language
from thinc.api import Model

from modeling.lora import lora_layers, merged_adapters, save_peft_adapter

from .backbone.nodes import backbone_nodes, backbone_shim
from .backbone.weights import save_module_dir
from .pipeline.backbone_pipe import PathLike


# --------------------------------------------------------------------------- finding the backbone
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


def backbone_node(component: Any, nlp: Optional[Language]) -> Model:
    """The backbone layer a component uses: its own, or its upstream ``xlmrxl_transformer``'s."""
    nodes = [n for n in backbone_nodes(component.model) if backbone_shim(n).has_module]
    if not nodes and nlp is not None:
        for _, pipe in nlp.pipeline:
            if component.name in getattr(pipe, "listening_components", []):
                nodes = [n for n in backbone_nodes(pipe.model) if backbone_shim(n).has_module]
                break
    if not nodes:
        raise ValueError(f"component {getattr(component, 'name', component)!r} has no loaded backbone "
                         "(initialise or load it; a listening component needs the nlp object)")
    return nodes[0]


def backbone_of(component: Any, nlp: Optional[Language]) -> Tuple[torch.nn.Module, bytes]:
    """The torch backbone a component uses (its own, or its upstream ``xlmrxl_transformer``'s)
    and its tokenizer model."""
    node = backbone_node(component, nlp)
    return backbone_shim(node).float_module, node.attrs["tokenizer_model"]


# --------------------------------------------------------------------------- task models
@dataclass
class _HeadTask:
    """An HF task model to assemble around a component's backbone (NER, textcat: thinc heads)."""

    cls: Any
    config: Any
    heads: Dict[str, torch.Tensor]
    backbone: torch.nn.Module
    tokenizer_model: bytes

    def assemble(self) -> torch.nn.Module:
        """``cls`` around the trained backbone (shared, not copied) with the head's weights."""
        from modeling.checkpoint import parameters_on_meta

        with parameters_on_meta():
            task = self.cls(self.config)
        task.roberta = self.backbone
        dtype = next(self.backbone.parameters()).dtype
        for name, value in self.heads.items():
            module_name, _, attr = name.rpartition(".")
            setattr(task.get_submodule(module_name), attr, torch.nn.Parameter(value.to(dtype)))
        return task


def _linear_weights(layer: Model) -> Tuple[torch.Tensor, torch.Tensor]:
    to_numpy = layer.ops.to_numpy
    return torch.from_numpy(to_numpy(layer.get_param("W")).copy()), torch.from_numpy(to_numpy(layer.get_param("b")).copy())


def _ner_task(component: Any, nlp: Optional[Language]) -> _HeadTask:
    from modeling.heads import XLMRobertaXLForTokenClassification

    backbone, tokenizer_model = backbone_of(component, nlp)
    tags = list(component.tag_names)
    config = backbone.config.copy(id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)},
                                  num_labels=len(tags))
    W, b = _linear_weights(component.model.get_ref("output_layer"))
    return _HeadTask(XLMRobertaXLForTokenClassification, config, {"classifier.weight": W, "classifier.bias": b},
                     backbone, tokenizer_model)


def _textcat_task(component: Any, nlp: Optional[Language]) -> _HeadTask:
    from modeling.heads import XLMRobertaXLForSequenceClassification

    backbone, tokenizer_model = backbone_of(component, nlp)
    labels = list(component.labels)
    problem = "single_label_classification" if component.exclusive_classes else "multi_label_classification"
    config = backbone.config.copy(id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)},
                                  num_labels=len(labels), problem_type=problem)
    dense_W, dense_b = _linear_weights(component.model.get_ref("dense"))
    out_W, out_b = _linear_weights(component.model.get_ref("output_layer"))
    heads = {"classifier.dense.weight": dense_W, "classifier.dense.bias": dense_b,
             "classifier.out_proj.weight": out_W, "classifier.out_proj.bias": out_b}
    return _HeadTask(XLMRobertaXLForSequenceClassification, config, heads, backbone, tokenizer_model)


def _save_merged(module: torch.nn.Module, tokenizer_model: bytes, out_dir: PathLike) -> Path:
    """Write ``module`` as an HF checkpoint, its LoRA adapters (if any) folded into the weights."""
    merging = merged_adapters(module) if lora_layers(module) else contextlib.nullcontext()
    with merging:
        return save_module_dir(module, out_dir, tokenizer_model=tokenizer_model)


# --------------------------------------------------------------------------- export to HF
def export_ner_to_hf(nlp_or_component: Any, out_dir: PathLike, *, name: Optional[str] = None) -> Path:
    """Write a trained ``xlmrxl_ner`` as an HF ``XLMRobertaXLForTokenClassification`` directory.

    ``id2label`` holds the component's tags (``O``, ``B-PER``, ...). HF predicts per piece;
    the mean of the piece logits of a spaCy token equals the component's token logits (the
    head is linear and pools by mean), so the two agree token by token.
    """
    task = _ner_task(*find_component(nlp_or_component, "xlmrxl_ner", name))
    return _save_merged(task.assemble(), task.tokenizer_model, out_dir)


def export_textcat_to_hf(nlp_or_component: Any, out_dir: PathLike, *, name: Optional[str] = None) -> Path:
    """Write a trained ``xlmrxl_textcat`` as an HF ``XLMRobertaXLForSequenceClassification``
    directory (``problem_type`` single- or multi-label). For a doc that fits one window the HF
    logits equal the component's; longer docs are averaged over windows by the component only."""
    task = _textcat_task(*find_component(nlp_or_component, "xlmrxl_textcat", name))
    return _save_merged(task.assemble(), task.tokenizer_model, out_dir)


def export_task_model(nlp_or_component: Any, out_dir: Any, *, factory: str, name: Optional[str] = None) -> Path:
    """Write the torch model of a ``factory`` component (the first one, or pipe ``name``, of an
    ``nlp``; or the component itself) to ``out_dir`` as an HF checkpoint directory."""
    module, tokenizer_model = backbone_of(*find_component(nlp_or_component, factory, name))
    return _save_merged(module, tokenizer_model, out_dir)


def export_qa_to_hf(nlp_or_component: Any, out_dir: Any, *, name: Optional[str] = None) -> Path:
    """Write a trained ``xlmrxl_qa``'s model as an HF ``XLMRobertaXLForQuestionAnswering``
    directory (``config.json``, safetensors, ``sentencepiece.bpe.model``)."""
    return export_task_model(nlp_or_component, out_dir, factory="xlmrxl_qa", name=name)


def export_fill_mask_to_hf(nlp_or_component: Any, out_dir: Any, *, name: Optional[str] = None) -> Path:
    """Write a ``xlmrxl_fill_mask``'s model as an HF ``XLMRobertaXLForMaskedLM`` directory
    (``config.json``, safetensors, ``sentencepiece.bpe.model``); another component starts from
    the adapted weights with ``checkpoint = out_dir``."""
    return export_task_model(nlp_or_component, out_dir, factory="xlmrxl_fill_mask", name=name)


# --------------------------------------------------------------------------- export to PEFT
#: factory -> its head as PEFT ``modules_to_save`` (of the transformers class named in `export_peft`)
_PEFT_HEADS = {"xlmrxl_ner": ("classifier",), "xlmrxl_textcat": ("classifier",), "xlmrxl_qa": ("qa_outputs",)}


def export_peft(nlp: Language, name: str, out_dir: PathLike) -> Path:
    """Write the LoRA adapters of component ``name`` in the HF PEFT format (``adapter_config.json``
    + ``adapter_model.safetensors``), for the transformers class of its task (NER:
    ``XLMRobertaXLForTokenClassification``, textcat: ``...ForSequenceClassification``, QA:
    ``...ForQuestionAnswering``) with its head as ``modules_to_save`` (``classifier`` /
    ``qa_outputs``). ``peft.PeftModel.from_pretrained(<that class built from the base, with the
    component's num_labels>, out_dir)`` computes what the component computes;
    ``base_model_name_or_path`` is the base checkpoint's path when the backbone was loaded from one."""
    factory = nlp.get_pipe_meta(name).factory
    if factory not in _PEFT_HEADS:
        raise ValueError(f"export-peft writes {sorted(_PEFT_HEADS)} components (their heads map to a transformers "
                         f"class); {name!r} is a {factory}: export it merged with export-hf")
    component = nlp.get_pipe(name)
    node = backbone_node(component, nlp)
    if factory == "xlmrxl_qa":
        model = backbone_shim(node).float_module
    else:
        model = (_ner_task if factory == "xlmrxl_ner" else _textcat_task)(component, nlp).assemble()
    if not lora_layers(model):
        raise ValueError(f"component {name!r} has no LoRA adapters (its backbone's lora setting is null): "
                         "export its whole model with export-hf")
    base = backbone_shim(node).base
    return save_peft_adapter(model, out_dir, base_model_name_or_path=base.path if base is not None else None,
                             modules_to_save=_PEFT_HEADS[factory])
