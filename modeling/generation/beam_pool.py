"""The bookkeeping of HF's classic beam scorer, which diverse (group) and constrained beam search
use (plain beam search has its own, vectorised one in `search`): per batch item (and group) a
`Pool` of the best finished hypotheses, `split_candidates` (one step's ranked continuations into
finished hypotheses and the beams that run on), HF's rule for when an item is done, and
`beam_output` (the best hypotheses as HF's output record).

A hypothesis scores sum of log-probabilities / new_length ** length_penalty. Finished hypotheses
are kept without the token that ended them; the output puts the first end-of-sequence id after
each one that is shorter than the longest (HF's layout, ``pad_token_id`` after that).
Shapes: B = batch, K = beams, R = rows (B x K), C = candidates per item, T = tokens so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..outputs import GenerateBeamDecoderOnlyOutput

if TYPE_CHECKING:
    from .search import _Decoding

#: HF's score of an impossible beam
IMPOSSIBLE = -1.0e9


@dataclass
class Hypothesis:
    score: float  # sum of log-probabilities / new_length ** length_penalty
    tokens: Tensor  # (L,) the prompt and the new tokens (without the one that ended it)
    origins: Tuple[int, ...]  # for each new token, the row it extended


@dataclass
class Pool:
    """The best ``size`` finished hypotheses of one batch item (or one group of its beams)."""

    size: int
    length_penalty: float
    early_stopping: Any  # True, False or "never"
    max_new: int  # new tokens at most (for early_stopping="never")
    hypotheses: List[Hypothesis] = field(default_factory=list)
    worst: float = 1.0e9
    done: bool = False

    def add(self, tokens: Tensor, log_prob_sum: float, origins: Tuple[int, ...], *, new_length: int) -> None:
        """Offer a finished hypothesis; kept if the pool has room or it beats the worst one."""
        score = log_prob_sum / (new_length ** self.length_penalty)
        if len(self.hypotheses) < self.size or score > self.worst:
            self.hypotheses.append(Hypothesis(score, tokens, origins))
            if len(self.hypotheses) > self.size:
                ranked = sorted((h.score, i) for i, h in enumerate(self.hypotheses))
                del self.hypotheses[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def finished_by(self, best_log_prob_sum: float, *, new_length: int) -> bool:
        """HF's rule: the pool is full and (unless ``early_stopping=True``) no running beam, whose
        best sum is ``best_log_prob_sum``, can still beat its worst hypothesis."""
        if len(self.hypotheses) < self.size:
            return False
        if self.early_stopping is True:
            return True
        longest = self.max_new if self.early_stopping == "never" and self.length_penalty > 0.0 else new_length
        return self.worst >= best_log_prob_sum / (longest ** self.length_penalty)


def make_pools(count: int, size: int, run: "_Decoding") -> List[Pool]:
    s = run.settings
    return [Pool(size, s.length_penalty, s.early_stopping, run.max_length - run.prompt_length) for _ in range(count)]


def candidate_count(run: "_Decoding", beams: int) -> int:
    """How many continuations a step ranks per item for ``beams`` running beams (HF: room for
    every end-of-sequence id to be among them)."""
    return max(2, 1 + len(run.settings.eos_ids)) * beams


def split_candidates(pool: Pool, ranked: Tuple[Tensor, Tensor, Tensor], *, ids: Tensor, history: Tensor,
                     eos_ids: Sequence[int], beams: int,
                     accept: Optional[Callable[[int], bool]] = None) -> Tuple[List[float], List[int], List[int]]:
    """One item's ranked continuations (scores, tokens, rows; each (C,)) -> the ``beams`` that run
    on (scores, tokens, rows), in rank order. A continuation by an end-of-sequence token among the
    first ``beams`` finishes its row into ``pool`` (if ``accept(row)``); later ones are dropped.
    ``ids`` (R, T) are the rows so far, ``history`` (R, steps) the rows each one extended."""
    scores, tokens, rows = ranked[0].tolist(), ranked[1].tolist(), ranked[2].tolist()
    keep: Tuple[List[float], List[int], List[int]] = ([], [], [])
    new_length = history.shape[1] + 1
    for rank, (score, token, row) in enumerate(zip(scores, tokens, rows)):
        if token in eos_ids:
            if rank < beams and (accept is None or accept(row)):
                pool.add(ids[row].clone(), score, tuple(history[row].tolist()) + (row,), new_length=new_length)
        else:
            for kept, value in zip(keep, (score, token, row)):
                kept.append(value)
        if len(keep[0]) == beams:
            return keep
    raise ValueError(f"generate(): at most {beams} of the {len(tokens)} best continuations may end the sequence "
                     f"(eos_token_id {list(eos_ids)}); got {tokens}")


def beam_output(run: "_Decoding", items: List[List[Pool]], *, keep: int) -> Any:
    """The best ``keep`` hypotheses of each item (its pools merged) as HF returns them:
    sequences (B x keep, W), and in the record ``sequences_scores`` and ``beam_indices`` (B x keep,
    W; -1 after the new tokens) when ``output_scores``."""
    settings, eos = run.settings, run.settings.eos_ids
    best: List[Hypothesis] = []
    for pools in items:
        ranked = sorted((h for pool in pools for h in pool.hypotheses), key=lambda h: h.score)
        best.extend(ranked.pop() for _ in range(keep))
    longest = max(len(h.tokens) for h in best)
    width = min(longest + 1, run.max_length) if eos else longest
    sequences = run.ids.new_full((len(best), width), settings.pad_token_id if settings.pad_token_id is not None else 0)
    origins = run.ids.new_full((len(best), width), -1)
    for i, hypothesis in enumerate(best):
        sequences[i, : len(hypothesis.tokens)] = hypothesis.tokens
        origins[i, : len(hypothesis.origins)] = torch.tensor(hypothesis.origins, dtype=origins.dtype)
        if len(hypothesis.tokens) < width:
            sequences[i, len(hypothesis.tokens)] = eos[0]
    if not settings.return_dict_in_generate:
        return sequences
    scores = torch.tensor([h.score for h in best], dtype=torch.float32, device=sequences.device)
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=scores if settings.output_scores else None,
        scores=run.collected("scores"), logits=run.collected("logits"),
        beam_indices=origins if settings.output_scores else None, attentions=run.collected("attentions"),
        hidden_states=run.collected("hidden_states"), past_key_values=run.past,
    )
