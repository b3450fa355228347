"""Native torch XLM-RoBERTa-XL/XXL: config, backbone, task heads, checkpoint I/O, tokenizer.

Pure torch (plus safetensors and sentencepiece): this package never imports spaCy or thinc.
Names are resolved lazily so that ``import modeling`` stays cheap. HF's names of two building
blocks (``XLMRobertaXLEmbeddings``, ``create_position_ids_from_input_ids``) point at ours.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "XLMRobertaXLConfig": "config",
    "XLMRobertaXLEmbeddings": "embeddings:Embeddings",
    "create_position_ids_from_input_ids": "embeddings:position_ids_from_input_ids",
    "ConfigError": "config",
    "PRESETS": "config",
    "XLMRobertaXLModel": "model",
    "XLMRobertaXLPreTrainedModel": "pretrained",
    "XLMRobertaXLForMaskedLM": "heads",
    "XLMRobertaXLForCausalLM": "heads",
    "XLMRobertaXLForSequenceClassification": "heads",
    "XLMRobertaXLForMultipleChoice": "heads",
    "XLMRobertaXLForTokenClassification": "heads",
    "XLMRobertaXLForQuestionAnswering": "heads",
    "GenerationConfig": "generation",
    "PhrasalConstraint": "generation",
    "DisjunctiveConstraint": "generation",
    "CheckpointError": "checkpoint",
    "load_state_dict": "checkpoint",
    "XLMRobertaTokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'modeling' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    return getattr(import_module(f".{module}", __name__), attribute or name)
