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

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model

from ..backbone.devices import to_torch, to_xp
from ..backbone.nodes import backbone_shim, build_backbone, get_tokenizer
from ..backbone.settings import BackboneSettings, default_model_config
from ..backbone.source import DEFAULT_CHECKPOINT
from .alignment import (
    POOLING_MODES,
    StreamingPooler,
    align_tokens_to_pieces,
    pool_pieces,
)
from .doc_data import XLMRDocData, XLMRGrad
from .encoding import encode_docs
from .windows import (
    StreamingRecombiner,
    WindowMaker,
    batch_windows,
    make_strided_windows,
    recombine,
    strided_windows_config,
)

TRANSFORMER_NAME = "xlmrxl-transformer"


# --------------------------------------------------------------------------- transformer
@registry.architectures("spacy-xlmrxl.Transformer.v1")
def build_transformer(
    checkpoint: Optional[str] = DEFAULT_CHECKPOINT,
    preset: Optional[str] = None,
    tokenizer: Optional[str] = None,
    windows: Optional[WindowMaker] = None,
    max_batch_pieces: int = 4096,
    dtype: Optional[str] = None,
    mixed_precision: Union[str, bool, None] = None,
    grad_checkpointing: bool = False,
    freeze: bool = False,
    quantize: Optional[str] = None,
    freeze_word_embeddings: bool = False,
) -> Model[List[Doc], List[XLMRDocData]]:
    """``Transformer.v2`` with the backbone settings as arguments (configs written before
    ``spacy-xlmrxl.Backbone.v1``; these defaults are theirs): the same layer."""
    return build_transformer_v2(BackboneSettings.from_arguments(locals()), windows)


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


class AtLeastOneWindow:
    """Window maker that gives a doc without pieces the window ``(0, 0)`` (``<s></s>``), so
    every doc has an ``<s>`` state (what HF gives for the empty text)."""

    def __init__(self, make_windows: WindowMaker) -> None:
        self.make_windows = make_windows

    def __call__(self, n_pieces: int) -> List[Tuple[int, int]]:
        return list(self.make_windows(n_pieces)) or [(0, 0)]


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
        outputs = model.predict(docs)
        for data in outputs:
            if data.hidden is not None:
                data.tokvecs.update({m: pool_pieces(model.ops, data.hidden, data.align, mode=m)[0] for m in pooling})
                if not piece_states:
                    data.hidden = None
        return outputs
    shim = backbone_shim(model)
    ops = model.ops
    piece_ids, offsets, plan = transformer_call_plan(model, docs, lazy=True)
    aligns = [align_tokens_to_pieces(doc, spans) for doc, spans in zip(docs, offsets)]
    width = model.get_dim("nO")
    window_index = plan.index_in_doc()
    recombiners = [StreamingRecombiner(plan.doc_windows[d], plan.n_pieces[d]) for d in range(len(docs))]
    poolers = [StreamingPooler(ops, aligns[d], plan.n_pieces[d], width, pooling) if pooling else None
               for d in range(len(docs))]
    hiddens = [ops.alloc2f(plan.n_pieces[d], width) if piece_states else None for d in range(len(docs))]
    cls_states = [ops.alloc2f(len(w), width) for w in plan.doc_windows]
    device = shim.device
    with shim.run(False):
        for b, batch in enumerate(plan.batches):
            input_ids, attention_mask = plan.inputs(b)
            out = shim.module(input_ids=torch.from_numpy(input_ids).to(device),
                              attention_mask=torch.from_numpy(attention_mask).to(device),
                              skip_padding=True).last_hidden_state
            del input_ids, attention_mask
            array = to_xp(out, ops)
            for row, (span, position) in enumerate(zip(batch.rows, batch.positions)):
                d = span.doc
                cls_states[d][window_index[int(position)]] = array[row, 0]
                block = recombiners[d].add(window_index[int(position)], array[row, 1 : 1 + span.end - span.start])
                if block is not None:
                    start, rows = block
                    if hiddens[d] is not None:
                        hiddens[d][start : start + rows.shape[0]] = rows
                    if poolers[d] is not None:
                        poolers[d].add(start, rows)
            del out, array, block
    results = []
    for d in range(len(docs)):
        assert recombiners[d].finished and (poolers[d] is None or poolers[d].finished)
        results.append(XLMRDocData(piece_ids=piece_ids[d], offsets=offsets[d], align=aligns[d],
                                   windows=list(plan.doc_windows[d]), hidden=hiddens[d],
                                   cls=cls_states[d],
                                   tokvecs=poolers[d].outputs if poolers[d] is not None else {}))
    return results


def no_doc_grads(d_outputs: List[XLMRGrad]) -> List[Doc]:
    return []


def transformer_call_plan(model: Model, docs: Sequence[Doc], *, lazy: bool = False) -> Tuple[List[Any], List[Any], Any]:
    """``(piece_ids, offsets, plan)`` of a forward of this ``Transformer.v1`` layer: one backbone
    call per ``plan.batches`` entry (FSDP ranks use it to agree on the count). ``lazy``: the
    batches' inputs are built one at a time by ``plan.inputs(b)`` (inference)."""
    tokenizer = get_tokenizer(model)
    piece_ids, offsets = encode_docs(tokenizer, list(docs))
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


def _cls_rows(plan: Any, arrays: Sequence[Any]) -> List[List[Any]]:
    """Per doc, the ``<s>`` state of each of its windows, in window order."""
    flat: List[Any] = [None] * len(plan.windows)
    for batch, array in zip(plan.batches, arrays):
        for row, position in enumerate(batch.positions):
            flat[int(position)] = array[row, 0]
    grouped: List[List[Any]] = [[] for _ in plan.n_pieces]
    for span, row in zip(plan.windows, flat):
        grouped[span.doc].append(row)
    return grouped


def _add_cls_grads(plan: Any, merged: List[Any], d_cls: Sequence[Optional[Any]]) -> None:
    """Add each doc's (n_windows, H) ``<s>`` gradient at position 0 of its windows' rows."""
    window_index = plan.index_in_doc()
    for batch, grad in zip(plan.batches, merged):
        for row, position in enumerate(batch.positions):
            span = plan.windows[int(position)]
            cls_grad = d_cls[span.doc]
            if cls_grad is not None:
                grad[row, 0] += cls_grad[window_index[int(position)]]
