"""The collectives of torchrun training: joining the process group, the device a collective
needs, bucketed all-reduce of gradients and of the losses. Imported by `ddp` and `fsdp`, which
do not import each other's private names.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy
import torch
import torch.distributed as dist

BUCKET_BYTES = 256 * 1024 ** 2  # torch gradients are all-reduced in float32 buckets of this size


def collective_device(preferred: Optional[torch.device]) -> torch.device:
    """Where a tensor must be for a collective: this rank's GPU with nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if preferred is None or preferred.type != "cpu" else preferred


def all_reduce_bucket(grads: List[torch.Tensor], device: torch.device, divide: int) -> None:
    """Sum ``grads`` over ranks (float32, one flat buffer on ``device``) and write them back."""
    flat = torch.cat([g.detach().reshape(-1).to(device=device, dtype=torch.float32) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if divide != 1:
        flat /= divide
    offset = 0
    with torch.no_grad():
        for grad in grads:
            grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def is_sharded(param: torch.Tensor) -> bool:
    return hasattr(param, "to_local") and hasattr(param, "placements")  # a DTensor (FSDP2)


def to_numpy(array: Any) -> numpy.ndarray:
    return array.get() if hasattr(array, "get") and not isinstance(array, numpy.ndarray) else numpy.asarray(array)


def init_distributed(*, use_gpu: bool) -> Tuple[int, int]:
    """``(rank, world_size)``; joins the torchrun process group when ``WORLD_SIZE`` > 1.

    With ``use_gpu`` the process's GPU is ``cuda:LOCAL_RANK`` (set before the process group
    exists, so that nccl binds to it) and the backend is nccl; otherwise gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if use_gpu:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def reduce_losses(losses: Dict[str, float], names: Sequence[str]) -> Dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return {n: float(losses[n]) for n in names if n in losses}
    values = torch.tensor([float(losses.get(n, 0.0)) for n in names] + [float(n in losses) for n in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)
    values = values.cpu()
    return {n: float(values[i]) for i, n in enumerate(names) if values[len(names) + i] > 0}
