"""Config inference from tensor shapes: `find_key` (the suffix lookup of a weight), `shape_facts`
(the config values that shapes imply), `infer_config` for files without ``config.json`` and
`check_config`, which refuses a config that disagrees with the shapes."""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

from ..config import ConfigError, XLMRobertaXLConfig
from .discovery import Checkpoint
from .files import CheckpointError, Shape

__all__ = ["find_key", "shape_facts", "infer_config", "check_config"]

_WORD = "embeddings.word_embeddings.weight"
_LAYER_KEY = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def find_key(shapes: Mapping[str, Shape], suffix: str) -> Optional[Tuple[str, Shape]]:
    """The first key of ``shapes`` that is ``suffix`` or ends in ``.suffix``, with its shape
    (``None`` when there is none): finds a weight whatever the task model's prefix."""
    for key, shape in shapes.items():
        if key == suffix or key.endswith("." + suffix):
            return key, shape
    return None


def shape_facts(shapes: Mapping[str, Shape]) -> Dict[str, Tuple[Any, str]]:
    """Config values implied by tensor shapes: field -> (value, key that shows it)."""
    facts: Dict[str, Tuple[Any, str]] = {}
    rules = (
        (_WORD, (("vocab_size", 0), ("hidden_size", 1))),
        ("embeddings.position_embeddings.weight", (("max_position_embeddings", 0),)),
        ("embeddings.token_type_embeddings.weight", (("type_vocab_size", 0),)),
        ("encoder.layer.0.intermediate.dense.weight", (("intermediate_size", 0),)),
    )
    for suffix, fields_ in rules:
        found = find_key(shapes, suffix)
        if found and len(found[1]) == 2:
            for name, axis in fields_:
                facts[name] = (found[1][axis], found[0])
    layers = [(int(m.group(1)), key) for key in shapes for m in [_LAYER_KEY.search(key)] if m]
    if layers:
        count, key = max(layers)
        facts["num_hidden_layers"] = (count + 1, key)
    cross = next((key for key in shapes if ".crossattention." in key), None)
    if cross is not None:
        facts["add_cross_attention"] = (True, cross)
    for suffix in ("classifier.out_proj.weight", "classifier.weight", "qa_outputs.weight"):
        found = find_key(shapes, suffix)
        if found and len(found[1]) == 2 and found[1][0] > 1:
            facts["num_labels"] = (found[1][0], found[0])
            break
    return facts


def infer_config(
    checkpoint: Checkpoint, *, num_attention_heads: Optional[int] = None, **overrides: Any
) -> XLMRobertaXLConfig:
    """A config from the checkpoint's shapes (for files without ``config.json``).

    Heads cannot be read from shapes: ``num_attention_heads`` (override) wins, then a fairseq
    pickle's arguments, then 32 for the XL / XXL widths (2560, 4096); otherwise it is an error.
    """
    facts = shape_facts(checkpoint.shapes())
    if "hidden_size" not in facts:
        raise CheckpointError(
            f"{checkpoint.source}: no {_WORD!r} among its keys, so it is no XLM-RoBERTa-XL checkpoint "
            f"(first keys: {list(checkpoint.tensors)[:5]})"
        )
    values = {name: value for name, (value, _) in facts.items()}
    if values.get("add_cross_attention"):
        values["is_decoder"] = True
    heads = num_attention_heads or checkpoint.num_attention_heads
    if heads is None and values["hidden_size"] in (2560, 4096):
        heads = 32
    if heads is None:
        raise CheckpointError(
            f"{checkpoint.source}: the number of attention heads cannot be read from the weights "
            f"(hidden size {values['hidden_size']}); pass num_attention_heads=... or a config"
        )
    values["num_attention_heads"] = heads
    if "num_labels" in overrides:
        values.pop("num_labels", None)
    try:
        config = XLMRobertaXLConfig.from_dict({**values, **overrides})
        config.validate()
        return config
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{checkpoint.source}: the config inferred from its shapes is invalid: {err}") from err


def check_config(config: XLMRobertaXLConfig, checkpoint: Checkpoint, *, config_source: str) -> None:
    """Raise when ``config`` disagrees with the tensor shapes (naming file, key and setting)."""
    shapes = checkpoint.shapes()
    for name, (value, key) in shape_facts(shapes).items():
        if name == "num_labels":
            continue  # a head with other labels is a shape mismatch of its own key
        expected = getattr(config, name)
        if expected != value:
            raise CheckpointError(
                f"{config_source} does not match the weights in {checkpoint.describe(key)}: the config says "
                f"{name}={expected!r}, the tensor's shape {list(shapes[key])} means {name}={value!r}"
            )
