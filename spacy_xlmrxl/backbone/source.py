"""Where a backbone's weights and tokenizer come from: `BackboneSource` and its resolution.

Owns
- checkpoint resolution: a local HF/fairseq directory or file, or a Hub name such as
  ``facebook/xlm-roberta-xl``, resolved by `modeling.hub` (the one place that resolves names for
  `modeling` and the components): downloaded through ``huggingface_hub`` into the HF cache, or
  read from that cache with ``HF_HUB_OFFLINE=1`` (``HF_HUB_CACHE`` / ``HF_HOME``, ``HF_TOKEN``
  and ``HF_ENDPOINT`` apply as in HF); or random init from a preset (``tiny``, ``small``, ``xl``,
  ``xxl``);
- tokenizer resolution (the checkpoint's ``sentencepiece.bpe.model``, fetched from the Hub
  before the weights for a Hub name, or an explicit path) and
  one shared tokenizer per sentencepiece model;
- the dtype names of the config settings (`torch_dtype`) and `BackboneError`, the error of every
  backbone setting.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Type, Union

import torch

from modeling import hub
from modeling.config import PRESETS, XLMRobertaXLConfig
from modeling.dtypes import DTYPE_NAMES

PathLike = Union[str, os.PathLike]
TOKENIZER_FILE = "sentencepiece.bpe.model"
CONFIG_FILE = "config.json"
DEFAULT_CHECKPOINT = "facebook/xlm-roberta-xl"


class BackboneError(ValueError):
    """The backbone cannot be built or loaded; the message says what to pass instead."""


# --------------------------------------------------------------------------- resolution
def resolve_checkpoint(name: PathLike) -> Path:
    """A local checkpoint directory or file for ``name``: a path as it is, or a Hub name
    downloaded into (or, offline, read from) the HF cache (`modeling.hub.resolve_checkpoint`)."""
    try:
        path = hub.resolve_checkpoint(name)
    except hub.HubError as error:
        raise BackboneError(f"checkpoint {os.fspath(name)!r}: {error}. {_WHAT_TO_PASS}") from error
    if not path.exists():
        raise BackboneError(f"checkpoint {os.fspath(name)!r} was not found in the file system (and is no Hub "
                            f"name). {_WHAT_TO_PASS}")
    return path


_WHAT_TO_PASS = (
    "Pass checkpoint = a local HF/fairseq directory or weights file, or a Hub name (downloaded through "
    f"huggingface_hub unless HF_HUB_OFFLINE=1), or set checkpoint = null and preset = one of {sorted(PRESETS)} "
    "for a randomly initialised backbone (that also needs tokenizer = path to sentencepiece.bpe.model)."
)


def resolve_tokenizer(tokenizer: Optional[PathLike], checkpoint: Optional[Path] = None) -> Path:
    """The sentencepiece model file: ``tokenizer`` (a file or a directory holding one), else the
    ``sentencepiece.bpe.model`` beside the (resolved, local) ``checkpoint``."""
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if path.is_file():
            return path
        raise BackboneError(f"tokenizer {str(tokenizer)!r}: no sentencepiece model at {path}")
    if checkpoint is not None:
        folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
        if (folder / TOKENIZER_FILE).is_file():
            return folder / TOKENIZER_FILE
        raise BackboneError(
            f"checkpoint {checkpoint} has no {TOKENIZER_FILE}; pass tokenizer = path to the "
            "XLM-R sentencepiece model"
        )
    raise BackboneError(
        "no tokenizer: a preset backbone needs tokenizer = path to the XLM-R "
        f"{TOKENIZER_FILE} (or a directory holding it)"
    )


def torch_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or the other names of `modeling.dtypes`) -> torch
    dtype; None stays None."""
    if name is None:
        return None
    try:
        return DTYPE_NAMES[str(name).replace("torch.", "")]
    except KeyError:
        raise BackboneError(f"dtype must be one of {sorted(DTYPE_NAMES)} or null, got {name!r}") from None


@dataclass
class BackboneSource:
    """Where a backbone's weights and tokenizer come from (the config's backbone settings).

    Exactly one of ``checkpoint`` (pretrained weights) and ``preset`` (random init) is used:
    a preset wins only when ``checkpoint`` is null. ``tokenizer`` overrides the checkpoint's.
    """

    checkpoint: Optional[str] = DEFAULT_CHECKPOINT
    preset: Optional[str] = None
    tokenizer: Optional[str] = None
    dtype: Optional[str] = None
    seed: Optional[int] = None

    def validate(self) -> "BackboneSource":
        """Check values that need no file system (config time); raise `BackboneError`."""
        if self.checkpoint is not None and self.preset is not None:
            raise BackboneError(
                f"both checkpoint ({self.checkpoint!r}) and preset ({self.preset!r}) are set; set "
                "one of them to null (a preset means random initialisation)"
            )
        if self.checkpoint is None and self.preset is None:
            raise BackboneError(
                "neither checkpoint nor preset is set: pass checkpoint = a local HF/fairseq "
                f"directory or a Hub name, or preset = one of {sorted(PRESETS)}"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise BackboneError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        torch_dtype(self.dtype)
        return self

    def replace(self, **changes: Any) -> "BackboneSource":
        """A copy with the given non-None settings changed (``checkpoint`` and ``preset``
        exclude each other: setting one clears the other)."""
        data = self.to_dict()
        changes = {k: v for k, v in changes.items() if v is not None}
        if "preset" in changes:
            data["checkpoint"] = None
        if "checkpoint" in changes:
            data["preset"] = None
        data.update(changes)
        return BackboneSource(**data)

    def to_dict(self) -> Dict[str, Any]:
        return dict(checkpoint=self.checkpoint, preset=self.preset, tokenizer=self.tokenizer,
                    dtype=self.dtype, seed=self.seed)

    def checkpoint_path(self) -> Optional[Path]:
        self.validate()
        return resolve_checkpoint(self.checkpoint) if self.checkpoint is not None else None

    def tokenizer_path(self) -> Path:
        """The sentencepiece model (`resolve_tokenizer`); a Hub checkpoint's is fetched alone, so
        that a repository without one fails before its weights are downloaded."""
        self.validate()
        if self.tokenizer is None and self.checkpoint is not None and hub.hub_repo_id(self.checkpoint) is not None:
            try:
                return hub.resolve_file(self.checkpoint, TOKENIZER_FILE)
            except hub.HubError as error:
                raise BackboneError(f"checkpoint {self.checkpoint!r}: {error}. {_WHAT_TO_PASS} A checkpoint without "
                                    f"its own {TOKENIZER_FILE} needs tokenizer = the path of one.") from error
        return resolve_tokenizer(self.tokenizer, self.checkpoint_path() if self.tokenizer is None else None)

    def build(self, model_cls: Type[torch.nn.Module], *, device: Union[str, torch.device, None] = None,
              config_overrides: Optional[Dict[str, Any]] = None,
              model_kwargs: Optional[Dict[str, Any]] = None) -> torch.nn.Module:
        """Build ``model_cls`` (any `modeling` class) with loaded or random weights on ``device``."""
        overrides = dict(config_overrides or {})
        kwargs = dict(model_kwargs or {})
        dtype = torch_dtype(self.dtype)
        path = self.checkpoint_path()
        if path is None:
            config = XLMRobertaXLConfig.from_preset(str(self.preset), **overrides)
            with torch.device(device or "cpu"):  # allocate (and initialise) where it will run
                module = model_cls(config, **kwargs)  # `modeling` classes initialise themselves
            if self.seed is not None and callable(getattr(module, "init_weights", None)):
                module.init_weights(seed=self.seed)  # type: ignore[operator]
        else:
            from modeling import checkpoint as ckpt

            # constructor keywords (add_pooling_layer) travel with the config overrides
            module = ckpt.load_pretrained(model_cls, path, dtype=dtype, device=device, **overrides, **kwargs)
        if dtype is not None:
            module = module.to(dtype=dtype)
        if device is not None:
            module = module.to(device)
        return module


def load_tokenizer(source: Union[PathLike, bytes], *, origin: Optional[str] = None) -> Any:
    """The `modeling.tokenizer.XLMRobertaTokenizer` for a sentencepiece file, a directory
    holding ``sentencepiece.bpe.model``, or the serialised model bytes (``origin``: the file they
    were read from, named by the error when they are not a sentencepiece model)."""
    if not isinstance(source, bytes):
        path = Path(source)
        path = path / TOKENIZER_FILE if path.is_dir() else path
        source, origin = path.read_bytes(), str(path)
    return _tokenizer_from_proto(hashlib.sha256(source).hexdigest(), source, origin)


_TOKENIZERS: Dict[str, Any] = {}


def _tokenizer_from_proto(digest: str, proto: bytes, origin: Optional[str]) -> Any:
    """One shared tokenizer per sentencepiece model (loading the real one takes seconds)."""
    from modeling.tokenizer import XLMRobertaTokenizer

    if digest not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 8:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[digest] = XLMRobertaTokenizer(model_proto=proto, source=origin)
    return _TOKENIZERS[digest]
