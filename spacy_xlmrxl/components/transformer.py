"""``xlmrxl_transformer``: one XLM-R-XL backbone run per batch, shared by listening components.

Owns the `XLMRTransformer` pipe: ``predict`` runs ``spacy-xlmrxl.Transformer.v1`` and
``set_annotations`` stores an `XLMRDocData` on ``doc._.xlmrxl``; ``update`` hands the batch
output and a backprop callback to every `XLMRListener` found in downstream components (the
last one backpropagates the summed gradient and steps the optimizer, as spaCy's ``tok2vec``
does); ``initialize`` loads the weights (``checkpoint`` / ``preset`` / ``tokenizer`` may be
given there) and tells the listeners the hidden width.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, set_dropout_rate

from ..doc_data import GradAccumulator, XLMRDocData, XLMRGrad, set_doc_data
from ..listener import XLMRListener, find_xlmr_listeners
from ..models import set_backbone_source, transformer_config
from ..serialize import BackbonePipe

DEFAULT_TRANSFORMER_MODEL = Config().from_str(transformer_config("model"))["model"]


@Language.factory(
    "xlmrxl_transformer",
    assigns=["doc._.xlmrxl"],
    default_config={"model": DEFAULT_TRANSFORMER_MODEL},
)
def make_transformer(nlp: Language, name: str, model: Model[List[Doc], List[XLMRDocData]]) -> "XLMRTransformer":
    """The shared backbone; components use ``spacy-xlmrxl.Listener.v1`` to read it."""
    return XLMRTransformer(nlp.vocab, model, name=name)


class XLMRTransformer(BackbonePipe, TrainablePipe):
    """Runs the backbone once per batch; see the module docstring."""

    def __init__(self, vocab: Vocab, model: Model, name: str = "xlmrxl_transformer") -> None:
        self.vocab = vocab
        self.model = model
        self.name = name
        self.listener_map: Dict[str, List[XLMRListener]] = {}
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
            return True
        return False

    def find_listeners(self, component: object) -> None:
        """Register the `XLMRListener` layers of ``component`` that listen to this pipe."""
        model = getattr(component, "model", None)
        if isinstance(model, Model):
            for listener in find_xlmr_listeners(model, self.name):
                self.add_listener(listener, component.name)  # type: ignore[attr-defined]

    # -- prediction
    def predict(self, docs: Iterable[Doc]) -> List[XLMRDocData]:
        docs = list(docs)
        return self.model.predict(docs) if docs else []

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
