"""LoRA (low-rank adapters) for the `modeling` backbone and task models, PEFT-compatible.

One module per concern:

- `settings`: `LoraConfig` (``r``, ``alpha``, ``dropout``, ``targets``; validated) and the target
  names -> module paths table (`TARGETS`, `target_of`, `target_pattern`);
- `layer`: `LoraLinear`, the adapted Linear layer (float32 adapters over a frozen base of any
  dtype; bf16 bases multiplied in float32 where the CPU emulates bf16);
- `adapters`: `apply_lora`, `merge_lora`, `without_adapters`, `merged_adapters`, `lora_layers`,
  `lora_parameters`, `lora_config_of`, `head_parameters`;
- `peft_files`: the HF PEFT adapter format (`peft_state_dict`, `save_peft_adapter`,
  `load_peft_adapter`);
- `memory`: the planner's arithmetic (`lora_parameter_count`, `lora_training_bytes`).
"""

from .adapters import (
    apply_lora,
    backbone_of,
    head_parameters,
    lora_config_of,
    lora_layers,
    lora_parameters,
    merge_lora,
    merged_adapters,
    without_adapters,
)
from .layer import LoraLinear, upcast_linear
from .memory import LoraMemory, lora_parameter_count, lora_training_bytes, target_shapes
from .peft_files import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    PEFT_PREFIX,
    load_peft_adapter,
    peft_state_dict,
    read_adapter_config,
    save_peft_adapter,
)
from .settings import TARGETS, LoraConfig, target_of, target_pattern

__all__ = [
    "LoraConfig", "TARGETS", "target_of", "target_pattern", "LoraLinear", "upcast_linear", "apply_lora",
    "merge_lora", "without_adapters", "merged_adapters", "head_parameters", "lora_layers", "lora_parameters", "lora_config_of", "backbone_of", "peft_state_dict",
    "save_peft_adapter", "load_peft_adapter", "read_adapter_config", "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME", "PEFT_PREFIX", "LoraMemory", "lora_parameter_count", "lora_training_bytes",
    "target_shapes",
]
