"""The LoRA settings (`LoraConfig`) and the target table: which Linear layers each target names.

Owns the validated settings (rank ``r``, ``alpha``, ``dropout``, ``targets``), the names users
give targets (`TARGETS`) and the module paths they stand for in our backbone, whose module names
are HF's ``XLMRobertaXL*`` ones (``encoder.layer.N.attention.self.query`` ...), and the regular
expression that PEFT's ``target_modules`` takes for them (`target_pattern`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

__all__ = ["LoraConfig", "TARGETS", "target_of", "target_pattern"]

# target name -> the path of its nn.Linear below a transformer layer (``encoder.layer.N.``).
# The attention targets cover every attention block of a layer: ``attention`` and, in a decoder
# with cross-attention, ``crossattention`` (as PEFT's ``target_modules=["query"]`` does).
_ATTENTION = r"(?:attention|crossattention)"
TARGETS: Dict[str, str] = {
    "query": rf"{_ATTENTION}\.self\.query",
    "key": rf"{_ATTENTION}\.self\.key",
    "value": rf"{_ATTENTION}\.self\.value",
    "attention_output": rf"{_ATTENTION}\.output\.dense",
    "intermediate": r"intermediate\.dense",
    "output": r"output\.dense",
}
# a module path (of the bare model or of a task model, ``roberta.`` first) below a layer
_LAYER = r"(?:.*\.)?encoder\.layer\.\d+\."


def target_pattern(targets: Iterable[str]) -> str:
    """The regular expression matching the full module paths of ``targets`` (PEFT applies a string
    ``target_modules`` with ``re.fullmatch`` to each module's path), for the bare model
    (``encoder.layer.0.attention.self.query``) and task models (``roberta.encoder...``)."""
    return _LAYER + "(?:" + "|".join(TARGETS[name] for name in targets) + ")"


_COMPILED = {name: re.compile(_LAYER + pattern) for name, pattern in TARGETS.items()}


def target_of(path: str) -> Optional[str]:
    """The target name that the module at ``path`` belongs to, or None."""
    return next((name for name, pattern in _COMPILED.items() if pattern.fullmatch(path)), None)


@dataclass(frozen=True, init=False)
class LoraConfig:
    """Low-rank adapters on the backbone's Linear layers: ``W x + (alpha / r) B A dropout(x)``.

    - ``r``: the rank (positive integer); A is (r, in), B is (out, r).
    - ``alpha``: the scale numerator (positive); the update is scaled by ``alpha / r``.
    - ``dropout``: dropout probability on the input of the adapter branch, in [0, 1).
    - ``targets``: names from `TARGETS` (``query``, ``key``, ``value``, ``attention_output``,
      ``intermediate``, ``output``); stored without duplicates, in `TARGETS` order.

    Every bad value raises `ValueError` naming the setting.
    """

    r: int
    alpha: float
    dropout: float
    targets: Tuple[str, ...]

    def __init__(self, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 targets: Iterable[str] = ("query", "value")) -> None:
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            raise ValueError(f"lora.r must be a positive integer, got {r!r}")
        if not _is_number(alpha) or alpha <= 0:
            raise ValueError(f"lora.alpha must be a positive number, got {alpha!r}")
        if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {dropout!r}")
        if isinstance(targets, str):
            raise ValueError(f"lora.targets must be a list of names from {list(TARGETS)}, got the string {targets!r}")
        given = list(targets)
        unknown = [name for name in given if name not in TARGETS]
        if unknown or not given:
            raise ValueError(f"lora.targets must be names from {list(TARGETS)}, got {given!r}"
                             + (f" (unknown: {unknown})" if unknown else " (none)"))
        object.__setattr__(self, "r", r)
        object.__setattr__(self, "alpha", float(alpha))
        object.__setattr__(self, "dropout", float(dropout))
        object.__setattr__(self, "targets", tuple(name for name in TARGETS if name in given))

    @property
    def scaling(self) -> float:
        """``alpha / r``, the factor of the adapter branch."""
        return self.alpha / self.r

    @property
    def pattern(self) -> str:
        """`target_pattern` of the targets."""
        return target_pattern(self.targets)

    def to_dict(self) -> Dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoraConfig":
        """From a mapping with the keys of `to_dict` (a config block); unknown keys raise `ValueError`."""
        unknown = sorted(set(data) - {"r", "alpha", "dropout", "targets"})
        if unknown:
            raise ValueError(f"unknown lora settings {unknown}: expected lora.r, lora.alpha, lora.dropout, lora.targets")
        return cls(**data)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
