"""Thinc architectures of spacy_xlmrxl, registered in ``spacy.registry.architectures``.

Owns
- ``spacy-xlmrxl.Transformer.v1``: Model[List[Doc], List[XLMRDocData]] around the torch
  `XLMRobertaXLModel`: tokenises each doc, aligns pieces to tokens, cuts long docs into piece
  windows, runs length-sorted window batches, recombines overlaps; backprop goes into torch.
  Inference (`predict_doc_data`) recombines and pools batch by batch, keeping per doc only
  the token vectors asked for (and the piece states only when asked).
  The torch module is built (and weights loaded) in the model's ``init``, i.e. in
  ``nlp.initialize``, never at ``add_pipe``;
- ``spacy-xlmrxl.TokenVectors.v1``: a ``tok2vec`` (List[Doc] -> List[Floats2d], one row per
  spaCy token) from a transformer, usable by spaCy's own components too;
- ``spacy-xlmrxl.Listener.v1`` (token vectors) and ``spacy-xlmrxl.DocDataListener.v1`` (raw
  `XLMRDocData`) reading a shared ``xlmrxl_transformer``;
- ``spacy-xlmrxl.NerHead.v1`` (token vectors -> softmax over NER tags) and
  ``spacy-xlmrxl.TextcatHead.v1`` (``<s>`` state of each window -> dense -> tanh -> out_proj,
  averaged over windows, softmax or sigmoid);
- helpers the components use to find and configure the backbone inside any of these models.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Dropout, Linear, Model, Softmax_v2, chain, reduce_mean, with_array
from thinc.layers.chain import forward as _chain_forward
from thinc.types import Floats2d, Ragged

from .alignment import POOLING_MODES, StreamingPooler, align_tokens_to_pieces, pool_pieces
from .backbone import (DEFAULT_CHECKPOINT, BackboneSource, TorchModuleShim, check_quantize_dtype, load_tokenizer,
                       to_torch, to_xp, torch_device)
from .doc_data import XLMRDocData, XLMRGrad
from .listener import XLMRListener
from .windows import StreamingRecombiner, batch_windows, make_strided_windows, recombine

TRANSFORMER_NAME = "xlmrxl-transformer"
WindowMaker = Callable[[int], List[Tuple[int, int]]]


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
    """The XLM-R-XL backbone as a thinc layer.

    checkpoint: local HF/fairseq dir or file, or a hub name found in the local HF cache;
    preset: random init with a named architecture (``tiny``, ``small``, ``xl``, ``xxl``) when
        ``checkpoint`` is null; tokenizer: sentencepiece model path (default: the checkpoint's);
    windows: ``(n_pieces) -> [(start, end)]`` piece windows (``spacy-xlmrxl.strided_windows.v1``);
    max_batch_pieces: padded positions per model call; dtype: weights dtype (float32 for
    training); mixed_precision: ``"bf16"``/``"fp16"``/null; grad_checkpointing; freeze: no
    weight updates (inference mode even in ``update``); quantize: null or ``"int8"`` (CPU
    inference only: dynamic int8 ``nn.Linear`` layers, applied after the weights are loaded;
    the float weights are kept for saving; training raises); freeze_word_embeddings: train
    everything but the vocab x hidden word-embedding matrix (no gradient, no optimizer state
    for it: 7.7 GB less GPU memory for XL with Adam; much less work per step on a CPU).
    """
    if max_batch_pieces <= 0:
        raise ValueError(f"max_batch_pieces must be positive, got {max_batch_pieces}")
    source = BackboneSource(checkpoint=checkpoint, preset=preset, tokenizer=tokenizer, dtype=dtype).validate()
    check_quantize_dtype(quantize, dtype)
    shim = TorchModuleShim(None, mixed_precision=mixed_precision, frozen=freeze,
                           grad_checkpointing=grad_checkpointing, quantize=quantize,
                           freeze_word_embeddings=freeze_word_embeddings,
                           model_cls=_backbone_class(), model_kwargs={"add_pooling_layer": False})
    return Model(
        TRANSFORMER_NAME,
        _transformer_forward,
        init=_transformer_init,
        dims={"nO": None},
        shims=[shim],
        attrs={
            "source": source,
            "windows": windows if windows is not None else make_strided_windows(),
            "max_batch_pieces": int(max_batch_pieces),
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


def transformer_config(section: str) -> str:
    """The default ``spacy-xlmrxl.Transformer.v1`` block as config text under ``[section]``
    (components put it under ``model``, ``model.tok2vec.transformer``, ...)."""
    return f"""
[{section}]
@architectures = "spacy-xlmrxl.Transformer.v1"
checkpoint = "{DEFAULT_CHECKPOINT}"
preset = null
tokenizer = null
max_batch_pieces = 4096
dtype = null
mixed_precision = null
grad_checkpointing = false
freeze = false
freeze_word_embeddings = false
quantize = null

[{section}.windows]
@misc = "spacy-xlmrxl.strided_windows.v1"
window = 510
stride = 384
"""


def _backbone_class() -> Any:
    from modeling.model import XLMRobertaXLModel

    return XLMRobertaXLModel


def backbone_shim(model: Model) -> TorchModuleShim:
    for shim in model.shims:
        if isinstance(shim, TorchModuleShim):
            return shim
    raise ValueError(f"layer {model.name!r} has no torch backbone")


def backbone_nodes(model: Model) -> List[Model]:
    """The layers of ``model`` that own a torch module (listeners own none)."""
    return [node for node in model.walk() if any(isinstance(s, TorchModuleShim) for s in node.shims)]


def set_backbone_source(model: Model, **changes: Any) -> None:
    """Change where the backbones in ``model`` load from (``checkpoint``/``preset``/
    ``tokenizer``/``dtype``); used by components' ``initialize`` settings."""
    if not any(v is not None for v in changes.values()):
        return
    for node in backbone_nodes(model):
        if isinstance(node.attrs.get("source"), BackboneSource):
            node.attrs["source"] = node.attrs["source"].replace(**changes).validate()


def install_backbone(model: Model, module: torch.nn.Module, tokenizer_model: bytes) -> None:
    """Give the layer its torch module and tokenizer; set ``nO`` and check the window size."""
    shim = backbone_shim(model)
    shim.set_module(module)
    model.attrs["tokenizer_model"] = tokenizer_model
    model.attrs["tokenizer"] = None
    tokenizer = get_tokenizer(model)
    config = module.config  # type: ignore[attr-defined]
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the model's vocab_size is "
                         f"{config.vocab_size}: tokenizer and checkpoint do not belong together")
    check = getattr(model.attrs.get("windows"), "check_max_window", None)
    if callable(check):
        check(config.max_sequence_length - 2)
    model.set_dim("nO", config.hidden_size, force=True)


def get_tokenizer(model: Model) -> Any:
    """The layer's tokenizer, rebuilt from its serialised model after loading."""
    if model.attrs.get("tokenizer") is None:
        proto = model.attrs.get("tokenizer_model")
        if proto is None:
            raise ValueError("the backbone has no tokenizer yet: call nlp.initialize() or load a saved pipeline")
        model.attrs["tokenizer"] = load_tokenizer(bytes(proto))
    return model.attrs["tokenizer"]


def _transformer_init(model: Model, X: Optional[List[Doc]] = None, Y: Any = None) -> None:
    source: BackboneSource = model.attrs["source"]
    tokenizer_path = source.tokenizer_path()  # fail before building a large model
    module = source.build(_backbone_class(), device=torch_device(model.ops),
                          model_kwargs={"add_pooling_layer": False})
    install_backbone(model, module, tokenizer_path.read_bytes())


class _AtLeastOneWindow:
    """Window maker that gives a doc without pieces the window ``(0, 0)`` (``<s></s>``), so
    every doc has an ``<s>`` state (what HF gives for the empty text)."""

    def __init__(self, make_windows: WindowMaker) -> None:
        self.make_windows = make_windows

    def __call__(self, n_pieces: int) -> List[Tuple[int, int]]:
        return list(self.make_windows(n_pieces)) or [(0, 0)]


#: Texts longer than twice this many characters are tokenised chunk by chunk (see `_encode_long`).
ENCODE_CHUNK_CHARS = 1 << 16


def _encode_docs(tokenizer: Any, docs: Sequence[Doc]) -> Tuple[List[numpy.ndarray], List[numpy.ndarray]]:
    """(n_pieces,) int32 ids and (n_pieces, 2) int32 offsets per doc. Each doc's Python lists
    are dropped as soon as they are converted, and a long text is tokenised in chunks, so the
    tokenizer's lists (~300 bytes per piece) never exist for more than one chunk."""
    texts = [doc.text for doc in docs]
    piece_ids: List[Any] = [None] * len(texts)
    offsets: List[Any] = [None] * len(texts)
    short = [i for i, text in enumerate(texts) if len(text) <= 2 * ENCODE_CHUNK_CHARS]
    encodings = tokenizer.encode_pieces_batch([texts[i] for i in short]) if short else []
    for j, i in enumerate(short):
        enc, encodings[j] = encodings[j], None
        piece_ids[i] = numpy.asarray(enc.ids, dtype="int32")
        offsets[i] = numpy.asarray(enc.offsets, dtype="int32").reshape(-1, 2)
        del enc
    for i, text in enumerate(texts):
        if piece_ids[i] is None:
            piece_ids[i], offsets[i] = _encode_long(tokenizer, text)
    return piece_ids, offsets


def _is_plain(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _chunk_starts(text: str, size: int) -> List[int]:
    """Where the chunks of ``text`` start: right after a space between two ASCII letters or
    digits (``"word word"``), about every ``size`` characters. SentencePiece never joins
    characters across such a space and normalises neither neighbour, so the chunks' pieces are
    the pieces of the whole text. A text without such a space is one chunk."""
    starts = [0]
    while len(text) - starts[-1] > 2 * size:
        low, space = starts[-1] + size // 2, text.rfind(" ", starts[-1] + size // 2, starts[-1] + size)
        while space > low and not (_is_plain(text[space - 1]) and _is_plain(text[space + 1])):
            space = text.rfind(" ", low, space)
        if space <= low:
            break
        starts.append(space + 1)
    return starts


def _encode_long(tokenizer: Any, text: str) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """`_encode_docs` for one long text, chunk by chunk (see `_chunk_starts`)."""
    starts = _chunk_starts(text, ENCODE_CHUNK_CHARS)
    ids, spans = [], []
    try:
        for start, end in zip(starts, starts[1:] + [len(text)]):
            enc = tokenizer.encode_pieces(text[start:end])
            ids.append(numpy.asarray(enc.ids, dtype="int32"))
            spans.append(numpy.asarray(enc.offsets, dtype="int32").reshape(-1, 2) + numpy.int32(start))
            del enc
    except ValueError:  # e.g. a lone surrogate: the error names its position in the whole text
        tokenizer.encode_pieces(text)
        raise
    return numpy.concatenate(ids), numpy.concatenate(spans).astype("int32", copy=False)


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


def _no_doc_grads(d_outputs: List[XLMRGrad]) -> List[Doc]:
    return []


def transformer_call_plan(model: Model, docs: Sequence[Doc], *, lazy: bool = False) -> Tuple[List[Any], List[Any], Any]:
    """``(piece_ids, offsets, plan)`` of a forward of this ``Transformer.v1`` layer: one backbone
    call per ``plan.batches`` entry (FSDP ranks use it to agree on the count). ``lazy``: the
    batches' inputs are built one at a time by ``plan.inputs(b)`` (inference)."""
    tokenizer = get_tokenizer(model)
    piece_ids, offsets = _encode_docs(tokenizer, list(docs))
    plan = batch_windows(piece_ids, _AtLeastOneWindow(model.attrs["windows"]),
                         max_batch_pieces=model.attrs["max_batch_pieces"],
                         bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, lazy=lazy)
    return piece_ids, offsets, plan


def _transformer_forward(model: Model, docs: List[Doc], is_train: bool
                         ) -> Tuple[List[XLMRDocData], Callable[[List[XLMRGrad]], List[Doc]]]:
    if not is_train:  # window batch by window batch, every piece state kept (see predict_doc_data)
        return predict_doc_data(model, docs), _no_doc_grads
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


# --------------------------------------------------------------------------- token vectors
def doc_data_pooler(pooling: str = "mean") -> Model[List[XLMRDocData], List[Floats2d]]:
    """List[XLMRDocData] -> List[Floats2d]: piece states pooled per spaCy token."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    return Model("xlmrxl-pooler", _pooler_forward, init=_width_init, dims={"nO": None}, attrs={"pooling": pooling})


def _width_init(model: Model, X: Optional[List[XLMRDocData]] = None, Y: Any = None) -> None:
    if X:
        model.set_dim("nO", X[0].width, force=True)


def _pooler_forward(model: Model, data: List[XLMRDocData], is_train: bool
                    ) -> Tuple[List[Floats2d], Callable[[List[Floats2d]], List[XLMRGrad]]]:
    mode = model.attrs["pooling"]
    pooled = [pool_pieces(model.ops, d.hidden, d.align, mode=mode) if d.hidden is not None
              else (_pooled_at_inference(d, mode), None) for d in data]

    def backprop(d_tokvecs: List[Floats2d]) -> List[XLMRGrad]:
        return [XLMRGrad(hidden=bp(dY) if bp is not None else None) for (_, bp), dY in zip(pooled, d_tokvecs)]

    return [vectors for vectors, _ in pooled], backprop


def _pooled_at_inference(data: XLMRDocData, mode: str) -> Floats2d:
    """The token vectors inference pooled for ``mode`` (doc data without piece states)."""
    if mode not in data.tokvecs:
        raise ValueError(
            f"doc._.xlmrxl has neither piece states nor {mode!r}-pooled token vectors (it has "
            f"{sorted(data.tokvecs)}): the xlmrxl_transformer pools only for the listeners it has linked; "
            f"set its piece_states = true to keep every piece's state")
    return data.tokvecs[mode]


@registry.architectures("spacy-xlmrxl.TokenVectors.v1")
def build_token_vectors(transformer: Model[List[Doc], List[XLMRDocData]], pooling: str = "mean"
                        ) -> Model[List[Doc], List[Floats2d]]:
    """Token vectors (one row per spaCy token, zeros for whitespace tokens) from a backbone."""
    model = chain(transformer, doc_data_pooler(pooling))
    model._func = _token_vectors_forward  # the chain, but inference pools window batch by window batch
    model.set_ref("transformer", transformer)
    return model


def _token_vectors_forward(model: Model, docs: List[Doc], is_train: bool
                           ) -> Tuple[List[Floats2d], Callable[[List[Floats2d]], List[Doc]]]:
    transformer, pooler = model.layers
    if is_train or not is_transformer_layer(transformer):
        return _chain_forward(model, docs, is_train)
    mode = pooler.attrs["pooling"]
    data = predict_doc_data(transformer, docs, pooling=(mode,), piece_states=False)
    return [d.tokvecs[mode] for d in data], _no_doc_grads


@registry.architectures("spacy-xlmrxl.Listener.v1")
def build_listener(upstream: str = "*", pooling: str = "mean") -> Model[List[Doc], List[Floats2d]]:
    """Token vectors from an upstream ``xlmrxl_transformer`` component (shared backbone)."""
    listener = XLMRListener(upstream)
    listener.attrs["pooling"] = pooling  # the upstream pools for it at inference
    model = chain(listener, doc_data_pooler(pooling))
    model.set_ref("transformer", listener)
    return model


@registry.architectures("spacy-xlmrxl.DocDataListener.v1")
def build_doc_data_listener(upstream: str = "*") -> Model[List[Doc], List[XLMRDocData]]:
    """The raw `XLMRDocData` of an upstream ``xlmrxl_transformer`` (for heads on ``<s>``)."""
    return XLMRListener(upstream)


# --------------------------------------------------------------------------- heads
@registry.architectures("spacy-xlmrxl.NerHead.v1")
def build_ner_head(tok2vec: Model[List[Doc], List[Floats2d]], nO: Optional[int] = None
                   ) -> Model[List[Doc], List[Floats2d]]:
    """Per-token tag probabilities: token vectors -> linear -> softmax (nO = number of tags).
    Backprop takes ``probs - truth`` as the gradient of the logits (cross-entropy)."""
    output_layer = Softmax_v2(nO=nO, normalize_outputs=True)
    model = chain(tok2vec, with_array(output_layer))
    model.set_ref("tok2vec", tok2vec)
    model.set_ref("output_layer", output_layer)
    return model


@registry.architectures("spacy-xlmrxl.TextcatHead.v1")
def build_textcat_head(transformer: Model[List[Doc], List[XLMRDocData]], nO: Optional[int] = None,
                       exclusive_classes: bool = True, dropout: float = 0.1) -> Model[List[Doc], Floats2d]:
    """Doc-level label probabilities (n_docs, nO) from the ``<s>`` state of each window:
    dropout -> dense (H x H) -> tanh -> dropout -> out_proj (nO x H) like HF's classification
    head, logits averaged over a doc's windows, then softmax (exclusive) or sigmoid.
    ``transformer`` is ``spacy-xlmrxl.Transformer.v1`` or ``spacy-xlmrxl.DocDataListener.v1``."""
    dense = Linear()
    out_proj = Linear(nO=nO)
    classifier = chain(Dropout(dropout), dense, _tanh(), Dropout(dropout), out_proj)
    model = chain(transformer, _cls_states(), with_array(classifier), reduce_mean(),
                  _activation(exclusive_classes))
    model.init = _textcat_init
    model.set_ref("transformer", transformer)
    model.set_ref("dense", dense)
    model.set_ref("output_layer", out_proj)
    model.attrs["exclusive_classes"] = exclusive_classes
    return model


def _textcat_init(model: Model, X: Optional[List[Doc]] = None, Y: Any = None) -> None:
    transformer = model.get_ref("transformer")
    transformer.initialize(X=X)
    width = transformer.get_dim("nO")
    dense, out_proj = model.get_ref("dense"), model.get_ref("output_layer")
    for dim, layer in (("nI", dense), ("nO", dense), ("nI", out_proj)):
        layer.set_dim(dim, width, force=True)
    if Y is not None and not out_proj.has_dim("nO"):
        out_proj.set_dim("nO", Y.shape[1])
    for layer in model.layers[1:]:
        layer.initialize()
    model.set_dim("nO", out_proj.get_dim("nO"), force=True)


def _cls_states() -> Model[List[XLMRDocData], Ragged]:
    return Model("xlmrxl-cls-states", _cls_forward)


def _cls_forward(model: Model, data: List[XLMRDocData], is_train: bool
                 ) -> Tuple[Ragged, Callable[[Ragged], List[XLMRGrad]]]:
    lengths = model.ops.asarray1i([d.cls.shape[0] for d in data])
    flat = model.ops.xp.concatenate([d.cls for d in data]) if data else model.ops.alloc2f(0, 0)
    starts = numpy.cumsum([0] + [d.cls.shape[0] for d in data])

    def backprop(dY: Ragged) -> List[XLMRGrad]:
        return [XLMRGrad(cls=dY.dataXd[starts[i]:starts[i + 1]]) for i in range(len(data))]

    return Ragged(flat, lengths), backprop


def _tanh() -> Model[Floats2d, Floats2d]:
    return Model("tanh", _tanh_forward)


def _tanh_forward(model: Model, X: Floats2d, is_train: bool) -> Tuple[Floats2d, Callable[[Floats2d], Floats2d]]:
    Y = model.ops.xp.tanh(X)
    return Y, lambda dY: dY * (1 - Y * Y)


def _activation(exclusive: bool) -> Model[Floats2d, Floats2d]:
    """Softmax (exclusive) or sigmoid; backprop passes the gradient through unchanged, i.e. it
    expects the gradient w.r.t. the logits (``probs - truth`` for CE / BCE), as spaCy does."""
    return Model("softmax" if exclusive else "sigmoid", _activation_forward, attrs={"exclusive": exclusive})


def _activation_forward(model: Model, X: Floats2d, is_train: bool) -> Tuple[Floats2d, Callable[[Floats2d], Floats2d]]:
    if model.attrs["exclusive"]:
        Y = model.ops.softmax(X, axis=-1)
    else:
        Y = model.ops.sigmoid(X)
    return Y, lambda dY: dY
