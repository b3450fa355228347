"""Torch pickles (HF ``pytorch_model.bin``, fairseq ``model.pt``): `PickledFile`, read only through
``torch.load(weights_only=True)`` (memory-mapped for zip files), the messages that refuse a
pickle needing more than tensors or name a truncated / corrupt file, and `write_torch_pickle`
(HF's ``safe_serialization=False`` files: a plain state dict of tensors)."""

from __future__ import annotations

import argparse
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import Tensor

from .files import CheckpointError, PathLike, Shape, TensorFile

__all__ = ["PickledFile", "write_torch_pickle"]


class PickledFile(TensorFile):
    """A ``torch.save`` file (HF ``pytorch_model.bin`` or fairseq ``model.pt``), loaded with
    ``torch.load(weights_only=True)`` (memory-mapped for zip files).

    The tensors are the state dict itself, or its ``"model"`` entry (fairseq); ``extras`` keeps
    the other top-level entries (fairseq ``args`` / ``cfg``).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        loaded = _torch_load(self.path)
        state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{self.path}: holds no state dict of tensors (got {type(loaded).__name__})")
        self.extras: Dict[str, Any] = {k: v for k, v in loaded.items() if k != "model"} if "model" in loaded else {}
        self._tensors: Dict[str, Tensor] = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}

    def keys(self) -> List[str]:
        return list(self._tensors)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def shape(self, key: str) -> Shape:
        return tuple(self._tensors[key].shape)

    def view(self, key: str) -> Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors = {}



def write_torch_pickle(path: PathLike, names: Sequence[str], produce: Callable[[str], Tensor]) -> None:
    """``torch.save`` the tensors ``produce(name)`` of ``names`` as a state dict into ``path``,
    flushed to disk. Each tensor is copied into storage of its own first: a view would carry its
    whole underlying storage (e.g. a memory-mapped file) into the pickle."""
    state = {name: produce(name).detach().to("cpu", copy=True).contiguous() for name in names}
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


_PICKLE_REFUSED = (
    "refused to load {path}: it is a pickle that needs more than tensors to be rebuilt ({reason}). "
    "Only torch.load(weights_only=True) is used, so code in a pickle never runs. If the file comes "
    "from a source you trust (e.g. an original fairseq model.pt), convert it once: load it with "
    "torch.load(weights_only=False) in a separate session, then save its state dict (the 'model' "
    "entry of a fairseq file) with safetensors.torch.save_file or torch.save({{'model': state}})."
)


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when the file is a zip; errors name the file."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file: {err}") from err
    use_mmap = magic == b"PK\x03\x04" and zipfile.is_zipfile(path)
    try:
        # fairseq pickles hold their training arguments as argparse.Namespace: plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_PICKLE_REFUSED.format(path=path, reason=_unpickling_reason(err))) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error) as err:
        raise CheckpointError(f"{path}: truncated or corrupt torch file ({type(err).__name__}: {_first_line(err)})") from err


def _unpickling_reason(err: Exception) -> str:
    text = str(err)
    match = re.search(r"(Unsupported (?:global|operand)[^\n]*|Trying to [^\n]*)", text)
    return match.group(1).strip() if match else _first_line(err)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
