"""The v1 architectures, which take the backbone settings as their own arguments.

``spacy-xlmrxl.Transformer.v1``, ``QAModel.v1`` and ``MaskedLM.v1`` are what configs and pipelines
saved before ``spacy-xlmrxl.Backbone.v1`` name; they keep loading unchanged, as spaCy keeps old
versions of its architectures. Each is its v2 architecture called with the `BackboneSettings`
built from its arguments. Their signatures (names, order, defaults, types: what spaCy validates
a config block against) are declared once here, from `V1_ARGUMENTS`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from spacy.util import registry

from ..backbone.settings import BackboneSettings
from ..backbone.source import DEFAULT_CHECKPOINT
from .task_models import build_masked_lm_v2, build_qa_model_v2
from .transformer import build_transformer_v2
from .windows import WindowMaker

#: Every v1 argument: (type, default). The defaults are the v1 ones (they equal Backbone.v1's).
V1_ARGUMENTS: Dict[str, Tuple[Any, Any]] = {
    "checkpoint": (Optional[str], DEFAULT_CHECKPOINT),
    "preset": (Optional[str], None),
    "tokenizer": (Optional[str], None),
    "windows": (Optional[WindowMaker], None),
    "max_batch_pieces": (int, 4096),
    "dtype": (Optional[str], None),
    "mixed_precision": (Union[str, bool, None], None),
    "grad_checkpointing": (bool, False),
    "freeze": (bool, False),
    "seed": (Optional[int], None),
    "quantize": (Optional[str], None),
    "freeze_word_embeddings": (bool, False),
}
_COMMON = ("checkpoint", "preset", "tokenizer")
_RUNNING = ("max_batch_pieces", "dtype", "mixed_precision", "grad_checkpointing", "freeze")
_LAST = ("quantize", "freeze_word_embeddings")


def _v1(name: str, build_v2: Callable[..., Any], arguments: Sequence[str]) -> Callable[..., Any]:
    """The v1 builder of ``build_v2`` with ``arguments`` (in that order) as its signature."""
    takes_windows = "windows" in arguments

    def build(**values: Any) -> Any:
        settings = BackboneSettings.from_arguments(values)
        return build_v2(settings, values.get("windows")) if takes_windows else build_v2(settings)

    build.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=V1_ARGUMENTS[arg][1],
                          annotation=V1_ARGUMENTS[arg][0]) for arg in arguments])
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"``{build_v2.__name__}`` with the backbone settings as arguments (configs written "
                     "before ``spacy-xlmrxl.Backbone.v1``; these defaults are theirs): the same layer.")
    return build


build_transformer = registry.architectures("spacy-xlmrxl.Transformer.v1")(
    _v1("build_transformer", build_transformer_v2, (*_COMMON, "windows", *_RUNNING, *_LAST)))
build_qa_model = registry.architectures("spacy-xlmrxl.QAModel.v1")(
    _v1("build_qa_model", build_qa_model_v2, (*_COMMON, *_RUNNING, "seed", *_LAST)))
build_masked_lm = registry.architectures("spacy-xlmrxl.MaskedLM.v1")(
    _v1("build_masked_lm", build_masked_lm_v2, (*_COMMON, "windows", *_RUNNING, "seed", *_LAST)))
