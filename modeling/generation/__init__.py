"""Text generation for `XLMRobertaXLForCausalLM`: the search strategies (`search`), their settings
(`config`, HF's ``GenerationConfig`` and ``generation_config.json``) and the per-step score
processing (`logits`)."""

from .config import GenerationConfig
from .search import GenerationMixin

__all__ = ["GenerationConfig", "GenerationMixin"]
