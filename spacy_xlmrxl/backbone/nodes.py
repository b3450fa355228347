"""Thinc architectures of spacy_xlmrxl, registered in ``spacy.registry.architectures``.

Owns
- ``spacy-xlmrxl.Transformer.v1``: Model[List[Doc], List[XLMRDocData]] around the torch
  `XLMRobertaXLModel`: tokenises each doc, aligns pieces to tokens, cuts long docs into piece
  windows, runs length-sorted window batches, recombines overlaps; backprop goes into torch.
  Inference (`predict_doc_data`) recombines and pools batch by batch, keeping per doc only
  the token vectors asked for (and the piece states only when asked).
  The torch module is built (and weights loaded) in the model's ``init``, i.e. in
  ``nlp.initialize``, never at ``add_pipe``;
- ``spacy-xlmrxl.TokenVectors.v1``: a ``tok2vec`` (List[Doc] -> List[Floats2d], one row per
  spaCy token) from a transformer, usable by spaCy's own components too;
- ``spacy-xlmrxl.Listener.v1`` (token vectors) and ``spacy-xlmrxl.DocDataListener.v1`` (raw
  `XLMRDocData`) reading a shared ``xlmrxl_transformer``;
- ``spacy-xlmrxl.NerHead.v1`` (token vectors -> softmax over NER tags) and
  ``spacy-xlmrxl.TextcatHead.v1`` (``<s>`` state of each window -> dense -> tanh -> out_proj,
  averaged over windows, softmax or sigmoid);
- helpers the components use to find and configure the backbone inside any of these models.
"""

from __future__ import annotations

from typing import Any, List

import torch
from thinc.api import Model

from .shim import TorchModuleShim
from .source import BackboneSource, load_tokenizer


def backbone_shim(model: Model) -> TorchModuleShim:
    for shim in model.shims:
        if isinstance(shim, TorchModuleShim):
            return shim
    raise ValueError(f"layer {model.name!r} has no torch backbone")

def backbone_nodes(model: Model) -> List[Model]:
    """The layers of ``model`` that own a torch module (listeners own none)."""
    return [node for node in model.walk() if any(isinstance(s, TorchModuleShim) for s in node.shims)]

def set_backbone_source(model: Model, **changes: Any) -> None:
    """Change where the backbones in ``model`` load from (``checkpoint``/``preset``/
    ``tokenizer``/``dtype``); used by components' ``initialize`` settings."""
    if not any(v is not None for v in changes.values()):
        return
    for node in backbone_nodes(model):
        if isinstance(node.attrs.get("source"), BackboneSource):
            node.attrs["source"] = node.attrs["source"].replace(**changes).validate()

def install_backbone(model: Model, module: torch.nn.Module, tokenizer_model: bytes) -> None:
    """Give the layer its torch module and tokenizer; set ``nO`` and check the window size."""
    shim = backbone_shim(model)
    shim.set_module(module)
    model.attrs["tokenizer_model"] = tokenizer_model
    model.attrs["tokenizer"] = None
    tokenizer = get_tokenizer(model)
    config = module.config  # type: ignore[attr-defined]
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the model's vocab_size is "
                         f"{config.vocab_size}: tokenizer and checkpoint do not belong together")
    check = getattr(model.attrs.get("windows"), "check_max_window", None)
    if callable(check):
        check(config.max_sequence_length - 2)
    model.set_dim("nO", config.hidden_size, force=True)

def get_tokenizer(model: Model) -> Any:
    """The layer's tokenizer, rebuilt from its serialised model after loading."""
    if model.attrs.get("tokenizer") is None:
        proto = model.attrs.get("tokenizer_model")
        if proto is None:
            raise ValueError("the backbone has no tokenizer yet: call nlp.initialize() or load a saved pipeline")
        model.attrs["tokenizer"] = load_tokenizer(bytes(proto))
    return model.attrs["tokenizer"]
