"""Data-parallel spaCy training under ``torchrun``: all-reduced gradients, identical replicas.

Owns `GradientSync` (one flat all-reduce of every gradient of a pipeline: thinc parameters found
by walking each trainable component's model, and the ``.grad`` of the torch parameters inside
its ``PyTorchShim``s) and `train_ddp`, a training loop equivalent to ``spacy train`` driven by
the same ``configs/*.cfg``, plus the CLI::

    torchrun --standalone --nproc_per_node 2 -m spacy_xlmrxl.distributed.ddp configs/ner.cfg \\
        --output training/ddp --paths.train corpus/train.spacy --paths.dev corpus/dev.spacy

Semantics: every rank builds the same global batches as one process would (same seed, same
shuffle, the config's batcher) and trains on its slice ``batch[rank::world_size]``; after
``nlp.update(..., sgd=False)`` the gradients are summed over ranks (``--grad-reduce sum``, right
for spaCy's losses, whose gradients are sums over the examples of a batch; use ``mean`` for a
component whose loss is a per-batch mean) and then every rank runs the same optimizer step, so
the replicas stay identical (rank 0's initial weights are broadcast first). Rank 0 evaluates
every ``eval_frequency`` steps, writes ``train_log.jsonl`` and saves ``model-best`` /
``model-last`` with ``nlp.to_disk``. Backends: gloo on CPU, nccl with ``--gpu`` (one GPU per
rank, ``LOCAL_RANK``). Not supported: ``patience`` (training runs to ``max_steps`` /
``max_epochs``), optimizer parameter averages for evaluation, FSDP (see the README: for XL/XXL
the backbone would be wrapped with ``torch.distributed.fsdp`` per transformer layer instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch
import torch.distributed as dist

REDUCTIONS = ("sum", "mean")


class GradientSync:
    """Every trainable parameter slot of a pipeline, in one order that is the same on all ranks.

    Thinc slots are ``(model node, parameter name)`` pairs; torch slots are the parameters of
    the torch modules held by ``PyTorchShim``s. Components that share a model (listeners) are
    visited once.
    """

    def __init__(self, nlp: Any, *, exclude: Sequence[str] = ()) -> None:
        from thinc.shims import PyTorchShim

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
                    if isinstance(shim, PyTorchShim) and shim.id not in seen_shims:
                        seen_shims.add(shim.id)
                        self.torch_params.extend(p for p in shim._model.parameters() if p.requires_grad)

    @staticmethod
    def _world() -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _thinc_arrays(self, grads: bool) -> Iterator[Tuple[Optional[numpy.ndarray], Tuple[int, ...]]]:
        for node, name in self.thinc_slots:
            param = node.get_param(name)
            value = node.get_grad(name) if grads and node.has_grad(name) else (None if grads else param)
            yield (None if value is None else _to_numpy(value)), tuple(param.shape)

    def all_reduce_gradients(self, reduction: str = "sum") -> None:
        """Replace each gradient by its sum (or mean) over ranks; a slot with no gradient on any
        rank stays without one, so the optimizer skips it as it would in one process."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        world = self._world()
        if world == 1 or not (self.thinc_slots or self.torch_params):
            return
        arrays: List[torch.Tensor] = []
        flags: List[float] = []
        for value, shape in self._thinc_arrays(grads=True):
            flags.append(0.0 if value is None else 1.0)
            arrays.append(torch.zeros(shape) if value is None else torch.from_numpy(numpy.ascontiguousarray(value, dtype="float32")))
        for param in self.torch_params:
            flags.append(0.0 if param.grad is None else 1.0)
            grad = torch.zeros_like(param, dtype=torch.float32) if param.grad is None else param.grad.float()
            arrays.append(grad.detach().cpu())
        flat = torch.cat([a.reshape(-1) for a in arrays] + [torch.tensor(flags)])
        device = self.torch_params[0].device if self.torch_params else torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        flat = flat.to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if reduction == "mean":
            flat[: -len(flags)] /= world
        flat = flat.cpu()
        offset, n_slots = 0, len(self.thinc_slots)
        for index, array in enumerate(arrays):
            reduced = flat[offset: offset + array.numel()].view(array.shape)
            offset += array.numel()
            if flat[-len(flags) + index] == 0:
                continue
            if index < n_slots:
                node, name = self.thinc_slots[index]
                node.set_grad(name, node.ops.asarray(reduced.numpy().copy()))
            else:
                param = self.torch_params[index - n_slots]
                param.grad = reduced.to(device=param.device, dtype=param.dtype).clone()

    def broadcast_parameters(self, src: int = 0) -> None:
        """Copy rank ``src``'s weights to every rank (thinc parameters and torch parameters)."""
        if self._world() == 1:
            return
        tensors = [torch.from_numpy(numpy.ascontiguousarray(v, dtype="float32")) for v, _ in self._thinc_arrays(grads=False)]
        tensors += [p.detach().float().cpu() for p in self.torch_params]
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        if dist.get_backend() == "nccl":
            flat = flat.cuda()
        dist.broadcast(flat, src=src)
        flat, offset = flat.cpu(), 0
        for index, tensor in enumerate(tensors):
            value = flat[offset: offset + tensor.numel()].view(tensor.shape)
            offset += tensor.numel()
            if index < len(self.thinc_slots):
                node, name = self.thinc_slots[index]
                node.set_param(name, node.ops.asarray(value.numpy().copy()))
            else:
                with torch.no_grad():
                    self.torch_params[index - len(self.thinc_slots)].copy_(value)


def _to_numpy(array: Any) -> numpy.ndarray:
    return array.get() if hasattr(array, "get") and not isinstance(array, numpy.ndarray) else numpy.asarray(array)


def init_distributed(*, use_gpu: bool) -> Tuple[int, int]:
    """``(rank, world_size)``; joins the torchrun process group when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _reduce_losses(losses: Dict[str, float], names: Sequence[str]) -> Dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return {n: float(losses[n]) for n in names if n in losses}
    values = torch.tensor([float(losses.get(n, 0.0)) for n in names] + [float(n in losses) for n in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)
    values = values.cpu()
    return {n: float(values[i]) for i, n in enumerate(names) if values[len(names) + i] > 0}


def train_ddp(
    config_path: Path,
    output: Path,
    *,
    overrides: Optional[Dict[str, Any]] = None,
    grad_reduce: str = "sum",
    use_gpu: bool = False,
) -> Dict[str, Any]:
    """Train the pipeline of ``config_path`` on this rank (see the module docstring).

    Returns the last log entry (``step``, ``epoch``, ``losses``, ``score``).
    """
    from spacy import util
    from spacy.schemas import ConfigSchemaTraining
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import create_evaluation_callback, create_train_batches, subdivide_batch, update_meta
    from spacy.util import registry, resolve_dot_names

    rank, world = init_distributed(use_gpu=use_gpu)
    if use_gpu:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        util.require_gpu(local_rank)
    config = util.load_config(config_path, overrides=overrides or {}, interpolate=False)
    nlp = init_nlp(config, use_gpu=-1 if not use_gpu else int(os.environ.get("LOCAL_RANK", "0")))
    config = nlp.config.interpolate()
    T = registry.resolve(config["training"], schema=ConfigSchemaTraining)
    train_corpus, dev_corpus = resolve_dot_names(config, [T["train_corpus"], T["dev_corpus"]])
    optimizer, batcher = T["optimizer"], T["batcher"]
    frozen, annotating = T["frozen_components"], T["annotating_components"]
    if T["seed"] is not None:
        util.fix_random_seed(T["seed"])  # the same shuffles and batches on every rank
    sync = GradientSync(nlp, exclude=frozen)
    sync.broadcast_parameters()
    evaluate = create_evaluation_callback(nlp, dev_corpus, T["score_weights"])
    trained = [n for n, p in nlp.pipeline if n not in frozen and getattr(p, "is_trainable", False)]
    output.mkdir(parents=True, exist_ok=True)
    log_path = output / "train_log.jsonl"
    if rank == 0:
        log_path.write_text("")
    best_score, info = None, {}
    max_steps, eval_frequency = T["max_steps"], T["eval_frequency"]
    for step, (epoch, batch) in enumerate(create_train_batches(nlp, train_corpus, batcher, T["max_epochs"]), start=1):
        if T["before_update"]:
            T["before_update"](nlp, {"step": step - 1, "epoch": epoch})
        local = list(batch)[rank::world]
        losses: Dict[str, float] = {}
        for subbatch in subdivide_batch(local, T["accumulate_gradient"]) if local else ():
            nlp.update(subbatch, drop=T["dropout"], losses=losses, sgd=False, exclude=frozen, annotates=annotating)
        sync.all_reduce_gradients(grad_reduce)
        for name, proc in nlp.pipeline:
            if name not in frozen and getattr(proc, "is_trainable", False) and proc.model not in (True, False, None):
                proc.finish_update(optimizer)
        optimizer.step_schedules()
        info = {"step": step, "epoch": epoch, "losses": _reduce_losses(losses, trained), "score": None}
        last = bool(max_steps) and step >= max_steps
        if rank == 0 and (step % eval_frequency == 0 or last):
            score, other_scores = evaluate()
            info.update(score=score, other_scores=other_scores)
            if best_score is None or score > best_score:
                best_score = score
                update_meta(T, nlp, info)
                nlp.to_disk(output / "model-best")
        if rank == 0:
            with log_path.open("a", encoding="utf8") as handle:
                handle.write(json.dumps({k: v for k, v in info.items() if k != "other_scores"}) + "\n")
        if last:
            break
    if rank == 0:
        if info.get("score") is None:
            info["score"], info["other_scores"] = evaluate()
        update_meta(T, nlp, info)
        nlp.to_disk(output / "model-last")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return info


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
    parser.add_argument("--code", type=Path, default=None, help="Python file with custom components")
    args, rest = parser.parse_known_args(argv)
    return args, parse_config_overrides(list(rest))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = _parse_args(argv)
    if args.code is not None:
        from spacy.util import import_file

        import_file(args.code.stem, args.code)
    info = train_ddp(args.config, args.output, overrides=overrides, grad_reduce=args.grad_reduce, use_gpu=args.gpu)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in info.items() if k != "other_scores"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
