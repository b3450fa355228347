"""Checkpoint I/O: reading HF and fairseq weight files, building models from them, writing HF files.

Owns everything between files on disk and model parameters:

- finding the weights of a checkpoint (HF directory with ``model.safetensors``, a sharded
  safetensors index, ``pytorch_model.bin`` or its sharded index; a single ``.safetensors`` /
  ``.bin`` file; a fairseq ``model.pt``) and its ``config.json``;
- reading safetensors through our own header parser and a private (copy-on-write) memory map:
  tensors stored in the wanted dtype are zero-copy views; others are cast chunk by chunk into
  their new tensor, each chunk's source pages handed back as it goes, so a cast never holds two
  copies; pickles only through ``torch.load(weights_only=True)``;
- the fairseq -> HF key map, the ``roberta.`` prefix map between bare and task models, and the
  config inferred from tensor shapes;
- `load_pretrained`: the model is built with its parameters on the meta device (buffers are
  real), each tensor is materialised straight from its file and assigned, parameters missing
  from a checkpoint (task heads, pooler) are initialised, and missing / unexpected keys are
  reported once;
- `save_pretrained`: ``config.json`` + (sharded) safetensors that HF transformers loads, written
  into a temporary directory and renamed into place.

Every failure is a `CheckpointError` whose message names the file and, where there is one, the key.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import mmap
import os
import pickle
import re
import shutil
import struct
import threading
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn

from .config import CONFIG_NAME, ConfigError, XLMRobertaXLConfig

logger = logging.getLogger(__name__)

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
# files that `save_pretrained` (re)writes; other files of an existing directory are kept
_OWNED_FILE = re.compile(
    r"^(config\.json|model\.safetensors(\.index\.json)?|model-\d+-of-\d+\.safetensors"
    r"|pytorch_model\.bin(\.index\.json)?|pytorch_model-\d+-of-\d+\.bin)$"
)
_BACKBONE_PREFIXES = ("embeddings.", "encoder.")
_OPTIONAL_BACKBONE_PREFIXES = ("pooler.",)
_IGNORED_KEY = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")
# bytes of source data cast per step when a tensor is converted (their pages are then released)
_CHUNK_BYTES = 32 * 2**20
_MAX_HEADER_BYTES = 100_000_000

_ST_DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
_ST_NAMES = {dtype: name for name, dtype in _ST_DTYPES.items()}
_DTYPE_NAMES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "half": torch.float16, "fp16": torch.float16}


class CheckpointError(Exception):
    """A checkpoint cannot be read or does not fit the model; the message names the file (and key)."""


# ====================================================================================== files
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


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: Shape
    start: int  # absolute byte offsets in the file
    stop: int


class SafetensorsFile(TensorFile):
    """A ``.safetensors`` file: header parsed and validated up front, data memory-mapped privately.

    The map is copy-on-write (``ACCESS_COPY``): tensors handed out are writable and never change
    the file.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.metadata: Dict[str, str] = {}
        self._entries = self._read_header()
        self._mmap: Optional[mmap.mmap] = None
        self._bytes: Optional[Tensor] = None

    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def _read_header(self) -> Dict[str, _Entry]:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise self._fail(f"truncated safetensors file ({size} bytes; it must start with an 8-byte header length)")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > _MAX_HEADER_BYTES:
                    raise self._fail(f"corrupt safetensors header (it claims {header_len} header bytes)")
                if 8 + header_len > size:
                    raise self._fail(
                        f"truncated or corrupt safetensors file: the header needs {8 + header_len} bytes, the file has {size}"
                    )
                raw = handle.read(header_len)
        except OSError as err:
            raise self._fail(f"cannot read the file: {err}") from err
        try:
            header = json.loads(raw.decode("utf8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._fail(f"corrupt safetensors header (not JSON: {err})") from err
        if not isinstance(header, dict):
            raise self._fail("corrupt safetensors header (not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        self.metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
        base = 8 + header_len
        entries = {key: self._parse_entry(key, info, base) for key, info in header.items()}
        self._check_layout(entries, base, size)
        return entries

    def _parse_entry(self, key: str, info: Any, base: int) -> _Entry:
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(int(n) for n in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as err:
            raise self._fail(f"corrupt safetensors header: the entry of {key!r} is malformed ({info!r})") from err
        if dtype_name not in _ST_DTYPES:
            raise self._fail(f"{key!r} has dtype {dtype_name!r}, which cannot be read (known: {sorted(_ST_DTYPES)})")
        dtype = _ST_DTYPES[dtype_name]
        numel = 1
        for n in shape:
            if n < 0:
                raise self._fail(f"corrupt safetensors header: {key!r} has shape {list(shape)}")
            numel *= n
        if begin < 0 or end - begin != numel * _itemsize(dtype):
            raise self._fail(
                f"corrupt safetensors header: {key!r} ({dtype_name} {list(shape)}) spans bytes {begin}..{end}"
            )
        return _Entry(dtype, shape, base + begin, base + end)

    def _check_layout(self, entries: Dict[str, _Entry], base: int, size: int) -> None:
        offset = base
        for key, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].stop)):
            if entry.start != offset:
                raise self._fail(f"corrupt safetensors header: the data of {key!r} does not follow the previous tensor's")
            if entry.stop > size:
                raise self._fail(
                    f"truncated file: the data of {key!r} ends at byte {entry.stop} but the file has {size} bytes"
                )
            offset = entry.stop
        if offset != size:
            raise self._fail(f"corrupt safetensors file: {size - offset} bytes after the last tensor")

    def keys(self) -> List[str]:
        return list(self._entries)

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key].dtype

    def shape(self, key: str) -> Shape:
        return self._entries[key].shape

    def position(self, key: str) -> int:
        return self._entries[key].start

    def _file_bytes(self) -> Tensor:
        if self._bytes is None:
            with open(self.path, "rb") as handle:
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            self._bytes = torch.frombuffer(self._mmap, dtype=torch.uint8)
        return self._bytes

    def view(self, key: str) -> Tensor:
        entry = self._entries[key]
        data = self._file_bytes()[entry.start:entry.stop]
        if entry.start % _itemsize(entry.dtype):
            data = data.clone()  # misaligned in the file: copy so that the dtype view is legal
        return data.view(entry.dtype).view(entry.shape)

    def _convert(self, key: str, source: Tensor, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A new tensor filled chunk by chunk from the map: the next chunk is prefetched
        (``MADV_WILLNEED``: one large read when the page cache is cold) and each chunk's source
        pages are handed back (``MADV_DONTNEED``) once cast, so peak memory is the result plus
        about two `_CHUNK_BYTES` chunks."""
        entry = self._entries[key]
        target = torch.empty(entry.shape, dtype=dtype, device=device)
        flat_source, flat_target = source.reshape(-1), target.view(-1)
        itemsize = _itemsize(entry.dtype)
        step = max(1, _CHUNK_BYTES // itemsize)
        for first in range(0, flat_source.numel(), step):
            last = min(first + step, flat_source.numel())
            start, stop = entry.start + first * itemsize, entry.start + last * itemsize
            self._advise(mmap.MADV_WILLNEED, stop, stop + step * itemsize)
            flat_target[first:last].copy_(flat_source[first:last])
            self._advise(mmap.MADV_DONTNEED, start, stop)
        return target

    def _advise(self, advice: int, start: int, stop: int) -> None:
        """``madvise`` the whole pages of file bytes ``[start, stop)`` (no-op where unsupported).

        ``MADV_DONTNEED`` is safe on pages that were only read: the private map refills them
        from the file if they are touched again."""
        if self._mmap is None or not hasattr(self._mmap, "madvise"):
            return
        first = start // mmap.PAGESIZE * mmap.PAGESIZE
        last = min(stop, len(self._mmap)) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            try:
                self._mmap.madvise(advice, first, last - first)
            except OSError:  # advice only
                pass

    def close(self) -> None:
        self._bytes = None
        self._mmap = None  # unmapped when the last tensor viewing it is gone


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


class GeneratedTensors(TensorFile):
    """Tensors a checkpoint format leaves implicit (fairseq has no token-type embeddings: zeros)."""

    def __init__(self, path: Path, tensors: Mapping[str, Tuple[Shape, torch.dtype]]) -> None:
        self.path = path
        self._tensors = dict(tensors)

    def keys(self) -> List[str]:
        return list(self._tensors)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key][1]

    def shape(self, key: str) -> Shape:
        return self._tensors[key][0]

    def view(self, key: str) -> Tensor:
        shape, dtype = self._tensors[key]
        return torch.zeros(shape, dtype=dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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


# ================================================================================= discovery
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


def open_checkpoint(path: PathLike) -> Checkpoint:
    """Find and open the weights at ``path`` (directory or file); no tensor data is read yet."""
    path = Path(path)
    if path.is_dir():
        weights = next((path / name for name in WEIGHT_FILE_NAMES if (path / name).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: no weights found (looked for {', '.join(WEIGHT_FILE_NAMES)})")
        config_file = path / CONFIG_NAME
    elif path.is_file():
        weights, config_file = path, path.parent / CONFIG_NAME
    else:
        raise CheckpointError(f"{path}: no such file or directory")
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a readable shard index ({err})") from err
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(f"{index}: shard {shard!r} of key {key!r} is not a file name beside the index")
    return weight_map


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
    if any(_FAIRSEQ_ENCODER.match(name) for name in names):
        checkpoint.fairseq = True
        checkpoint.tensors = _map_fairseq(checkpoint)
        checkpoint.num_attention_heads = _fairseq_heads(checkpoint.files)
    checkpoint.tensors = {k: v for k, v in checkpoint.tensors.items() if not _IGNORED_KEY.search(k)}


def _check_index(index: Path, checkpoint: Checkpoint) -> None:
    """Every key of the index must be in the shard it names."""
    for key, shard in _read_index(index).items():
        file = checkpoint.tensors.get(key, (None,))[0]
        if file is None or file.path.name != shard:
            raise CheckpointError(f"{index.parent / shard}: key {key!r} is missing (the index {index.name} puts it there)")


# ================================================================================== fairseq
_FAIRSEQ_ENCODER = re.compile(r"^(?:encoder|decoder)\.sentence_encoder\.(.+)$")
_FAIRSEQ_LM_HEAD = re.compile(r"^(?:encoder|decoder)\.lm_head\.(.+)$")
_FAIRSEQ_HEAD = re.compile(r"^classification_heads\.([^.]+)\.(dense|out_proj)\.(weight|bias)$")
_FAIRSEQ_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_FAIRSEQ_LAYER_PARTS = {
    "self_attn_layer_norm": "attention.self_attn_layer_norm",
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "final_layer_norm": "LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
}
_FAIRSEQ_ENCODER_PARTS = {
    "embed_tokens.weight": "embeddings.word_embeddings.weight",
    "embed_positions.weight": "embeddings.position_embeddings.weight",
    "layer_norm.weight": "encoder.LayerNorm.weight",
    "layer_norm.bias": "encoder.LayerNorm.bias",
}
_FAIRSEQ_LM_HEAD_PARTS = {"weight": "lm_head.decoder.weight", "bias": "lm_head.bias"}
_FAIRSEQ_DROPPED = re.compile(r"(^|\.)(version|_float_tensor)$")


def fairseq_to_hf_key(key: str, *, single_head: bool = True) -> Optional[str]:
    """The HF name of a fairseq key; ``None`` for bookkeeping entries; unknown keys unchanged.

    ``classification_heads.<name>.*`` becomes ``classifier.*`` when it is the only head.
    """
    if _FAIRSEQ_DROPPED.search(key):
        return None
    match = _FAIRSEQ_ENCODER.match(key)
    if match:
        inner = match.group(1)
        layer = _FAIRSEQ_LAYER.match(inner)
        if layer and layer.group(2) in _FAIRSEQ_LAYER_PARTS:
            index, part, kind = layer.groups()
            return f"encoder.layer.{index}.{_FAIRSEQ_LAYER_PARTS[part]}.{kind}"
        return _FAIRSEQ_ENCODER_PARTS.get(inner, key)
    match = _FAIRSEQ_LM_HEAD.match(key)
    if match:
        inner = match.group(1)
        return _FAIRSEQ_LM_HEAD_PARTS.get(inner, f"lm_head.{inner}")
    match = _FAIRSEQ_HEAD.match(key)
    if match and single_head:
        return f"classifier.{match.group(2)}.{match.group(3)}"
    return key


def _map_fairseq(checkpoint: Checkpoint) -> Dict[str, Tuple[TensorFile, str]]:
    heads = {m.group(1) for m in map(_FAIRSEQ_HEAD.match, checkpoint.tensors) if m}
    mapped: Dict[str, Tuple[TensorFile, str]] = {}
    for name, source in checkpoint.tensors.items():
        key = fairseq_to_hf_key(name, single_head=len(heads) <= 1)
        if key is not None:
            mapped[key] = source
    word = mapped.get("embeddings.word_embeddings.weight")
    if word is not None and "embeddings.token_type_embeddings.weight" not in mapped:
        file, name = word
        hidden = file.shape(name)[-1]
        zeros = GeneratedTensors(file.path, {"token_type_embeddings (zeros)": ((1, hidden), file.dtype(name))})
        checkpoint.files.append(zeros)
        mapped["embeddings.token_type_embeddings.weight"] = (zeros, "token_type_embeddings (zeros)")
    return mapped


def _fairseq_heads(files: Sequence[TensorFile]) -> Optional[int]:
    """``encoder_attention_heads`` from a fairseq pickle's ``args`` / ``cfg``, when it is there."""
    for file in files:
        extras = getattr(file, "extras", {})
        for candidate in (extras.get("args"), _field(extras.get("cfg"), "model")):
            value = _field(candidate, "encoder_attention_heads")
            if isinstance(value, int) and value > 0:
                return value
    return None


def _field(container: Any, name: str) -> Any:
    if isinstance(container, dict):
        return container.get(name)
    return getattr(container, name, None) if isinstance(container, argparse.Namespace) else None


# ============================================================================ config / shapes
_WORD = "embeddings.word_embeddings.weight"
_LAYER_KEY = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def _find(shapes: Mapping[str, Shape], suffix: str) -> Optional[Tuple[str, Shape]]:
    for key, shape in shapes.items():
        if key == suffix or key.endswith("." + suffix):
            return key, shape
    return None


def shape_facts(shapes: Mapping[str, Shape]) -> Dict[str, Tuple[Any, str]]:
    """Config values implied by tensor shapes: field -> (value, key that shows it)."""
    facts: Dict[str, Tuple[Any, str]] = {}
    rules = (
        (_WORD, (("vocab_size", 0), ("hidden_size", 1))),
        ("embeddings.position_embeddings.weight", (("max_position_embeddings", 0),)),
        ("embeddings.token_type_embeddings.weight", (("type_vocab_size", 0),)),
        ("encoder.layer.0.intermediate.dense.weight", (("intermediate_size", 0),)),
    )
    for suffix, fields_ in rules:
        found = _find(shapes, suffix)
        if found and len(found[1]) == 2:
            for name, axis in fields_:
                facts[name] = (found[1][axis], found[0])
    layers = [(int(m.group(1)), key) for key in shapes for m in [_LAYER_KEY.search(key)] if m]
    if layers:
        count, key = max(layers)
        facts["num_hidden_layers"] = (count + 1, key)
    cross = next((key for key in shapes if ".crossattention." in key), None)
    if cross is not None:
        facts["add_cross_attention"] = (True, cross)
    for suffix in ("classifier.out_proj.weight", "classifier.weight", "qa_outputs.weight"):
        found = _find(shapes, suffix)
        if found and len(found[1]) == 2 and found[1][0] > 1:
            facts["num_labels"] = (found[1][0], found[0])
            break
    return facts


def infer_config(
    checkpoint: Checkpoint, *, num_attention_heads: Optional[int] = None, **overrides: Any
) -> XLMRobertaXLConfig:
    """A config from the checkpoint's shapes (for files without ``config.json``).

    Heads cannot be read from shapes: ``num_attention_heads`` (override) wins, then a fairseq
    pickle's arguments, then 32 for the XL / XXL widths (2560, 4096); otherwise it is an error.
    """
    facts = shape_facts(checkpoint.shapes())
    if "hidden_size" not in facts:
        raise CheckpointError(
            f"{checkpoint.source}: no {_WORD!r} among its keys, so it is no XLM-RoBERTa-XL checkpoint "
            f"(first keys: {list(checkpoint.tensors)[:5]})"
        )
    values = {name: value for name, (value, _) in facts.items()}
    if values.get("add_cross_attention"):
        values["is_decoder"] = True
    heads = num_attention_heads or checkpoint.num_attention_heads
    if heads is None and values["hidden_size"] in (2560, 4096):
        heads = 32
    if heads is None:
        raise CheckpointError(
            f"{checkpoint.source}: the number of attention heads cannot be read from the weights "
            f"(hidden size {values['hidden_size']}); pass num_attention_heads=... or a config"
        )
    values["num_attention_heads"] = heads
    if "num_labels" in overrides:
        values.pop("num_labels", None)
    try:
        return XLMRobertaXLConfig.from_dict({**values, **overrides})
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{checkpoint.source}: the config inferred from its shapes is invalid: {err}") from err


def check_config(config: XLMRobertaXLConfig, checkpoint: Checkpoint, *, config_source: str) -> None:
    """Raise when ``config`` disagrees with the tensor shapes (naming file, key and setting)."""
    shapes = checkpoint.shapes()
    for name, (value, key) in shape_facts(shapes).items():
        if name == "num_labels":
            continue  # a head with other labels is a shape mismatch of its own key
        expected = getattr(config, name)
        if expected != value:
            raise CheckpointError(
                f"{config_source} does not match the weights in {checkpoint.describe(key)}: the config says "
                f"{name}={expected!r}, the tensor's shape {list(shapes[key])} means {name}={value!r}"
            )


def resolve_dtype(dtype: DTypeLike, *, config: XLMRobertaXLConfig, checkpoint: Checkpoint) -> torch.dtype:
    """``None`` -> torch's default dtype; ``"auto"`` -> ``config.torch_dtype`` or the file's float dtype."""
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    if name == "auto":
        if config.torch_dtype:
            return _DTYPE_NAMES[config.torch_dtype]
        for file, key in checkpoint.tensors.values():
            if file.dtype(key).is_floating_point:
                return file.dtype(key)
        return torch.get_default_dtype()
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(_DTYPE_NAMES)}, got {dtype!r}")
    return _DTYPE_NAMES[name]


# ============================================================================ building models
_META_LOCK = threading.Lock()
_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "ones_", "zeros_", "orthogonal_")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Construct modules with their parameters on the meta device (no memory, no init cost).

    Buffers stay real, so values a module computes at construction (non-persistent buffers)
    survive. ``torch.nn.init`` functions skip meta tensors meanwhile (some, e.g. ``normal_``,
    would otherwise import torch's Python decompositions: seconds per process). Only the calling
    thread is affected.
    """
    original = nn.Module.register_parameter
    thread = threading.get_ident()

    def register_parameter(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if param is not None and not param.is_meta and threading.get_ident() == thread:
            param = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    def skipping_meta(init: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def wrapped(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if tensor.is_meta and threading.get_ident() == thread:
                return tensor
            return init(tensor, *args, **kwargs)

        return wrapped

    inits = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    with _META_LOCK:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        for name, init in inits.items():
            setattr(nn.init, name, skipping_meta(init))
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]
            for name, init in inits.items():
                setattr(nn.init, name, init)


@dataclass
class _Plan:
    """What goes where: groups of tied names, their sources, and what is missing or left over."""

    groups: List[List[str]]
    sources: Dict[int, str]  # group index -> checkpoint key it is loaded from
    missing: List[str]
    unexpected: List[str]


def _split_overrides(model_cls: type, overrides: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Separate constructor keywords (e.g. ``add_pooling_layer``) from config overrides."""
    accepted = set(inspect.signature(model_cls.__init__).parameters) - {"self", "config"}
    model_kwargs = {k: overrides[k] for k in list(overrides) if k in accepted}
    return model_kwargs, {k: v for k, v in overrides.items() if k not in model_kwargs}


def _resolve_config(
    checkpoint: Checkpoint, config: Any, overrides: Dict[str, Any]
) -> Tuple[XLMRobertaXLConfig, Optional[str]]:
    """The config to build with, and where it came from (``None`` when inferred from shapes)."""
    try:
        if isinstance(config, XLMRobertaXLConfig):
            return (config.copy(**overrides) if overrides else config), "the given config"
        if isinstance(config, dict):
            return XLMRobertaXLConfig.from_dict(config, **overrides), "the given config"
        if config is not None:
            return XLMRobertaXLConfig.from_pretrained(config, **overrides), str(config)
        if checkpoint.config_file is not None:
            return XLMRobertaXLConfig.from_pretrained(checkpoint.config_file, **overrides), str(checkpoint.config_file)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{checkpoint.source}: cannot build the config: {err}") from err
    heads = overrides.pop("num_attention_heads", None)
    return infer_config(checkpoint, num_attention_heads=heads, **overrides), None


def _map_prefix(keys: Iterable[str], expected: Iterable[str], prefix: str) -> Dict[str, str]:
    """checkpoint key -> model key: add or strip ``prefix.`` between bare and task checkpoints."""
    keys, expected = list(keys), set(expected)
    dotted = prefix + "."
    model_has = any(k.startswith(dotted) for k in expected)
    file_has = any(k.startswith(dotted) for k in keys)
    backbone = _BACKBONE_PREFIXES + _OPTIONAL_BACKBONE_PREFIXES
    mapping = {}
    for key in keys:
        if model_has and not file_has and key.startswith(backbone):
            mapping[key] = dotted + key
        elif file_has and not model_has and key.startswith(dotted):
            mapping[key] = key[len(dotted):]
        else:
            mapping[key] = key
    return mapping


def _is_backbone(key: str, prefix: str) -> bool:
    """Keys whose absence or surplus means the config does not match (pooler excluded)."""
    bare = key[len(prefix) + 1:] if key.startswith(prefix + ".") else key
    return bare.startswith(_BACKBONE_PREFIXES) or "sentence_encoder." in key


def _plan(model: nn.Module, checkpoint: Checkpoint, prefix: str) -> _Plan:
    state = model.state_dict(keep_vars=True)
    groups: Dict[int, List[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    group_list = list(groups.values())
    by_model_key = {model_key: key for key, model_key in _map_prefix(checkpoint.tensors, state, prefix).items()}
    sources: Dict[int, str] = {}
    missing: List[str] = []
    consumed = set()
    for index, names in enumerate(group_list):
        present = [by_model_key[n] for n in names if n in by_model_key]
        consumed.update(present)
        if present:
            sources[index] = present[0]
        elif isinstance(state[names[0]], nn.Parameter):
            missing.append(names[0])
    unexpected = [key for key in checkpoint.tensors if key not in consumed]
    return _Plan(group_list, sources, missing, unexpected)


def _check_plan(plan: _Plan, model: nn.Module, checkpoint: Checkpoint, prefix: str, config_source: Optional[str]) -> None:
    """Refuse missing or surplus backbone weights and mis-shaped / non-float tensors, before any read."""
    hint = f" (config from {config_source})" if config_source else " (config inferred from the shapes)"
    fatal_missing = [key for key in plan.missing if _is_backbone(key, prefix)]
    if fatal_missing:
        raise CheckpointError(
            f"{checkpoint.source}: missing weight {fatal_missing[0]!r} for {type(model).__name__}"
            f"{hint} ({len(fatal_missing)} backbone weights missing in all)"
        )
    fatal_unexpected = [key for key in plan.unexpected if _is_backbone(key, prefix)]
    if fatal_unexpected:
        raise CheckpointError(
            f"{checkpoint.describe(fatal_unexpected[0])}: unexpected weight: {type(model).__name__}{hint} has no "
            f"such parameter, so the checkpoint does not match the model ({len(fatal_unexpected)} such keys)"
        )
    state = model.state_dict(keep_vars=True)
    for index, key in plan.sources.items():
        name = plan.groups[index][0]
        file, file_key = checkpoint.tensors[key]
        expected = tuple(state[name].shape)
        if file.shape(file_key) != expected:
            raise CheckpointError(
                f"{checkpoint.describe(key)}: shape {list(file.shape(file_key))} does not fit {name!r}, which "
                f"has shape {list(expected)}{hint}"
            )
        if state[name].is_floating_point() and not file.dtype(file_key).is_floating_point:
            raise CheckpointError(
                f"{checkpoint.describe(key)}: dtype {file.dtype(file_key)} cannot be read into the floating "
                f"point weight {name!r}"
            )


def _set_tensor(model: nn.Module, name: str, value: Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=True)
    else:
        module._buffers[attr] = value


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def load_pretrained(
    model_cls: Type[nn.Module],
    path: PathLike,
    *,
    dtype: DTypeLike = None,
    device: Optional[Union[str, torch.device]] = None,
    config: Any = None,
    **overrides: Any,
) -> nn.Module:
    """Build ``model_cls`` from the checkpoint at ``path`` without holding two copies of the weights.

    - ``path``: an HF directory, a ``.safetensors`` / ``.bin`` file (config given or a
      ``config.json`` beside it, else inferred from shapes), a sharded index, a fairseq ``model.pt``.
    - ``dtype``: torch dtype, ``"float32"`` / ``"bfloat16"`` / ``"float16"`` or ``"auto"``;
      default float32. Safetensors already stored in that dtype stay memory-mapped (zero-copy,
      copy-on-write: writing to a parameter never changes the file; as with any memory map, the
      file must not be truncated or rewritten in place while the model lives — our own
      `save_pretrained` replaces files, so saving over the loaded directory is safe); others
      are cast chunk by chunk.
    - ``device``: where the weights are materialised (default CPU).
    - ``config``: an `XLMRobertaXLConfig`, a dict or a path; ``overrides`` change config fields
      (constructor keywords such as ``add_pooling_layer`` are passed to ``model_cls``).

    Parameters the checkpoint lacks outside the backbone (task heads, pooler) are initialised
    like the reference; they and unused checkpoint keys are logged once and stored in
    ``model.loading_info``. The model is returned in eval mode.
    """
    checkpoint = open_checkpoint(path)
    try:
        return _load(model_cls, checkpoint, dtype=dtype, device=device, config=config, overrides=dict(overrides))
    finally:
        checkpoint.close()


def _load(
    model_cls: Type[nn.Module],
    checkpoint: Checkpoint,
    *,
    dtype: DTypeLike,
    device: Optional[Union[str, torch.device]],
    config: Any,
    overrides: Dict[str, Any],
) -> nn.Module:
    model_kwargs, overrides = _split_overrides(model_cls, overrides)
    config, config_source = _resolve_config(checkpoint, config, overrides)
    adapt = getattr(model_cls, "config_for_weights", None)
    if adapt is not None and "num_labels" not in overrides:
        config = adapt(config, checkpoint.shapes())  # e.g. the QA head's rows decide its num_labels
    if config_source is not None:
        check_config(config, checkpoint, config_source=config_source)
    target_dtype = resolve_dtype(dtype, config=config, checkpoint=checkpoint)
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    with parameters_on_meta():
        model = model_cls(config, **model_kwargs)
    prefix = getattr(model_cls, "base_model_prefix", "roberta")
    plan = _plan(model, checkpoint, prefix)
    _check_plan(plan, model, checkpoint, prefix, config_source)
    _initialise_missing(model, plan, dtype=target_dtype, device=target_device)
    _materialise(model, plan, checkpoint, dtype=target_dtype, device=target_device)
    _finish(model, dtype=target_dtype, device=target_device)
    unexpected = list(plan.unexpected)
    model.loading_info = {"missing_keys": list(plan.missing), "unexpected_keys": unexpected}
    if plan.missing or unexpected:
        logger.warning(
            "Loading %s from %s: %d weights not in the checkpoint were initialised (%s); %d checkpoint "
            "weights were not used (%s)",
            type(model).__name__, checkpoint.source, len(plan.missing), ", ".join(plan.missing) or "-",
            len(unexpected), ", ".join(unexpected) or "-",
        )
    return model.eval()


def _initialise_missing(model: nn.Module, plan: _Plan, *, dtype: torch.dtype, device: torch.device) -> None:
    """Give the missing parameters memory (zeros) and run the model's init on their modules only."""
    if not plan.missing:
        return
    state = model.state_dict(keep_vars=True)
    owners: List[nn.Module] = []
    for index, names in enumerate(plan.groups):
        if index in plan.sources or not isinstance(state[names[0]], nn.Parameter):
            continue
        meta = state[names[0]]
        param = nn.Parameter(torch.zeros(meta.shape, dtype=dtype, device=device), requires_grad=meta.requires_grad)
        for name in names:
            _set_tensor(model, name, param)
            owner = _owner(model, name)
            if all(owner is not seen for seen in owners):
                owners.append(owner)
    init = getattr(model, "init_weights", None)
    if init is not None:
        init(modules=owners)


def _materialise(model: nn.Module, plan: _Plan, checkpoint: Checkpoint, *, dtype: torch.dtype, device: torch.device) -> None:
    """Read every planned tensor (file by file, front to back) and assign it to its tied names."""
    state = model.state_dict(keep_vars=True)
    by_file: Dict[int, List[Tuple[int, str]]] = {}
    for index, key in plan.sources.items():
        file, _ = checkpoint.tensors[key]
        by_file.setdefault(id(file), []).append((index, key))
    with _one_thread():
        for file in checkpoint.files:
            jobs = sorted(by_file.get(id(file), []), key=lambda job: file.position(checkpoint.tensors[job[1]][1]))
            for index, key in jobs:
                names = plan.groups[index]
                current = state[names[0]]
                wanted = dtype if current.is_floating_point() else current.dtype
                tensor = file.materialize(checkpoint.tensors[key][1], dtype=wanted, device=device)
                value: Tensor = tensor
                if isinstance(current, nn.Parameter):
                    value = nn.Parameter(tensor, requires_grad=current.requires_grad)
                for name in names:
                    _set_tensor(model, name, value)
            file.close()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the casts on the calling thread only.

    Casting out of a memory map is bound by page faults, not arithmetic, and each release
    (``MADV_DONTNEED``) must flush the TLB of every CPU running a thread of the process: measured
    here, torch's intra-op pool or a pool of casting threads cost 1.5-2x the CPU and wall time of
    a single thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _finish(model: nn.Module, *, dtype: torch.dtype, device: torch.device) -> None:
    """Move/cast the buffers the checkpoint did not hold, re-tie, and check nothing is left on meta."""
    for name, buffer in list(model.named_buffers()):
        if buffer.device != device or (buffer.is_floating_point() and buffer.dtype != dtype):
            _set_tensor(model, name, buffer.to(device=device, dtype=dtype if buffer.is_floating_point() else buffer.dtype))
    tie = getattr(model, "tie_weights", None)
    if tie is not None:
        tie()
    left = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta]
    if left:
        raise CheckpointError(f"internal error: {left[0]!r} was neither loaded nor initialised")


def load_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """The tensors of a checkpoint (file or directory, shards included) under HF key names.

    Safetensors and zip pickles come back memory-mapped (copy-on-write), in their stored dtype;
    fairseq keys are renamed to HF's.
    """
    checkpoint = open_checkpoint(path)
    try:
        return {key: file.view(name) for key, (file, name) in checkpoint.tensors.items()}
    finally:
        checkpoint.close()


# ==================================================================================== saving
@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, dtype and shape (data produced on demand)."""

    name: str
    dtype: torch.dtype
    shape: Shape

    @property
    def nbytes(self) -> int:
        numel = 1
        for n in self.shape:
            numel *= n
        return numel * _itemsize(self.dtype)


def parse_size(size: Union[int, str]) -> int:
    """``5GB`` -> 5 * 10**9, ``200MiB`` -> 200 * 2**20, ints unchanged (bytes)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(size), flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"max_shard_size must be bytes or a size such as '5GB' / '200MB', got {size!r}")
    unit = (match.group(2) or "").lower()
    scale = 1 if not unit else (1024 if unit.endswith("i") else 1000) ** ("kmgt".index(unit[0]) + 1)
    return int(float(match.group(1)) * scale)


def write_safetensors(
    path: PathLike, specs: Sequence[TensorSpec], produce: Callable[[str], Tensor], *, metadata: Optional[Dict[str, str]] = None
) -> None:
    """Write one safetensors file, asking ``produce(name)`` for each tensor only when it is written.

    Tensors are laid out by decreasing element size (every tensor stays aligned); memory use is
    one tensor at a time. The file is flushed to disk before returning.
    """
    ordered = sorted(specs, key=lambda spec: -_itemsize(spec.dtype))
    header: Dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for spec in ordered:
        if spec.dtype not in _ST_NAMES:
            raise CheckpointError(f"{path}: cannot store {spec.name!r} with dtype {spec.dtype} in safetensors")
        header[spec.name] = {"dtype": _ST_NAMES[spec.dtype], "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for spec in ordered:
            tensor = produce(spec.name).detach()
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise CheckpointError(f"{path}: {spec.name!r} changed while saving ({tensor.dtype} {list(tensor.shape)})")
            data = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            handle.write(memoryview(data.numpy()))
            del tensor, data
        handle.flush()
        os.fsync(handle.fileno())


def write_shards(
    directory: PathLike,
    specs: Sequence[TensorSpec],
    produce: Callable[[str], Tensor],
    *,
    max_shard_size: Union[int, str] = "5GB",
) -> List[Path]:
    """Write ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` + the HF index when
    the tensors exceed ``max_shard_size`` (a tensor larger than that gets a shard of its own)."""
    directory = Path(directory)
    limit = parse_size(max_shard_size)
    shards: List[List[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    if len(shards) == 1:
        write_safetensors(directory / SAFE_WEIGHTS_NAME, specs, produce)
        return [directory / SAFE_WEIGHTS_NAME]
    paths, weight_map = [], {}
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / name, shard, produce)
        paths.append(directory / name)
        weight_map.update({spec.name: name for spec in shard})
    index = {"metadata": {"total_size": sum(spec.nbytes for spec in specs)}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / SAFE_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf8")
    return paths + [directory / SAFE_INDEX_NAME]


def _unique_state(model: nn.Module) -> Dict[str, Tensor]:
    """The state dict with each shared tensor once, under its first name (HF drops the tied copies)."""
    tied_copies = set(getattr(model, "_tied_weights_keys", ()))
    state = model.state_dict(keep_vars=True)
    first: Dict[Tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        identity = (tensor.device, tensor.untyped_storage().data_ptr() if not tensor.is_meta else id(tensor),
                    tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if identity not in first or first[identity] in tied_copies:
            first[identity] = name
    order = {name: position for position, name in enumerate(state)}
    return {name: state[name] for name in sorted(first.values(), key=order.__getitem__)}


def save_pretrained(model: nn.Module, directory: PathLike, *, max_shard_size: Union[int, str] = "5GB") -> Path:
    """Write ``config.json`` and (sharded) safetensors for ``model`` into ``directory``, atomically.

    Everything is written into a new directory beside ``directory`` and renamed into place, so
    an interrupted save leaves an existing checkpoint untouched; files of an existing directory
    that are not weights or config (tokenizer files, ...) are kept.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory")
    state = _unique_state(model)
    meta = [name for name, tensor in state.items() if tensor.is_meta]
    if meta:
        raise CheckpointError(f"{directory}: cannot save {meta[0]!r}, it is on the meta device (not loaded)")
    config: XLMRobertaXLConfig = model.config  # type: ignore[assignment]
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    dtype_name = next((name for name, d in _DTYPE_NAMES.items() if floating and d == floating[0]), None)
    config = config.copy(architectures=[type(model).__name__], torch_dtype=dtype_name)
    specs = [TensorSpec(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in state.items()]
    with atomic_directory(directory) as staging:
        config.save_pretrained(staging)
        write_shards(staging, specs, lambda name: state[name], max_shard_size=max_shard_size)
    return directory


@contextlib.contextmanager
def atomic_directory(directory: PathLike) -> Iterator[Path]:
    """Yield a staging directory beside ``directory`` that replaces it only if the block succeeds.

    Files of an existing ``directory`` that the block did not write and that are not weights or
    config are carried over (hard links); on failure the staging directory is removed.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging = directory.parent / f".{directory.name}.tmp-{token}"
    staging.mkdir()
    try:
        yield staging
        if directory.exists():
            _keep_other_files(directory, staging)
            shutil.copymode(directory, staging)
            retired = directory.parent / f".{directory.name}.old-{token}"
            os.rename(directory, retired)
            os.rename(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _keep_other_files(old: Path, new: Path) -> None:
    """Hard-link (or copy) what ``old`` holds besides weights and config into ``new``."""
    for entry in old.iterdir():
        if _OWNED_FILE.match(entry.name) or (new / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(new / entry.name))


def _link_or_copy(source: str, target: str) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
