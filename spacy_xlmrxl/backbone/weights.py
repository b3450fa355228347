"""A torch module as files: an HF checkpoint directory, or its files as bytes.

Owns `save_module_dir` / `load_module_dir` (``config.json`` + (sharded) safetensors + the
tokenizer model, loaded back by memory map) and `module_to_bytes` / `module_from_bytes` (the
same files in memory, for ``to_bytes`` and pickling). A module with LoRA adapters is written as
its base (the directory stays an HF checkpoint of the base, which transformers loads) plus the
adapters in ``lora/`` in the HF PEFT format (``adapter_config.json`` +
``adapter_model.safetensors``, `modeling.lora.save_peft_adapter`), and loaded back with them.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Type, Union

import torch

from .devices import torch_device
from .source import CONFIG_FILE, TOKENIZER_FILE, PathLike

#: Largest safetensors shard written (HF's default); read at each save, so tests can lower it.
DEFAULT_MAX_SHARD_SIZE: Union[int, str] = "5GB"
#: The folder of a weights directory holding the LoRA adapters (HF PEFT format)
LORA_DIR = "lora"
_FILE_NAME = re.compile(r"^(lora/)?[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------- weight directories
def save_module_dir(module: torch.nn.Module, directory: PathLike, *, tokenizer_model: Optional[bytes] = None,
                    max_shard_size: Union[int, str, None] = None) -> Path:
    """Write ``module`` as an HF checkpoint directory: ``config.json`` + safetensors (sharded over
    ``max_shard_size``, with an index) + ``sentencepiece.bpe.model``. No pickle and no msgpack,
    so modules over 4 GiB serialise; the directory is itself a valid ``checkpoint``."""
    from modeling.checkpoint import save_pretrained
    from modeling.lora import lora_layers, save_peft_adapter, without_adapters

    shard_size = DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size
    if lora_layers(module):
        with without_adapters(module):
            out = save_pretrained(module, directory, max_shard_size=shard_size)
        save_peft_adapter(module, out / LORA_DIR)
    else:
        out = save_pretrained(module, directory, max_shard_size=shard_size)
        shutil.rmtree(out / LORA_DIR, ignore_errors=True)  # adapters of an earlier save there
    if tokenizer_model is not None:
        (out / TOKENIZER_FILE).write_bytes(tokenizer_model)
    return out


def load_module_dir(model_cls: Type[torch.nn.Module], directory: PathLike, *, device: Optional[torch.device] = None,
                    dtype: Union[str, torch.dtype, None] = "auto", **model_kwargs: Any) -> torch.nn.Module:
    """Rebuild a module written by `save_module_dir`: parameters built on the meta device and
    assigned from the memory-mapped safetensors (no second copy when the dtype is kept); the
    LoRA adapters of ``lora/``, when there are some, put on it (its base frozen)."""
    from modeling.checkpoint import CheckpointError, load_pretrained
    from modeling.lora import ADAPTER_CONFIG_NAME, load_peft_adapter

    if not (Path(directory) / CONFIG_FILE).is_file():  # saved by us: never infer the config from shapes
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: missing; the backbone directory is incomplete")
    module = load_pretrained(model_cls, directory, dtype=dtype, device=device or torch_device(), **model_kwargs)
    if (Path(directory) / LORA_DIR / ADAPTER_CONFIG_NAME).is_file():
        load_peft_adapter(module, Path(directory) / LORA_DIR, freeze_base=True)
    return module


def module_to_bytes(module: torch.nn.Module, tokenizer_model: Optional[bytes] = None) -> Dict[str, bytes]:
    """The files of `save_module_dir` as ``{name: bytes}`` (for ``to_bytes`` and pickling)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_module_dir(module, Path(tmp) / "m", tokenizer_model=tokenizer_model)
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def module_from_bytes(model_cls: Type[torch.nn.Module], files: Dict[str, bytes], *,
                      device: Optional[torch.device] = None, **model_kwargs: Any) -> torch.nn.Module:
    """Inverse of `module_to_bytes` (the weights are read into memory, not mapped)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            if not _FILE_NAME.match(name) or ".." in name:
                raise ValueError(f"not a file of a saved backbone: {name!r}")
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_bytes(data)
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
