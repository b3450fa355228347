"""`GenerationConfig`: the settings of ``generate`` (HF's names and defaults for what we provide),
their checks, the decoding strategy they select (`GenerationConfig.generation_mode`, HF's rules and
names), and HF's ``generation_config.json`` I/O; `UNSUPPORTED` names the HF strategies and tools
that ``generate`` refuses; `ASSISTANT_SCHEDULES` the ways an assistant's draft length may change."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

#: HF ``generate`` keywords of strategies and tools we do not provide -> what they are
UNSUPPORTED = {"assistant_tokenizer": "assisted decoding with another tokenizer",
               "assistant_early_exit": "early-exit (self-speculative) decoding",
               "streamer": "streamers", "cache_implementation": "HF's cache classes",
               "prefix_allowed_tokens_fn": "prefix-constrained decoding", "synced_gpus": "synced GPUs"}
GENERATION_CONFIG_NAME = "generation_config.json"
#: settings that hold objects rather than file content (not written to ``generation_config.json``)
OBJECT_FIELDS = frozenset({"constraints"})
#: ``num_assistant_tokens_schedule`` values (HF's): keep the draft length; +2 after a fully accepted
#: draft, -1 (down to 1) otherwise, kept on the assistant after the call; the same, not kept
ASSISTANT_SCHEDULES = ("constant", "heuristic", "heuristic_transient")


def refuse_unsupported(values: Dict[str, Any], *, where: str) -> None:
    """``ValueError`` naming the first `UNSUPPORTED` setting in ``values`` that is switched on
    (any value but None, False, 0 or 1, which leave the strategy off)."""
    for name, what in UNSUPPORTED.items():
        if values.get(name) not in (None, False, 0, 0.0, 1):
            raise ValueError(f"{where}: {name} ({what}) is not supported")


@dataclass
class GenerationConfig:
    """The settings of `GenerationMixin.generate`: HF's names and defaults for what we provide.

    ``max_length`` counts the prompt, ``max_new_tokens`` (which wins) does not; likewise
    ``min_length`` / ``min_new_tokens``. ``eos_token_id`` may be one id or several. The strategy
    settings: ``num_beam_groups`` / ``diversity_penalty`` (diverse beam search),
    ``penalty_alpha`` with ``top_k`` and ``low_memory`` (contrastive search), ``dola_layers``
    (``"low"``, ``"high"`` or layer indices: DoLa decoding), ``force_words_ids`` / ``constraints``
    (constrained beam search; `modeling.generation.constraints`' classes or HF's).
    ``num_assistant_tokens`` / ``num_assistant_tokens_schedule`` / ``assistant_confidence_threshold``
    are read from the assistant's config in assisted decoding (as HF does);
    ``prompt_lookup_num_tokens`` switches prompt-lookup decoding on (`modeling.generation.assisted`).
    """

    max_length: int = 20
    max_new_tokens: Optional[int] = None
    min_length: int = 0
    min_new_tokens: Optional[int] = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
    penalty_alpha: Optional[float] = None
    low_memory: Optional[bool] = None
    dola_layers: Optional[Union[str, List[int]]] = None
    force_words_ids: Optional[List[Any]] = None
    constraints: Optional[List[Any]] = None
    temperature: float = 1.0
    top_k: Optional[int] = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    bad_words_ids: Optional[List[List[int]]] = None
    remove_invalid_values: bool = False
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Union[int, List[int]]] = None
    pad_token_id: Optional[int] = None
    use_cache: bool = True
    output_scores: bool = False
    output_logits: bool = False
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict_in_generate: bool = False
    num_assistant_tokens: int = 20
    num_assistant_tokens_schedule: str = "constant"
    assistant_confidence_threshold: Optional[float] = 0.4
    prompt_lookup_num_tokens: Optional[int] = None
    max_matching_ngram_size: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        """The settings that differ from the defaults (what HF's ``generation_config.json`` holds;
        ``constraints``, which are objects, are left out)."""
        default = GenerationConfig()
        return {f: getattr(self, f) for f in sorted(FIELDS - OBJECT_FIELDS) if getattr(self, f) != getattr(default, f)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "GenerationConfig":
        """Settings from ``generation_config.json`` content; HF's bookkeeping keys are skipped, and a
        strategy we do not provide is refused (``ValueError`` naming it)."""
        refuse_unsupported(data, where="generation config")
        return cls(**{k: v for k, v in data.items() if k in FIELDS})

    def save_pretrained(self, directory: Union[str, "os.PathLike[str]"]) -> Path:
        path = Path(directory) / GENERATION_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf8")
        return path

    @classmethod
    def from_pretrained(cls, directory: Union[str, "os.PathLike[str]"]) -> "GenerationConfig":
        """Read ``generation_config.json`` from a checkpoint directory (or the file itself)."""
        path = Path(directory)
        path = path / GENERATION_CONFIG_NAME if path.is_dir() else path
        try:
            data = json.loads(path.read_text(encoding="utf8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read generation config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"generation config {path} does not hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_model_config(cls, config: Any) -> "GenerationConfig":
        """The model's special tokens, and any generation setting its ``config.json`` holds (as HF)."""
        stored = {k: v for k, v in getattr(config, "extra", {}).items() if k in FIELDS}
        return cls(**{**stored, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                      "pad_token_id": config.pad_token_id})

    def update(self, **kwargs: Any) -> Dict[str, Any]:
        """Set the given settings; return the keywords that are none (HF's ``update``)."""
        for name in [k for k in kwargs if k in FIELDS]:
            setattr(self, name, kwargs.pop(name))
        return kwargs

    @property
    def eos_ids(self) -> Tuple[int, ...]:
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible setting."""
        checks = [
            (self.num_beams >= 1, "num_beams must be >= 1"),
            (self.num_return_sequences >= 1, "num_return_sequences must be >= 1"),
            (self.num_beams > 1 or self.do_sample or self.num_return_sequences == 1,
             "num_return_sequences > 1 needs do_sample=True or num_beams > 1 (greedy search gives one sequence)"),
            (self.num_return_sequences <= self.num_beams or self.num_beams == 1,
             "num_return_sequences must be <= num_beams"),
            (not self.do_sample or self.temperature > 0, "temperature must be > 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0"),
            (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.early_stopping in (True, False, "never"), "early_stopping must be True, False or 'never'"),
            (self.num_assistant_tokens >= 1, "num_assistant_tokens must be >= 1"),
            (self.num_assistant_tokens_schedule in ASSISTANT_SCHEDULES,
             f"num_assistant_tokens_schedule must be one of {', '.join(ASSISTANT_SCHEDULES)}"),
            (self.assistant_confidence_threshold is None or 0 <= self.assistant_confidence_threshold <= 1,
             "assistant_confidence_threshold must be None or in [0, 1]"),
            (self.prompt_lookup_num_tokens is None or self.prompt_lookup_num_tokens >= 1,
             "prompt_lookup_num_tokens must be None or >= 1"),
            (self.max_matching_ngram_size is None or self.max_matching_ngram_size >= 1,
             "max_matching_ngram_size must be None or >= 1"),
            *self._strategy_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"generate(): {message}")

    def _strategy_checks(self) -> List[Tuple[bool, str]]:
        """HF's checks of the strategy settings, as (holds, message) pairs."""
        constrained = self.constraints is not None or self.force_words_ids is not None
        diverse = self.diversity_penalty != 0.0 or self.num_beam_groups != 1
        grouped = self.num_beams > 1 and not constrained and diverse
        layers = self.dola_layers
        dola_ok = layers is None or layers in ("low", "high") or (
            isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers))
        needs = "constraints / force_words_ids (constrained beam search) need"
        group = "num_beam_groups / diversity_penalty (diverse beam search)"
        return [
            (not constrained or self.num_beams > 1, f"{needs} num_beams > 1"),
            (not constrained or not self.do_sample, f"{needs} do_sample=False"),
            (not constrained or self.num_beam_groups == 1, f"{needs} num_beam_groups=1"),
            (not constrained or bool(self.constraints or self.force_words_ids), f"{needs} at least one constraint"),
            (not grouped or not self.do_sample, f"{group} need do_sample=False"),
            (not grouped or self.num_beam_groups > 1, f"{group}: diversity_penalty needs num_beam_groups > 1"),
            (not grouped or self.num_beams % self.num_beam_groups == 0,
             f"{group}: num_beams must be divisible by num_beam_groups"),
            (not grouped or self.diversity_penalty > 0.0,
             f"{group}: num_beam_groups > 1 needs diversity_penalty > 0, otherwise the groups are identical"),
            (dola_ok, "dola_layers must be 'low', 'high' or a list of layer indices"),
        ]

    @property
    def generation_mode(self) -> str:
        """The decoding strategy these settings select, by HF's rules and names: constraints win,
        then beams (groups, sampling), then contrastive search (``penalty_alpha > 0`` and
        ``top_k > 1``); ``dola_layers`` turns greedy search or sampling into DoLa decoding (and is
        ignored by the other strategies, with a warning)."""
        if self.constraints is not None or self.force_words_ids is not None:
            return "constrained_beam_search"
        if self.num_beams > 1:
            sampled = "beam_sample" if self.do_sample else "beam_search"
            mode = "group_beam_search" if self.num_beam_groups > 1 else sampled
        elif self.do_sample:
            mode = "sample"
        else:
            contrastive = (self.top_k or 0) > 1 and (self.penalty_alpha or 0.0) > 0.0
            mode = "contrastive_search" if contrastive else "greedy_search"
        if self.dola_layers is not None:
            if mode in ("greedy_search", "sample"):
                return "dola_generation"
            warnings.warn(f"generate(): dola_layers is ignored by {mode.replace('_', ' ')} (DoLa decoding extends "
                          "greedy search and sampling only)", stacklevel=3)
        return mode


#: the names of the settings
FIELDS = frozenset(f.name for f in fields(GenerationConfig))
