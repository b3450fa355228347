"""Contrastive search (HF's ``penalty_alpha`` with ``top_k > 1`` and ``do_sample=False``): each
step takes the ``top_k`` most probable next tokens (after the score rules), runs the model on each
of them, and keeps per row the candidate with the best (1 - penalty_alpha) x probability -
penalty_alpha x degeneration penalty, the penalty being the largest cosine similarity between the
candidate's last hidden state and those of the tokens before it (positions the attention mask
hides do not count). The chosen candidate's forward gives the next step's logits and cache. By
default the candidates of a step run as one batch of R x top_k rows (the cache copied top_k
times); ``low_memory=True`` runs them one at a time (R rows each) and keeps only the best so far.

Owns `contrastive_search`. The candidates sit at their true positions (fairseq numbering over the
whole sequence, as in every other strategy); HF's XL class gives each of them position 2 (its
``prepare_inputs_for_generation`` numbers the one-token candidate input from scratch), which
changes the candidates' states and so HF's choice from the first new token on; with HF given the
true positions, tokens, scores, logits, attentions, hidden states and the cache are HF's.
Shapes: R = rows, k = top_k, c = candidates run together (k, or 1 with ``low_memory``), T = tokens
so far, H = hidden size, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional, Tuple

import torch
from torch import Tensor

from ..outputs import Cache, GenerateDecoderOnlyOutput
from .logits import Criterion, ScoreRules, ends_with, process_scores, stopped

if TYPE_CHECKING:
    from .search import _Decoding


@dataclass
class _Candidate:
    """Per row, the best candidate so far: its contrastive ``score`` (R,), ``token`` (R,), the
    ``logits`` (R, V) and last hidden state ``hidden`` (R, H) of its forward, that forward's
    records (``states``: every layer (R, 1, H); ``attentions``: per layer (R, heads, 1, T + 1) or
    None) and its cache (R rows, T + 1 positions)."""

    score: Tensor
    token: Tensor
    logits: Tensor
    hidden: Tensor
    states: Tuple[Tensor, ...]
    attentions: Optional[Tuple[Tensor, ...]]
    past: Cache


def contrastive_search(run: "_Decoding", rules: ScoreRules, criteria: Tuple[Criterion, ...]) -> Any:
    """Contrastive search over ``run``; finished rows continue with pads. Always uses the cache."""
    settings = run.settings
    run.use_cache = True
    out = run.run_model(hidden_states=True)
    if out.past_key_values is None:
        raise ValueError("generate(): contrastive search (penalty_alpha) needs the model's cache: set "
                         "config.is_decoder=True")
    logits, context, record = out.logits[:, -1].float(), out.hidden_states[-1], out
    unfinished = torch.ones(run.ids.shape[0], dtype=torch.bool, device=logits.device)
    chunk = 1 if settings.low_memory else settings.top_k
    while True:
        run.record_step(record)
        scores = process_scores(logits, run.ids, rules)
        run.keep_scores(logits, scores)
        probs, tokens = scores.softmax(dim=-1).topk(settings.top_k, dim=-1)
        best = _best_candidates(run, tokens, probs, context, chunk=chunk)
        chosen = best.token.masked_fill(~unfinished, settings.pad_token_id) if settings.eos_ids else best.token
        run.append(chosen)
        run.past = best.past
        logits, context = best.logits, torch.cat([context, best.hidden[:, None]], dim=1)
        record = SimpleNamespace(attentions=best.attentions, hidden_states=best.states)
        unfinished &= ~(ends_with(run.ids, settings.eos_ids) | stopped(criteria, run.ids, scores))
        if run.ids.shape[1] >= run.max_length or not bool(unfinished.any()):
            break
    if not settings.return_dict_in_generate:
        return run.ids
    past = tuple(tuple(t[..., :-1, :] for t in layer) for layer in run.past)  # the last token is not in it elsewhere
    return GenerateDecoderOnlyOutput(
        sequences=run.ids, scores=run.collected("scores"), logits=run.collected("logits"),
        attentions=run.collected("attentions"), hidden_states=run.collected("hidden_states"), past_key_values=past,
    )


def _best_candidates(run: "_Decoding", tokens: Tensor, probs: Tensor, context: Tensor, *, chunk: int) -> _Candidate:
    """Run the candidates ``tokens`` (R, k) (probabilities ``probs``) ``chunk`` at a time after the
    rows so far, whose last hidden states are ``context`` (R, T, H); the best per row. The run's
    state is left as it was."""
    base = (run.ids, run.mask, dict(run.inputs), run.past)
    rows = run.ids.shape[0]
    normed = context / context.norm(dim=2, keepdim=True)
    best: Optional[_Candidate] = None
    for start in range(0, tokens.shape[1], chunk):
        part = tokens[:, start:start + chunk]
        run.ids, run.mask, run.inputs, run.past = base[0], base[1], dict(base[2]), base[3]
        width = part.shape[1]
        if width > 1:
            run.reorder(torch.arange(rows, device=part.device).repeat_interleave(width))
        run.append(part.flatten())
        out = run.run_model(hidden_states=True)
        score = _contrastive_scores(normed, base[1], out.hidden_states[-1], probs[:, start:start + width],
                                    alpha=run.settings.penalty_alpha)
        value, pick = score.max(dim=-1)
        take = torch.arange(rows, device=pick.device) * width + pick
        found = _Candidate(value, part.gather(1, pick[:, None])[:, 0], out.logits[take, -1].float(),
                           out.hidden_states[-1][take, -1], tuple(h[take] for h in out.hidden_states),
                           None if out.attentions is None else tuple(a[take] for a in out.attentions),
                           _rows(out.past_key_values, take))
        best = found if best is None else _where(found.score > best.score, found, best)
    run.ids, run.mask, run.inputs, run.past = base
    return best


def _contrastive_scores(normed: Tensor, mask: Tensor, hidden: Tensor, probs: Tensor, *, alpha: float) -> Tensor:
    """(R, c) contrastive scores of c candidates per row: ``normed`` (R, T, H) unit-length states of
    the tokens so far (``mask`` (R, T): which count), ``hidden`` (R x c, 1, H) the candidates' last
    states, ``probs`` (R, c) their probabilities."""
    width = probs.shape[1]
    candidates = hidden / hidden.norm(dim=2, keepdim=True)
    cosine = torch.matmul(normed.repeat_interleave(width, dim=0), candidates.transpose(1, 2)).squeeze(-1)
    hidden_positions = (1 - mask.repeat_interleave(width, dim=0).to(cosine.dtype)) * torch.finfo(cosine.dtype).min
    penalty = (cosine + hidden_positions).max(dim=-1).values
    return ((1.0 - alpha) * probs.reshape(-1) - alpha * penalty).view(-1, width)


def _rows(past: Cache, rows: Tensor) -> Cache:
    return tuple(tuple(t[rows] for t in layer) for layer in past)


def _where(better: Tensor, new: Any, old: Any) -> Any:
    """``new`` where ``better`` (R,) holds, else ``old``, field by field (tensors with R first)."""
    if isinstance(new, Tensor):
        return torch.where(better.view(-1, *([1] * (new.dim() - 1))), new, old)
    if isinstance(new, _Candidate):
        return _Candidate(*(_where(better, getattr(new, f), getattr(old, f)) for f in new.__dataclass_fields__))
    return None if new is None else type(new)(_where(better, n, o) for n, o in zip(new, old))
