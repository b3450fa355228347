"""Saving: `save_pretrained` writes ``config.json`` + (sharded) safetensors that HF transformers
loads, through `atomic_directory`, which stages a new directory beside the target, carries over
the target's other files (tokenizer files, ...) unless told not to, and swaps it into place.

The swap is one ``renameat2(RENAME_EXCHANGE)`` where the platform has it (Linux), so the target
path holds the old or the new directory at every instant; elsewhere it is two renames (old
away, new in), between which the old directory sits at ``.<name>.old-<token>``. What a crash
leaves beside the target (``.<name>.tmp-<token>`` / ``.<name>.old-<token>``) the next save of
that target removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

from torch import Tensor, nn

from ..config import XLMRobertaXLConfig
from ..dtypes import dtype_name
from .files import CheckpointError, PathLike
from .safetensors import TensorSpec, write_shards

__all__ = ["save_pretrained", "atomic_directory", "remove_leftovers"]

# files that `save_pretrained` (re)writes; other files of an existing directory are kept
_OWNED_FILE = re.compile(
    r"^(config\.json|generation_config\.json|model\.safetensors(\.index\.json)?|model-\d+-of-\d+\.safetensors"
    r"|pytorch_model\.bin(\.index\.json)?|pytorch_model-\d+-of-\d+\.bin)$"
)


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


def save_pretrained(model: nn.Module, directory: PathLike, *, max_shard_size: Union[int, str] = "5GB",
                    safe_serialization: bool = True) -> Path:
    """Write ``config.json`` and (sharded) safetensors for ``model`` into ``directory``, atomically
    (``pytorch_model*.bin`` torch pickles instead with ``safe_serialization=False``), and the
    ``generation_config.json`` of a model that has a ``generation_config``.

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
    config = config.copy(architectures=[type(model).__name__], torch_dtype=dtype_name(floating[0]) if floating else None)
    specs = [TensorSpec(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in state.items()]
    generation_config = getattr(model, "generation_config", None)  # a model that generates: its defaults
    with atomic_directory(directory) as staging:
        config.save_pretrained(staging)
        if generation_config is not None:
            generation_config.save_pretrained(staging)
        write_shards(staging, specs, lambda name: state[name], max_shard_size=max_shard_size,
                     safe_serialization=safe_serialization)
    return directory


@contextlib.contextmanager
def atomic_directory(directory: PathLike, *, keep_other_files: bool = True) -> Iterator[Path]:
    """Yield a staging directory beside ``directory`` that replaces it only if the block succeeds.

    ``keep_other_files``: files of an existing ``directory`` that the block did not write and
    that are not weights or config are carried over (hard links); False replaces the directory
    by exactly what the block wrote. On failure the staging directory is removed; leftovers of
    earlier saves that crashed are removed first (see the module docstring). Nothing is read
    through a symbolic link: a ``directory`` that is one is refused (`CheckpointError`:
    renaming would replace the link, carrying files over would pull in the folder it points
    to), and links inside it are carried over as links.
    """
    directory = Path(directory)
    _refuse_symlink(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    token = uuid.uuid4().hex[:12]
    staging = directory.parent / f".{directory.name}.tmp-{token}"
    staging.mkdir()
    try:
        yield staging
        _refuse_symlink(directory)  # again: the block may have run for a long time
        if directory.exists():
            if keep_other_files:
                _keep_other_files(directory, staging)
            shutil.copymode(directory, staging)
            _swap_in(staging, directory, directory.parent / f".{directory.name}.old-{token}")
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    remove_leftovers(directory)


def _leftover_pattern(directory: Path) -> "re.Pattern[str]":
    return re.compile(rf"^\.{re.escape(directory.name)}\.(tmp|old)-[0-9a-f]{{12}}$")


def remove_leftovers(directory: PathLike) -> None:
    """Remove what interrupted `atomic_directory` saves of ``directory`` left beside it.

    Staging directories (``.<name>.tmp-*``) always go; a retired one (``.<name>.old-*``) only
    while ``directory`` exists, since between the two renames of a swap without
    ``RENAME_EXCHANGE`` it is the only complete copy."""
    directory = Path(directory)
    pattern = _leftover_pattern(directory)
    if not directory.parent.is_dir():
        return
    with os.scandir(directory.parent) as entries:
        found = [(entry.path, match.group(1)) for entry in entries
                 if (match := pattern.match(entry.name)) and entry.is_dir(follow_symlinks=False)]
    keep_retired = not directory.exists()
    for path, kind in found:
        if kind == "tmp" or not keep_retired:
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(staging: Path, directory: Path, retired: Path) -> None:
    """Put ``staging`` at ``directory`` and remove the old ``directory``."""
    if _exchange(staging, directory):  # ``staging`` now holds the old directory
        shutil.rmtree(staging, ignore_errors=True)
        return
    os.rename(directory, retired)
    os.rename(staging, directory)
    shutil.rmtree(retired, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _load_renameat2() -> Optional[Callable[..., int]]:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not Linux, or a C library without it (glibc < 2.28)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step; False where the platform or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # not supported here: rename twice
        return False
    raise OSError(error, f"cannot swap {b} with its new version: {os.strerror(error)}", str(b))


def _refuse_symlink(directory: Path) -> None:
    if directory.is_symlink():
        raise CheckpointError(
            f"{directory}: is a symbolic link (to {os.readlink(directory)}); refusing to save through it: "
            "save into the directory it points to, or remove the link"
        )


def _keep_other_files(old: Path, new: Path) -> None:
    """Carry what ``old`` holds besides weights and config into ``new`` without following links:
    files are hard-linked (or copied), folders recreated, symbolic links recreated as links."""
    with os.scandir(old) as entries:
        for entry in entries:
            if _OWNED_FILE.match(entry.name) or os.path.lexists(new / entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, new / entry.name, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, str(new / entry.name))


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link ``source`` as ``target`` (a copy where that fails); a symbolic link is recreated."""
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target, follow_symlinks=False)
    except (OSError, NotImplementedError):  # no hard links here; linkat missing on the platform
        shutil.copy2(source, target, follow_symlinks=False)
