"""``--code`` file of the FSDP test: the ``tiny`` preset without dropout, so that one process and
two ranks (each drawing its own dropout masks) compute the same losses."""

from modeling.config import PRESETS

PRESETS["tiny"] = {**PRESETS["tiny"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
