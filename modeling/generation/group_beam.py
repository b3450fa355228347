"""Diverse beam search (HF's ``num_beam_groups`` with ``diversity_penalty``): the K beams of an
item form ``num_beam_groups`` groups of G = K / groups beams, each group a beam search of its own
(`beam_pool`'s bookkeeping, one pool per item and group). Within a step the groups choose in turn,
and a group's log-probabilities first lose ``diversity_penalty`` x the number of times the earlier
groups of the same item chose each token in this step (HF's Hamming diversity), then go through
the usual score rules. At the end the pools of an item are merged and the best hypotheses kept.

Owns `group_beam_search`. Same tokens, scores, sequences_scores and records as HF's ``generate``
on the same weights; ``beam_indices`` are the rows of the batch each token extended, as in plain
beam search (HF's group search mixes up the groups' histories there).
Shapes: B = batch, K = beams, G = beams per group, R = rows (B x K), V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .beam_pool import IMPOSSIBLE, Pool, beam_output, candidate_count, make_pools, split_candidates
from .logits import Criterion, ScoreRules, process_scores, stopped

if TYPE_CHECKING:
    from .search import _Decoding


@dataclass
class _Step:
    """What the groups of one step decide, per row (R,): the new token, the row it extends, the
    beam's summed score; and the scores (R, V) after the rules (what ``output_scores`` records)."""

    tokens: Tensor
    rows: Tensor
    scores: Tensor
    processed: Tensor


def group_beam_search(run: "_Decoding", rules: ScoreRules, criteria: Tuple[Criterion, ...]) -> Any:
    """Diverse beam search over ``run`` (its rows: B items x K beams)."""
    settings = run.settings
    beams, groups = settings.num_beams, settings.num_beam_groups
    batch, device = run.ids.shape[0] // beams, run.ids.device
    pools = [make_pools(groups, beams // groups, run) for _ in range(batch)]
    scores = torch.full((batch, beams), IMPOSSIBLE, device=device)
    scores[:, :: beams // groups] = 0.0  # each group starts from one copy of the prompt
    scores, history = scores.flatten(), torch.zeros(batch * beams, 0, dtype=torch.long, device=device)
    while True:
        logits = run.forward()
        step = _Step(torch.zeros_like(scores, dtype=torch.long), torch.zeros_like(scores, dtype=torch.long),
                     scores.clone(), torch.zeros_like(logits))
        for group in range(groups):
            _choose(run, rules, logits, step, pools, group=group, history=history)
        run.keep_scores(logits, step.processed)
        scores, history = step.scores, torch.cat([history[step.rows], step.rows[:, None]], dim=1)
        run.reorder(step.rows)
        run.append(step.tokens)
        if (all(pool.done for item in pools for pool in item) or run.ids.shape[1] >= run.max_length
                or bool(stopped(criteria, run.ids, step.processed).all())):
            break
    _finish_running(run, pools, scores, history)
    return beam_output(run, pools, keep=settings.num_return_sequences)


def _group_rows(batch: int, beams: int, size: int, group: int, device: torch.device) -> Tensor:
    """(B x G,) the rows of one group, item by item."""
    return (torch.arange(batch, device=device)[:, None] * beams + group * size
            + torch.arange(size, device=device)).flatten()


def _choose(run: "_Decoding", rules: ScoreRules, logits: Tensor, step: _Step, pools: List[List[Pool]], *,
            group: int, history: Tensor) -> None:
    """One group's choice for every item: its best continuations split by `split_candidates`
    (an item whose pool is done gets pads, extending the batch's first row of the group, as in HF)."""
    beams, size = run.settings.num_beams, run.settings.num_beams // run.settings.num_beam_groups
    batch, vocab = len(pools), logits.shape[-1]
    rows = _group_rows(batch, beams, size, group, logits.device)
    log_probs = _diversity(F.log_softmax(logits[rows], dim=-1), step.tokens, group=group, size=size,
                           penalty=run.settings.diversity_penalty)
    processed = process_scores(log_probs, run.ids[rows], rules)
    step.processed[rows] = processed
    total = (processed + step.scores[rows, None]).view(batch, size * vocab)
    top, flat = total.topk(candidate_count(run, size), dim=1)
    extended = rows.view(batch, size).gather(1, flat // vocab)
    for item in range(batch):
        pool, targets = pools[item][group], rows[item * size:(item + 1) * size]
        if pool.done:
            kept = ([0.0] * size, [run.settings.pad_token_id] * size, [group * size] * size)
        else:
            kept = split_candidates(pool, (top[item], flat[item] % vocab, extended[item]), ids=run.ids,
                                    history=history, eos_ids=run.settings.eos_ids, beams=size)
            pool.done = pool.finished_by(float(top[item, 0]), new_length=history.shape[1] + 1)
        step.scores[targets] = torch.tensor(kept[0], dtype=step.scores.dtype, device=targets.device)
        step.tokens[targets] = torch.tensor(kept[1], device=targets.device)
        step.rows[targets] = torch.tensor(kept[2], device=targets.device)


def _diversity(log_probs: Tensor, chosen: Tensor, *, group: int, size: int, penalty: float) -> Tensor:
    """(B x G, V) log-probabilities of one group minus ``penalty`` x how often the earlier groups of
    each item chose each token in this step (``chosen`` (R,): their tokens)."""
    if group == 0:
        return log_probs
    batch, vocab = log_probs.shape[0] // size, log_probs.shape[-1]
    earlier = chosen.view(batch, -1)[:, : group * size]
    counts = torch.zeros(batch, vocab, dtype=log_probs.dtype, device=log_probs.device)
    counts.scatter_add_(1, earlier, torch.ones_like(earlier, dtype=log_probs.dtype))
    return (log_probs.view(batch, size, vocab) - penalty * counts[:, None, :]).view(-1, vocab)


def _finish_running(run: "_Decoding", pools: List[List[Pool]], scores: Tensor, history: Tensor) -> None:
    """Offer every running beam of a group that is not done to its pool."""
    beams = run.settings.num_beams
    size = beams // run.settings.num_beam_groups
    for item, groups in enumerate(pools):
        for group, pool in enumerate(groups):
            if pool.done:
                continue
            first = item * beams + group * size
            for row in range(first, first + size):
                pool.add(run.ids[row].clone(), float(scores[row]), tuple(history[row].tolist()),
                         new_length=history.shape[1])
