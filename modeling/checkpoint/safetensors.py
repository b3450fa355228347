"""The safetensors format through the ``safetensors`` library: `SafetensorsFile` reads with
``safe_open`` (the library parses and checks the header and maps the file privately,
copy-on-write), `write_safetensors` writes one file with the library's ``save_file``, and
`write_shards` splits a model into such files with HF's shard index (`TensorSpec`, `parse_size`;
with ``safe_serialization=False`` the same layout as HF's torch-pickle shards).

Ours around the library, each for a reason it cannot cover:

- short-lived maps: the library keeps every page read through a map resident until the map is
  closed, so values read only to be cast or checked for NaN (`SafetensorsFile.chunks`) go
  through maps replaced every `SafetensorsFile.window_bytes`; a cast then holds the result and
  one window, not the whole file (bench/README.md has the figures);
- messages: a refused file is a `CheckpointError` naming it, in words, with the library's
  reason; where the library names no tensor (a bad entry, a truncated file), `_diagnose` reads
  the header once more to name the first one at fault.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from ..dtypes import SAFETENSORS_CODES, SAFETENSORS_DTYPES, itemsize
from .files import (
    CHUNK_BYTES,
    PT_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    PathLike,
    Shape,
    TensorFile,
)
from .torch_pickle import write_torch_pickle

__all__ = ["SafetensorsFile", "TensorSpec", "parse_size", "write_safetensors", "write_shards"]

# the library's limit on a header (its length field is checked before anything is read)
_MAX_HEADER_BYTES = 100_000_000
_LIBRARY_PREFIX = "Error while deserializing header: "


def _numel(shape: Shape) -> int:
    numel = 1
    for n in shape:
        numel *= n
    return numel


def _aligned(tensor: Tensor) -> Tensor:
    """``tensor``, copied where the file puts it at an address its dtype may not be read from."""
    return tensor.clone() if tensor.data_ptr() % tensor.element_size() else tensor


class SafetensorsFile(TensorFile):
    """A ``.safetensors`` file opened with the library's ``safe_open``: header checked up front,
    data memory-mapped privately (copy-on-write: tensors handed out are writable and never
    change the file)."""

    #: bytes read through one short-lived map of `chunks` before it is replaced
    window_bytes: int = 2 * CHUNK_BYTES

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._handle: Any | None = self._open()
        self.metadata: dict[str, str] = dict(self._handle.metadata() or {})
        in_file_order = getattr(self._handle, "offset_keys", self._handle.keys)  # older versions: by name
        self._layout = {key: self._describe(key) for key in in_file_order()}
        self._order = {key: position for position, key in enumerate(self._layout)}
        self._reader: Any | None = None  # the short-lived map of `chunks`
        self._read_bytes = 0

    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def _open(self) -> Any:
        try:
            return safetensors.safe_open(str(self.path), framework="pt")
        except OSError as err:
            raise self._fail(f"cannot read the file: {err.strerror or err}") from err
        except safetensors.SafetensorError as err:
            raise self._refusal(err) from err

    def _refusal(self, err: Exception) -> CheckpointError:
        """The library's refusal of this file in words, naming the tensor at fault where there is one."""
        reason = str(err).removeprefix(_LIBRARY_PREFIX)
        found = _diagnose(self.path)
        if found is None:
            found = "corrupt safetensors header" if "JSON" in reason else "cannot read this safetensors file"
        return self._fail(f"{found} (safetensors: {reason})")

    def _describe(self, key: str) -> tuple[torch.dtype, Shape]:
        part = self._handle.get_slice(key)  # type: ignore[union-attr]  # (open: called from __init__)
        code = part.get_dtype()
        if code not in SAFETENSORS_DTYPES:
            raise self._fail(f"{key!r} has dtype {code!r}, which cannot be read (known: {sorted(SAFETENSORS_DTYPES)})")
        return SAFETENSORS_DTYPES[code], tuple(part.get_shape())

    def keys(self) -> list[str]:
        return list(self._layout)

    def dtype(self, key: str) -> torch.dtype:
        return self._layout[key][0]

    def shape(self, key: str) -> Shape:
        return self._layout[key][1]

    def position(self, key: str) -> int:
        return self._order[key]

    def view(self, key: str) -> Tensor:
        if self._handle is None:
            self._handle = self._open()
        return _aligned(self._read(self._handle, key, None))

    def _read(self, handle: Any, key: str, rows: slice | None) -> Tensor:
        try:
            return handle.get_tensor(key) if rows is None else handle.get_slice(key)[rows]
        except safetensors.SafetensorError as err:
            raise self._fail(f"cannot read tensor {key!r} (safetensors: {err})") from err

    def chunks(self, key: str) -> Iterator[Tensor]:
        """Row blocks of ``key`` read through short-lived maps: once a map has served
        `window_bytes` it is replaced, and its pages leave the process when the pieces read
        through it are dropped (the persistent map of `view` never sees these reads)."""
        dtype, shape = self._layout[key]
        if _numel(shape) == 0:
            return
        rows = shape[0] if shape else 1
        step = max(1, self.chunk_bytes // (_numel(shape[1:]) * itemsize(dtype))) if shape else 1
        for first in range(0, rows, step):
            span = None if step >= rows else slice(first, min(first + step, rows))
            block = self._read(self._window(), key, span)
            self._read_bytes += block.numel() * itemsize(dtype)
            yield _aligned(block).reshape(-1)

    def _window(self) -> Any:
        if self._reader is None or self._read_bytes >= self.window_bytes:
            self._reader, self._read_bytes = None, 0  # the old map goes with the last piece read through it
            self._reader = self._open()
        return self._reader

    def close(self) -> None:
        self._handle = None  # unmapped when the last tensor viewing it is gone
        self._reader = None


def _diagnose(path: Path) -> str | None:
    """What is wrong with the safetensors file at ``path``, naming the first tensor at fault;
    None when this reading finds nothing (only asked after the library refused the file)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"truncated safetensors file ({size} bytes; it must start with an 8-byte header length)"
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES:
                return f"corrupt safetensors header (it claims {header_len} header bytes)"
            if 8 + header_len > size:
                return f"truncated or corrupt safetensors file: the header needs {8 + header_len} bytes, the file has {size}"
            header = json.loads(handle.read(header_len).decode("utf8"))
    except OSError:
        return None
    except RecursionError:
        return "corrupt safetensors header (its JSON is nested too deeply)"
    except ValueError as err:  # not UTF-8, not JSON
        return f"corrupt safetensors header (not JSON: {err})"
    if not isinstance(header, dict):
        return "corrupt safetensors header (not a JSON object)"
    header.pop("__metadata__", None)
    return _diagnose_entries(header, base=8 + header_len, size=size)


def _diagnose_entries(header: dict[str, Any], *, base: int, size: int) -> str | None:
    """The first entry of ``header`` whose dtype, byte span or place in the file is wrong."""
    spans = []
    for key, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], [int(n) for n in info["shape"]], info["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            return f"corrupt safetensors header: the entry of {key!r} is malformed ({info!r})"
        if code not in SAFETENSORS_DTYPES:
            return f"{key!r} has dtype {code!r}, which cannot be read (known: {sorted(SAFETENSORS_DTYPES)})"
        if min(shape, default=0) < 0 or begin < 0 or end - begin != _numel(tuple(shape)) * itemsize(SAFETENSORS_DTYPES[code]):
            return f"corrupt safetensors header: {key!r} ({code} {shape}) spans bytes {begin}..{end}"
        spans.append((begin, end, key))
    offset = 0
    for begin, end, key in sorted(spans):
        if begin != offset:
            return f"corrupt safetensors header: the data of {key!r} does not follow the previous tensor's"
        if base + end > size:
            return f"truncated file: the data of {key!r} ends at byte {base + end} but the file has {size} bytes"
        offset = end
    if base + offset != size:
        return f"corrupt safetensors file: {size - base - offset} bytes after the last tensor"
    return None


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, dtype and shape (data produced on demand)."""

    name: str
    dtype: torch.dtype
    shape: Shape

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * itemsize(self.dtype)


def parse_size(size: int | str) -> int:
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
    path: PathLike, specs: Sequence[TensorSpec], produce: Callable[[str], Tensor], *, metadata: dict[str, str] | None = None
) -> None:
    """Write one safetensors file with the library's ``safetensors.torch.save_file``, asking
    ``produce(name)`` for each tensor of ``specs``.

    The library takes the file's tensors at once, so they are held together while it is
    written: contiguous CPU tensors as they are (the library writes from their memory), others
    copied to the CPU, as is a tensor sharing its memory with another (which the library
    refuses) — at most the file's size (`write_shards` bounds it by ``max_shard_size``). The
    library lays the tensors out (largest dtype first, every tensor aligned); the file is
    flushed to disk before returning.
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for spec in specs:
        if spec.dtype not in SAFETENSORS_CODES:
            raise CheckpointError(f"{path}: cannot store {spec.name!r} with dtype {spec.dtype} in safetensors")
        tensor = produce(spec.name).detach()
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise CheckpointError(f"{path}: {spec.name!r} changed while saving ({tensor.dtype} {list(tensor.shape)})")
        tensors[spec.name] = tensor.to("cpu").contiguous()
    _own_memory(tensors)
    try:
        safetensors.torch.save_file(tensors, str(path), metadata=dict(metadata or {"format": "pt"}))
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot write the safetensors file ({err})") from err
    del tensors
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _own_memory(tensors: dict[str, Tensor]) -> None:
    """Copy each tensor whose storage an earlier one uses too (views of one buffer)."""
    storages = set()
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages and tensor.numel():
            tensors[name] = tensor.clone()
        storages.add(storage)


def write_shards(
    directory: PathLike,
    specs: Sequence[TensorSpec],
    produce: Callable[[str], Tensor],
    *,
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
) -> list[Path]:
    """Write ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` + the HF index when
    the tensors exceed ``max_shard_size`` (a tensor larger than that gets a shard of its own),
    one shard at a time; with ``safe_serialization=False`` the same as ``pytorch_model*.bin``
    torch pickles."""
    directory = Path(directory)
    limit = parse_size(max_shard_size)
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    if safe_serialization:
        write, single, stem, suffix, index_name = write_safetensors, SAFE_WEIGHTS_NAME, "model", "safetensors", SAFE_INDEX_NAME
    else:
        write = lambda path, shard, produce: write_torch_pickle(path, [spec.name for spec in shard], produce)
        single, stem, suffix, index_name = PT_WEIGHTS_NAME, "pytorch_model", "bin", PT_INDEX_NAME
    if len(shards) == 1:
        write(directory / single, specs, produce)
        return [directory / single]
    paths, weight_map = [], {}
    for number, shard in enumerate(shards, start=1):
        name = f"{stem}-{number:05d}-of-{len(shards):05d}.{suffix}"
        write(directory / name, shard, produce)
        paths.append(directory / name)
        weight_map.update({spec.name: name for spec in shard})
    index = {"metadata": {"total_size": sum(spec.nbytes for spec in specs)}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / index_name).write_text(json.dumps(index, indent=2) + "\n", encoding="utf8")
    return paths + [directory / index_name]
