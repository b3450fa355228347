"""Data-parallel spaCy training under ``torchrun``: all-reduced gradients, identical replicas (DDP),
or the backbone sharded with FSDP (``--strategy fsdp``, see `spacy_xlmrxl.distributed.fsdp`).

Owns `GradientSync` (the all-reduce of every gradient of a pipeline: thinc parameters found by
walking each trainable component's model, through one flat host buffer, and the ``.grad`` of the
torch parameters inside its shims — the project's ``TorchModuleShim`` and thinc's
``PyTorchShim`` — in place on their device, in buckets) and `train_ddp`, a training loop
equivalent to ``spacy train`` driven by the same ``configs/*.cfg``, plus the CLI::

    torchrun --standalone --nproc_per_node 2 -m spacy_xlmrxl.distributed.ddp configs/ner.cfg \
        --output training/ddp --paths.train corpus/train.spacy --paths.dev corpus/dev.spacy \
        [--strategy fsdp] [--gpu]

Semantics: every rank builds the same global batches as one process would (same seed, same
shuffle, the config's batcher) and trains on its slice ``batch[rank::world_size]``; after
``nlp.update(..., sgd=False)`` the gradients are summed over ranks (``--grad-reduce sum``, right
for spaCy's losses, whose gradients are sums over the examples of a batch; use ``mean`` for a
component whose loss is a per-batch mean) and then every rank runs the same optimizer step, so
the replicas stay identical (rank 0's initial weights are broadcast first). Rank 0 evaluates
every ``eval_frequency`` steps (with FSDP every rank does: forward passes are collective),
writes ``train_log.jsonl`` and saves ``model-best`` / ``model-last`` with
`save_pipeline_atomically` (staged beside the target and swapped in; with FSDP from the full
weights gathered on rank 0). Backends: gloo on CPU, nccl with ``--gpu`` (one
GPU per rank: ``cuda:LOCAL_RANK``, set before the process group is created). Not supported:
``patience`` (training runs to ``max_steps`` / ``max_epochs``), optimizer parameter averages for
evaluation; FSDP shards ``Transformer`` (v2, v1) backbones only (ner, textcat), not QA / fill-mask.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch
import torch.distributed as dist
from spacy import util
from spacy.language import Language
from spacy.schemas import ConfigSchemaTraining
from spacy.training import Example
from spacy.training.initialize import init_nlp
from spacy.training.loop import create_evaluation_callback, create_train_batches, subdivide_batch, update_meta
from spacy.util import registry, resolve_dot_names

from ..pipeline.saving import save_pipeline_atomically
from .collectives import (
    BUCKET_BYTES,
    all_reduce_bucket,
    collective_device,
    init_distributed,
    is_sharded,
    reduce_losses,
    to_numpy,
)
from .fsdp import CallBalancer, full_backbones, shard_backbones

REDUCTIONS = ("sum", "mean")
LOG_FILE = "train_log.jsonl"


class GradientSync:
    """Every trainable parameter slot of a pipeline, in one order that is the same on all ranks.

    Thinc slots are ``(model node, parameter name)`` pairs; torch slots are the parameters of
    the torch modules held by shims (thinc's ``PyTorchShim`` and the project's
    ``TorchModuleShim``). Components that share a model (listeners) are visited once.
    Parameters sharded by FSDP (DTensors) are left out: FSDP reduces their gradients itself.
    """

    def __init__(self, nlp: Any, *, exclude: Sequence[str] = ()) -> None:
        self.thinc_slots: List[Tuple[Any, str]] = []
        self.torch_params: List[torch.nn.Parameter] = []
        seen_nodes, seen_shims = set(), set()
        for name, proc in nlp.pipeline:
            model = getattr(proc, "model", None)
            if name in exclude or not getattr(proc, "is_trainable", False) or model in (True, False, None):
                continue
            for node in model.walk():
                if node.id in seen_nodes:
                    continue
                seen_nodes.add(node.id)
                self.thinc_slots.extend((node, p) for p in node.param_names if node.has_param(p))
                for shim in node.shims:
                    module = getattr(shim, "_model", None)
                    if isinstance(module, torch.nn.Module) and shim.id not in seen_shims:
                        seen_shims.add(shim.id)
                        self.torch_params.extend(p for p in module.parameters()
                                                 if p.requires_grad and not is_sharded(p))

    @staticmethod
    def _world() -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _thinc_arrays(self, grads: bool) -> Iterator[Tuple[Optional[numpy.ndarray], Tuple[int, ...]]]:
        for node, name in self.thinc_slots:
            param = node.get_param(name)
            value = node.get_grad(name) if grads and node.has_grad(name) else (None if grads else param)
            yield (None if value is None else to_numpy(value)), tuple(param.shape)

    def all_reduce_gradients(self, reduction: str = "sum") -> None:
        """Replace each gradient by its sum (or mean) over ranks; a slot with no gradient on any
        rank stays without one, so the optimizer skips it as it would in one process.

        Thinc gradients go through one flat host buffer (they are small: the task heads); torch
        gradients (the backbone: GBs for XL) are reduced where they live, in place, in buckets
        of `BUCKET_BYTES`, with no host copy.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        world = self._world()
        if world == 1 or not (self.thinc_slots or self.torch_params):
            return
        device = collective_device(self.torch_params[0].device if self.torch_params else None)
        # one small all-reduce of the "has a gradient" flags of every slot, thinc and torch
        thinc_values = list(self._thinc_arrays(grads=True))
        flags = torch.tensor([0.0 if v is None else 1.0 for v, _ in thinc_values]
                             + [0.0 if p.grad is None else 1.0 for p in self.torch_params], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        present = (flags > 0).cpu().tolist()
        n_slots = len(self.thinc_slots)
        arrays = [torch.zeros(shape) if value is None
                  else torch.from_numpy(numpy.ascontiguousarray(value, dtype="float32"))
                  for value, shape in thinc_values]
        if arrays:
            flat = torch.cat([a.reshape(-1) for a in arrays]).to(device)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if reduction == "mean":
                flat /= world
            flat, offset = flat.cpu(), 0
            for index, array in enumerate(arrays):
                reduced = flat[offset: offset + array.numel()].view(array.shape)
                offset += array.numel()
                if present[index]:
                    node, name = self.thinc_slots[index]
                    node.set_grad(name, node.ops.asarray(reduced.numpy().copy()))
        bucket: List[torch.Tensor] = []
        size = 0
        for index, param in enumerate(self.torch_params):
            if not present[n_slots + index]:
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            bucket.append(param.grad)
            size += param.grad.numel() * 4
            if size >= BUCKET_BYTES:
                all_reduce_bucket(bucket, device, world if reduction == "mean" else 1)
                bucket, size = [], 0
        if bucket:
            all_reduce_bucket(bucket, device, world if reduction == "mean" else 1)

    def broadcast_parameters(self, src: int = 0) -> None:
        """Copy rank ``src``'s weights to every rank: thinc parameters through one flat buffer,
        torch parameters tensor by tensor, in place where they live."""
        if self._world() == 1:
            return
        device = collective_device(self.torch_params[0].device if self.torch_params else None)
        tensors = [torch.from_numpy(numpy.ascontiguousarray(v, dtype="float32")) for v, _ in self._thinc_arrays(grads=False)]
        if tensors:
            flat = torch.cat([t.reshape(-1) for t in tensors]).to(device)
            dist.broadcast(flat, src=src)
            flat, offset = flat.cpu(), 0
            for index, tensor in enumerate(tensors):
                value = flat[offset: offset + tensor.numel()].view(tensor.shape)
                offset += tensor.numel()
                node, name = self.thinc_slots[index]
                node.set_param(name, node.ops.asarray(value.numpy().copy()))
        with torch.no_grad():
            for param in self.torch_params:
                if param.device == device:
                    dist.broadcast(param.data, src=src)
                else:
                    value = param.detach().to(device)
                    dist.broadcast(value, src=src)
                    param.copy_(value)


STRATEGIES = ("ddp", "fsdp")


@dataclass
class _Run:
    """What one rank's training loop works with (built by `_start_run`)."""

    nlp: Language
    T: Dict[str, Any]  # the resolved [training] block
    train_corpus: Callable[[Language], Iterable[Example]]
    evaluate: Callable[[], Tuple[float, Dict[str, Any]]]
    sync: GradientSync
    balancer: Optional[CallBalancer]
    rank: int
    world: int
    output: Path
    trained: List[str]

    @property
    def evaluates(self) -> bool:
        """Rank 0 evaluates; with FSDP every rank does (a forward pass is collective)."""
        return self.rank == 0 or self.balancer is not None

    @property
    def frozen(self) -> List[str]:
        return self.T["frozen_components"]


def train_ddp(
    config_path: Path,
    output: Path,
    *,
    overrides: Optional[Dict[str, Any]] = None,
    grad_reduce: str = "sum",
    use_gpu: bool = False,
    strategy: str = "ddp",
    fsdp_precision: str = "auto",
) -> Dict[str, Any]:
    """Train the pipeline of ``config_path`` on this rank (see the module docstring).

    ``strategy="fsdp"`` shards the trainable ``Transformer`` (v2 or v1) backbones with FSDP2 (see
    `spacy_xlmrxl.distributed.fsdp`; ``fsdp_precision``: ``auto`` = bf16 on GPU, fp32 on CPU).
    ``model-best`` / ``model-last`` are written with `save_pipeline_atomically`: each directory
    is the previous or the new complete pipeline whenever the run stops.
    Returns the last log entry (``step``, ``epoch``, ``losses``, ``score``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if grad_reduce not in REDUCTIONS:
        raise ValueError(f"grad_reduce must be one of {REDUCTIONS}, got {grad_reduce!r}")
    run = _start_run(config_path, output, overrides=overrides or {}, grad_reduce=grad_reduce, use_gpu=use_gpu,
                     strategy=strategy, fsdp_precision=fsdp_precision)
    info = _train(run, grad_reduce)
    if run.evaluates:
        if info.get("score") is None:
            info["score"], info["other_scores"] = run.evaluate()
        update_meta(run.T, run.nlp, info)
        _save(run, output / "model-last")
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return info


def _start_run(config_path: Path, output: Path, *, overrides: Dict[str, Any], grad_reduce: str, use_gpu: bool,
               strategy: str, fsdp_precision: str) -> _Run:
    """Join the process group, build and initialise the pipeline (shard it with FSDP), give
    every rank rank 0's weights, and resolve the training settings."""
    rank, world = init_distributed(use_gpu=use_gpu)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_gpu:
        util.require_gpu(local_rank)
    config = util.load_config(config_path, overrides=overrides, interpolate=False)
    nlp = init_nlp(config, use_gpu=-1 if not use_gpu else local_rank)
    config = nlp.config.interpolate()
    T = registry.resolve(config["training"], schema=ConfigSchemaTraining)
    train_corpus, dev_corpus = resolve_dot_names(config, [T["train_corpus"], T["dev_corpus"]])
    if T["seed"] is not None:
        util.fix_random_seed(T["seed"])  # the same shuffles and batches on every rank
    frozen = T["frozen_components"]
    balancer = None
    if strategy == "fsdp" and world > 1:
        shard_backbones(nlp, exclude=frozen, precision=fsdp_precision, grad_reduce=grad_reduce)
        balancer = CallBalancer(nlp)
    sync = GradientSync(nlp, exclude=frozen)  # with FSDP: the replicated (non-backbone) weights
    sync.broadcast_parameters()
    trained = [n for n, p in nlp.pipeline if n not in frozen and getattr(p, "is_trainable", False)]
    output.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (output / LOG_FILE).write_text("")
    return _Run(nlp=nlp, T=T, train_corpus=train_corpus, sync=sync, balancer=balancer, rank=rank, world=world,
                evaluate=create_evaluation_callback(nlp, dev_corpus, T["score_weights"]), output=output,
                trained=trained)


def _train(run: _Run, grad_reduce: str) -> Dict[str, Any]:
    """The training loop: update, evaluate every ``eval_frequency`` steps, save ``model-best``,
    log; until ``max_steps`` / ``max_epochs``. Returns the last log entry."""
    T = run.T
    best_score, info = None, {}
    max_steps, eval_frequency = T["max_steps"], T["eval_frequency"]
    batches = create_train_batches(run.nlp, run.train_corpus, T["batcher"], T["max_epochs"])
    for step, (epoch, batch) in enumerate(batches, start=1):
        if T["before_update"]:
            T["before_update"](run.nlp, {"step": step - 1, "epoch": epoch})
        losses = _update(run, list(batch)[run.rank::run.world], grad_reduce)
        info = {"step": step, "epoch": epoch, "losses": reduce_losses(losses, run.trained), "score": None}
        if run.balancer is not None:  # dummy backbone calls so far, all ranks (the cost of balancing)
            info["fsdp_dummy_calls"] = run.balancer.total_padded()
        last = bool(max_steps) and step >= max_steps
        if run.evaluates and (step % eval_frequency == 0 or last):
            score, other_scores = run.evaluate()
            info.update(score=score, other_scores=other_scores)
            if best_score is None or score > best_score:
                best_score = score
                update_meta(T, run.nlp, info)
                _save(run, run.output / "model-best")
        if run.rank == 0:
            with (run.output / LOG_FILE).open("a", encoding="utf8") as handle:
                handle.write(json.dumps({k: v for k, v in info.items() if k != "other_scores"}) + "\n")
        if last:
            break
    return info


def _update(run: _Run, local: List[Example], grad_reduce: str) -> Dict[str, float]:
    """One optimizer step on this rank's slice of the global batch (gradients summed over ranks)."""
    T = run.T
    losses: Dict[str, float] = {}
    accumulate = max(1, int(T["accumulate_gradient"]))
    subbatches = list(subdivide_batch(local, accumulate)) if local else []
    if run.balancer is None:
        for subbatch in subbatches:
            run.nlp.update(subbatch, drop=T["dropout"], losses=losses, sgd=False, exclude=run.frozen,
                           annotates=T["annotating_components"])
    else:
        _balanced_updates(run, subbatches, accumulate, losses)
    run.sync.all_reduce_gradients(grad_reduce)
    for name, proc in run.nlp.pipeline:
        if name not in run.frozen and getattr(proc, "is_trainable", False) and proc.model not in (True, False, None):
            proc.finish_update(T["optimizer"])
    T["optimizer"].step_schedules()
    return losses


def _balanced_updates(run: _Run, subbatches: List[List[Example]], accumulate: int, losses: Dict[str, float]) -> None:
    """With FSDP: the same number of backbone calls on every rank, per subbatch slot."""
    balancer, T = run.balancer, run.T
    assert balancer is not None
    slots = accumulate + 1  # subdivide_batch yields at most accumulate_gradient + 1 parts
    targets = balancer.targets(subbatches, slots)
    for i in range(slots):
        if i < len(subbatches):
            calls = balancer.local_calls([eg.predicted for eg in subbatches[i]])
            balancer.padded += int(sum(t - c for t, c in zip(targets[i], calls)))
            with balancer.expect(calls, targets[i]):
                run.nlp.update(subbatches[i], drop=T["dropout"], losses=losses, sgd=False, exclude=run.frozen,
                               annotates=T["annotating_components"])
        else:
            balancer.padded += int(sum(targets[i]))
            balancer.dummy_update(targets[i])


def _save(run: _Run, path: Path) -> None:
    """Write the pipeline to ``path`` through a staging directory (with FSDP from the full
    weights gathered on rank 0)."""
    if run.balancer is None:
        save_pipeline_atomically(run.nlp, path)
        return
    with full_backbones(run.nlp, rank=run.rank):
        if run.rank == 0:
            save_pipeline_atomically(run.nlp, path)


def _parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    from spacy.cli._util import parse_config_overrides

    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m spacy_xlmrxl.distributed.ddp",
        description="Data-parallel training of a spaCy config (gloo on CPU, nccl with --gpu).",
    )
    parser.add_argument("config", type=Path)
    parser.add_argument("--output", "-o", type=Path, required=True)
    parser.add_argument("--grad-reduce", choices=REDUCTIONS, default="sum")
    parser.add_argument("--gpu", action="store_true", help="one GPU per rank (LOCAL_RANK), nccl backend")
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                        help="ddp: replicated model, all-reduced gradients; fsdp: FSDP2-sharded backbone")
    parser.add_argument("--fsdp-precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="FSDP compute/all-gather dtype (auto: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--code", type=Path, default=None, help="Python file with custom components")
    args, rest = parser.parse_known_args(argv)
    return args, parse_config_overrides(list(rest))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = _parse_args(argv)
    if args.code is not None:
        from spacy.util import import_file

        import_file(args.code.stem, args.code)
    info = train_ddp(args.config, args.output, overrides=overrides, grad_reduce=args.grad_reduce, use_gpu=args.gpu,
                     strategy=args.strategy, fsdp_precision=args.fsdp_precision)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in info.items() if k != "other_scores"}), file=sys.stderr)
    return 0


def _exit_without_teardown(code: int) -> None:
    """End a torchrun rank at once, once its work is saved and its process group destroyed.

    Seen on CPU with gloo and FSDP2 (in some runs under load): the interpreter's teardown
    aborts with "terminate called without an active exception" (a communication thread still
    joinable while its owner is destroyed), turning a finished run into exit code -6. Skipping
    the teardown (after flushing) keeps the exit code honest; single-process runs exit normally.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_teardown(status)
    raise SystemExit(status)
