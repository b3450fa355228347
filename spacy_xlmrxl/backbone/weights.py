"""A torch module as files: an HF checkpoint directory, or its files as bytes.

Owns `save_module_dir` / `load_module_dir` (``config.json`` + (sharded) safetensors + the
tokenizer model, loaded back by memory map) and `module_to_bytes` / `module_from_bytes` (the
same files in memory, for ``to_bytes`` and pickling).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Type, Union

import torch

from .devices import torch_device
from .source import CONFIG_FILE, TOKENIZER_FILE, PathLike

#: Largest safetensors shard written (HF's default); read at each save, so tests can lower it.
DEFAULT_MAX_SHARD_SIZE: Union[int, str] = "5GB"


# --------------------------------------------------------------------------- weight directories
def save_module_dir(module: torch.nn.Module, directory: PathLike, *, tokenizer_model: Optional[bytes] = None,
                    max_shard_size: Union[int, str, None] = None) -> Path:
    """Write ``module`` as an HF checkpoint directory: ``config.json`` + safetensors (sharded over
    ``max_shard_size``, with an index) + ``sentencepiece.bpe.model``. No pickle and no msgpack,
    so modules over 4 GiB serialise; the directory is itself a valid ``checkpoint``."""
    from modeling.checkpoint import save_pretrained

    shard_size = DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size
    out = save_pretrained(module, directory, max_shard_size=shard_size)
    if tokenizer_model is not None:
        (out / TOKENIZER_FILE).write_bytes(tokenizer_model)
    return out


def load_module_dir(model_cls: Type[torch.nn.Module], directory: PathLike, *, device: Optional[torch.device] = None,
                    dtype: Union[str, torch.dtype, None] = "auto", **model_kwargs: Any) -> torch.nn.Module:
    """Rebuild a module written by `save_module_dir`: parameters built on the meta device and
    assigned from the memory-mapped safetensors (no second copy when the dtype is kept)."""
    from modeling.checkpoint import CheckpointError, load_pretrained

    if not (Path(directory) / CONFIG_FILE).is_file():  # saved by us: never infer the config from shapes
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: missing; the backbone directory is incomplete")
    return load_pretrained(model_cls, directory, dtype=dtype, device=device or torch_device(), **model_kwargs)


def module_to_bytes(module: torch.nn.Module, tokenizer_model: Optional[bytes] = None) -> Dict[str, bytes]:
    """The files of `save_module_dir` as ``{name: bytes}`` (for ``to_bytes`` and pickling)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_module_dir(module, Path(tmp) / "m", tokenizer_model=tokenizer_model)
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def module_from_bytes(model_cls: Type[torch.nn.Module], files: Dict[str, bytes], *,
                      device: Optional[torch.device] = None, **model_kwargs: Any) -> torch.nn.Module:
    """Inverse of `module_to_bytes` (the weights are read into memory, not mapped)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            (folder / Path(name).name).write_bytes(data)
        module = load_module_dir(model_cls, folder, device=device, **model_kwargs)
        return _detach_from_files(module)


def _detach_from_files(module: torch.nn.Module) -> torch.nn.Module:
    """Copy memory-mapped parameters into memory (their files are about to be deleted)."""
    with torch.no_grad():
        for param in module.parameters():
            param.data = param.data.clone()
        for name, buf in module.named_buffers():
            buf.data = buf.data.clone()
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()
    return module
