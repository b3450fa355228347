"""`XLMRListener`: the layer through which task components share one ``xlmrxl_transformer``.

Owns the listener protocol spaCy's training loop relies on (the same one as spaCy's
``Tok2VecListener`` and spacy-transformers' ``TransformerListener``): the upstream
``xlmrxl_transformer`` component finds listeners in downstream models (``find_listeners``),
hands each the batch's `XLMRDocData` and a backprop callback (``receive``) during ``update``;
the listener returns them when its own component runs on the same batch. At prediction time it
reads ``doc._.xlmrxl``, which the upstream component has set.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from spacy.errors import Errors
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, chain
from thinc.types import Floats2d

from .doc_data import XLMRDocData, XLMRGrad, get_doc_data
from .token_vectors import doc_data_pooler

BackpropT = Callable[[List[XLMRGrad]], List[Doc]]


class XLMRListener(Model):
    """Model[List[Doc], List[XLMRDocData]] fed by an upstream ``xlmrxl_transformer``.

    upstream_name: the upstream component's name, or ``"*"`` for any ``xlmrxl_transformer``.
    Dim ``nO`` (the hidden width) is set by the upstream component when it is initialised or
    loaded; it is needed for docs the upstream has not annotated (zeros are returned).
    """

    name = "xlmrxl-listener"

    def __init__(self, upstream_name: str = "*") -> None:
        Model.__init__(self, name=self.name, forward=_listener_forward, dims={"nO": None})
        self.upstream_name = upstream_name
        self._batch_id: Optional[int] = None
        self._outputs: Optional[List[XLMRDocData]] = None
        self._backprop: Optional[BackpropT] = None

    @classmethod
    def get_batch_id(cls, docs: Iterable[Doc]) -> int:
        """Content hash of a batch, to check that ``receive`` and the forward pass agree."""
        return sum(sum(token.orth for token in doc) + len(doc.text) for doc in docs)

    def receive(self, batch_id: int, outputs: List[XLMRDocData], backprop: BackpropT) -> None:
        """Store the upstream's outputs and backprop callback for the current training batch."""
        self._batch_id = batch_id
        self._outputs = outputs
        self._backprop = backprop

    def verify_inputs(self, docs: Sequence[Doc]) -> bool:
        if self._batch_id is None and self._outputs is None:
            raise ValueError(Errors.E954)
        batch_id = self.get_batch_id(docs)
        if batch_id != self._batch_id:
            raise ValueError(Errors.E953.format(id1=batch_id, id2=self._batch_id))
        return True

    def clear(self) -> None:
        """Drop the stored batch (frees its memory)."""
        self._batch_id = None
        self._outputs = None
        self._backprop = None

    def backprop_and_clear(self, d_outputs: List[XLMRGrad]) -> List[Doc]:
        """Send the gradient upstream once and drop the stored batch."""
        backprop = self._backprop
        self.clear()
        return backprop(d_outputs) if backprop is not None else []


def _listener_forward(model: XLMRListener, docs: List[Doc], is_train: bool
                      ) -> Tuple[List[XLMRDocData], Callable[[List[XLMRGrad]], List[Doc]]]:
    if is_train and model._batch_id is not None:
        model.verify_inputs(docs)
        assert model._outputs is not None
        return model._outputs, model.backprop_and_clear
    outputs = []
    for doc in docs:
        data = get_doc_data(doc)
        if data is None:
            if is_train:  # frozen or annotating upstream that did not run on this batch
                raise ValueError(Errors.E203.format(name="xlmrxl_transformer"))
            data = XLMRDocData.zeros(len(doc), model.get_dim("nO"), ops=model.ops)
        outputs.append(data)
    return outputs, _no_backprop


def _no_backprop(d_outputs: List[XLMRGrad]) -> List[Doc]:
    return []


def find_xlmr_listeners(model: Model, upstream_name: str) -> List[XLMRListener]:
    """The listeners in ``model`` that listen to a component called ``upstream_name``."""
    names = ("*", upstream_name)
    return [node for node in model.walk() if isinstance(node, XLMRListener) and node.upstream_name in names]


@registry.architectures("spacy-xlmrxl.Listener.v1")
def build_listener(upstream: str = "*", pooling: str = "mean") -> Model[List[Doc], List[Floats2d]]:
    """Token vectors from an upstream ``xlmrxl_transformer`` component (shared backbone)."""
    listener = XLMRListener(upstream)
    listener.attrs["pooling"] = pooling  # the upstream pools for it at inference
    model = chain(listener, doc_data_pooler(pooling))
    model.set_ref("transformer", listener)
    return model


@registry.architectures("spacy-xlmrxl.DocDataListener.v1")
def build_doc_data_listener(upstream: str = "*") -> Model[List[Doc], List[XLMRDocData]]:
    """The raw `XLMRDocData` of an upstream ``xlmrxl_transformer`` (for heads on ``<s>``)."""
    return XLMRListener(upstream)
