"""DoLa decoding (HF's ``dola_layers``; Chuang et al. 2024, "Decoding by Contrasting Layers"):
greedy search or sampling on the contrast between the last layer's next-token distribution and an
earlier ("premature") layer's, the earlier layer's states put through the output embeddings.

Each step: of the candidate layers, the one whose distribution is furthest from the last layer's
(Jensen-Shannon divergence, averaged over the rows) is the premature layer; tokens whose
last-layer log-probability is below the best one's + log(0.1) are ruled out; the others score
last-layer log-probability - premature-layer log-probability. The score rules then apply as in
greedy search or sampling (`search._search` runs the loop). The candidate layers (HF's rule, layer
0 = the embeddings): ``"low"`` = every second layer of the lower half, ``"high"`` = of the upper
half (at most 20 layers either way), or the given indices below the last layer; with tied
embeddings (as in XLM-R) the embeddings' own output and, in deeper models, layer 1 are skipped.

Owns `dola_logits` and `candidate_layers`. Same tokens (sampling: with the same seed), scores,
logits and records as HF's ``generate`` on the same weights.
Shapes: R = rows, L = candidate layers, V = vocabulary.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .search import _Decoding

#: the share of the best token's probability below which DoLa rules a token out
RELATIVE_TOP = 0.1


def candidate_layers(dola_layers: Union[str, List[int]], *, layers: int, tied: bool) -> List[int]:
    """The premature layers to choose from in a model of ``layers`` layers (``tied``: the output
    embeddings are the input ones); ``ValueError`` naming ``dola_layers`` when none is left."""
    start = 0 if not tied else 2 if layers > 2 else 1 if layers == 2 else 0
    if dola_layers == "low":
        chosen = [start] if start == layers // 2 else list(range(start, layers // 2 if layers <= 40 else 20, 2))
    elif dola_layers == "high":
        chosen = list(range(layers // 2, layers, 2) if layers <= 40 else range(layers - 20, layers, 2))
    else:
        if any(i < 0 for i in dola_layers):
            raise ValueError(f"generate(): dola_layers {dola_layers} must be layer indices >= 0 (0: the embeddings)")
        chosen = [i for i in dola_layers if i < layers]
    if not chosen:
        raise ValueError(f"generate(): dola_layers={dola_layers!r} leaves no layer to contrast with in a model of "
                         f"{layers} layers; give indices below {layers}")
    return chosen


def dola_logits(run: "_Decoding") -> Callable[["_Decoding"], Tuple[Tensor, Tensor]]:
    """The step function of DoLa decoding for `search._search`: run the model (every layer's
    states) -> (the last layer's logits (R, V), the contrasted scores (R, V))."""
    model = run.model
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"generate(): dola_layers (DoLa decoding) needs output embeddings; "
                         f"{type(model).__name__} has none")
    config = model.config
    layers = candidate_layers(run.settings.dola_layers, layers=config.num_hidden_layers,
                              tied=bool(getattr(config, "tie_word_embeddings", True)))

    def step(current: "_Decoding") -> Tuple[Tensor, Tensor]:
        out = current.run_model(hidden_states=True)
        current.record_step(out)
        final = out.logits[:, -1].float()
        premature = {i: head(out.hidden_states[i][:, -1]).float() for i in layers}
        return final, _contrast(final, premature)

    return step


def _contrast(final: Tensor, premature: Dict[int, Tensor]) -> Tensor:
    """(R, V) DoLa scores from the last layer's logits and each candidate layer's."""
    layers = list(premature)
    chosen = layers[0]
    if len(layers) > 1:
        stacked = torch.stack([premature[i] for i in layers])  # (L, R, V)
        mean = 0.5 * (F.softmax(final, dim=-1)[None] + F.softmax(stacked, dim=-1))
        to_final = F.kl_div(F.log_softmax(final, dim=-1)[None], mean, reduction="none").mean(-1)
        to_layers = F.kl_div(F.log_softmax(stacked, dim=-1), mean, reduction="none").mean(-1)
        divergence = (0.5 * (to_final + to_layers)).mean(-1)  # (L,) Jensen-Shannon, averaged over the rows
        chosen = layers[int(divergence.argmax())]
    mature, base = final.log_softmax(dim=-1), premature[chosen].log_softmax(dim=-1)
    ruled_out = mature < mature.max(dim=-1, keepdim=True).values + math.log(RELATIVE_TOP)
    return mature.masked_fill(ruled_out, float("-inf")) - base.masked_fill(ruled_out, -1e-3)
