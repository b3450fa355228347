"""Thinc architectures of the task models that own a whole `modeling` head model: QA and masked LM.

Owns
- ``spacy-xlmrxl.QAModel.v2``: Model[Sequence[WindowBatch], List[Floats3d]] around the torch
  `XLMRobertaXLForQuestionAnswering`: for each padded batch of ``<s> Q </s></s> C </s>``
  sequences, the (rows, seq_len, 2) start (``[..., 0]``) and end (``[..., 1]``) logits;
- ``spacy-xlmrxl.MaskedLM.v2``: Model[MLMInput, Floats2d] around the torch
  `XLMRobertaXLForMaskedLM`: runs the backbone on padded window batches and the LM head only at
  the requested positions, giving (n_positions, vocab_size) logits (the LM head is never applied
  to the other positions: with a 250k vocabulary that would dominate time and memory);
- `predict_masked_lm`: the masked-LM inference with memory bounded by a chunk of positions
  (`LOGIT_CHUNK` rows of vocabulary logits at a time, handed to a callback), for fill-mask;
- `MLMInput`, the masked-LM model's input.

Both are built like ``spacy-xlmrxl.Transformer.v2`` (`spacy_xlmrxl.ml.transformer`): the
backbone settings are a `BackboneSettings` block, the torch module is created (weights loaded)
in the model's ``init``, i.e. in ``nlp.initialize``, and lives in a `TorchModuleShim`; the
tokenizer model travels in the layer's attrs. Backprop takes the gradient w.r.t. the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.util import registry
from thinc.api import Model
from thinc.types import Floats2d, Floats3d

from ..backbone.devices import to_torch, to_xp
from ..backbone.nodes import backbone_shim, build_backbone
from ..backbone.settings import BackboneSettings
from .windows import WindowBatch, WindowMaker, make_strided_windows

QA_MODEL_NAME = "xlmrxl-qa"
MLM_MODEL_NAME = "xlmrxl-masked-lm"

#: Positions whose vocabulary logits `predict_masked_lm` computes at once, whatever the
#: number of masks.
LOGIT_CHUNK = 64


@dataclass
class MLMInput:
    """Input of ``spacy-xlmrxl.MaskedLM.v2`` (and v1).

    batches: padded ``input_ids`` / ``attention_mask`` (rows, seq_len) int64 batches (masked
    already, for training); positions: (n, 3) int64 ``(batch, row, column)`` of the positions
    whose vocabulary logits are wanted, in output order.
    """

    batches: Sequence[WindowBatch]
    positions: numpy.ndarray


def _task_model(name: str, forward: Callable, model_cls_name: str, backbone: BackboneSettings,
                **attrs: Any) -> Model:
    """A thinc layer owning a `modeling.heads` model ``model_cls_name`` (built in ``init``)."""
    return Model(
        name,
        forward,
        init=_task_init,
        dims={"nO": None},
        shims=[backbone.shim(head_class(model_cls_name))],
        attrs={"source": backbone.source(), "model_cls": model_cls_name, "max_batch_pieces": backbone.max_batch_pieces,
               "tokenizer": None, "tokenizer_model": None, **attrs},
    )


def head_class(name: str) -> Any:
    from modeling import heads

    return getattr(heads, name)


#: Config settings a task model needs whatever its checkpoint's config says: the QA head has
#: exactly the start and end outputs (``num_labels`` = 2), also when the checkpoint's config
#: is, say, a token classifier's with 9 labels and no ``qa_outputs`` weights (a fresh head).
_CONFIG_OVERRIDES: Dict[str, Dict[str, Any]] = {"XLMRobertaXLForQuestionAnswering": {"num_labels": 2}}


def _task_init(model: Model, X: Any = None, Y: Any = None) -> None:
    build_backbone(model, head_class(model.attrs["model_cls"]), config_overrides=_CONFIG_OVERRIDES.get(model.attrs["model_cls"]))


def _torch_inputs(batch: WindowBatch, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(numpy.ascontiguousarray(batch.input_ids)).to(device),
            torch.from_numpy(numpy.ascontiguousarray(batch.attention_mask)).to(device))


# --------------------------------------------------------------------------- question answering
@registry.architectures("spacy-xlmrxl.QAModel.v2")
def build_qa_model_v2(backbone: BackboneSettings) -> Model[Sequence[WindowBatch], List[Floats3d]]:
    """Extractive-QA start/end logits from `XLMRobertaXLForQuestionAnswering`.

    backbone: the ``spacy-xlmrxl.Backbone.v1`` settings (see `BackboneSettings`); its
    ``max_batch_pieces`` bounds the padded positions of one model call (the component packs the
    question/context features with it).
    """
    return _task_model(QA_MODEL_NAME, _qa_forward, "XLMRobertaXLForQuestionAnswering", backbone)


def _qa_forward(model: Model, batches: Sequence[WindowBatch], is_train: bool
                ) -> Tuple[List[Floats3d], Callable[[List[Floats3d]], Sequence[WindowBatch]]]:
    shim = backbone_shim(model)
    device = shim.device
    outputs: List[torch.Tensor] = []
    with shim.run(is_train) as tracking:
        for batch in batches:
            input_ids, attention_mask = _torch_inputs(batch, device)
            out = shim.module(input_ids=input_ids, attention_mask=attention_mask, skip_padding=True)
            outputs.append(torch.stack((out.start_logits, out.end_logits), dim=-1))
    arrays = [to_xp(out, model.ops) for out in outputs]

    def backprop(d_logits: List[Floats3d]) -> Sequence[WindowBatch]:
        if tracking:
            shim.backward(outputs, [to_torch(d, device=device) for d in d_logits])
        return batches

    return arrays, backprop


# --------------------------------------------------------------------------- masked LM
@registry.architectures("spacy-xlmrxl.MaskedLM.v2")
def build_masked_lm_v2(backbone: BackboneSettings, windows: Optional[WindowMaker] = None) -> Model[MLMInput, Floats2d]:
    """Vocabulary logits at chosen positions from `XLMRobertaXLForMaskedLM`.

    backbone: the ``spacy-xlmrxl.Backbone.v1`` settings (see `BackboneSettings`); ``windows``
    cuts long docs into piece windows (``spacy-xlmrxl.strided_windows.v1``, default 510/384).
    """
    return _task_model(MLM_MODEL_NAME, _mlm_forward, "XLMRobertaXLForMaskedLM", backbone,
                       windows=windows if windows is not None else make_strided_windows())


def _mlm_forward(model: Model, X: MLMInput, is_train: bool) -> Tuple[Floats2d, Callable[[Floats2d], MLMInput]]:
    shim = backbone_shim(model)
    positions = numpy.asarray(X.positions, dtype="int64").reshape(-1, 3)
    if positions.shape[0] == 0:  # nothing to predict: no model call at all
        vocab = int(shim.cfg.get("vocab_size", 0)) if shim.cfg else 0
        return model.ops.alloc2f(0, vocab), lambda dY: X
    device = shim.device
    wanted = sorted(set(positions[:, 0].tolist()))
    with shim.run(is_train) as tracking:
        module = shim.module
        gathered, order = [], []
        for b in wanted:
            rows = numpy.flatnonzero(positions[:, 0] == b)
            input_ids, attention_mask = _torch_inputs(X.batches[b], device)
            hidden = module.roberta(input_ids=input_ids, attention_mask=attention_mask, skip_padding=True).last_hidden_state
            index_rows = torch.from_numpy(positions[rows, 1]).to(device)
            index_cols = torch.from_numpy(positions[rows, 2]).to(device)
            gathered.append(hidden[index_rows, index_cols])
            order.append(rows)
        inverse = torch.from_numpy(numpy.argsort(numpy.concatenate(order), kind="stable")).to(device)
        logits = module.lm_head(torch.cat(gathered)[inverse])
    array = to_xp(logits, model.ops)

    def backprop(d_logits: Floats2d) -> MLMInput:
        if tracking:
            shim.backward([logits], [to_torch(d_logits, device=device)])
        return X

    return array, backprop


def predict_masked_lm(model: Model, X: MLMInput, consume: Callable[[numpy.ndarray, numpy.ndarray], None]) -> None:
    """Inference of a ``MaskedLM.v1`` layer with memory bounded by a chunk of positions.

    Calls ``consume(rows, logits)`` with ``logits`` the (len(rows), vocab_size) float32 numpy
    logits of ``X.positions[rows]``, at most `LOGIT_CHUNK` rows at a time; every position comes
    once. The backbone runs one batch at a time (only the batches holding a position), the LM
    head on that batch's positions chunk by chunk, so what exists at once is one batch's hidden
    states and one chunk's logits, whatever the number of positions (``model.predict`` gives the
    (n_positions, vocab_size) logits of all at once). Values as ``model.predict`` gives them, up
    to the float32 rounding of the LM head's matrix product over fewer rows.
    """
    shim = backbone_shim(model)
    positions = numpy.asarray(X.positions, dtype="int64").reshape(-1, 3)
    device = shim.device
    with shim.run(False):
        module = shim.module
        for b in sorted(set(positions[:, 0].tolist())):
            rows = numpy.flatnonzero(positions[:, 0] == b)
            input_ids, attention_mask = _torch_inputs(X.batches[b], device)
            hidden = module.roberta(input_ids=input_ids, attention_mask=attention_mask, skip_padding=True).last_hidden_state
            gathered = hidden[torch.from_numpy(positions[rows, 1]).to(device), torch.from_numpy(positions[rows, 2]).to(device)]
            del hidden, input_ids, attention_mask
            for start in range(0, len(rows), LOGIT_CHUNK):
                logits = module.lm_head(gathered[start : start + LOGIT_CHUNK])
                consume(rows[start : start + LOGIT_CHUNK], model.ops.to_numpy(to_xp(logits, model.ops)))
                del logits
