"""The backbone settings block ``spacy-xlmrxl.Backbone.v1``: every setting of a backbone, once.

Owns
- `BackboneSettings`: a frozen dataclass holding the backbone settings with their defaults,
  checked when it is built (i.e. when spaCy resolves the config block: ``add_pipe``,
  ``load_model_from_config``, ``spacy.load``); it builds the `BackboneSource` (weights and
  tokenizer) and the `TorchModuleShim` (training switches) of the architectures that take it
  (``Transformer.v2``, ``QAModel.v2``, ``MaskedLM.v2``);
- the config rendering of the block (`backbone_config`) and of an architecture block holding it
  (`default_model_config`), used by every component's default config;
- `is_backbone_block` / `backbone_blocks`: the blocks of a config that hold backbone settings
  (``Backbone.v1`` blocks, and the v1 architecture blocks of configs written before it, whose
  arguments they are).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Type, Union

import torch
from spacy.util import registry

from modeling.lora import LoraConfig

from .adapters import LORA_SAVE_MODES
from .precision import normalise_mixed_precision
from .quantize import check_quantize_dtype, check_quantize_precision, normalise_quantize
from .shim import TorchModuleShim
from .source import DEFAULT_CHECKPOINT, BackboneError, BackboneSource

BACKBONE_SETTINGS = "spacy-xlmrxl.Backbone.v1"
#: Architectures of configs written before ``Backbone.v1``: the settings are their own arguments.
SETTINGS_AS_ARGUMENTS = ("spacy-xlmrxl.Transformer.v1", "spacy-xlmrxl.QAModel.v1", "spacy-xlmrxl.MaskedLM.v1")

_KEYWORD_ONLY = {"kw_only": True} if sys.version_info >= (3, 10) else {}


@registry.misc(BACKBONE_SETTINGS)
@dataclass(frozen=True, **_KEYWORD_ONLY)
class BackboneSettings:
    """Where a backbone comes from and how it runs and trains (``spacy-xlmrxl.Backbone.v1``).

    checkpoint: local HF/fairseq dir or file, or a Hub name (downloaded through huggingface_hub
        into the HF cache; from the cache only with ``HF_HUB_OFFLINE=1``); preset: random init
        with a named architecture (``tiny``, ``small``, ``xl``, ``xxl``), only with
        ``checkpoint = null``; tokenizer: sentencepiece model path (default:
        the checkpoint's); max_batch_pieces: padded positions per model call; dtype: weights
        dtype (float32 for training); mixed_precision: ``"bf16"``/``"fp16"``/null;
        grad_checkpointing; freeze: no weight updates (inference mode even in ``update``);
        freeze_word_embeddings: train everything but the vocab x hidden word-embedding matrix
        (no gradient, no optimizer state for it); quantize: null or ``"int8"`` (CPU inference
        only: dynamic int8 ``nn.Linear`` layers over float32 weights, which are what is saved;
        training raises); seed: random init of a preset (null: torch's global generator), and
        of the LoRA adapters; lora: null, or LoRA adapters to train instead of the backbone,
        e.g. ``{"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}``
        (`modeling.lora.LoraConfig`; targets: query, key, value, attention_output, intermediate,
        output): the backbone is frozen (no gradients, no optimizer state; it may stay
        memory-mapped and in ``dtype = "bfloat16"``), the float32 adapters and the task head
        train; lora_save: how ``to_disk`` writes a backbone with adapters: ``"full"`` (the base
        and the adapters: the pipeline needs nothing else) or ``"adapters"`` (the adapters, the
        task head and a reference to the base checkpoint: its path and a fingerprint, checked
        at load; see `spacy_xlmrxl.backbone.adapters`).

    Every check that needs no file system runs here, and its `BackboneError` names the setting.
    """

    checkpoint: Optional[str] = DEFAULT_CHECKPOINT
    preset: Optional[str] = None
    tokenizer: Optional[str] = None
    max_batch_pieces: int = 4096
    dtype: Optional[str] = None
    mixed_precision: Union[str, bool, None] = None
    grad_checkpointing: bool = False
    freeze: bool = False
    freeze_word_embeddings: bool = False
    quantize: Optional[str] = None
    seed: Optional[int] = None
    lora: Optional[Dict[str, Any]] = None
    lora_save: str = "full"

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_pieces, bool) or not isinstance(self.max_batch_pieces, int) \
                or self.max_batch_pieces <= 0:
            raise BackboneError(f"max_batch_pieces must be a positive integer, got {self.max_batch_pieces!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise BackboneError(f"seed must be an integer or null, got {self.seed!r}")
        self.source()  # checkpoint vs preset, preset and dtype names
        precision = normalise_mixed_precision(self.mixed_precision)
        check_quantize_dtype(self.quantize, self.dtype)
        check_quantize_precision(self.quantize, precision)
        if self.lora_save not in LORA_SAVE_MODES:
            raise BackboneError(f"lora_save must be one of {LORA_SAVE_MODES}, got {self.lora_save!r}")
        if self.lora_config() is not None and normalise_quantize(self.quantize) is not None:
            raise BackboneError(
                f"lora cannot be combined with quantize = {self.quantize!r}: int8 layers are an inference-only copy "
                "that cannot carry trainable adapters. Train with quantize = null (a bf16 base, dtype = \"bfloat16\", "
                "saves memory instead); for int8 inference, merge the adapters first (spacy-xlmrxl merge-lora)")

    def lora_config(self) -> Optional[LoraConfig]:
        """The ``lora`` setting as a checked `LoraConfig` (None when it is null); a bad value
        raises `BackboneError` naming it (``lora.r``, ``lora.targets``, ...)."""
        if self.lora is None:
            return None
        if not isinstance(self.lora, Mapping):
            raise BackboneError(f"lora must be null or a table such as {LoraConfig().to_dict()}, got {self.lora!r}")
        try:
            return LoraConfig.from_dict(self.lora)
        except (TypeError, ValueError) as error:
            raise BackboneError(str(error)) from None

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> "BackboneSettings":
        """The settings among ``arguments`` (a v1 architecture's, e.g. its ``locals()``); a
        setting it lacks (``Transformer.v1`` has no ``seed``) keeps its default."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in arguments.items() if key in names})

    def source(self) -> BackboneSource:
        """Where the weights and the tokenizer come from (checked)."""
        return BackboneSource(checkpoint=self.checkpoint, preset=self.preset, tokenizer=self.tokenizer,
                              dtype=self.dtype, seed=self.seed).validate()

    def shim(self, model_cls: Type[torch.nn.Module], *,
             model_kwargs: Optional[Dict[str, Any]] = None) -> TorchModuleShim:
        """The shim that will own the module (built at ``initialize``), with these switches."""
        return TorchModuleShim(None, mixed_precision=self.mixed_precision, frozen=self.freeze,
                               grad_checkpointing=self.grad_checkpointing, quantize=self.quantize,
                               freeze_word_embeddings=self.freeze_word_embeddings, model_cls=model_cls,
                               model_kwargs=model_kwargs, lora=self.lora_config(), lora_save=self.lora_save,
                               lora_seed=self.seed)


def backbone_config(**changes: Any) -> Dict[str, Any]:
    """The ``spacy-xlmrxl.Backbone.v1`` block with every default (``changes`` replace some)."""
    unknown = sorted(set(changes) - {f.name for f in fields(BackboneSettings)})
    if unknown:
        raise BackboneError(f"unknown backbone settings {unknown}")
    return {"@misc": BACKBONE_SETTINGS, **{f.name: f.default for f in fields(BackboneSettings)}, **changes}


def default_model_config(architecture: str, **arguments: Any) -> Dict[str, Any]:
    """The block of ``architecture`` (one taking ``backbone``) with the default backbone block
    and the other ``arguments``: a component's default ``[components.<name>.model]``."""
    return {"@architectures": architecture, "backbone": backbone_config(), **arguments}


def is_backbone_block(block: Mapping[str, Any]) -> bool:
    """Whether a config block's keys are backbone settings: a ``Backbone.v1`` block, or a v1
    architecture block (`SETTINGS_AS_ARGUMENTS`) of a config written before it."""
    return block.get("@misc") == BACKBONE_SETTINGS or block.get("@architectures") in SETTINGS_AS_ARGUMENTS


def backbone_blocks(config: Any) -> List[Dict[str, Any]]:
    """Every block of ``config`` (a nested dict, uninterpolated or not) that `is_backbone_block`."""
    found: List[Dict[str, Any]] = []
    if isinstance(config, dict):
        if is_backbone_block(config):
            found.append(config)
        for value in config.values():
            found.extend(backbone_blocks(value))
    return found
