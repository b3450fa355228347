"""The safetensors format: `SafetensorsFile`, our reader, and the writer (`write_safetensors`,
`write_shards` with the HF shard index, `TensorSpec`, `parse_size`); `write_shards` also lays out
HF's torch-pickle shards (``safe_serialization=False``).

The reader parses and validates the header itself and maps the data privately (copy-on-write):
tensors stored in the wanted dtype are zero-copy views; others are cast chunk by chunk into their
new tensor, each chunk's source pages handed back as it goes, so a cast never holds two copies.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..dtypes import SAFETENSORS_CODES, SAFETENSORS_DTYPES, itemsize
from .files import PT_INDEX_NAME, PT_WEIGHTS_NAME, SAFE_INDEX_NAME, SAFE_WEIGHTS_NAME, CheckpointError, PathLike, Shape, TensorFile
from .torch_pickle import write_torch_pickle

__all__ = ["SafetensorsFile", "TensorSpec", "parse_size", "write_safetensors", "write_shards"]

# bytes of source data cast per step when a tensor is converted (their pages are then released)
_CHUNK_BYTES = 32 * 2**20
_MAX_HEADER_BYTES = 100_000_000


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
        except RecursionError as err:
            raise self._fail("corrupt safetensors header (its JSON is nested too deeply)") from err
        except ValueError as err:  # not UTF-8, not JSON, numbers too long
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
        if dtype_name not in SAFETENSORS_DTYPES:
            raise self._fail(f"{key!r} has dtype {dtype_name!r}, which cannot be read (known: {sorted(SAFETENSORS_DTYPES)})")
        dtype = SAFETENSORS_DTYPES[dtype_name]
        numel = 1
        for n in shape:
            if n < 0:
                raise self._fail(f"corrupt safetensors header: {key!r} has shape {list(shape)}")
            numel *= n
        if begin < 0 or end - begin != numel * itemsize(dtype):
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
        if entry.start % itemsize(entry.dtype):
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
        width = itemsize(entry.dtype)
        step = max(1, _CHUNK_BYTES // width)
        for first in range(0, flat_source.numel(), step):
            last = min(first + step, flat_source.numel())
            start, stop = entry.start + first * width, entry.start + last * width
            self._advise(mmap.MADV_WILLNEED, stop, stop + step * width)
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
        return numel * itemsize(self.dtype)


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
    ordered = sorted(specs, key=lambda spec: -itemsize(spec.dtype))
    header: Dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for spec in ordered:
        if spec.dtype not in SAFETENSORS_CODES:
            raise CheckpointError(f"{path}: cannot store {spec.name!r} with dtype {spec.dtype} in safetensors")
        header[spec.name] = {"dtype": SAFETENSORS_CODES[spec.dtype], "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
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
    safe_serialization: bool = True,
) -> List[Path]:
    """Write ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` + the HF index when
    the tensors exceed ``max_shard_size`` (a tensor larger than that gets a shard of its own);
    with ``safe_serialization=False`` the same as ``pytorch_model*.bin`` torch pickles."""
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
    if safe_serialization:
        write, single, stem, suffix, index_name = write_safetensors, SAFE_WEIGHTS_NAME, "model", "safetensors", SAFE_INDEX_NAME
    else:
        write = lambda path, shard, produce: write_torch_pickle(path, [spec.name for spec in shard], produce)  # noqa: E731
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
