"""`LabelledPipe`: what ``xlmrxl_ner`` and ``xlmrxl_textcat`` share besides serialisation.

Owns the label bookkeeping (labels in ``cfg``, ``label_data``, ``add_label`` before the output
layer exists, the error for labels the data has but the component does not know) and the
``initialize`` flow: collect or take labels, size the output layer, apply the backbone settings
given to ``initialize`` (``checkpoint`` / ``preset`` / ``tokenizer``), initialise the model.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, List, Optional, Tuple

from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.training import Example, validate_get_examples

from ..backbone.nodes import set_backbone_source
from .backbone_pipe import BackbonePipe


class LabelledPipe(BackbonePipe, TrainablePipe):
    """Base of the labelled task pipes; subclasses define `labels_in` and may override
    `n_outputs`, `check_label` and ``min_labels``."""

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

    def n_outputs(self) -> int:
        return len(self.labels)

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
