"""The training step the components share, and its guard against a non-finite loss.

Owns `update_step` (forward, loss, backprop, optimizer step for components whose loss needs the
model input they built, not just the docs: QA and fill-mask), `update_built_input` (the whole
``update`` of such a component around it) and `check_finite_loss` /
`NonFiniteLossError`: every component raises before backprop when its loss is NaN/inf (nothing
is trained on such a batch), naming the batch's docs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy
from spacy.training import Example, validate_examples
from thinc.api import Optimizer, set_dropout_rate


class NonFiniteLossError(ValueError):
    """A component's loss is NaN or infinite; the batch was not trained on."""


def check_finite_loss(component: str, loss: float, examples: Sequence[Any]) -> None:
    """Raise `NonFiniteLossError` naming ``component`` and the batch when ``loss`` is NaN/inf."""
    if numpy.isfinite(loss):
        return
    texts = [eg.predicted.text for eg in examples]
    shown = ", ".join(repr(text[:60]) for text in texts[:3]) + (f" and {len(texts) - 3} more" if len(texts) > 3 else "")
    raise NonFiniteLossError(
        f"[{component}] the loss is {loss} (not finite) on a batch of {len(texts)} doc(s): {shown}; the update "
        "was not applied. Check the weights (NaN/inf in a parameter), the learning rate and mixed precision"
    )


def update_step(pipe: Any, inputs: Any, get_loss: Callable[[Any], Tuple[float, Any]], *, drop: float,
                sgd: Optional[Optimizer], examples: Sequence[Any] = ()) -> float:
    """Forward ``inputs`` through ``pipe.model``, backprop ``get_loss(outputs)``'s gradient, step
    ``sgd`` (when given) and return the loss; a NaN/inf loss raises `NonFiniteLossError`
    (naming ``examples``) before anything is backpropagated."""
    set_dropout_rate(pipe.model, drop)
    outputs, backprop = pipe.model.begin_update(inputs)
    loss, d_outputs = get_loss(outputs)
    check_finite_loss(pipe.name, loss, examples)
    backprop(d_outputs)
    if sgd not in (None, False):
        pipe.finish_update(sgd)
    return loss


#: What a component's ``prepare`` gives `update_built_input`: the model input and the loss
#: function of the model output, or None when the batch has nothing to train on.
Prepared = Optional[Tuple[Any, Callable[[Any], Tuple[float, Any]]]]


def update_built_input(pipe: Any, examples: Iterable[Example], prepare: Callable[[Sequence[Example]], Prepared], *,
                       drop: float, sgd: Optional[Optimizer], losses: Optional[Dict[str, float]]) -> Dict[str, float]:
    """``pipe.update`` for a component whose model input is built from the examples:
    ``prepare(examples)`` gives ``(inputs, get_loss)`` (None: nothing to train on, no model
    call); `update_step` runs it, and its loss is added to ``losses[pipe.name]``."""
    losses = {} if losses is None else losses
    losses.setdefault(pipe.name, 0.0)
    examples = list(examples)
    validate_examples(examples, f"{type(pipe).__name__}.update")
    prepared = prepare(examples)
    if prepared is not None:
        inputs, get_loss = prepared
        losses[pipe.name] += update_step(pipe, inputs, get_loss, drop=drop, sgd=sgd, examples=examples)
    return losses
