"""Thinc architectures of the task models that own a whole `modeling` head model: QA and masked LM.

Owns
- ``spacy-xlmrxl.QAModel.v1``: Model[Sequence[WindowBatch], List[Floats3d]] around the torch
  `XLMRobertaXLForQuestionAnswering`: for each padded batch of ``<s> Q </s></s> C </s>``
  sequences, the (rows, seq_len, 2) start (``[..., 0]``) and end (``[..., 1]``) logits;
- ``spacy-xlmrxl.MaskedLM.v1``: Model[MLMInput, Floats2d] around the torch
  `XLMRobertaXLForMaskedLM`: runs the backbone on padded window batches and the LM head only at
  the requested positions, giving (n_positions, vocab_size) logits (the LM head is never applied
  to the other positions: with a 250k vocabulary that would dominate time and memory);
- `MLMInput`, the masked-LM model's input, and `update_step`, the training step both
  components share (their losses need the model input they built, not just the docs);
- `check_finite_loss` / `NonFiniteLossError`: every component's guard against a NaN/inf loss,
  raised before backprop (nothing is trained on such a batch) and naming the batch's docs;
- `export_task_model`: such a component's torch model written as the HF directory it already
  is (``XLMRobertaXLForQuestionAnswering`` / ``...ForMaskedLM``: config, safetensors,
  tokenizer), loadable by HF transformers and by any component's ``checkpoint`` setting.

Both are built like ``spacy-xlmrxl.Transformer.v1`` (`spacy_xlmrxl.models`): the backbone
settings are arguments, the torch module is created (weights loaded) in the model's ``init``,
i.e. in ``nlp.initialize``, and lives in a `TorchModuleShim`; the tokenizer model travels in the
layer's attrs. Backprop takes the gradient w.r.t. the logits.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import numpy
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
