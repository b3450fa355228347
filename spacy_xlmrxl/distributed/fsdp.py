"""FSDP (fully sharded data parallel) for the torch backbones of a spaCy pipeline under ``torchrun``.

Owns `shard_backbones` (FSDP2 ``torch.distributed.fsdp.fully_shard`` over each transformer
layer, the embeddings and the root of every trainable ``spacy-xlmrxl.Transformer`` (v2, v1)
backbone), `ShardedModuleShim` (the thinc shim of a sharded backbone: a sharded optimizer step with
thinc's optimizer, and the "same number of backbone calls on every rank" rule), `CallBalancer`
(what makes that rule hold while every rank trains on its own slice of the batch) and
`full_backbones` (gathers the full weights on rank 0 so that ``nlp.to_disk`` writes a pipeline
that ``spacy.load`` reads). The training loop is `spacy_xlmrxl.distributed.ddp.train_ddp` with
``strategy="fsdp"`` (CLI ``--strategy fsdp``).

Why FSDP2 (``fully_shard``) and not ``FullyShardedDataParallel`` (FSDP1): both run on CPU with
gloo in torch 2.13 (FSDP1 with ``device_id=cpu``; checked), but FSDP1 wraps the module and
flattens its parameters into ``FlatParameter``s (new names, a new module object), while FSDP2
shards the parameters of the module in place (DTensors, same names, same module object), so
the backbone stays inside the project's `TorchModuleShim` and spaCy's pipeline; FSDP2 is also
the one PyTorch develops.

Semantics, as for DDP: the config's batch is the global batch; rank r trains on
``batch[r::world]``; gradients are *summed* over ranks (FSDP's reduce-scatter with divide
factor 1; ``--grad-reduce mean`` divides by the world size); the thinc optimizer of the config
steps each rank's shard (Adam moments exist for the shard only: model state / N per GPU).
thinc's ``grad_clip`` clips each parameter by the norm of its *full* gradient (an all-reduce of
the shards' squared norms), as in one process. The small thinc heads stay replicated and their
gradients are all-reduced (`GradientSync`).

Every FSDP unit all-gathers its weights in each forward, so every rank must call the backbone
the same number of times per update, although each rank's slice of the batch splits into its own
number of model calls (``max_batch_pieces``) or is empty. Before each update the ranks agree on
the largest count (one small all-reduce); a rank with fewer calls makes zero-weighted dummy calls
(a 2-piece sequence whose output enters the loss multiplied by 0), so the collectives match and
the gradients are unchanged. Evaluation runs on every rank (forward passes are collective);
rank 0 logs and saves.

Precision: on GPU the gathered weights and the compute are bfloat16 and gradients are reduced in
float32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``), while the sharded
master weights and Adam moments stay float32 — the "bf16" row of `memory_plan`. On CPU
(gloo) the default is float32. fp16 loss scaling is not supported with FSDP.

LoRA (backbone setting ``lora``): the frozen base is sharded like the rest (and gathered in
bf16 on a GPU), but only the adapters have gradients, so only they are reduce-scattered and
stepped; the base may be bfloat16 (``dtype``) while the adapters are float32 (FSDP needs one
dtype among the Parameters that train only). `full_backbones` rebuilds the adapters too.

Limits: every rank first builds (or loads) the full float32 backbone, which is then sharded
(for a moment, on the GPU with ``--gpu``); a 1-D mesh over all ranks (no
hybrid sharding across nodes); with one process nothing is sharded. The call counts mirror
``spacy_xlmrxl.ml.transformer.transformer_call_plan`` (its encoding and ``batch_windows`` plan): a
change there must be made here too, or the ranks' collectives stop matching (a hang until the
process group's timeout, or a RuntimeError after the update where the counts differ but the
collectives happened to pair up).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch
import torch.distributed as dist

from ..backbone.nodes import backbone_nodes, backbone_shim, get_tokenizer
from ..backbone.shim import TorchModuleShim, empty_like, shares_memory
from ..ml.transformer import is_transformer_layer, transformer_call_plan
from .collectives import collective_device

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class _Calls:
    """The backbone calls of one update on this rank: ``local`` real ones, ``target`` in all."""

    local: int
    target: int
    seen: int = 0


class _CallingProxy:
    """What ``ShardedModuleShim.module`` returns while the backbone is sharded: the FSDP module
    for every attribute; its calls are counted and, after the last real call of an update, the
    missing dummy calls are made and folded into that call's output with weight 0."""

    def __init__(self, shim: "ShardedModuleShim") -> None:
        self._shim = shim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shim._model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        shim = self._shim
        out = shim._model(*args, **kwargs)
        calls = shim.calls
        if calls is None or not torch.is_grad_enabled():
            return out
        calls.seen += 1
        if calls.seen == calls.local and calls.target > calls.local:
            zero = shim.dummy_calls(calls.target - calls.local)
            out.last_hidden_state = out.last_hidden_state + zero.to(out.last_hidden_state.dtype)
        return out


class ShardedModuleShim:
    """Mixin class given to a `TorchModuleShim` whose module was sharded (``__class__`` swap,
    see `shard_backbones`): ``module`` is a `_CallingProxy`, or the gathered full module while
    `full_backbones` is active; ``finish_update`` steps the local shards."""

    calls: Optional[_Calls]
    full_module: Optional[torch.nn.Module]
    grad_divide: float
    dummy_ids: Tuple[int, int]

    @property
    def module(self) -> Any:
        if self._model is None:  # pragma: no cover - sharding needs a module
            raise ValueError("the backbone has no weights yet")
        if self.full_module is not None:
            return self.full_module
        return _CallingProxy(self)

    @property
    def float_module(self) -> Any:
        """What is saved: the gathered full module inside `full_backbones`, else the sharded one."""
        if self._model is None:  # pragma: no cover - sharding needs a module
            raise ValueError("the backbone has no weights yet")
        return self.full_module if self.full_module is not None else self._model

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    def dummy_calls(self, n: int) -> torch.Tensor:
        """``n`` forward calls on a 2-piece sequence; returns 0 · (sum of their outputs)."""
        device = self.device
        ids = torch.tensor([list(self.dummy_ids)], dtype=torch.long, device=device)
        zero = torch.zeros((), device=device)
        for _ in range(n):
            out = self._model(input_ids=ids, attention_mask=torch.ones_like(ids))
            zero = zero + out.last_hidden_state.float().sum() * 0.0
        return zero

    def dummy_update(self, n: int) -> None:
        """A whole forward + backward of ``n`` dummy calls (a rank with no docs in an update)."""
        if n <= 0:
            return
        with self.run(True):
            zero = self.dummy_calls(n)
        zero.backward()

    def finish_update(self, optimizer: Any) -> None:
        """The thinc optimizer on each parameter's local shard; ``grad_clip`` by the full norm."""
        from thinc.util import torch2xp, xp2torch

        if self._model is None or self.frozen:
            return
        named = list(self._model.named_parameters())
        locals_: List[Tuple[str, torch.Tensor, Optional[torch.Tensor]]] = []
        for name, param in named:
            local = param.to_local() if hasattr(param, "to_local") else param
            grad = param.grad
            if grad is not None and hasattr(grad, "to_local"):
                grad = grad.to_local()
            locals_.append((name, local, grad))
        # one all-reduce: squared norms of each gradient's shard + "has a gradient" flags
        device = self.device
        stats = torch.zeros(2 * len(locals_), dtype=torch.float64, device=device)
        for i, (_, _, grad) in enumerate(locals_):
            if grad is not None:
                stats[i] = grad.detach().double().square().sum()
                stats[len(locals_) + i] = 1.0
        dist.all_reduce(stats)
        norms = stats[: len(locals_)].sqrt().cpu().tolist()
        present = (stats[len(locals_):] > 0).cpu().tolist()
        clip = float(getattr(optimizer, "grad_clip", 0.0) or 0.0)
        optimizer.grad_clip = 0.0  # clipped here by the full norm instead of the shard's
        try:
            for (name, local, grad), norm, has in zip(locals_, norms, present):
                if not has:
                    continue
                if local.dtype != torch.float32:
                    raise ValueError(f"FSDP training needs float32 sharded weights, {name} is {local.dtype}")
                if grad is None:  # pragma: no cover - FSDP gives every rank a (zero) shard
                    grad = torch.zeros_like(local)
                grad = grad.detach().float()
                if self.grad_divide != 1.0:
                    grad = grad / self.grad_divide
                if clip and norm / self.grad_divide >= clip:
                    grad = grad * (clip / (norm / self.grad_divide))
                if local.numel() == 0:
                    continue
                weights = torch2xp(local.data)
                new, _ = optimizer((self.id, name), weights, torch2xp(grad.contiguous()))
                if not shares_memory(local.data, new):
                    local.data.copy_(xp2torch(new, device=local.device))
        finally:
            optimizer.grad_clip = clip
        for _, param in named:
            param.grad = None


_SHARDED_CLASSES: Dict[type, type] = {}


def _sharded_class(base: type) -> type:
    """``ShardedModuleShim`` mixed into the shim's own class (one class per base)."""
    if issubclass(base, ShardedModuleShim):
        return base
    if base not in _SHARDED_CLASSES:
        _SHARDED_CLASSES[base] = type("Sharded" + base.__name__, (ShardedModuleShim, base), {})
    return _SHARDED_CLASSES[base]


def sharded_shims(nlp: Any) -> List[Tuple[Any, Any]]:
    """``(node, shim)`` of every sharded backbone of ``nlp``."""
    found, seen = [], set()
    for _, proc in nlp.pipeline:
        model = getattr(proc, "model", None)
        if model in (True, False, None) or not hasattr(model, "walk"):
            continue
        for node in backbone_nodes(model):
            shim = backbone_shim(node)
            if isinstance(shim, ShardedModuleShim) and shim.id not in seen:
                seen.add(shim.id)
                found.append((node, shim))
    return found


def _mixed_precision(precision: str, device_type: str) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device_type == "cuda" else "fp32"
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def _broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s parameters and buffers to every rank, tensor by tensor, in place
    (no flat copy of a multi-GB model)."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src)


def shard_shim(shim: Any, *, precision: str = "auto", grad_reduce: str = "sum", reshard_after_forward: bool = True,
               dummy_ids: Tuple[int, int] = (0, 2)) -> Any:
    """Shard the backbone of one `TorchModuleShim` in place (rank 0's weights broadcast first)
    and make the shim a `ShardedModuleShim`. Units: each transformer layer, the embeddings, and
    the root (the final LayerNorm and whatever else is left, e.g. a pooler)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    module = shim._model
    device = next(module.parameters()).device
    mesh = init_device_mesh(device.type, (world,))
    policy = _mixed_precision(precision, device.type)
    _broadcast_module(module)
    units = list(module.encoder.layer) + [module.embeddings]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    for unit in units + [module]:
        # a plain SUM over ranks ("mean" divides at the step); without forcing SUM, FSDP would
        # use PREMUL_SUM, which gloo lacks
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    shim.__class__ = _sharded_class(type(shim))
    shim.calls = None
    shim.full_module = None
    shim.grad_divide = float(world) if grad_reduce == "mean" else 1.0
    shim.dummy_ids = (int(dummy_ids[0]), int(dummy_ids[1]))
    return shim


def shard_backbones(nlp: Any, *, exclude: Sequence[str] = (), precision: str = "auto",
                    grad_reduce: str = "sum", reshard_after_forward: bool = True) -> List[Any]:
    """Shard every trainable ``spacy-xlmrxl.Transformer`` (v2 or v1) backbone of ``nlp`` in place.

    Rank 0's weights are broadcast first. Units: each transformer layer, the embeddings, and
    the root (final LayerNorm and anything left). Returns the sharded shims. A pipeline whose
    trainable backbone is not a ``Transformer`` layer (QA, fill-mask models) raises: their forward
    calls are not counted yet.
    """

    shims = []
    seen = set()
    for comp_name, proc in nlp.pipeline:
        model = getattr(proc, "model", None)
        if comp_name in exclude or not getattr(proc, "is_trainable", False) or model in (True, False, None):
            continue
        for node in backbone_nodes(model):
            shim = backbone_shim(node)
            if shim.id in seen or not shim.has_module or shim.frozen:
                continue
            seen.add(shim.id)
            if not is_transformer_layer(node):
                raise NotImplementedError(
                    f"--strategy fsdp shards spacy-xlmrxl.Transformer backbones (shared through listeners: "
                    f"ner, textcat); {comp_name!r} has its own backbone ({node.name!r}): use --strategy ddp")
            if shim.precision == "fp16":
                raise NotImplementedError("fp16 loss scaling is not supported with FSDP: use mixed_precision bf16")
            if getattr(shim, "quantize", None):
                raise NotImplementedError("a quantized backbone cannot be trained")
            tokenizer = get_tokenizer(node)
            dummy_ids = (tokenizer.bos_id, tokenizer.eos_id)
            shard_shim(shim, precision=precision, grad_reduce=grad_reduce,
                       reshard_after_forward=reshard_after_forward, dummy_ids=dummy_ids)
            shims.append(shim)
    assert all(isinstance(s, TorchModuleShim) for s in shims)
    return shims


class CallBalancer:
    """Equal numbers of backbone calls on every rank for each (sub)batch of an update."""

    def __init__(self, nlp: Any) -> None:
        self.nodes = sharded_shims(nlp)
        self.padded = 0  # dummy calls this rank made

    def total_padded(self) -> int:
        """Collective: the dummy calls of all ranks so far."""
        value = torch.tensor([self.padded], dtype=torch.int64, device=collective_device(None))
        dist.all_reduce(value)
        return int(value.item())

    def local_calls(self, docs: Sequence[Any]) -> List[int]:
        """Model calls each sharded backbone makes for ``docs`` (the plan of its forward)."""

        counts = []
        for node, _ in self.nodes:
            if not docs:
                counts.append(0)
                continue
            plan = transformer_call_plan(node, docs)[2]
            counts.append(len(plan.batches))
        return counts

    def targets(self, subbatches: Sequence[Sequence[Any]], n_slots: int) -> numpy.ndarray:
        """``(n_slots, n_backbones)`` of the largest call count over ranks per subbatch slot."""
        local = numpy.zeros((n_slots, len(self.nodes)), dtype="int64")
        for i, sub in enumerate(subbatches):
            local[i] = self.local_calls([eg.predicted for eg in sub])
        flat = torch.from_numpy(local.reshape(-1).copy()).to(collective_device(None))
        dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        return flat.cpu().numpy().reshape(local.shape)

    @contextlib.contextmanager
    def expect(self, local: Sequence[int], target: Sequence[int]) -> Iterator[None]:
        """While active, each backbone pads its calls from ``local`` to ``target``."""
        for (_, shim), n, t in zip(self.nodes, local, target):
            shim.calls = _Calls(local=int(n), target=int(t))
        try:
            yield
            for (node, shim), n in zip(self.nodes, local):
                if shim.calls.seen != n:
                    raise RuntimeError(f"backbone {node.name!r} made {shim.calls.seen} calls, {n} were planned: "
                                       "the ranks' collectives no longer match")
        finally:
            for _, shim in self.nodes:
                shim.calls = None

    def dummy_update(self, target: Sequence[int]) -> None:
        for (_, shim), t in zip(self.nodes, target):
            shim.dummy_update(int(t))


def gather_full_state(module: torch.nn.Module, *, keep: bool) -> Dict[str, torch.Tensor]:
    """Collective: the full state dict of a sharded ``module``, one tensor at a time, as CPU
    copies (kept only where ``keep``; the other ranks only take part in the all-gathers)."""
    state: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            if keep:
                state[name] = full.detach().to("cpu", copy=True)
            del full
    return state


@contextlib.contextmanager
def full_backbones(nlp: Any, *, rank: int) -> Iterator[None]:
    """Collective: gathers each sharded backbone's full state dict (on CPU) to rank 0, where it
    is the module of the shim while the block runs (``nlp.to_disk`` writes it); on the other
    ranks the block runs with nothing changed."""
    shims = [shim for _, shim in sharded_shims(nlp)]
    for shim in shims:
        state = gather_full_state(shim._model, keep=rank == 0)
        if rank == 0:
            if shim.model_cls is None:  # pragma: no cover - a Transformer layer always has one
                raise ValueError("cannot rebuild the full backbone: the shim has no model class")
            full = empty_like(shim._model, shim.model_cls, **shim.model_kwargs)  # LoRA layers too
            full.load_state_dict(state, assign=True)
            shim.full_module = full.train(shim._model.training)
        del state
    try:
        yield
    finally:
        for shim in shims:
            shim.full_module = None
