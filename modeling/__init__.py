"""Native torch XLM-RoBERTa-XL/XXL: config, backbone, task heads, checkpoint I/O, tokenizer.

Pure torch (plus safetensors and sentencepiece): this package never imports spaCy or thinc.
Names are resolved lazily so that ``import modeling`` stays cheap.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "XLMRobertaXLConfig": "config",
    "ConfigError": "config",
    "PRESETS": "config",
    "XLMRobertaXLModel": "model",
    "XLMRobertaXLPreTrainedModel": "model",
    "XLMRobertaXLForMaskedLM": "heads",
    "XLMRobertaXLForCausalLM": "heads",
    "XLMRobertaXLForSequenceClassification": "heads",
    "XLMRobertaXLForMultipleChoice": "heads",
    "XLMRobertaXLForTokenClassification": "heads",
    "XLMRobertaXLForQuestionAnswering": "heads",
    "CheckpointError": "checkpoint",
    "load_state_dict": "checkpoint",
    "XLMRobertaTokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'modeling' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
