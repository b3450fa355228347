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
