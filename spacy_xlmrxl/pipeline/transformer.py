"""``xlmrxl_transformer``: one XLM-R-XL backbone run per batch, shared by listening components.

Owns the `XLMRTransformer` pipe: ``predict`` runs ``spacy-xlmrxl.Transformer.v2`` and
``set_annotations`` stores an `XLMRDocData` on ``doc._.xlmrxl``; ``update`` hands the batch
output and a backprop callback to every `XLMRListener` found in downstream components (the
last one backpropagates the summed gradient and steps the optimizer, as spaCy's ``tok2vec``
does); ``initialize`` loads the weights (``checkpoint`` / ``preset`` / ``tokenizer`` may be
given there) and tells the listeners the hidden width.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer, set_dropout_rate

from ..backbone.nodes import set_backbone_source
from ..ml.doc_data import GradAccumulator, XLMRDocData, XLMRGrad, set_doc_data
from ..ml.listener import XLMRListener, find_xlmr_listeners
from ..ml.transformer import predict_doc_data, transformer_model_config
from .backbone_pipe import BackbonePipe

DEFAULT_TRANSFORMER_MODEL = transformer_model_config()


@Language.factory(
    "xlmrxl_transformer",
    assigns=["doc._.xlmrxl"],
    default_config={"model": DEFAULT_TRANSFORMER_MODEL, "piece_states": None},
)
def make_transformer(nlp: Language, name: str, model: Model[List[Doc], List[XLMRDocData]],
                     piece_states: Optional[bool] = None) -> "XLMRTransformer":
    """The shared backbone; components use ``spacy-xlmrxl.Listener.v1`` to read it.

    piece_states: keep every piece's state on ``doc._.xlmrxl.hidden`` after inference
    (n_pieces x H floats per doc). null (default): only when no listening component is linked
    (a bare transformer, read through ``doc._.xlmrxl``); with listeners, a doc keeps just the
    token vectors they pool (``doc._.xlmrxl.tokvecs``) and the ``<s>`` states.
    """
    if piece_states is not None and not isinstance(piece_states, bool):
        raise ValueError(f"piece_states must be true, false or null, got {piece_states!r}")
    return XLMRTransformer(nlp.vocab, model, name=name, piece_states=piece_states)


class XLMRTransformer(BackbonePipe, TrainablePipe):
    """Runs the backbone once per batch; see the module docstring."""

    shares_backbone = True

    def __init__(self, vocab: Vocab, model: Model, name: str = "xlmrxl_transformer", *,
                 piece_states: Optional[bool] = None) -> None:
        self.vocab = vocab
        self.model = model
        self.name = name
        self.listener_map: Dict[str, List[XLMRListener]] = {}
        self.listener_pooling: Dict[str, List[str]] = {}  # component -> pooling modes it reads
        self.piece_states = piece_states
        self.cfg: Dict[str, object] = {}

    # -- listeners (the protocol of spaCy's Tok2Vec)
    @property
    def listeners(self) -> List[XLMRListener]:
        return [m for c in self.listening_components for m in self.listener_map[c]]

    @property
    def listening_components(self) -> List[str]:
        return list(self.listener_map.keys())

    def add_listener(self, listener: XLMRListener, component_name: str) -> None:
        self.listener_map.setdefault(component_name, [])
        if listener not in self.listener_map[component_name]:
            self.listener_map[component_name].append(listener)
        if self.model.has_dim("nO") and listener.has_dim("nO") is None:
            listener.set_dim("nO", self.model.get_dim("nO"))

    def remove_listener(self, listener: XLMRListener, component_name: str) -> bool:
        if listener in self.listener_map.get(component_name, []):
            self.listener_map[component_name].remove(listener)
            if not self.listener_map[component_name]:
                del self.listener_map[component_name]
                self.listener_pooling.pop(component_name, None)
            return True
        return False

    def find_listeners(self, component: object) -> None:
        """Register the `XLMRListener` layers of ``component`` that listen to this pipe."""
        model = getattr(component, "model", None)
        if isinstance(model, Model):
            listeners = find_xlmr_listeners(model, self.name)
            for listener in listeners:
                self.add_listener(listener, component.name)  # type: ignore[attr-defined]
            if listeners:  # the poolers next to them (a hand-built chain has no "pooling" attr)
                modes = [n.attrs["pooling"] for n in model.walk() if n.name == "xlmrxl-pooler"]
                self.listener_pooling[component.name] = sorted(set(modes))  # type: ignore[attr-defined]

    def inference_outputs(self) -> Tuple[Tuple[str, ...], bool]:
        """(pooling modes, keep piece states) of ``predict``: the modes the linked listeners
        pool with, and ``piece_states`` (null: only without any listener)."""
        modes = {listener.attrs.get("pooling") for listener in self.listeners}
        for component_modes in self.listener_pooling.values():
            modes.update(component_modes)
        modes.discard(None)
        keep = self.piece_states if self.piece_states is not None else not self.listeners
        return tuple(sorted(modes)), bool(keep)

    # -- prediction
    def predict(self, docs: Iterable[Doc]) -> List[XLMRDocData]:
        """`XLMRDocData` per doc, computed window batch by window batch: see `inference_outputs`
        for what it keeps (``spacy_xlmrxl.models.predict_doc_data``)."""
        docs = list(docs)
        if not docs:
            return []
        pooling, piece_states = self.inference_outputs()
        return predict_doc_data(self.model, docs, pooling=pooling, piece_states=piece_states)

    def set_annotations(self, docs: Sequence[Doc], outputs: Sequence[XLMRDocData]) -> None:
        set_doc_data(docs, outputs)

    # -- training
    def update(self, examples: Iterable[Example], *, drop: float = 0.0, sgd: Optional[Optimizer] = None,
               losses: Optional[Dict[str, float]] = None) -> Dict[str, float]:
        """Run the backbone and pass its output to the listeners; they backpropagate later."""
        losses = {} if losses is None else losses
        examples = list(examples)
        validate_examples(examples, "XLMRTransformer.update")
        losses.setdefault(self.name, 0.0)
        if not self.listeners:
            return losses
        docs = [eg.predicted for eg in examples]
        set_dropout_rate(self.model, drop)
        outputs, backprop_model = self.model.begin_update(docs)
        accumulator = GradAccumulator()

        def accumulate_gradient(d_outputs: List[XLMRGrad]) -> List[Doc]:
            losses[self.name] += accumulator.add(d_outputs)
            return []

        def backprop(d_outputs: List[XLMRGrad]) -> List[Doc]:
            accumulate_gradient(d_outputs)
            backprop_model(accumulator.pop())
            if sgd not in (None, False):
                self.finish_update(sgd)
            return []

        batch_id = XLMRListener.get_batch_id(docs)
        for listener in self.listeners[:-1]:
            listener.receive(batch_id, outputs, accumulate_gradient)
        self.listeners[-1].receive(batch_id, outputs, backprop)
        return losses

    def get_loss(self, examples: Iterable[Example], scores: object) -> None:
        return None

    def initialize(self, get_examples: Callable[[], Iterable[Example]], *, nlp: Optional[Language] = None,
                   checkpoint: Optional[str] = None, preset: Optional[str] = None,
                   tokenizer: Optional[str] = None) -> None:
        """Load the backbone. ``checkpoint`` / ``preset`` / ``tokenizer`` override the model
        config (e.g. from ``[initialize.components.<name>]``)."""
        validate_get_examples(get_examples, "XLMRTransformer.initialize")
        set_backbone_source(self.model, checkpoint=checkpoint, preset=preset, tokenizer=tokenizer)
        self.model.initialize(X=[eg.predicted for eg in islice(get_examples(), 2)])
        if nlp is not None:
            for name, component in nlp.pipeline:
                if component is not self:
                    self.find_listeners(component)
        self._after_load()

    def _after_load(self) -> None:
        if self.model.has_dim("nO"):
            for listener in self.listeners:
                listener.set_dim("nO", self.model.get_dim("nO"), force=True)

    def add_label(self, label: str) -> int:
        raise NotImplementedError("xlmrxl_transformer has no labels")
