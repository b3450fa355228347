"""Training memory of XLM-RoBERTa-XL/XXL: per GPU (DDP vs FSDP, fp32 vs bf16, checkpointing, LoRA)
and per CPU process.

Owns the arithmetic (`plan_memory` -> `MemoryPlan`; `plan_lora` -> `LoraPlan` with the smallest
GPU class; `plan_cpu_training` -> `CpuTrainingPlan`, the peak RSS of a NER training process),
the activation model of our ``modeling`` layers (`activation_bytes`, trained or frozen with
LoRA adapters) and the tables printed by ``bench/memory_plan.py``. Pure Python over an
`XLMRobertaXLConfig`; nothing is allocated.

Model state per parameter (P = ``config.num_parameters()``), before sharding:

============  =======  =====  ============================  =====
precision     weights  grads  optimizer (Adam m, v; master)  total
============  =======  =====  ============================  =====
fp32          4 B      4 B    8 B                            16 B
bf16 (mixed)  2 B      2 B    8 B + 4 B fp32 master          16 B
============  =======  =====  ============================  =====

DDP replicates all of it on every GPU (``gradient_as_bucket_view=True`` assumed, so the
all-reduce buckets add nothing). FSDP (``FULL_SHARD``) divides it by N GPUs; for bf16 the shard
is kept in fp32 (4 B weights = the master, 4 B grads, 8 B Adam) and each wrap unit is gathered
in bf16 for its forward/backward. Wrap units: the embeddings and each transformer layer; while
one unit computes, the next is prefetched, so two gathered units (weights) plus one unsharded
gradient of a unit are held at a time; with bf16 that gradient is reduced in fp32
(``reduce_dtype``), so its fp32 copy (4 B) is held beside the bf16 one while it is scattered.
This is what `spacy_xlmrxl.distributed.fsdp` does (FSDP2 ``fully_shard`` per layer, embeddings
and root; ``MixedPrecisionPolicy(bf16, reduce fp32)``; thinc's Adam on the fp32 shards). Not
included: the full fp32 model each rank builds before it is sharded (``init_nlp``), and the
one full tensor at a time gathered when rank 0 saves.

Activations are the tensors autograd saves in the forward pass (the peak is reached at the start
of the backward pass), per layer, for B sequences of S pieces, hidden H, FFN F, A heads, element
size e (4 fp32, 2 bf16), dropout-mask element m (1 byte on CUDA, e on CPU)::

    8·BSH·e + 2·BSF·e + 4·BS·4 (LayerNorm statistics)
    + BAS·4 (logsumexp of the fused/flash attention kernels)          attention = "flash"
    + (2e + m)·BAS²  instead, when the softmax is materialised (CPU with dropout)  "math"
      (there q, k, v and the scores are float32 for a bf16 model: `attention_element_bytes`)
    + BSH·m  (attention output dropout, when hidden_dropout_prob > 0)

plus the embeddings (3 index tensors BS·8, a dropout mask BSH·m) and the final LayerNorm
(BSH·e + 2·BS·4). With per-layer gradient checkpointing only each layer's input (BSH·e) is kept,
and one layer is recomputed at a time during backward. This matches the saved tensors of the
tiny presets exactly on CPU (see tests/spacy_xlmrxl/distributed/test_memory_plan.py); on GPU,
``flash`` is the kernel used by ``scaled_dot_product_attention`` (dropout included). Task heads
(a token classifier adds BSH·e + BS·labels) and framework overhead (CUDA context ~0.5 GiB,
allocator fragmentation) are not included.

LoRA (`plan_lora`, `lora_grid`; `plan_cpu_training` for a CPU process): the base is frozen, so it
holds its weights only (``base_dtype``) and the adapters their float32 weights, gradients and Adam
moments (`modeling.lora.lora_training_bytes`). Activations (``activation_bytes(lora=...)``): a
frozen Linear saves nothing for its weight gradient, so a layer no longer saves the inputs of the
query/key/value projections, of the feed-forward pair, and (``math``) of the attention output
projection (``-(2H + F)·BS·e``, ``-BSH·e`` more with ``math``); every adapted Linear saves A's output
(BS·r·4) and its input: in float32 as a new tensor (BS·in·4, plus a dropout mask BS·in·m) when the
base is not float32 or the adapter dropout is on, else the base's own input, kept once per input.
The embeddings save nothing and the first layer's first LayerNorm neither (its input needs no
gradient). This is exact on CPU for the tiny presets, with or without checkpointing (the tests),
when the targets include an attention projection (the default query + value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from modeling.config import XLMRobertaXLConfig
from modeling.dtypes import itemsize
from modeling.lora import LoraConfig, LoraMemory, lora_parameter_count, lora_training_bytes, target_shapes

GiB = 1024 ** 3
STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
ATTENTIONS = ("flash", "math")
#: GPU memory classes (GiB) the LoRA rows are sorted into: consumer, workstation, data-centre cards
GPU_CLASSES_GIB = (24, 48, 80)
BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# the tensor each LoRA target's Linear reads, which a full fine-tune saves for its weight gradient
_LORA_INPUT = {"query": "ln1", "key": "ln1", "value": "ln1", "attention_output": "context",
               "intermediate": "ln2", "output": "gelu"}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU of one training setting; ``total`` is the estimated peak."""

    name: str
    strategy: str
    precision: str
    checkpointing: bool
    num_gpus: int
    batch_size: int
    seq_length: int
    parameters: int
    weights: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations


def unit_parameters(config: XLMRobertaXLConfig) -> List[int]:
    """Parameter counts of the FSDP wrap units: embeddings, each layer, final LayerNorm (+pooler)."""
    total = config.num_parameters()
    h = config.hidden_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h
    per_layer = (total - embeddings - 2 * h - (h * h + h)) // config.num_hidden_layers
    return [embeddings] + [per_layer] * config.num_hidden_layers + [2 * h + h * h + h]


def activation_bytes(
    config: XLMRobertaXLConfig,
    *,
    batch_size: int,
    seq_length: int,
    element_bytes: int = 4,
    mask_bytes: int = 1,
    attention: str = "flash",
    checkpointing: bool = False,
    training_dropout: bool = True,
    statistics_bytes: int = 4,
    attention_element_bytes: Optional[int] = None,
    lora: Optional[LoraConfig] = None,
) -> float:
    """Bytes autograd keeps for the backward pass of the backbone (see the module docstring).

    ``training_dropout=False`` models dropout switched off (probabilities 0 or eval mode).
    With ``checkpointing`` the result is the peak: kept layer inputs plus one recomputed layer.
    ``statistics_bytes``: LayerNorm mean / rstd element (4 on CUDA; the activation dtype's on CPU).
    ``attention_element_bytes``: query/key/value, scores and their masks in the ``math`` path
    (default ``element_bytes``; 4 for bf16 on CPU, where that path computes in float32).
    ``lora``: a frozen base with these adapters (float32) instead of a trained one.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    b, s, h = batch_size, seq_length, config.hidden_size
    e, m, st = element_bytes, mask_bytes, statistics_bytes
    hidden_drop = training_dropout and config.hidden_dropout_prob > 0
    bsh = b * s * h
    layer = _layer_bytes(config, batch_size=b, seq_length=s, element_bytes=e, mask_bytes=m, attention=attention,
                         training_dropout=training_dropout, statistics_bytes=st,
                         attention_element_bytes=attention_element_bytes or e)
    embeddings = 3 * b * s * 8 + (bsh * m if hidden_drop else 0)
    final = bsh * e + 2 * b * s * st
    first = 0.0
    if lora is not None:
        layer += _lora_layer_change(config, lora, tokens=b * s, element_bytes=e, mask_bytes=m, attention=attention)
        embeddings = 0  # frozen: nothing there needs a gradient
        # the first layer's input needs no gradient: its first LayerNorm saves nothing, nor does
        # the dropout of the adapters reading that LayerNorm's output
        reading_ln1 = sum(_LORA_INPUT[target] == "ln1" for target in lora.targets)
        first = -(bsh * e + 2 * b * s * st) - (reading_ln1 * bsh * m if lora.dropout > 0 else 0)
    if checkpointing:
        return embeddings + config.num_hidden_layers * bsh * e + final + layer
    return embeddings + config.num_hidden_layers * layer + first + final


def _layer_bytes(config: XLMRobertaXLConfig, *, batch_size: int, seq_length: int, element_bytes: int,
                 mask_bytes: int, attention: str, training_dropout: bool, statistics_bytes: int,
                 attention_element_bytes: int) -> float:
    """Saved bytes of one trained transformer layer (module docstring)."""
    b, s, h = batch_size, seq_length, config.hidden_size
    f, a, e, m = config.intermediate_size, config.num_attention_heads, element_bytes, mask_bytes
    bsh = b * s * h
    layer = 5 * bsh * e + 2 * b * s * f * e + 4 * b * s * statistics_bytes
    if attention == "flash":
        layer += 3 * bsh * e + b * a * s * 4
    else:
        ea = attention_element_bytes
        attn_drop = training_dropout and config.attention_probs_dropout_prob > 0
        # masks: 1 byte on CUDA, else the masked tensor's element
        layer += 3 * bsh * ea + (2 * ea + (m if m == 1 else ea) if attn_drop else ea) * b * a * s * s
    if training_dropout and config.hidden_dropout_prob > 0:
        layer += bsh * m
    return layer


def _lora_layer_change(config: XLMRobertaXLConfig, lora: LoraConfig, *, tokens: int, element_bytes: int,
                       mask_bytes: int, attention: str) -> float:
    """What a frozen layer with ``lora`` adapters saves more (+) or less (-) than a trained one."""
    h, f, e = config.hidden_size, config.intermediate_size, element_bytes
    widths = {"ln1": h, "context": h, "ln2": h, "gelu": f}
    weight_only = {"ln1", "ln2", "gelu"} | ({"context"} if attention == "math" else set())
    change = -sum(tokens * widths[group] * e for group in weight_only)
    copies = e != 4 or lora.dropout > 0  # the adapter reads a float32 tensor of its own
    for target in lora.targets:
        width = widths[_LORA_INPUT[target]]
        change += tokens * lora.r * 4  # A's output, saved for B's gradient
        if copies:
            change += tokens * width * 4 + (tokens * width * mask_bytes if lora.dropout > 0 else 0)
    if not copies:  # the base's own inputs are kept for the adapters, once each
        change += sum(tokens * widths[group] * e for group in {_LORA_INPUT[t] for t in lora.targets} & weight_only)
    return change


def plan_memory(
    config: XLMRobertaXLConfig,
    *,
    name: str = "",
    strategy: str = "ddp",
    precision: str = "bf16",
    checkpointing: bool = False,
    num_gpus: int = 8,
    batch_size: int = 8,
    seq_length: int = 512,
    attention: str = "flash",
) -> MemoryPlan:
    """Per-GPU memory of training ``config`` with Adam; ``batch_size`` sequences per GPU."""
    if strategy not in STRATEGIES or precision not in PRECISIONS:
        raise ValueError(f"strategy in {STRATEGIES} and precision in {PRECISIONS}, got {strategy!r}, {precision!r}")
    if num_gpus < 1:
        raise ValueError("num_gpus must be >= 1")
    p = config.num_parameters()
    low = 2 if precision == "bf16" else 4  # compute (working) precision
    gathered = 0.0
    if strategy == "ddp":
        weights, grads = p * low, p * low
        optimizer = p * 8 + (p * 4 if precision == "bf16" else 0)
    else:
        weights, grads, optimizer = p * 4 / num_gpus, p * 4 / num_gpus, p * 8 / num_gpus
        units = sorted(unit_parameters(config), reverse=True)
        # 2 gathered units + 1 unit's unsharded grads (+ their fp32 reduce-scatter copy with bf16)
        gathered = (units[0] + units[1]) * low + units[0] * (low + (4 if precision == "bf16" else 0))
    acts = activation_bytes(config, batch_size=batch_size, seq_length=seq_length, element_bytes=low,
                            attention=attention, checkpointing=checkpointing)
    return MemoryPlan(name=name, strategy=strategy, precision=precision, checkpointing=checkpointing,
                      num_gpus=num_gpus, batch_size=batch_size, seq_length=seq_length, parameters=p,
                      weights=weights, gradients=grads, optimizer=optimizer, gathered=gathered,
                      activations=acts)


def plan_grid(
    configs: Sequence[tuple],
    *,
    num_gpus: int = 8,
    batch_size: int = 8,
    seq_length: int = 512,
    strategies: Iterable[str] = STRATEGIES,
    precisions: Iterable[str] = PRECISIONS,
) -> List[MemoryPlan]:
    """Every (strategy, precision, checkpointing) plan for each ``(name, config)``."""
    return [
        plan_memory(config, name=name, strategy=strategy, precision=precision, checkpointing=ckpt,
                    num_gpus=num_gpus, batch_size=batch_size, seq_length=seq_length)
        for name, config in configs
        for strategy in strategies
        for precision in precisions
        for ckpt in (False, True)
    ]


def format_table(plans: Sequence[MemoryPlan], *, gpu_gib: Optional[float] = 80.0) -> str:
    """A Markdown table in GiB per GPU."""
    header = ["model", "params", "strategy", "GPUs", "precision", "ckpt", "B x S", "weights",
              "grads", "optim", "gathered", "activ.", "total"] + ([f"fits {gpu_gib:g} GiB"] if gpu_gib else [])
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for plan in plans:
        cells = [plan.name, f"{plan.parameters / 1e9:.2f} B", plan.strategy.upper(), str(plan.num_gpus),
                 plan.precision, "yes" if plan.checkpointing else "no", f"{plan.batch_size} x {plan.seq_length}"]
        cells += [f"{v / GiB:.1f}" for v in (plan.weights, plan.gradients, plan.optimizer, plan.gathered,
                                              plan.activations, plan.total)]
        if gpu_gib:
            cells.append("yes" if plan.total <= gpu_gib * GiB else "no")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------- LoRA
@dataclass(frozen=True)
class LoraPlan:
    """Bytes of LoRA training on one GPU (no sharding): a frozen base in ``base_dtype``, float32
    adapters with Adam, activations in the base dtype (flash attention, 1-byte dropout masks)."""

    name: str
    lora: LoraConfig
    base_dtype: str
    checkpointing: bool
    batch_size: int
    seq_length: int
    parameters: int
    adapter_parameters: int
    state: LoraMemory
    activations: float

    @property
    def total(self) -> float:
        return self.state.total + self.activations

    @property
    def smallest_gpu_gib(self) -> Optional[int]:
        """The smallest of `GPU_CLASSES_GIB` that holds `total`, or None."""
        return next((size for size in GPU_CLASSES_GIB if self.total <= size * GiB), None)


def _base_dtype(name: str) -> torch.dtype:
    if name not in BASE_DTYPES:
        raise ValueError(f"base_dtype must be one of {sorted(BASE_DTYPES)}, got {name!r}")
    return BASE_DTYPES[name]


def plan_lora(
    config: XLMRobertaXLConfig,
    lora: LoraConfig,
    *,
    name: str = "",
    base_dtype: str = "bfloat16",
    checkpointing: bool = False,
    batch_size: int = 8,
    seq_length: int = 512,
) -> LoraPlan:
    """LoRA training of ``config`` on one GPU, ``batch_size`` sequences of ``seq_length`` pieces."""
    dtype = _base_dtype(base_dtype)
    state = lora_training_bytes(config, lora, base_dtype=dtype, adapter_dtype=torch.float32, optimizer_states=2)
    acts = activation_bytes(config, batch_size=batch_size, seq_length=seq_length, element_bytes=itemsize(dtype),
                            mask_bytes=1, attention="flash", checkpointing=checkpointing, lora=lora)
    return LoraPlan(name=name, lora=lora, base_dtype=base_dtype, checkpointing=checkpointing,
                    batch_size=batch_size, seq_length=seq_length, parameters=config.num_parameters(),
                    adapter_parameters=lora_parameter_count(config, lora), state=state, activations=acts)


def lora_grid(configs: Sequence[tuple], lora: LoraConfig, *, batch_size: int = 8, seq_length: int = 512,
              base_dtype: str = "bfloat16") -> List[LoraPlan]:
    """The LoRA plan of each ``(name, config)`` without and with gradient checkpointing."""
    return [plan_lora(config, lora, name=name, base_dtype=base_dtype, checkpointing=ckpt, batch_size=batch_size,
                      seq_length=seq_length)
            for name, config in configs for ckpt in (False, True)]


def format_lora_table(plans: Sequence[LoraPlan]) -> str:
    """A Markdown table of `LoraPlan` rows in GiB, with the smallest GPU class each fits."""
    header = ["model", "params", "LoRA", "adapter params", "base", "ckpt", "B x S", "base weights",
              "adapters + grads + Adam", "activ.", "total", "smallest GPU"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for plan in plans:
        adapters = plan.state.adapter_weights + plan.state.adapter_gradients + plan.state.optimizer
        gpu = plan.smallest_gpu_gib
        cells = [plan.name, f"{plan.parameters / 1e9:.2f} B", f"r={plan.lora.r} {'+'.join(plan.lora.targets)}",
                 f"{plan.adapter_parameters / 1e6:.1f} M", plan.base_dtype, "yes" if plan.checkpointing else "no",
                 f"{plan.batch_size} x {plan.seq_length}", f"{plan.state.base_weights / GiB:.1f}",
                 f"{adapters / GiB:.2f}", f"{plan.activations / GiB:.1f}", f"{plan.total / GiB:.1f}",
                 f"{gpu} GiB" if gpu else f"> {GPU_CLASSES_GIB[-1]} GiB"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------- CPU
@dataclass(frozen=True)
class CpuTrainingPlan:
    """Peak resident memory of a CPU process training NER on a backbone (`plan_cpu_training`)."""

    runtime: float  # the interpreter, libraries, tokenizer and pipeline without weights (measured)
    weights: float  # the backbone's weights (frozen base with LoRA)
    trained_state: float  # LoRA: adapter weights + gradients + Adam; full: gradients + Adam
    activations: float  # checkpointed: the kept layer inputs + one recomputed layer
    head: float  # the hidden states handed to the NER listener (float32) and their gradient
    optimizer_temporary: float  # thinc's weight decay makes one temporary of the largest trained tensor

    @property
    def total(self) -> float:
        return (self.runtime + self.weights + self.trained_state + self.activations + self.head
                + self.optimizer_temporary)


def plan_cpu_training(
    config: XLMRobertaXLConfig,
    *,
    lora: Optional[LoraConfig],
    base_dtype: str = "float32",
    batch_size: int,
    seq_length: int,
    checkpointing: bool = True,
    training_dropout: bool = True,
    freeze_word_embeddings: bool = False,
    runtime_bytes: float = 0.0,
    compute_dtype: Optional[str] = None,
) -> CpuTrainingPlan:
    """Peak RSS of one NER training step on CPU: LoRA (``lora`` given; base in ``base_dtype``) or
    full fine-tuning (``lora=None``; float32, Adam; the word embeddings' vocab x hidden gradient,
    moments and weight-decay temporary unless ``freeze_word_embeddings``). Activations are in the
    base dtype, with CPU dropout masks and LayerNorm statistics of that dtype, or in
    ``compute_dtype`` (``"float32"`` for a bf16 base on a CPU without native bf16 matmuls,
    computed in float32 layer by layer: one Linear weight's float32 copy at a time on top);
    ``runtime_bytes`` is what the process holds without any weights (measure it:
    bench/xl_train.py does)."""
    dtype = _base_dtype(base_dtype)
    compute = _base_dtype(compute_dtype) if compute_dtype else dtype
    h, vocab = config.hidden_size, config.vocab_size
    if lora is not None:
        state = lora_training_bytes(config, lora, base_dtype=dtype, adapter_dtype=torch.float32, with_pooler=False)
        weights = float(state.base_weights)
        trained = float(state.adapter_weights + state.adapter_gradients + state.optimizer)
        largest = max(lora.r * max(target_shapes(config)[t]) for t in lora.targets)
    else:
        if dtype != torch.float32:
            raise ValueError("full fine-tuning trains float32 weights: base_dtype must be 'float32'")
        params = config.num_parameters(with_pooler=False)
        weights = float(params * 4)
        trained_params = params - (vocab * h if freeze_word_embeddings else 0)
        trained = float(trained_params * (4 + 8))
        largest = h * config.intermediate_size if freeze_word_embeddings else vocab * h
    e = itemsize(compute)
    cast = 4.0 * h * config.intermediate_size if compute != dtype else 0.0
    attention = "math" if training_dropout and config.attention_probs_dropout_prob > 0 else "flash"
    acts = activation_bytes(config, batch_size=batch_size, seq_length=seq_length, element_bytes=e, mask_bytes=e,
                            statistics_bytes=e, attention_element_bytes=4, attention=attention,
                            checkpointing=checkpointing,
                            training_dropout=training_dropout, lora=lora)
    return CpuTrainingPlan(runtime=float(runtime_bytes), weights=weights, trained_state=trained, activations=acts,
                           head=2.0 * batch_size * seq_length * h * 4, optimizer_temporary=max(4.0 * largest, cast))


def format_cpu_plan(plan: CpuTrainingPlan) -> str:
    """One line in GiB: the total and its parts."""
    parts: Dict[str, float] = {"runtime": plan.runtime, "weights": plan.weights, "trained": plan.trained_state,
                               "activations": plan.activations, "head": plan.head,
                               "optimizer tmp": plan.optimizer_temporary}
    return f"{plan.total / GiB:.2f} GiB (" + ", ".join(f"{k} {v / GiB:.2f}" for k, v in parts.items()) + ")"
