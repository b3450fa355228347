"""`LabelledPipe`: what ``xlmrxl_ner`` and ``xlmrxl_textcat`` share besides serialisation.

Owns the label bookkeeping (labels in ``cfg``, ``label_data``, ``add_label`` before the output
layer exists, the error for labels the data has but the component does not know, the check on
loading that the saved ``cfg`` labels fit the saved output layer) and the ``initialize`` flow: collect or take labels, size the output layer, apply the backbone settings
given to ``initialize`` (``checkpoint`` / ``preset`` / ``tokenizer``), initialise the model.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.training import Example, validate_get_examples

from ..backbone.nodes import set_backbone_source
from .backbone_pipe import BackbonePipe, ModelMsg
from .saving import PipelineFileError


class LabelledPipe(BackbonePipe, TrainablePipe):
    """Base of the labelled task pipes; subclasses define `labels_in` and may override
    `outputs_for`, `check_label` and ``min_labels``."""

    min_labels = 1

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"])  # type: ignore[arg-type]

    @property
    def label_data(self) -> List[str]:
        return list(self.labels)

    def labels_in(self, examples: Iterable[Example]) -> Iterable[str]:
        """The labels the gold annotation of ``examples`` uses."""
        raise NotImplementedError

    def outputs_for(self, cfg: Dict[str, Any]) -> int:
        """The output layer's width for the labels (and settings) of ``cfg``."""
        return len(cfg["labels"])

    def n_outputs(self) -> int:
        return self.outputs_for(self.cfg)

    def _check_loaded(self, cfg: Dict[str, Any], model_msg: Optional[ModelMsg], *, origin: str) -> None:
        """The labels of a loaded ``cfg`` must give the width of the loaded output layer: else a
        class would be silently dropped or missing, or decoding would fail on the first doc."""
        if model_msg is not None:
            index = model_msg["nodes"][0]["refs"].get("output_layer")
            width = None if index is None else model_msg["nodes"][index]["dims"].get("nO")
        else:
            layer = self.model.get_ref("output_layer")
            width = layer.get_dim("nO") if layer.has_dim("nO") else None
        if width is None:
            return  # saved before initialisation: nothing to compare
        expected = self.outputs_for(cfg)
        if expected != width:
            raise PipelineFileError(
                f"{origin}: its labels {list(cfg['labels'])} need {expected} outputs"
                f"{self._outputs_detail(cfg)}, but the saved output layer has {width}: cfg and model "
                "do not belong together (edited, or from another save); restore the cfg the model was "
                "saved with")

    def _outputs_detail(self, cfg: Dict[str, Any]) -> str:
        return ""

    def check_label(self, label: str) -> None:
        if not isinstance(label, str) or not label:
            raise ValueError(f"[{self.name}] invalid label {label!r}")

    def add_label(self, label: str) -> int:
        self.check_label(label)
        if label in self.labels:
            return 0
        if self.model.get_ref("output_layer").has_param("W"):
            raise ValueError(f"[{self.name}] cannot add label {label!r} after initialization: the output "
                             "layer is already built; give all labels before nlp.initialize()")
        self.cfg["labels"] = list(self.labels) + [label]
        self._after_load()
        return 1

    def unknown_label(self, label: str) -> ValueError:
        return ValueError(
            f"[{self.name}] the training data has the label {label!r}, which this component does not know "
            f"(labels: {list(self.labels)}); give every label before nlp.initialize(), e.g. in "
            f"[initialize.components.{self.name}.labels]"
        )

    def initialize(self, get_examples: Callable[[], Iterable[Example]], *, nlp: Optional[Language] = None,
                   labels: Optional[Iterable[str]] = None, checkpoint: Optional[str] = None,
                   preset: Optional[str] = None, tokenizer: Optional[str] = None) -> None:
        """Collect labels (or take ``labels``), size the output layer and load the backbone
        (``checkpoint`` / ``preset`` / ``tokenizer`` override the model config)."""
        validate_get_examples(get_examples, f"{type(self).__name__}.initialize")
        for label in sorted(set(self.labels_in(get_examples()))) if labels is None else labels:
            self.add_label(label)
        if len(self.labels) < self.min_labels:
            raise ValueError(f"[{self.name}] needs at least {self.min_labels} label(s), got {list(self.labels)}: "
                             f"the examples provide none; set [initialize.components.{self.name}.labels]")
        self.model.get_ref("output_layer").set_dim("nO", self.n_outputs(), force=True)
        set_backbone_source(self.model, checkpoint=checkpoint, preset=preset, tokenizer=tokenizer)
        self.model.initialize(X=[eg.predicted for eg in islice(get_examples(), 10)])
        self._after_load()
