"""LoRA on a pipeline's backbone: putting the adapters on, the base reference, the adapters-only layout.

Owns
- `attach_lora`: the backbone setting ``lora`` applied to a module a shim is given (LoRA layers
  on the targets, the backbone frozen through `modeling.lora.apply_lora`'s ``freeze_base``, the
  task head trainable), or checked against the adapters a loaded module already has;
- `BaseReference` and `base_fingerprint`: which base checkpoint the adapters were trained on
  (its path, a fingerprint of its files, the dtype the base had in memory);
- the adapters-only backbone directory (``lora_save = "adapters"``): `save_adapters_dir` writes
  ``base.json`` (the `BaseReference`), ``config.json`` (the model's config), the tokenizer model
  and ``lora/`` (PEFT files: ``adapter_config.json`` + ``adapter_model.safetensors`` holding the
  adapters and the task head's Parameters, `modeling.lora.head_parameters`); `load_adapters_dir`
  finds the base (the recorded path, else the backbone's ``checkpoint`` setting), refuses one
  whose fingerprint differs, loads it and puts the adapters and head on it; `load_backbone_dir`
  loads a saved backbone directory of either layout.

The fingerprint (`base_fingerprint`) is a sha256 over the checkpoint's files (`checkpoint_files`:
``config.json``, shard index, weight files): each file's name and size, all of ``config.json``,
the index and every safetensors header (the name, dtype, shape and offsets of every tensor),
every file under 1 MiB whole, and of larger files 16 blocks of 64 KiB spread evenly from the
first to the last byte. It reads about 1 MiB per weight file, whatever its size, and catches
another checkpoint, a re-saved or converted one, a truncated file and any change
inside the sampled blocks; a change confined to bytes outside them (one weight edited in place)
goes unnoticed: it is a guard against mixing up bases, not a cryptographic seal.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

import torch

from modeling.checkpoint import WEIGHT_FILE_NAMES, CheckpointError, atomic_directory, checkpoint_files, load_pretrained
from modeling.dtypes import dtype_name
from modeling.lora import (
    LoraConfig,
    apply_lora,
    backbone_of,
    head_parameters,
    load_peft_adapter,
    lora_config_of,
    lora_layers,
    lora_parameters,
    save_peft_adapter,
)

from .source import CONFIG_FILE, TOKENIZER_FILE, BackboneError, PathLike, resolve_checkpoint, torch_dtype
from .weights import LORA_DIR, load_module_dir

BASE_FILE = "base.json"
LORA_SAVE_MODES = ("full", "adapters")
_SAMPLES = 16
_SAMPLE_BYTES = 64 * 1024
_MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header (bytes)


# --------------------------------------------------------------------------- applying the setting
def attach_lora(module: torch.nn.Module, config: LoraConfig, *, seed: Optional[int] = None,
                float32_head: bool = False) -> None:
    """Give ``module`` the adapters of ``config`` (in place): `apply_lora` with ``freeze_base``
    when it has none, else a check that its adapters are those of ``config`` (`BackboneError`
    naming both otherwise) and that its backbone is frozen. ``float32_head``: cast the trainable
    head Parameters of a task model to float32 (a bf16 base with mixed precision: autocast mixes
    the dtypes, and the head trains in float32)."""
    if not lora_layers(module):
        apply_lora(module, config, freeze_base=True, seed=seed)
    else:
        found = lora_config_of(module)
        if found != config:
            raise BackboneError(f"the backbone's LoRA adapters are {found.to_dict()}, but the backbone setting is "
                                f"lora = {config.to_dict()}: set lora to the adapters' settings")
        adapters = {id(param) for _, param in lora_parameters(module)}
        for param in backbone_of(module).parameters():
            if id(param) not in adapters:
                param.requires_grad_(False)
    if float32_head:
        for param in head_parameters(module).values():
            if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()


def check_no_adapters(module: torch.nn.Module) -> None:
    """A backbone set to ``lora = null`` must not hold adapters (it would compute something else)."""
    layers = lora_layers(module)
    if layers:
        raise BackboneError(f"the backbone has LoRA adapters ({lora_config_of(module).to_dict()}, e.g. on "
                            f"{next(iter(layers))}) but its setting is lora = null: set lora to the adapters' "
                            "settings, or merge them into the base (spacy-xlmrxl merge-lora)")


# --------------------------------------------------------------------------- the base reference
def base_fingerprint(path: PathLike) -> str:
    """``"sha256:<hex>"`` over the checkpoint at ``path`` (see the module docstring for what it covers)."""
    digest = hashlib.sha256(b"spacy-xlmrxl base fingerprint v1\n")
    for file in checkpoint_files(path):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode("utf8"))
        with open(file, "rb") as handle:
            if file.suffix == ".json" or size <= _SAMPLES * _SAMPLE_BYTES:
                digest.update(handle.read())
                continue
            if file.suffix == ".safetensors":
                (length,) = struct.unpack("<Q", handle.read(8))
                digest.update(handle.read(min(length, _MAX_HEADER)))
            for index in range(_SAMPLES):
                handle.seek((size - _SAMPLE_BYTES) * index // (_SAMPLES - 1))
                digest.update(handle.read(_SAMPLE_BYTES))
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class BaseReference:
    """The base checkpoint under a backbone's adapters: ``path`` (absolute), ``fingerprint``
    (`base_fingerprint`) and ``dtype`` (the base weights' dtype in memory, e.g. ``bfloat16``)."""

    path: str
    fingerprint: str
    dtype: str

    @classmethod
    def of(cls, path: PathLike, module: torch.nn.Module) -> "BaseReference":
        """The reference of the checkpoint at ``path`` that ``module``'s base was loaded from."""
        param = next(backbone_of(module).parameters())
        return cls(path=str(Path(path).resolve()), fingerprint=base_fingerprint(path), dtype=dtype_name(param.dtype))

    def to_dict(self) -> Dict[str, str]:
        return {"path": self.path, "fingerprint": self.fingerprint, "dtype": self.dtype}

    @classmethod
    def read(cls, file: Path) -> "BaseReference":
        try:
            data = json.loads(file.read_text(encoding="utf8"))
            return cls(path=str(data["path"]), fingerprint=str(data["fingerprint"]), dtype=str(data["dtype"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{file}: not a readable base reference ({error})") from None


# --------------------------------------------------------------------------- the adapters-only layout
def is_adapters_dir(directory: Path) -> bool:
    """Whether ``directory`` is a backbone saved with ``lora_save = "adapters"`` (a base
    reference and no weights of its own)."""
    return (directory / BASE_FILE).is_file() and not any((directory / name).exists() for name in WEIGHT_FILE_NAMES)


def _head_paths(module: torch.nn.Module) -> List[str]:
    """The task head as paths for ``modules_to_save``: a module whose Parameters are all head
    Parameters (``qa_outputs``), else the Parameter itself (``lm_head.bias``, whose module holds the
    tied word embeddings)."""
    heads = head_parameters(module)
    paths: List[str] = []
    for name in heads:
        owner = name.rpartition(".")[0]
        whole = bool(owner) and all(f"{owner}.{n}" in heads for n, _ in module.get_submodule(owner).named_parameters())
        path = owner if whole else name
        if path not in paths:
            paths.append(path)
    return paths


def save_adapters_dir(module: torch.nn.Module, directory: PathLike, *, base: Optional[BaseReference],
                      tokenizer_model: Optional[bytes], replaces: Optional[PathLike] = None) -> Path:
    """Write ``module``'s adapters, task head and base reference as an adapters-only backbone
    directory (see the module docstring), atomically. ``replaces``: the directory this one will
    replace when ``directory`` is a staging copy (the base must not lie inside it)."""
    directory = Path(directory)
    target = Path(replaces if replaces is not None else directory).resolve()
    if base is None:
        raise BackboneError(
            f"{directory}: lora_save = \"adapters\" stores a reference to the base checkpoint, but this backbone was "
            "not loaded from one (a preset is random weights): train from a checkpoint on disk, or set lora_save = \"full\"")
    if Path(base.path) == target or target in Path(base.path).parents:
        raise BackboneError(f"{directory}: the base checkpoint {base.path} lies in the directory being replaced; "
                            "save the pipeline elsewhere, or with lora_save = \"full\"")
    with atomic_directory(directory) as staging:
        module.config.save_pretrained(staging)  # type: ignore[union-attr, operator]
        (staging / BASE_FILE).write_text(json.dumps(base.to_dict(), indent=2) + "\n", encoding="utf8")
        if tokenizer_model is not None:
            (staging / TOKENIZER_FILE).write_bytes(tokenizer_model)
        save_peft_adapter(module, staging / LORA_DIR, base_model_name_or_path=base.path,
                          modules_to_save=_head_paths(module))
    return directory


def find_base(directory: Path, reference: BaseReference, checkpoint: Optional[str]) -> Path:
    """The base checkpoint of the adapters in ``directory``: the recorded path, else
    ``checkpoint`` (the backbone's setting), whichever has the recorded fingerprint."""
    tried: List[str] = []
    seen = set()
    for candidate in [reference.path] + ([checkpoint] if checkpoint else []):
        try:
            path = resolve_checkpoint(candidate)
        except BackboneError:
            tried.append(f"{candidate}: not found")
            continue
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            found = base_fingerprint(path)
        except (CheckpointError, OSError) as error:
            tried.append(f"{path}: unreadable ({error})")
            continue
        if found == reference.fingerprint:
            return path
        tried.append(f"{path}: fingerprint {found}")
    raise BackboneError(
        f"{directory}: these LoRA adapters were trained on the base checkpoint {reference.path} (fingerprint "
        f"{reference.fingerprint}); found instead: {'; '.join(tried)}. Put that base back, or give its new location "
        "as the backbone's checkpoint setting (e.g. spacy.load(path, config={...backbone: {checkpoint: ...}})); "
        "pipelines saved with lora_save = \"full\" carry their base")


def load_adapters_dir(model_cls: Type[torch.nn.Module], directory: PathLike, *, checkpoint: Optional[str] = None,
                      dtype: Optional[str] = None, device: Optional[torch.device] = None,
                      **model_kwargs: Any) -> Tuple[torch.nn.Module, BaseReference]:
    """The module of an adapters-only backbone directory and its base reference (the path where
    the base was found). The base is built in ``dtype`` (null: the recorded one), memory-mapped
    where it already has it; the adapters and the head come from ``lora/`` (a tensor of other
    shapes raises `CheckpointError` naming it)."""
    directory = Path(directory)
    reference = BaseReference.read(directory / BASE_FILE)
    base = find_base(directory, reference, checkpoint)
    wanted = torch_dtype(dtype) or torch_dtype(reference.dtype)
    module = load_pretrained(model_cls, base, config=directory / CONFIG_FILE, dtype=wanted, device=device,
                             **model_kwargs)
    load_peft_adapter(module, directory / LORA_DIR, freeze_base=True)
    found = BaseReference(path=str(base.resolve()), fingerprint=reference.fingerprint, dtype=reference.dtype)
    return module, found


def load_backbone_dir(model_cls: Type[torch.nn.Module], directory: Path, *, source: Any = None,
                      device: Optional[torch.device] = None,
                      **model_kwargs: Any) -> Tuple[torch.nn.Module, Optional[BaseReference]]:
    """The module of a saved backbone directory, either layout, and the `BaseReference` of its
    base when it has LoRA adapters (an adapters-only save: the checkpoint it was found at; a full
    save: ``directory`` itself, which holds the base). ``source`` (the layer's `BackboneSource`):
    its ``dtype`` converts the weights tensor by tensor while loading (null keeps the saved
    dtype, memory-mapped), its ``checkpoint`` is where an adapters-only save's base may have moved."""
    dtype = getattr(source, "dtype", None)
    if is_adapters_dir(directory):
        return load_adapters_dir(model_cls, directory, checkpoint=getattr(source, "checkpoint", None), dtype=dtype,
                                 device=device, **model_kwargs)
    module = load_module_dir(model_cls, directory, device=device, dtype=torch_dtype(dtype) or "auto", **model_kwargs)
    return module, BaseReference.of(directory, module) if lora_layers(module) else None
