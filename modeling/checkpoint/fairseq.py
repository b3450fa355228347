"""The fairseq checkpoint layout: the fairseq -> HF key map (`fairseq_to_hf_key`, `map_fairseq`),
the tensors fairseq leaves implicit (`GeneratedTensors`) and the head count a fairseq pickle's
arguments record (`fairseq_heads`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .files import Shape, TensorFile

__all__ = ["GeneratedTensors", "fairseq_to_hf_key", "is_fairseq_key", "map_fairseq", "fairseq_heads"]


class GeneratedTensors(TensorFile):
    """Tensors a checkpoint format leaves implicit (fairseq has no token-type embeddings: zeros)."""

    def __init__(self, path: Path, tensors: Mapping[str, Tuple[Shape, torch.dtype]]) -> None:
        self.path = path
        self._tensors = dict(tensors)

    def keys(self) -> List[str]:
        return list(self._tensors)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key][1]

    def shape(self, key: str) -> Shape:
        return self._tensors[key][0]

    def view(self, key: str) -> Tensor:
        shape, dtype = self._tensors[key]
        return torch.zeros(shape, dtype=dtype)


_FAIRSEQ_ENCODER = re.compile(r"^(?:encoder|decoder)\.sentence_encoder\.(.+)$")
_FAIRSEQ_LM_HEAD = re.compile(r"^(?:encoder|decoder)\.lm_head\.(.+)$")
_FAIRSEQ_HEAD = re.compile(r"^classification_heads\.([^.]+)\.(dense|out_proj)\.(weight|bias)$")
_FAIRSEQ_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_FAIRSEQ_LAYER_PARTS = {
    "self_attn_layer_norm": "attention.self_attn_layer_norm",
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "final_layer_norm": "LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
}
_FAIRSEQ_ENCODER_PARTS = {
    "embed_tokens.weight": "embeddings.word_embeddings.weight",
    "embed_positions.weight": "embeddings.position_embeddings.weight",
    "layer_norm.weight": "encoder.LayerNorm.weight",
    "layer_norm.bias": "encoder.LayerNorm.bias",
}
_FAIRSEQ_LM_HEAD_PARTS = {"weight": "lm_head.decoder.weight", "bias": "lm_head.bias"}
_FAIRSEQ_DROPPED = re.compile(r"(^|\.)(version|_float_tensor)$")


def fairseq_to_hf_key(key: str, *, single_head: bool = True) -> Optional[str]:
    """The HF name of a fairseq key; ``None`` for bookkeeping entries; unknown keys unchanged.

    ``classification_heads.<name>.*`` becomes ``classifier.*`` when it is the only head.
    """
    if _FAIRSEQ_DROPPED.search(key):
        return None
    match = _FAIRSEQ_ENCODER.match(key)
    if match:
        inner = match.group(1)
        layer = _FAIRSEQ_LAYER.match(inner)
        if layer and layer.group(2) in _FAIRSEQ_LAYER_PARTS:
            index, part, kind = layer.groups()
            return f"encoder.layer.{index}.{_FAIRSEQ_LAYER_PARTS[part]}.{kind}"
        return _FAIRSEQ_ENCODER_PARTS.get(inner, key)
    match = _FAIRSEQ_LM_HEAD.match(key)
    if match:
        inner = match.group(1)
        return _FAIRSEQ_LM_HEAD_PARTS.get(inner, f"lm_head.{inner}")
    match = _FAIRSEQ_HEAD.match(key)
    if match and single_head:
        return f"classifier.{match.group(2)}.{match.group(3)}"
    return key


def is_fairseq_key(key: str) -> bool:
    """Whether ``key`` names a tensor of a fairseq encoder (``encoder.sentence_encoder.*``)."""
    return _FAIRSEQ_ENCODER.match(key) is not None


def map_fairseq(
    tensors: Mapping[str, Tuple[TensorFile, str]]
) -> Tuple[Dict[str, Tuple[TensorFile, str]], List[TensorFile]]:
    """``tensors`` (key -> file and key in it) under HF names, and the `GeneratedTensors` made
    up for what fairseq leaves implicit (token-type embeddings)."""
    heads = {m.group(1) for m in map(_FAIRSEQ_HEAD.match, tensors) if m}
    mapped: Dict[str, Tuple[TensorFile, str]] = {}
    for name, source in tensors.items():
        key = fairseq_to_hf_key(name, single_head=len(heads) <= 1)
        if key is not None:
            mapped[key] = source
    generated: List[TensorFile] = []
    word = mapped.get("embeddings.word_embeddings.weight")
    if word is not None and "embeddings.token_type_embeddings.weight" not in mapped:
        file, name = word
        hidden = file.shape(name)[-1]
        zeros = GeneratedTensors(file.path, {"token_type_embeddings (zeros)": ((1, hidden), file.dtype(name))})
        generated.append(zeros)
        mapped["embeddings.token_type_embeddings.weight"] = (zeros, "token_type_embeddings (zeros)")
    return mapped, generated


def fairseq_heads(files: Sequence[TensorFile]) -> Optional[int]:
    """``encoder_attention_heads`` from a fairseq pickle's ``args`` / ``cfg``, when it is there."""
    for file in files:
        extras = getattr(file, "extras", {})
        for candidate in (extras.get("args"), _field(extras.get("cfg"), "model")):
            value = _field(candidate, "encoder_attention_heads")
            if isinstance(value, int) and value > 0:
                return value
    return None


def _field(container: Any, name: str) -> Any:
    if isinstance(container, dict):
        return container.get(name)
    return getattr(container, name, None) if isinstance(container, argparse.Namespace) else None
