"""Torch <-> thinc: devices and arrays.

Owns `torch_device` (the torch device matching thinc's current ops: CPU numpy or GPU cupy),
`to_torch` / `to_xp` (zero-copy where possible), and the rule that a forked child process
(``nlp.pipe(n_process=...)``) runs torch on one thread: torch's OpenMP pool, once started in the
parent, deadlocks in a fork otherwise.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy
import torch
from thinc.api import CupyOps, NumpyOps, Ops, get_current_ops
from thinc.util import torch2xp, xp2torch


def _one_thread_after_fork() -> None:
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


# --------------------------------------------------------------------------- devices
def torch_device(ops: Optional[Ops] = None) -> torch.device:
    """The torch device matching thinc's ops: ``cuda:<current>`` for CupyOps, else CPU."""
    ops = ops if ops is not None else get_current_ops()
    if isinstance(ops, CupyOps):
        return torch.device("cuda", torch.cuda.current_device())
    if type(ops).__name__ == "MPSOps":  # pragma: no cover
        return torch.device("mps")
    return torch.device("cpu")


def to_torch(array: Any, *, device: torch.device, dtype: Optional[torch.dtype] = None,
             requires_grad: bool = False) -> torch.Tensor:
    """A numpy/cupy array as a torch tensor on ``device`` (zero-copy where possible)."""
    if isinstance(array, numpy.ndarray) and not array.flags.c_contiguous:
        array = numpy.ascontiguousarray(array)
    tensor = xp2torch(array, device=device)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if requires_grad:
        tensor.requires_grad_()
    return tensor


def to_xp(tensor: torch.Tensor, ops: Ops, *, dtype: str = "float32") -> Any:
    """A torch tensor as an array of ``ops`` (numpy on CPU, cupy on GPU), detached."""
    tensor = tensor.detach()
    if tensor.is_floating_point() and dtype == "float32" and tensor.dtype != torch.float32:
        tensor = tensor.float()
    if isinstance(ops, NumpyOps) and tensor.device.type != "cpu":
        tensor = tensor.cpu()
    return torch2xp(tensor, ops=ops)
