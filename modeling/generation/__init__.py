"""Text generation for `XLMRobertaXLForCausalLM`: the search strategies (`search`: greedy search,
sampling, beam search; `contrastive`, `dola`, `group_beam`, `constrained`, with `beam_pool` the
bookkeeping the last two share), their settings (`config`, HF's ``GenerationConfig`` and
``generation_config.json``), the constraints of constrained beam search (`constraints`) and the
per-step score processing (`logits`)."""

from .config import GenerationConfig
from .constraints import Constraint, DisjunctiveConstraint, PhrasalConstraint
from .search import GenerationMixin

__all__ = ["Constraint", "DisjunctiveConstraint", "GenerationConfig", "GenerationMixin", "PhrasalConstraint"]
