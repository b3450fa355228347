"""``spacy-xlmrxl.Transformer.v2``/``v1``: Model[List[Doc], List[XLMRDocData]] around `XLMRobertaXLModel`.

Tokenises each doc, aligns pieces to tokens, cuts long docs into piece windows, runs
length-sorted window batches (`spacy_xlmrxl.ml.windows`), recombines overlaps; backprop goes
into torch. Inference (`predict_doc_data`) recombines and pools batch by batch, keeping per doc
only the token vectors asked for (and the piece states only when asked). The torch module is
built (and its weights loaded) in the model's ``init``, i.e. in ``nlp.initialize``, never at
``add_pipe``. The backbone settings are a ``spacy-xlmrxl.Backbone.v1`` block
(`spacy_xlmrxl.backbone.settings`); ``Transformer.v1`` takes them as arguments, as configs
written before that block do. Also owns the default config block (`transformer_model_config`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model

from ..backbone.devices import to_torch, to_xp
from ..backbone.nodes import backbone_shim, build_backbone, get_tokenizer
from ..backbone.settings import BackboneSettings, default_model_config
from .alignment import POOLING_MODES, StreamingPooler, align_tokens_to_pieces, pool_pieces
from .doc_data import XLMRDocData, XLMRGrad
from .windows import (
    AtLeastOneWindow,
    StreamingRecombiner,
    WindowMaker,
    WindowPlan,
    batch_windows,
    make_strided_windows,
    recombine,
    strided_windows_config,
)

TRANSFORMER_NAME = "xlmrxl-transformer"


# --------------------------------------------------------------------------- transformer
@registry.architectures("spacy-xlmrxl.Transformer.v2")
def build_transformer_v2(backbone: BackboneSettings, windows: Optional[WindowMaker] = None
                         ) -> Model[List[Doc], List[XLMRDocData]]:
    """The XLM-R-XL backbone as a thinc layer.

    backbone: the ``spacy-xlmrxl.Backbone.v1`` settings (checkpoint or preset, tokenizer,
    max_batch_pieces, dtype, precision, freezing, quantize, seed; see `BackboneSettings`);
    windows: ``(n_pieces) -> [(start, end)]`` piece windows (``spacy-xlmrxl.strided_windows.v1``).
    """
    shim = backbone.shim(backbone_class(), model_kwargs={"add_pooling_layer": False})
    return Model(
        TRANSFORMER_NAME,
        _transformer_forward,
        init=_transformer_init,
        dims={"nO": None},
        shims=[shim],
        attrs={
            "source": backbone.source(),
            "windows": windows if windows is not None else make_strided_windows(),
            "max_batch_pieces": backbone.max_batch_pieces,
            "tokenizer": None,
            "tokenizer_model": None,
            "replace_listener_cfg": _replace_listener_cfg,
        },
    )


def _replace_listener_cfg(transformer_cfg: Dict[str, Any], listener_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """For ``nlp.replace_listeners``: the config that replaces a listener block (a
    ``Listener.v1`` becomes ``TokenVectors.v1`` around a copy of the transformer)."""
    if listener_cfg.get("@architectures") == "spacy-xlmrxl.Listener.v1":
        return {"@architectures": "spacy-xlmrxl.TokenVectors.v1", "pooling": listener_cfg.get("pooling", "mean"),
                "transformer": transformer_cfg}
    return transformer_cfg


def transformer_model_config() -> Dict[str, Any]:
    """The default ``spacy-xlmrxl.Transformer.v2`` block (components put it under ``model``,
    ``model.tok2vec.transformer``, ...)."""
    return default_model_config("spacy-xlmrxl.Transformer.v2", windows=strided_windows_config())


def backbone_class() -> Any:
    from modeling.model import XLMRobertaXLModel

    return XLMRobertaXLModel


def _transformer_init(model: Model, X: Optional[List[Doc]] = None, Y: Any = None) -> None:
    build_backbone(model, backbone_class(), model_kwargs={"add_pooling_layer": False})


def is_transformer_layer(model: Model) -> bool:
    """Whether ``model`` is a ``spacy-xlmrxl.Transformer.v1`` layer (see `predict_doc_data`)."""
    return getattr(model, "_func", None) is _transformer_forward


def predict_doc_data(model: Model, docs: Sequence[Doc], *, pooling: Sequence[str] = (),
                     piece_states: bool = True) -> List[XLMRDocData]:
    """Inference of a ``Transformer.v1`` layer with memory bounded by the window batch.

    The window batches run one at a time; each batch's output is recombined
    (`StreamingRecombiner`) and pooled per spaCy token (`StreamingPooler`, for each mode in
    ``pooling``, into ``XLMRDocData.tokvecs``) as soon as the pieces it completes are final,
    then released. ``piece_states``: also keep every piece's recombined state (``hidden``,
    n_pieces x H per doc); otherwise ``hidden`` is None. Values are bit-identical to
    ``begin_update`` followed by ``pool_pieces``. Another layer: its ``predict``, then pooled.
    """
    docs = list(docs)
    for mode in pooling:
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
    if not is_transformer_layer(model):
        return _predict_other_layer(model, docs, pooling=pooling, piece_states=piece_states)
    shim = backbone_shim(model)
    piece_ids, offsets, plan = transformer_call_plan(model, docs, lazy=True)
    aligns = [align_tokens_to_pieces(doc, spans) for doc, spans in zip(docs, offsets)]
    streams = _DocStreams(model.ops, plan, aligns, width=model.get_dim("nO"), pooling=pooling,
                          piece_states=piece_states)
    device = shim.device
    with shim.run(False):
        for b, batch in enumerate(plan.batches):
            input_ids, attention_mask = plan.inputs(b)
            out = shim.module(input_ids=torch.from_numpy(input_ids).to(device),
                              attention_mask=torch.from_numpy(attention_mask).to(device),
                              skip_padding=True).last_hidden_state
            del input_ids, attention_mask
            streams.add(batch, to_xp(out, model.ops))
            del out
    return streams.results(piece_ids, offsets)


def _predict_other_layer(model: Model, docs: List[Doc], *, pooling: Sequence[str],
                         piece_states: bool) -> List[XLMRDocData]:
    """`predict_doc_data` of a layer that is not a ``Transformer.v1``: its ``predict``, pooled."""
    outputs = model.predict(docs)
    for data in outputs:
        if data.hidden is not None:
            data.tokvecs.update({m: pool_pieces(model.ops, data.hidden, data.align, mode=m)[0] for m in pooling})
            if not piece_states:
                data.hidden = None
    return outputs


class _DocStreams:
    """What `predict_doc_data` builds per doc while the window batches come: the recombiner,
    the pooler, the piece states (only with ``piece_states``) and the ``<s>`` state per window."""

    def __init__(self, ops: Any, plan: WindowPlan, aligns: List[Any], *, width: int, pooling: Sequence[str],
                 piece_states: bool) -> None:
        self.plan = plan
        self.aligns = aligns
        n_docs = len(plan.n_pieces)
        self.recombiners = [StreamingRecombiner(plan.doc_windows[d], plan.n_pieces[d]) for d in range(n_docs)]
        self.poolers = [StreamingPooler(ops, aligns[d], plan.n_pieces[d], width, pooling) if pooling else None
                        for d in range(n_docs)]
        self.hiddens = [ops.alloc2f(plan.n_pieces[d], width) if piece_states else None for d in range(n_docs)]
        self.cls_states = [ops.alloc2f(len(w), width) for w in plan.doc_windows]

    def add(self, batch: Any, array: Any) -> None:
        """Take the (n_rows, seq_len, H) output of one of the plan's batches."""
        for row, (span, position) in enumerate(zip(batch.rows, batch.positions)):
            d, window = span.doc, int(self.plan.window_index[position])
            self.cls_states[d][window] = array[row, 0]
            block = self.recombiners[d].add(window, array[row, 1 : 1 + span.end - span.start])
            if block is None:
                continue
            start, rows = block
            if self.hiddens[d] is not None:
                self.hiddens[d][start : start + rows.shape[0]] = rows
            if self.poolers[d] is not None:
                self.poolers[d].add(start, rows)

    def results(self, piece_ids: List[Any], offsets: List[Any]) -> List[XLMRDocData]:
        results = []
        for d, pooler in enumerate(self.poolers):
            assert self.recombiners[d].finished and (pooler is None or pooler.finished)
            results.append(XLMRDocData(piece_ids=piece_ids[d], offsets=offsets[d], align=self.aligns[d],
                                       windows=list(self.plan.doc_windows[d]), hidden=self.hiddens[d],
                                       cls=self.cls_states[d], tokvecs=pooler.outputs if pooler is not None else {}))
        return results


def no_doc_grads(d_outputs: List[XLMRGrad]) -> List[Doc]:
    return []


def transformer_call_plan(model: Model, docs: Sequence[Doc], *, lazy: bool = False) -> Tuple[List[Any], List[Any], WindowPlan]:
    """``(piece_ids, offsets, plan)`` of a forward of this ``Transformer.v1`` layer: one backbone
    call per ``plan.batches`` entry (FSDP ranks use it to agree on the count). ``lazy``: the
    batches' inputs are built one at a time by ``plan.inputs(b)`` (inference)."""
    tokenizer = get_tokenizer(model)
    pieces = tokenizer.encode_arrays([doc.text for doc in docs])  # int32 arrays, memory bounded per chunk
    piece_ids, offsets = [ids for ids, _ in pieces], [spans for _, spans in pieces]
    plan = batch_windows(piece_ids, AtLeastOneWindow(model.attrs["windows"]),
                         max_batch_pieces=model.attrs["max_batch_pieces"],
                         bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, lazy=lazy)
    return piece_ids, offsets, plan


def _transformer_forward(model: Model, docs: List[Doc], is_train: bool
                         ) -> Tuple[List[XLMRDocData], Callable[[List[XLMRGrad]], List[Doc]]]:
    if not is_train:  # window batch by window batch, every piece state kept (see predict_doc_data)
        return predict_doc_data(model, docs), no_doc_grads
    shim = backbone_shim(model)
    ops = model.ops
    piece_ids, offsets, plan = transformer_call_plan(model, docs)
    device = shim.device
    outputs: List[torch.Tensor] = []
    with shim.run(is_train) as tracking:
        for batch in plan.batches:
            out = shim.module(input_ids=torch.from_numpy(batch.input_ids).to(device),
                              attention_mask=torch.from_numpy(batch.attention_mask).to(device), skip_padding=True)
            outputs.append(out.last_hidden_state)
    width = model.get_dim("nO")
    arrays = [to_xp(out, ops) for out in outputs]
    window_outputs = plan.split_outputs(arrays)
    cls_rows = _cls_rows(plan, arrays)
    results: List[XLMRDocData] = []
    recombine_bps = []
    for d, doc in enumerate(docs):
        hidden, bp = recombine(ops, window_outputs[d], plan.doc_windows[d], plan.n_pieces[d], width=width)
        recombine_bps.append(bp)
        cls = ops.xp.stack(cls_rows[d]) if cls_rows[d] else ops.alloc2f(0, width)
        results.append(XLMRDocData(piece_ids=piece_ids[d], offsets=offsets[d],
                                   align=align_tokens_to_pieces(doc, offsets[d]),
                                   windows=list(plan.doc_windows[d]), hidden=hidden, cls=cls))

    def backprop(d_outputs: List[XLMRGrad]) -> List[Doc]:
        if not tracking:
            return []
        window_grads = []
        for d, grad in enumerate(d_outputs):
            if grad.hidden is not None:
                window_grads.append(recombine_bps[d](grad.hidden))
            else:
                window_grads.append([ops.alloc2f(e - s, width) for s, e in plan.doc_windows[d]])
        merged = plan.merge_gradients(window_grads)
        _add_cls_grads(plan, merged, [g.cls for g in d_outputs])
        shim.backward(outputs, [to_torch(g, device=device) for g in merged])
        return []

    return results, backprop


def _cls_rows(plan: WindowPlan, arrays: Sequence[Any]) -> List[List[Any]]:
    """Per doc, the ``<s>`` state of each of its windows, in window order."""
    return [[arrays[b][row, 0] for b, row in plan.doc_slots(d).tolist()] for d in range(len(plan.n_pieces))]


def _add_cls_grads(plan: WindowPlan, merged: List[Any], d_cls: Sequence[Optional[Any]]) -> None:
    """Add each doc's (n_windows, H) ``<s>`` gradient at position 0 of its windows' rows."""
    for d, cls_grad in enumerate(d_cls):
        if cls_grad is not None:
            for window, (b, row) in enumerate(plan.doc_slots(d).tolist()):
                merged[b][row, 0] += cls_grad[window]
