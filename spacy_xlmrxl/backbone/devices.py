"""The torch side of every spacy_xlmrxl component: where weights come from and how torch runs.

Owns
- checkpoint resolution: a local HF/fairseq directory or file, or a hub-style name such as
  ``facebook/xlm-roberta-xl`` looked up ONLY in a local directory or the local HF cache
  (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``) — never downloaded — or
  random init from a preset (``tiny``, ``small``, ``xl``, ``xxl``); see `BackboneSource`;
- tokenizer resolution (the checkpoint's ``sentencepiece.bpe.model`` or an explicit path);
- torch <-> thinc device and array helpers (CPU numpy, GPU cupy, following thinc's current ops);
  a forked child process (``nlp.pipe(n_process=...)``) runs torch on one thread: torch's OpenMP
  pool, once started in the parent, deadlocks in a fork otherwise;
- precision: bf16 autocast, and fp16 autocast with a loss scaler of our own that keeps its scale
  as a Python float (thinc's grad scaler keeps a device tensor and crashes in
  ``torch._amp_update_scale_``, spaCy issue 13512), gradient checkpointing, freezing; a warning
  when bf16 is asked for on a CPU without native bf16 matmuls (`native_bf16_matmul`);
- CPU inference quantisation (``quantize = "int8"``): a dynamic-int8 copy of the backbone's
  ``nn.Linear`` layers that runs the forward passes while the float weights stay for saving
  (`quantize_linear_int8`);
- `TorchModuleShim`: the thinc ``Shim`` that gives a torch module to thinc's optimizer,
  ``use_params``, device moves and byte serialisation (safetensors, not pickle);
- weight directories: `save_module_dir` / `load_module_dir` write and read a torch module as
  ``config.json`` + (sharded) safetensors + the tokenizer model, loaded back by memory map.

This module imports spaCy only through thinc; components, QA and fill-mask all build on it.
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
