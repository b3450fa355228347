"""The heads on the backbone's outputs, registered in ``spacy.registry.architectures``.

Owns ``spacy-xlmrxl.NerHead.v1`` (token vectors -> softmax over NER tags) and
``spacy-xlmrxl.TextcatHead.v1`` / ``.v2`` (``<s>`` state of each window -> dense -> tanh ->
out_proj, averaged over windows, softmax or sigmoid; v2 names the backbone ``tok2vec`` so that
``nlp.replace_listeners`` finds it). Backprop takes the gradient w.r.t. the logits.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Dropout, Linear, Model, Softmax_v2, chain, reduce_mean, with_array
from thinc.layers.chain import forward as _chain_forward
from thinc.types import Floats2d, Ragged

from .doc_data import XLMRDocData, XLMRGrad
from .transformer import is_transformer_layer, no_doc_grads, predict_doc_data


# --------------------------------------------------------------------------- heads
@registry.architectures("spacy-xlmrxl.NerHead.v1")
def build_ner_head(tok2vec: Model[List[Doc], List[Floats2d]], nO: Optional[int] = None
                   ) -> Model[List[Doc], List[Floats2d]]:
    """Per-token tag probabilities: token vectors -> linear -> softmax (nO = number of tags).
    Backprop takes ``probs - truth`` as the gradient of the logits (cross-entropy)."""
    output_layer = Softmax_v2(nO=nO, normalize_outputs=True)
    model = chain(tok2vec, with_array(output_layer))
    model.set_ref("tok2vec", tok2vec)
    model.set_ref("output_layer", output_layer)
    return model


@registry.architectures("spacy-xlmrxl.TextcatHead.v1")
def build_textcat_head(transformer: Model[List[Doc], List[XLMRDocData]], nO: Optional[int] = None,
                       exclusive_classes: bool = True, dropout: float = 0.1) -> Model[List[Doc], Floats2d]:
    """Doc-level label probabilities (n_docs, nO) from the ``<s>`` state of each window:
    dropout -> dense (H x H) -> tanh -> dropout -> out_proj (nO x H) like HF's classification
    head, logits averaged over a doc's windows, then softmax (exclusive) or sigmoid.
    ``transformer`` is ``spacy-xlmrxl.Transformer.v2`` (or v1) or ``spacy-xlmrxl.DocDataListener.v1``."""
    dense = Linear()
    out_proj = Linear(nO=nO)
    classifier = chain(Dropout(dropout), dense, _tanh(), Dropout(dropout), out_proj)
    model = chain(transformer, _cls_states(), with_array(classifier), reduce_mean(),
                  _activation(exclusive_classes))
    model._func = _textcat_forward  # the chain, but inference keeps no piece state (see there)
    model.init = _textcat_init
    model.set_ref("transformer", transformer)
    model.set_ref("dense", dense)
    model.set_ref("output_layer", out_proj)
    model.attrs["exclusive_classes"] = exclusive_classes
    return model


def _textcat_forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[Floats2d, Callable[[Floats2d], Any]]:
    """The chain's forward; at inference with an own ``Transformer.v1``, the transformer keeps
    only the ``<s>`` states the head reads (`predict_doc_data` with ``piece_states=False``), not
    every piece's state of every doc of the batch."""
    transformer = model.layers[0]
    if is_train or not is_transformer_layer(transformer):
        return _chain_forward(model, docs, is_train)
    X: Any = predict_doc_data(transformer, docs, piece_states=False)
    for layer in model.layers[1:]:
        X = layer.predict(X)
    return X, no_doc_grads


def _textcat_init(model: Model, X: Optional[List[Doc]] = None, Y: Any = None) -> None:
    transformer = model.get_ref("transformer")
    transformer.initialize(X=X)
    width = transformer.get_dim("nO")
    dense, out_proj = model.get_ref("dense"), model.get_ref("output_layer")
    for dim, layer in (("nI", dense), ("nO", dense), ("nI", out_proj)):
        layer.set_dim(dim, width, force=True)
    if Y is not None and not out_proj.has_dim("nO"):
        out_proj.set_dim("nO", Y.shape[1])
    for layer in model.layers[1:]:
        layer.initialize()
    model.set_dim("nO", out_proj.get_dim("nO"), force=True)


def _cls_states() -> Model[List[XLMRDocData], Ragged]:
    return Model("xlmrxl-cls-states", _cls_forward)


def _cls_forward(model: Model, data: List[XLMRDocData], is_train: bool
                 ) -> Tuple[Ragged, Callable[[Ragged], List[XLMRGrad]]]:
    lengths = model.ops.asarray1i([d.cls.shape[0] for d in data])
    flat = model.ops.xp.concatenate([d.cls for d in data]) if data else model.ops.alloc2f(0, 0)
    starts = numpy.cumsum([0] + [d.cls.shape[0] for d in data])

    def backprop(dY: Ragged) -> List[XLMRGrad]:
        return [XLMRGrad(cls=dY.dataXd[starts[i]:starts[i + 1]]) for i in range(len(data))]

    return Ragged(flat, lengths), backprop


def _tanh() -> Model[Floats2d, Floats2d]:
    return Model("tanh", _tanh_forward)


def _tanh_forward(model: Model, X: Floats2d, is_train: bool) -> Tuple[Floats2d, Callable[[Floats2d], Floats2d]]:
    Y = model.ops.xp.tanh(X)
    return Y, lambda dY: dY * (1 - Y * Y)


def _activation(exclusive: bool) -> Model[Floats2d, Floats2d]:
    """Softmax (exclusive) or sigmoid; backprop passes the gradient through unchanged, i.e. it
    expects the gradient w.r.t. the logits (``probs - truth`` for CE / BCE), as spaCy does."""
    return Model("softmax" if exclusive else "sigmoid", _activation_forward, attrs={"exclusive": exclusive})


def _activation_forward(model: Model, X: Floats2d, is_train: bool) -> Tuple[Floats2d, Callable[[Floats2d], Floats2d]]:
    if model.attrs["exclusive"]:
        Y = model.ops.softmax(X, axis=-1)
    else:
        Y = model.ops.sigmoid(X)
    return Y, lambda dY: dY


@registry.architectures("spacy-xlmrxl.TextcatHead.v2")
def build_textcat_head_v2(tok2vec: Model[List[Doc], List[XLMRDocData]], nO: Optional[int] = None,
                          exclusive_classes: bool = True, dropout: float = 0.1) -> Model[List[Doc], Floats2d]:
    """``spacy-xlmrxl.TextcatHead.v1`` with the backbone under the name ``tok2vec`` (where spaCy's
    ``nlp.replace_listeners`` looks): ``tok2vec`` is ``spacy-xlmrxl.DocDataListener.v1`` (a
    shared ``xlmrxl_transformer``) or ``spacy-xlmrxl.Transformer.v2`` (an own backbone). The
    model has both refs, ``tok2vec`` and ``transformer``, to the same layer."""
    model = build_textcat_head(tok2vec, nO=nO, exclusive_classes=exclusive_classes, dropout=dropout)
    model.set_ref("tok2vec", tok2vec)
    return model
