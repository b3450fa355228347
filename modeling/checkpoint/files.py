"""The common ground of checkpoint I/O: `CheckpointError`, the `TensorFile` interface that every
weights-file reader implements, the HF / fairseq weight-file names and the shared type aliases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "PathLike", "DTypeLike", "Shape", "SAFE_WEIGHTS_NAME", "SAFE_INDEX_NAME", "PT_WEIGHTS_NAME",
    "PT_INDEX_NAME", "FAIRSEQ_NAME", "WEIGHT_FILE_NAMES", "CheckpointError", "TensorFile",
]

PathLike = Union[str, "os.PathLike[str]"]
DTypeLike = Union[None, str, torch.dtype]
Shape = Tuple[int, ...]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
PT_WEIGHTS_NAME = "pytorch_model.bin"
PT_INDEX_NAME = "pytorch_model.bin.index.json"
FAIRSEQ_NAME = "model.pt"
# looked for in this order inside a checkpoint directory
WEIGHT_FILE_NAMES = (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME, PT_WEIGHTS_NAME, PT_INDEX_NAME, FAIRSEQ_NAME)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file (and key).
    A ``RuntimeError``, as HF's loader raises for weights that do not fit."""


class TensorFile:
    """The tensors of one weights file, read lazily.

    `view` returns a CPU tensor backed by the file where the format allows (no copy);
    `materialize` returns the tensor in the wanted dtype on the wanted device, the view itself
    when it already fits.
    """

    path: Path

    def keys(self) -> List[str]:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def shape(self, key: str) -> Shape:
        raise NotImplementedError

    def view(self, key: str) -> Tensor:
        raise NotImplementedError

    def position(self, key: str) -> int:
        """Sort key for reading the file front to back."""
        return 0

    def close(self) -> None:
        """Drop this object's own references (tensors handed out keep their memory alive)."""

    def materialize(self, key: str, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``key`` as a ``dtype`` tensor on ``device``; the file-backed view itself when it fits."""
        source = self.view(key)
        if source.dtype == dtype and device.type == "cpu":
            return source
        return self._convert(key, source, dtype=dtype, device=device)

    def _convert(self, key: str, source: Tensor, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        return source.to(device=device, dtype=dtype)
