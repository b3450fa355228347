"""The per-step pieces of generation: what it does to a step's scores before it picks tokens, in
HF's order and with HF's semantics (repetition penalty, banned token sequences, minimum lengths,
extra processors, NaN / inf removal, then, sampling only, temperature, top-k and top-p), how it
picks a token, and whether a row has just ended.

Owns `ScoreRules` (the settings of one generation that these steps read), `process_scores`,
`choose_tokens`, `ends_with` and `stopped` (custom stopping criteria).
Shapes: R = rows being decoded (batch x beams or returned sequences), T = tokens so far,
V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

#: a custom processor (HF's ``LogitsProcessor`` protocol): (sequences (R, T), scores (R, V)) -> scores
Processor = Callable[[Tensor, Tensor], Tensor]
#: a custom stopping criterion (HF's protocol): (sequences (R, T), scores (R, V)) -> (R,) bool or bool
Criterion = Callable[[Tensor, Tensor], Union[Tensor, bool]]


@dataclass(frozen=True)
class ScoreRules:
    """The score settings of one generation (taken from its `GenerationConfig`).

    ``eos_token_ids``: tokens that end a sequence (the minimum lengths ban them, and banned
    sequences equal to one of them are not banned, as in HF); ``prompt_length``: tokens of the
    prompt, for ``min_new_tokens``; ``min_tokens_to_keep``: what top-k / top-p always keep
    (more than one in beam sampling).
    """

    prompt_length: int
    eos_token_ids: Tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    bad_words_ids: Tuple[Tuple[int, ...], ...] = ()
    min_length: int = 0
    min_new_tokens: int = 0
    remove_invalid_values: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_tokens_to_keep: int = 1
    extra: Tuple[Processor, ...] = ()


def process_scores(scores: Tensor, sequences: Tensor, rules: ScoreRules) -> Tensor:
    """Apply ``rules`` to a step's ``scores`` (R, V) given the ``sequences`` (R, T) so far."""
    scores = scores.clone()
    if rules.repetition_penalty != 1.0:
        seen = scores.gather(1, sequences)
        seen = torch.where(seen < 0, seen * rules.repetition_penalty, seen / rules.repetition_penalty)
        scores.scatter_(1, sequences, seen)
    if rules.bad_words_ids:
        scores = _ban_sequences(scores, sequences, rules)
    length = sequences.shape[1]
    if rules.eos_token_ids and (length < rules.min_length or length - rules.prompt_length < rules.min_new_tokens):
        in_vocabulary = [i for i in rules.eos_token_ids if 0 <= i < scores.shape[-1]]  # HF: others ban nothing
        scores[:, in_vocabulary] = float("-inf")
    for processor in rules.extra:
        scores = processor(sequences, scores)
    if rules.remove_invalid_values:
        limits = torch.finfo(scores.dtype)
        scores = torch.nan_to_num(scores, nan=0.0, posinf=limits.max, neginf=limits.min)
    if rules.do_sample:
        scores = _warp(scores, rules)
    return scores


def _ban_sequences(scores: Tensor, sequences: Tensor, rules: ScoreRules) -> Tensor:
    """-inf for the last token of each banned sequence whose other tokens end the row so far."""
    banned = torch.zeros_like(scores, dtype=torch.bool)
    for words in rules.bad_words_ids:
        if len(words) == 1 and words[0] in rules.eos_token_ids:
            continue  # HF never bans an end-of-sequence token this way
        *prefix, last = words
        if not prefix:
            banned[:, last] = True
        elif len(prefix) <= sequences.shape[1]:
            tail = sequences[:, -len(prefix):]
            banned[:, last] |= (tail == torch.tensor(prefix, device=sequences.device)).all(dim=1)
    return scores.masked_fill(banned, float("-inf"))


def _warp(scores: Tensor, rules: ScoreRules) -> Tensor:
    """Sampling's reshaping: temperature, then top-k, then top-p (nucleus) filtering."""
    if rules.temperature != 1.0:
        scores = scores / rules.temperature
    if rules.top_k:
        keep = min(max(rules.top_k, rules.min_tokens_to_keep), scores.shape[-1])
        threshold = scores.topk(keep, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if rules.top_p < 1.0:
        ascending, order = scores.sort(dim=-1)
        below = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - rules.top_p  # the improbable tail
        below[..., -rules.min_tokens_to_keep:] = False
        scores = scores.masked_fill(below.scatter(1, order, below), float("-inf"))
    return scores


def ends_with(sequences: Tensor, eos_token_ids: Sequence[int]) -> Tensor:
    """(R,) bool: whether each row's last token ends a sequence."""
    if not eos_token_ids:
        return torch.zeros(sequences.shape[0], dtype=torch.bool, device=sequences.device)
    return torch.isin(sequences[:, -1], torch.tensor(list(eos_token_ids), device=sequences.device))


def stopped(criteria: Sequence[Criterion], sequences: Tensor, scores: Optional[Tensor]) -> Tensor:
    """(R,) bool: rows that a custom stopping criterion ends."""
    stop = torch.zeros(sequences.shape[0], dtype=torch.bool, device=sequences.device)
    for criterion in criteria:
        stop |= torch.as_tensor(criterion(sequences, scores), device=sequences.device).expand_as(stop)
    return stop


def choose_tokens(scores: Tensor, *, do_sample: bool, count: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """(R, V) scores -> (tokens, their scores): the best token (R,) or, with ``count``, the best
    ``count`` (R, count) in descending order; with ``do_sample`` drawn (without replacement) from
    the softmax of the scores instead, in the order drawn."""
    if do_sample:
        tokens = torch.multinomial(scores.softmax(dim=-1), num_samples=count or 1)
        chosen = scores.gather(1, tokens)
        return (tokens, chosen) if count else (tokens[:, 0], chosen[:, 0])
    if count:
        values, tokens = scores.topk(count, dim=-1)
        return tokens, values
    tokens = scores.argmax(dim=-1)
    return tokens, scores.gather(1, tokens[:, None])[:, 0]
