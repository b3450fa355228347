"""Constrained beam search (HF's ``constraints`` / ``force_words_ids``): beam search whose
hypotheses must meet every constraint (`modeling.generation.constraints`).

Each step ranks the continuations as beam search does (`beam_pool`'s bookkeeping; a hypothesis
ends into the pool only if it meets the constraints), then adds, for every running beam, the
continuations by the tokens that make progress on its constraints, and keeps the K best in
round-robin over progress levels ("banks": HF's rule, so that beams which have made progress are
not crowded out by likelier ones which have not). The constraints read the whole sequence, the
prompt included. At the end, running beams that meet the constraints are preferred; others only
fill up what is missing.

Owns `constrained_beam_search`. Same tokens, scores, sequences_scores, beam_indices and records as
HF's ``generate`` on the same weights and constraints; our `DisjunctiveConstraint` copies its
progress where HF's shares it between copies.
Shapes: B = batch, K = beams, R = rows (B x K), C = candidates per item, V = vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .beam_pool import IMPOSSIBLE, Pool, beam_output, candidate_count, make_pools, split_candidates
from .constraints import ConstraintState, constraints_of
from .logits import Criterion, ScoreRules, process_scores, stopped

if TYPE_CHECKING:
    from .search import _Decoding

#: one item's beams: scores, tokens, the rows they extend
Beams = Tuple[List[float], List[int], List[int]]


def constrained_beam_search(run: "_Decoding", rules: ScoreRules, criteria: Tuple[Criterion, ...]) -> Any:
    """Constrained beam search over ``run`` (its rows: B items x K beams)."""
    settings = run.settings
    constraints = constraints_of(settings.constraints, settings.force_words_ids)
    beams, device = settings.num_beams, run.ids.device
    pools = make_pools(run.ids.shape[0] // beams, beams, run)
    scores = torch.full((len(pools), beams), IMPOSSIBLE, device=device)
    scores[:, 0] = 0.0
    scores, history = scores.flatten(), torch.zeros(len(pools) * beams, 0, dtype=torch.long, device=device)
    while True:
        logits = run.forward()
        totals = process_scores(F.log_softmax(logits, dim=-1), run.ids, rules) + scores[:, None]
        run.keep_scores(logits, totals)
        ranked = totals.view(len(pools), -1).topk(candidate_count(run, beams), dim=1)
        chosen = [_choose(run, pools[item], item, (ranked.values[item], ranked.indices[item]), totals, history,
                          constraints) for item in range(len(pools))]
        scores = torch.tensor([s for kept in chosen for s in kept[0]], dtype=scores.dtype, device=device)
        rows = torch.tensor([r for kept in chosen for r in kept[2]], device=device)
        history = torch.cat([history[rows], rows[:, None]], dim=1)
        run.reorder(rows)
        run.append(torch.tensor([t for kept in chosen for t in kept[1]], device=device))
        if (all(pool.done for pool in pools) or run.ids.shape[1] >= run.max_length
                or bool(stopped(criteria, run.ids, totals).all())):
            break
    _finish_running(run, pools, scores, history, constraints)
    return beam_output(run, [[pool] for pool in pools], keep=settings.num_return_sequences)


def _meets(constraints: Sequence[Any], ids: Tensor) -> bool:
    return ConstraintState.of(constraints, ids.tolist()).completed


def _choose(run: "_Decoding", pool: Pool, item: int, best: Tuple[Tensor, Tensor], totals: Tensor, history: Tensor,
            constraints: Sequence[Any]) -> Beams:
    """One item's K beams for the next step from its best continuations ``best`` (scores (C,) and
    their flat indices into the item's K x V summed scores; ``totals`` (R, V) holds all of them).
    An item whose pool is done gets pads, extending the batch's first row, as in HF."""
    beams, vocab = run.settings.num_beams, totals.shape[-1]
    if pool.done:
        return [0.0] * beams, [run.settings.pad_token_id] * beams, [0] * beams
    top, flat = best
    ranked = (top, flat % vocab, flat // vocab + item * beams)
    kept = split_candidates(pool, ranked, ids=run.ids, history=history, eos_ids=run.settings.eos_ids, beams=beams,
                            accept=lambda row: _meets(constraints, run.ids[row]))
    pool.done = pool.finished_by(float(top[0]), new_length=history.shape[1] + 1)
    return _progress_first(kept, run.ids, totals, item=item, constraints=constraints)


def _progress_first(kept: Beams, ids: Tensor, totals: Tensor, *, item: int, constraints: Sequence[Any]) -> Beams:
    """Add to the K beams ``kept`` the continuations of the item's rows by tokens that make
    progress on the constraints (each new sequence once), then keep K in HF's order: by progress
    level (bank) x 100 + score, taking the first of every run of equal banks, then the second, ..."""
    beams = len(kept[0])
    sequences = {tuple(ids[row].tolist()) + (token,) for token, row in zip(kept[1], kept[2])}
    banks = [ConstraintState.of(constraints, list(seq)).bank for seq in
             (ids[row].tolist() + [token] for token, row in zip(kept[1], kept[2]))]
    extra: Beams = ([], [], [])
    for row in range(item * beams, (item + 1) * beams):
        prefix = ids[row].tolist()
        state = ConstraintState.of(constraints, prefix)
        if state.completed:
            continue
        for token in state.advance():
            if tuple(prefix) + (token,) in sequences:
                continue
            sequences.add(tuple(prefix) + (token,))
            advanced = state.copy()
            advanced.add(token)
            banks.append(advanced.bank)
            for values, value in zip(extra, (float(totals[row, token]), token, row)):
                values.append(value)
    if not extra[0]:
        return kept
    scores = torch.tensor(kept[0] + extra[0], dtype=totals.dtype)
    order = torch.sort(torch.tensor(banks) * 100 + scores, descending=True).indices
    ranked_banks, runs, position = torch.tensor(banks)[order].tolist(), [], -1
    for i, bank in enumerate(ranked_banks):
        position = position + 1 if i and bank == ranked_banks[i - 1] else 0
        runs.append(position)
    order = order[torch.sort(torch.tensor(runs), stable=True).indices][:beams].tolist()
    merged = [kept[k] + extra[k] for k in range(3)]
    return tuple([values[i] for i in order] for values in merged)  # type: ignore[return-value]


def _finish_running(run: "_Decoding", pools: List[Pool], scores: Tensor, history: Tensor,
                    constraints: Sequence[Any]) -> None:
    """Offer the running beams of every item that is not done to its pool: those meeting the
    constraints, and, if they are fewer than ``num_return_sequences``, all the others as well."""
    beams, keep = run.settings.num_beams, run.settings.num_return_sequences
    for item, pool in enumerate(pools):
        if pool.done:
            continue
        rows = range(item * beams, (item + 1) * beams)
        meeting = [row for row in rows if _meets(constraints, run.ids[row])]
        others = [row for row in rows if row not in meeting] if len(meeting) < keep else []
        for row in meeting + others:
            pool.add(run.ids[row].clone(), float(scores[row]), tuple(history[row].tolist()),
                     new_length=history.shape[1])
