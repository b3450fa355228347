"""``spacy-xlmrxl.TokenVectors.v1``: a ``tok2vec`` (List[Doc] -> List[Floats2d], one row per spaCy
token) from a transformer, usable by spaCy's own components too, and the pooling layer
(`doc_data_pooler`) that the listeners share. At inference the vectors are pooled window batch
by window batch, never from a doc's whole (n_pieces, H) array.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, chain
from thinc.layers.chain import forward as _chain_forward
from thinc.types import Floats2d

from .alignment import POOLING_MODES, pool_pieces
from .doc_data import XLMRDocData, XLMRGrad
from .transformer import is_transformer_layer, no_doc_grads, predict_doc_data


# --------------------------------------------------------------------------- token vectors
def doc_data_pooler(pooling: str = "mean") -> Model[List[XLMRDocData], List[Floats2d]]:
    """List[XLMRDocData] -> List[Floats2d]: piece states pooled per spaCy token."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    return Model("xlmrxl-pooler", _pooler_forward, init=_width_init, dims={"nO": None}, attrs={"pooling": pooling})


def _width_init(model: Model, X: Optional[List[XLMRDocData]] = None, Y: Any = None) -> None:
    if X:
        model.set_dim("nO", X[0].width, force=True)


def _pooler_forward(model: Model, data: List[XLMRDocData], is_train: bool
                    ) -> Tuple[List[Floats2d], Callable[[List[Floats2d]], List[XLMRGrad]]]:
    mode = model.attrs["pooling"]
    pooled = [pool_pieces(model.ops, d.hidden, d.align, mode=mode) if d.hidden is not None
              else (_pooled_at_inference(d, mode), None) for d in data]

    def backprop(d_tokvecs: List[Floats2d]) -> List[XLMRGrad]:
        return [XLMRGrad(hidden=bp(dY) if bp is not None else None) for (_, bp), dY in zip(pooled, d_tokvecs)]

    return [vectors for vectors, _ in pooled], backprop


def _pooled_at_inference(data: XLMRDocData, mode: str) -> Floats2d:
    """The token vectors inference pooled for ``mode`` (doc data without piece states)."""
    if mode not in data.tokvecs:
        raise ValueError(
            f"doc._.xlmrxl has neither piece states nor {mode!r}-pooled token vectors (it has "
            f"{sorted(data.tokvecs)}): the xlmrxl_transformer pools only for the listeners it has linked; "
            f"set its piece_states = true to keep every piece's state")
    return data.tokvecs[mode]


@registry.architectures("spacy-xlmrxl.TokenVectors.v1")
def build_token_vectors(transformer: Model[List[Doc], List[XLMRDocData]], pooling: str = "mean"
                        ) -> Model[List[Doc], List[Floats2d]]:
    """Token vectors (one row per spaCy token, zeros for whitespace tokens) from a backbone."""
    model = chain(transformer, doc_data_pooler(pooling))
    model._func = _token_vectors_forward  # the chain, but inference pools window batch by window batch
    model.set_ref("transformer", transformer)
    return model


def _token_vectors_forward(model: Model, docs: List[Doc], is_train: bool
                           ) -> Tuple[List[Floats2d], Callable[[List[Floats2d]], List[Doc]]]:
    transformer, pooler = model.layers
    if is_train or not is_transformer_layer(transformer):
        return _chain_forward(model, docs, is_train)
    mode = pooler.attrs["pooling"]
    data = predict_doc_data(transformer, docs, pooling=(mode,), piece_states=False)
    return [d.tokvecs[mode] for d in data], no_doc_grads
