"""Memory arithmetic of LoRA training, for the memory planner: no model is built.

Owns `lora_parameter_count` (the adapters' size for a model config and LoRA settings) and
`lora_training_bytes` (`LoraMemory`: the frozen base's weights, and the adapters' float32
weights, gradients and Adam moments). Activations are the planner's
(`spacy_xlmrxl.distributed.memory_plan`); what LoRA changes there, per adapted Linear of input
width I for T tokens: a frozen base saves nothing for its own weight gradient, while the adapter
branch saves its input in the adapter dtype (T·I·4 bytes: a new tensor when the base computes in
bf16 or the adapter dropout is on, else the base's own input) and A's output (T·r·4 bytes).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

import torch

from ..config import XLMRobertaXLConfig
from ..dtypes import itemsize
from .settings import LoraConfig

__all__ = ["LoraMemory", "lora_parameter_count", "lora_training_bytes", "target_shapes"]


def target_shapes(config: XLMRobertaXLConfig) -> Dict[str, Tuple[int, int]]:
    """(in_features, out_features) of each target's Linear layer, H = hidden, F = intermediate size."""
    h, f = config.hidden_size, config.intermediate_size
    return {"query": (h, h), "key": (h, h), "value": (h, h), "attention_output": (h, h),
            "intermediate": (h, f), "output": (f, h)}


def lora_parameter_count(config: XLMRobertaXLConfig, lora: LoraConfig) -> int:
    """Adapter parameters: ``r * (in + out)`` per adapted Linear, for every layer (the attention
    targets twice per layer in a decoder with cross-attention)."""
    shapes = target_shapes(config)
    blocks = 2 if config.add_cross_attention else 1
    per_layer = 0
    for target in lora.targets:
        in_features, out_features = shapes[target]
        copies = 1 if target in ("intermediate", "output") else blocks
        per_layer += copies * lora.r * (in_features + out_features)
    return config.num_hidden_layers * per_layer


class LoraMemory(NamedTuple):
    """Bytes of LoRA training state (activations excluded)."""

    base_weights: int  # the frozen backbone: weights only, no gradients or optimizer state
    adapter_weights: int
    adapter_gradients: int
    optimizer: int  # Adam's two moments per adapter parameter

    @property
    def total(self) -> int:
        return self.base_weights + self.adapter_weights + self.adapter_gradients + self.optimizer


def lora_training_bytes(
    config: XLMRobertaXLConfig,
    lora: LoraConfig,
    *,
    base_dtype: torch.dtype = torch.bfloat16,
    adapter_dtype: torch.dtype = torch.float32,
    optimizer_states: int = 2,
    with_pooler: bool = False,
) -> LoraMemory:
    """`LoraMemory` of a backbone of ``config`` stored in ``base_dtype`` with ``lora`` adapters in
    ``adapter_dtype``, trained with ``optimizer_states`` float32 moments per adapter parameter
    (Adam: 2). The backbone's count is ``config.num_parameters(with_pooler=...)``."""
    base = config.num_parameters(with_pooler=with_pooler) * itemsize(base_dtype)
    adapters = lora_parameter_count(config, lora)
    width = itemsize(adapter_dtype)
    return LoraMemory(base_weights=base, adapter_weights=adapters * width, adapter_gradients=adapters * width,
                      optimizer=adapters * optimizer_states * itemsize(torch.float32))
