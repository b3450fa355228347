"""Assisted decoding (``generate(..., assistant_model=...)``) and prompt-lookup decoding
(``prompt_lookup_num_tokens``), with HF 4.53's settings and semantics.

Each round proposes a draft of candidate tokens, from a smaller model with the same vocabulary
(`AssistantDrafts`) or copied from what followed the sequence's last n-gram earlier in it
(`PromptLookup`), and the model scores all of them in one forward pass. The leading candidates it
agrees with are kept, then its own token after them; its cache is cut back to the kept tokens.
Greedy search so gives exactly greedy search's tokens. Sampling keeps an assistant's candidates
by speculative sampling (a candidate x with probability min(1, p(x) / q(x)), p the model's and q
the assistant's distribution; after a rejection one draw from max(p - q, 0)), and a prompt-lookup
draft where the model's own draws agree with it.

Owns `assisted_search` (the rounds, their checks and HF's output record), the two draft sources
and the cropping of a cache. One prompt at a time, as in HF. Shapes: T = tokens so far,
C = candidates of a round, V = vocabulary.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from ..outputs import Cache, GenerateDecoderOnlyOutput
from .config import GenerationConfig
from .logits import Criterion, ScoreRules, choose_tokens, ends_with, process_scores, stopped
from .search import _Decoding

#: settings of other strategies, which assisted decoding does not combine with (HF lets one win)
OTHER_STRATEGIES = ("penalty_alpha", "dola_layers", "num_beam_groups", "constraints", "force_words_ids")


def assisted_search(run: _Decoding, rules: ScoreRules, criteria: Tuple[Criterion, ...], *,
                    assistant: Optional[Any]) -> Union[Tensor, GenerateDecoderOnlyOutput]:
    """Greedy search or sampling (``run.settings.do_sample``) in rounds of drafts: from
    ``assistant`` when given, else by prompt lookup. Returns what `GenerationMixin.generate`
    returns for greedy search / sampling: the sequences (1, T) or the output record, whose
    per-token entries (scores, logits, attentions, hidden states) are those greedy search gives."""
    _check(run, assistant)
    settings = run.settings
    drafts: Union[AssistantDrafts, PromptLookup]
    if assistant is None:
        drafts = PromptLookup(tokens=settings.prompt_lookup_num_tokens, max_ngram=settings.max_matching_ngram_size or 2,
                              eos_token_ids=settings.eos_ids)
    else:
        drafts = AssistantDrafts(run, rules, assistant)
    while True:
        candidates, draft_scores = drafts.propose(run, room=run.max_length - run.ids.shape[1] - 1)
        matches, last_scores = _round(run, rules, criteria, candidates, draft_scores)
        drafts.update(matches=matches, proposed=candidates.shape[1])
        stop = ends_with(run.ids, settings.eos_ids) | stopped(criteria, run.ids, last_scores)
        if run.ids.shape[1] >= run.max_length or bool(stop.all()):
            break
    drafts.finish()
    if not settings.return_dict_in_generate:
        return run.ids
    return GenerateDecoderOnlyOutput(
        sequences=run.ids, scores=run.collected("scores"), logits=run.collected("logits"),
        attentions=run.collected("attentions"), hidden_states=run.collected("hidden_states"), past_key_values=run.past,
    )


def _check(run: _Decoding, assistant: Optional[Any]) -> None:
    """``ValueError`` naming the first setting or input that assisted decoding cannot serve."""
    s = run.settings
    others = [name for name in OTHER_STRATEGIES if getattr(s, name, None) not in (None, False, 0, 0.0, 1)]
    vocab, assistant_vocab = run.model.config.vocab_size, getattr(getattr(assistant, "config", None), "vocab_size", None)
    checks = [
        (assistant is None or s.prompt_lookup_num_tokens is None,
         "give assistant_model or prompt_lookup_num_tokens, not both"),
        (s.num_beams == 1, "assisted decoding is greedy search or sampling: num_beams must be 1"),
        (not others, f"assisted decoding does not combine with {', '.join(others)}"),
        (s.num_return_sequences == 1, "assisted decoding returns one sequence: num_return_sequences must be 1"),
        (run.ids.shape[0] == 1, f"assisted decoding continues one prompt at a time (batch size 1), not {run.ids.shape[0]}"),
        (run.prompt_embeds is None, "assisted decoding needs the prompt as input_ids, not inputs_embeds"),
        (run.use_cache, "assisted decoding needs the cache: use_cache=True and a config with is_decoder=True"),
        (assistant is None or assistant_vocab == vocab,
         f"assistant_model's vocab_size {assistant_vocab} is not the model's {vocab}: it needs the same tokenizer"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"generate(): {message}")


def _round(run: _Decoding, rules: ScoreRules, criteria: Tuple[Criterion, ...], candidates: Tensor,
           draft_scores: Optional[Tensor]) -> Tuple[int, Tensor]:
    """Score the ``candidates`` (1, C) after ``run``'s tokens in one forward pass, append the
    accepted ones and the model's next token, record their outputs and crop the cache to the
    new tokens. Returns how many candidates were accepted and the last token's scores (1, V)."""
    length, cached = run.ids.shape[1], cache_length(run.past)
    sequence = torch.cat([run.ids, candidates], dim=1)
    # a draft that would end the sequence (eos, a stopping criterion, which sees no scores, as in
    # HF) gets no token of the model's after it
    done = candidates.shape[1] > 0 and bool(
        (ends_with(sequence, run.settings.eos_ids) | stopped(criteria, sequence, None)).all())
    logits, out = _verify(run, sequence)
    scores = torch.stack([process_scores(logits[:, i], sequence[:, : length + i], rules)
                          for i in range(logits.shape[1])], dim=1)
    tokens, matches = _accept(scores, candidates, draft_scores, do_sample=run.settings.do_sample, done=done)
    for i in range(tokens.shape[1]):
        run.keep_scores(logits[:, i], scores[:, i])
        run.append(tokens[:, i])
    _keep_states(run, out, length=length, cached=cached, count=tokens.shape[1])
    run.past = crop_cache(out.past_key_values, run.ids.shape[1] - 1)
    return matches, scores[:, tokens.shape[1] - 1]


def _verify(run: _Decoding, sequence: Tensor) -> Tuple[Tensor, Any]:
    """The model's logits (1, C + 1, V), in float32, at the last C + 1 positions of ``sequence``
    (1, T + C: the run's tokens and a draft), from one forward pass over what the cache lacks;
    and the model's output."""
    extra = sequence.shape[1] - run.ids.shape[1]
    mask = torch.cat([run.mask, run.mask.new_ones(run.mask.shape[0], extra)], dim=1)
    inputs = dict(run.inputs)
    types = inputs.get("token_type_ids")
    if types is not None:
        inputs["token_type_ids"] = torch.cat([types, types[:, -1:].expand(-1, extra)], dim=1)
    step = run.model.prepare_inputs_for_generation(sequence, past_key_values=run.past, attention_mask=mask, **inputs)
    out = run.model(**step, use_cache=True, output_attentions=run.settings.output_attentions,
                    output_hidden_states=run.settings.output_hidden_states, return_dict=True)
    return out.logits[:, -extra - 1:].float(), out


def _accept(scores: Tensor, candidates: Tensor, draft_scores: Optional[Tensor], *, do_sample: bool,
            done: bool) -> Tuple[Tensor, int]:
    """The tokens (1, n + 1) a round appends, given the model's processed ``scores`` (1, C + 1, V)
    after each candidate (1, C): the n leading candidates the model agrees with and its own next
    token (none after a draft that is ``done``); and n."""
    if do_sample and draft_scores is not None:
        return _speculative(scores, candidates, draft_scores, done=done)
    chosen = choose_tokens(scores[0], do_sample=do_sample)[0][None]  # the model's own pick at each position
    matches = int((candidates == chosen[:, :-1]).long().cumprod(dim=1).sum())
    if done and matches == candidates.shape[1]:
        matches -= 1
    return chosen[:, : matches + 1], matches


def _speculative(scores: Tensor, candidates: Tensor, draft_scores: Tensor, *, done: bool) -> Tuple[Tensor, int]:
    """Speculative sampling of an assistant's draft (its scores (1, C, V)): candidate i is kept
    while a uniform draw is <= p(x_i) / q(x_i); after the first rejection one token is drawn from
    max(p - q, 0) normalised, after a fully kept draft from p."""
    count = candidates.shape[1]
    p, q = scores.softmax(dim=-1), draft_scores.softmax(dim=-1)
    index = torch.arange(count, device=candidates.device)
    ratio = p[0, index, candidates[0]] / q[0, index, candidates[0]]
    matches = int((torch.rand_like(ratio) <= ratio).long().cumprod(dim=0).sum())
    if done and matches == count:
        return candidates, count - 1
    target = p[:, matches]
    if matches < count:
        residual = (target - q[:, matches]).clamp(min=0)
        total = residual.sum()
        target = residual / total if bool(total > 0) else target  # p == q everywhere: draw from p
    token = torch.multinomial(target, num_samples=1)
    return torch.cat([candidates[:, :matches], token], dim=1), matches


def _keep_states(run: _Decoding, out: Any, *, length: int, cached: int, count: int) -> None:
    """Record, per appended token, the attentions and hidden states of the step greedy search
    would have run for it: the whole prompt's rows for the first token, else the row of the
    position before the token (attention keys up to that position)."""
    s = run.settings
    for k in range(count):
        position = length - 1 + k  # the position whose output chose token k
        first = 0 if cached == 0 and k == 0 else position - cached
        rows = slice(first, position - cached + 1)
        if s.output_attentions:
            run._keep("attentions", True, tuple(a[..., rows, : position + 1] for a in out.attentions))
        if s.output_hidden_states:
            run._keep("hidden_states", True, tuple(h[:, rows] for h in out.hidden_states))


def cache_length(cache: Optional[Cache]) -> int:
    """The positions a (legacy, HF-layout) cache holds."""
    return 0 if cache is None else cache[0][0].shape[2]


def crop_cache(cache: Cache, length: int) -> Cache:
    """The cache of the first ``length`` positions: each layer's self-attention keys and values
    (B, N, T, D) cut to ``length``, cross-attention ones (after them) kept."""
    return tuple((layer[0][:, :, :length], layer[1][:, :, :length], *layer[2:]) for layer in cache)


class AssistantDrafts:
    """Drafts from an assistant model: up to its ``generation_config.num_assistant_tokens`` tokens
    by the same search and score rules as the model's (greedy or sampling), ending after an
    end-of-sequence token or a token the assistant gave less than ``assistant_confidence_threshold``
    probability (None or 0: never). ``num_assistant_tokens_schedule`` "heuristic" /
    "heuristic_transient": +2 tokens after a fully accepted draft, else -1 (at least 1); "heuristic"
    writes the last count back to the assistant's config. The assistant keeps its cache between
    rounds, cut back to all but the last two tokens each round (as HF does)."""

    def __init__(self, run: _Decoding, rules: ScoreRules, assistant: Any) -> None:
        self.config = getattr(assistant, "generation_config", None) or GenerationConfig.from_model_config(
            assistant.config)
        try:
            self.config.validate()
        except ValueError as err:
            raise ValueError(f"assistant_model.generation_config: {err}") from err
        _warn_ignored(run.settings, self.config)
        self.tokens = self.config.num_assistant_tokens
        self.rules, self.device = rules, assistant.device
        quiet = dataclasses.replace(run.settings, output_scores=False, output_logits=False, output_attentions=False,
                                    output_hidden_states=False, return_dict_in_generate=False)
        inputs = {"input_ids": run.ids, "attention_mask": run.mask, **run.inputs}
        self.helper = _Decoding(assistant, quiet, {k: _to(v, self.device) for k, v in inputs.items()})
        if not self.helper.use_cache:
            raise ValueError("generate(): the assistant_model needs the cache: a config with is_decoder=True")

    def propose(self, run: _Decoding, *, room: int) -> Tuple[Tensor, Optional[Tensor]]:
        """Candidates (1, C) to follow ``run``'s tokens, at most ``room``, and the assistant's
        processed scores (1, C, V) for them (None when C is 0)."""
        count = min(int(self.tokens), room)
        if count <= 0:
            return run.ids[:, :0], None
        helper = self.helper
        helper.ids, helper.mask = run.ids.to(self.device), run.mask.to(self.device)
        helper.inputs = {k: _to(v, self.device) for k, v in run.inputs.items()}
        if helper.past is not None:  # the last two positions run again, so the inputs are HF's
            helper.past = crop_cache(helper.past, run.ids.shape[1] - 2)
        drafted = []
        for _ in range(count):
            scores = process_scores(helper.forward(), helper.ids, self.rules)
            token, _ = choose_tokens(scores, do_sample=helper.settings.do_sample)
            helper.append(token)
            drafted.append(scores)
            if bool(ends_with(helper.ids, helper.settings.eos_ids).all()) or self._unsure(scores, token):
                break
        device = run.ids.device
        return helper.ids[:, run.ids.shape[1]:].to(device), torch.stack(drafted, dim=1).to(device)

    def _unsure(self, scores: Tensor, token: Tensor) -> bool:
        threshold = self.config.assistant_confidence_threshold
        return bool(threshold) and scores.softmax(dim=-1)[0, token[0]].item() < threshold

    def update(self, *, matches: int, proposed: int) -> None:
        """The next draft's length after ``matches`` of ``proposed`` candidates were accepted."""
        if self.config.num_assistant_tokens_schedule != "constant":
            self.tokens = self.tokens + 2 if matches == proposed else max(1, self.tokens - 1)

    def finish(self) -> None:
        if self.config.num_assistant_tokens_schedule == "heuristic":
            self.config.num_assistant_tokens = self.tokens


@dataclasses.dataclass(frozen=True)
class PromptLookup:
    """Drafts copied from the sequence itself: the ``tokens`` tokens that followed the first
    earlier occurrence of its last n tokens, for the largest n from ``max_ngram`` down to 1 that
    occurs earlier; cut before an end-of-sequence token (the model would otherwise accept it and
    go on)."""

    tokens: int
    max_ngram: int = 2
    eos_token_ids: Tuple[int, ...] = ()

    def propose(self, run: _Decoding, *, room: int) -> Tuple[Tensor, None]:
        """Candidates (1, C), C <= ``room``, to follow ``run``'s tokens (1, T); no scores."""
        return self.lookup(run.ids[0], count=min(self.tokens, room))[None], None

    def lookup(self, ids: Tensor, *, count: int) -> Tensor:
        """Up to ``count`` tokens (C,) to follow the token row ``ids`` (T,); empty if none."""
        length = ids.shape[0]
        for size in range(min(self.max_ngram, length - 1) if count > 0 else 0, 0, -1):
            found = (ids.unfold(0, size, 1) == ids[-size:]).all(dim=1).nonzero()[:, 0] + size
            found = found[found < length]  # the last n tokens themselves are followed by nothing
            if found.numel():
                draft = ids[int(found[0]): int(found[0]) + count]
                eos = torch.isin(draft, torch.tensor(self.eos_token_ids, dtype=ids.dtype, device=ids.device))
                return draft[: int(eos.long().argmax())] if bool(eos.any()) else draft
        return ids[:0]

    def update(self, *, matches: int, proposed: int) -> None:
        """Prompt lookup does not adapt."""

    def finish(self) -> None:
        """Nothing to keep."""


def _warn_ignored(settings: GenerationConfig, assistant_config: GenerationConfig) -> None:
    """Warn about a drafting setting given to ``generate`` (or the model's config) that the
    assistant's config overrides: HF reads them from the assistant only, and so do we."""
    default = GenerationConfig()
    for name in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"):
        given, used = getattr(settings, name), getattr(assistant_config, name)
        if given != getattr(default, name) and given != used:
            warnings.warn(f"generate(): {name}={given!r} is not used: assisted decoding reads it from "
                          f"assistant_model.generation_config ({used!r}), as HF does", stacklevel=6)


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value
