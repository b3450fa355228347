"""The common ground of checkpoint I/O: `CheckpointError`, the `TensorFile` interface that every
weights-file reader implements, the HF / fairseq weight-file names and the shared type aliases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

__all__ = [
    "CHUNK_BYTES", "FAIRSEQ_NAME", "PT_INDEX_NAME", "PT_WEIGHTS_NAME", "SAFE_INDEX_NAME", "SAFE_WEIGHTS_NAME",
    "WEIGHT_FILE_NAMES", "CheckpointError", "DTypeLike", "PathLike", "Shape", "TensorFile",
]

PathLike = Union[str, "os.PathLike[str]"]
DTypeLike = Union[None, str, torch.dtype]
Shape = tuple[int, ...]

# bytes of stored data read per piece when a tensor is cast or checked (`TensorFile.chunks`)
CHUNK_BYTES = 32 * 2**20

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
    when it already fits; `chunks` reads the stored values piece by piece (casts and checks read
    through it, so that a format can hand each piece's memory back once it is used).
    """

    path: Path
    #: bytes of stored data per piece of `chunks`
    chunk_bytes: int = CHUNK_BYTES

    def keys(self) -> list[str]:
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

    def chunks(self, key: str) -> Iterator[Tensor]:
        """``key``'s stored values (its dtype, CPU), flattened, in 1-D pieces of at most
        `chunk_bytes` (or one row of the tensor where a row is larger), front to back."""
        flat = self.view(key).reshape(-1)
        yield from flat.split(max(1, self.chunk_bytes // flat.element_size()))

    def materialize(self, key: str, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``key`` as a ``dtype`` tensor on ``device``: the file-backed view itself when it fits,
        else a new tensor filled from `chunks` (peak memory: the result plus a piece or two)."""
        if self.dtype(key) == dtype and device.type == "cpu":
            return self.view(key)
        target = torch.empty(self.shape(key), dtype=dtype, device=device)
        flat, done = target.view(-1), 0
        for piece in self.chunks(key):
            flat[done:done + piece.numel()].copy_(piece)
            done += piece.numel()
        return target
