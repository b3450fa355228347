"""Activation functions by HF's names, and `DenseProjection` (``dropout(activation(dense(x)))``),
which serves as the attention output projection, the feed-forward halves and the pooler."""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Callable[[Tensor], Tensor]

ACTIVATIONS: Dict[str, Activation] = {
    "gelu": F.gelu,  # exact erf GELU
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def get_activation(name: Union[str, Activation]) -> Activation:
    """The activation function called ``name`` (HF's names), or ``name`` itself if callable."""
    if callable(name):
        return name
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"hidden_act {name!r} is not one of {sorted(ACTIVATIONS)}") from None



class DenseProjection(nn.Module):
    """``dropout(activation(dense(x)))``: (..., in_features) -> (..., out_features).

    Serves as the attention output projection, the feed-forward halves and the pooler.
    """

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        activation: Optional[Union[str, Activation]] = None,
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.activation = None if activation is None else get_activation(activation)
        self.dropout = nn.Dropout(dropout_prob) if dropout_prob > 0 else nn.Identity()

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = self.dense(hidden_states)
        if self.activation is not None:
            hidden_states = self.activation(hidden_states)
        return self.dropout(hidden_states)

