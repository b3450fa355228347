"""Finding and opening a checkpoint: `open_checkpoint` turns a directory or weights file into a
`Checkpoint` (its files, sharded indexes checked, every tensor under its HF key name, the
``config.json`` beside the weights); no tensor data is read. `index_shards` lists the shards a
shard index names."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..config import CONFIG_NAME
from .fairseq import fairseq_heads, is_fairseq_key, map_fairseq
from .files import WEIGHT_FILE_NAMES, CheckpointError, PathLike, Shape, TensorFile
from .safetensors import SafetensorsFile
from .torch_pickle import PickledFile

__all__ = ["Checkpoint", "open_checkpoint", "checkpoint_files", "index_shards"]

_IGNORED_KEY = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


@dataclass
class Checkpoint:
    """The readable weights of a checkpoint under HF key names.

    ``tensors`` maps each HF key to the file and the key inside it; ``config_file`` is the
    ``config.json`` that belongs to the weights (if any); ``num_attention_heads`` is what a
    fairseq pickle's arguments say (shapes cannot tell it).
    """

    source: Path
    files: List[TensorFile]
    tensors: Dict[str, Tuple[TensorFile, str]]
    config_file: Optional[Path]
    num_attention_heads: Optional[int] = None
    fairseq: bool = False

    def shapes(self) -> Dict[str, Shape]:
        return {key: file.shape(name) for key, (file, name) in self.tensors.items()}

    def describe(self, key: str) -> str:
        """``'<file>' (key '<name in file>')`` for messages."""
        file, name = self.tensors[key]
        return f"{file.path} (key {name!r})"

    def close(self) -> None:
        for file in self.files:
            file.close()


def _locate(path: Path) -> Tuple[Path, Path]:
    """(weights file or shard index, the ``config.json`` beside it, which may not exist) of ``path``."""
    if path.is_dir():
        weights = next((path / name for name in WEIGHT_FILE_NAMES if (path / name).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: no weights found (looked for {', '.join(WEIGHT_FILE_NAMES)})")
        return weights, path / CONFIG_NAME
    if path.is_file():
        return path, path.parent / CONFIG_NAME
    raise CheckpointError(f"{path}: no such file or directory")


def checkpoint_files(path: PathLike) -> List[Path]:
    """The files the checkpoint at ``path`` consists of, none opened: its ``config.json`` (when
    there is one), its shard index (when sharded) and its weight files (checked to exist)."""
    weights, config_file = _locate(Path(path))
    files = [config_file] if config_file.is_file() else []
    if weights.name.endswith(".json"):
        files.append(weights)
    return files + _weight_files(weights)


def open_checkpoint(path: PathLike) -> Checkpoint:
    """Find and open the weights at ``path`` (directory or file); no tensor data is read yet."""
    path = Path(path)
    weights, config_file = _locate(path)
    files = [_open_file(file) for file in _weight_files(weights)]
    checkpoint = Checkpoint(
        source=path,
        files=files,
        tensors={},
        config_file=config_file if config_file.is_file() else None,
    )
    _collect_tensors(checkpoint, weights)
    return checkpoint


def _read_index(index: Path) -> Dict[str, str]:
    """The ``weight_map`` (key -> shard file name) of a shard index."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf8"))["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("weight_map is not a non-empty object")
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as err:  # ValueError: not UTF-8 / JSON
        raise CheckpointError(f"{index}: not a readable shard index ({err})") from err
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(f"{index}: shard {shard!r} of key {key!r} is not a file name beside the index")
    return weight_map


def index_shards(index: Path) -> List[str]:
    """The shard file names a shard index names, in first-use order (checked to be plain names)."""
    return list(dict.fromkeys(_read_index(index).values()))


def _weight_files(weights: Path) -> List[Path]:
    """The files of a checkpoint: itself, or the shards its index names (all checked to exist)."""
    if not weights.name.endswith(".json"):
        return [weights]
    shards: Dict[str, str] = {}
    for key, shard in _read_index(weights).items():
        shards.setdefault(shard, key)
    for shard, key in shards.items():
        if not (weights.parent / shard).is_file():
            raise CheckpointError(
                f"{weights.parent / shard}: shard file is missing (the index {weights.name} maps key {key!r} to it)"
            )
    return [weights.parent / shard for shard in shards]


def _open_file(path: Path) -> TensorFile:
    """By suffix, else by content: zip or pickle -> `PickledFile`, anything else safetensors."""
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file: {err}") from err
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt") or head == b"PK\x03\x04" or head[:1] == b"\x80":
        return PickledFile(path)
    return SafetensorsFile(path)


def _collect_tensors(checkpoint: Checkpoint, weights: Path) -> None:
    """Fill ``checkpoint.tensors`` under HF names (fairseq keys mapped, ignorable keys dropped)."""
    for file in checkpoint.files:
        for name in file.keys():
            checkpoint.tensors.setdefault(name, (file, name))
    if weights.name.endswith(".json"):
        _check_index(weights, checkpoint)
    names = list(checkpoint.tensors)
    if any(is_fairseq_key(name) for name in names):
        checkpoint.fairseq = True
        checkpoint.tensors, generated = map_fairseq(checkpoint.tensors)
        checkpoint.files.extend(generated)
        checkpoint.num_attention_heads = fairseq_heads(checkpoint.files)
    checkpoint.tensors = {k: v for k, v in checkpoint.tensors.items() if not _IGNORED_KEY.search(k)}


def _check_index(index: Path, checkpoint: Checkpoint) -> None:
    """Every key of the index must be in the shard it names."""
    for key, shard in _read_index(index).items():
        file = checkpoint.tensors.get(key, (None,))[0]
        if file is None or file.path.name != shard:
            raise CheckpointError(f"{index.parent / shard}: key {key!r} is missing (the index {index.name} puts it there)")
