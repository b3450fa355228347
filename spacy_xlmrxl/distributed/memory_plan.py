"""Per-GPU training memory of XLM-RoBERTa-XL/XXL: DDP vs FSDP, fp32 vs bf16, checkpointing.

Owns the arithmetic (`plan_memory` -> `MemoryPlan`), the activation model of our
``modeling`` layers (`activation_bytes`) and the table printed by ``bench/memory_plan.py``.
Pure Python over an `XLMRobertaXLConfig`; nothing is allocated.

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
    + BSH·m  (attention output dropout, when hidden_dropout_prob > 0)

plus the embeddings (3 index tensors BS·8, a dropout mask BSH·m) and the final LayerNorm
(BSH·e + 2·BS·4). With per-layer gradient checkpointing only each layer's input (BSH·e) is kept,
and one layer is recomputed at a time during backward. This matches the saved tensors of the
tiny presets exactly on CPU (see tests/spacy_xlmrxl/distributed/test_memory_plan.py); on GPU,
``flash`` is the kernel used by ``scaled_dot_product_attention`` (dropout included). Task heads
(a token classifier adds BSH·e + BS·labels) and framework overhead (CUDA context ~0.5 GiB,
allocator fragmentation) are not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from modeling.config import XLMRobertaXLConfig

GiB = 1024 ** 3
STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
ATTENTIONS = ("flash", "math")


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
) -> float:
    """Bytes autograd keeps for the backward pass of the backbone (see the module docstring).

    ``training_dropout=False`` models dropout switched off (probabilities 0 or eval mode).
    With ``checkpointing`` the result is the peak: kept layer inputs plus one recomputed layer.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    b, s, h = batch_size, seq_length, config.hidden_size
    f, a, e, m = config.intermediate_size, config.num_attention_heads, element_bytes, mask_bytes
    hidden_drop = training_dropout and config.hidden_dropout_prob > 0
    bsh = b * s * h
    layer = 8 * bsh * e + 2 * b * s * f * e + 4 * b * s * 4
    if attention == "flash":
        layer += b * a * s * 4
    else:
        attn_drop = training_dropout and config.attention_probs_dropout_prob > 0
        layer += (2 * e + m if attn_drop else e) * b * a * s * s
    if hidden_drop:
        layer += bsh * m
    embeddings = 3 * b * s * 8 + (bsh * m if hidden_drop else 0)
    final = bsh * e + 2 * b * s * 4
    if checkpointing:
        return embeddings + config.num_hidden_layers * bsh * e + final + layer
    return embeddings + config.num_hidden_layers * layer + final


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
