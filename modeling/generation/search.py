"""Text generation for `XLMRobertaXLForCausalLM`: `GenerationMixin.generate` (greedy search,
sampling, beam search, beam sampling) with HF's arguments, stopping rules and outputs
(`GenerateDecoderOnlyOutput`, `GenerateBeamDecoderOnlyOutput`); its settings are
`modeling.generation.config`'s.

Greedy search and beam search choose the tokens HF's ``generate`` chooses on the same weights
(same scores, same order of processing, same beam bookkeeping); sampling draws from the same
distributions. ``generate`` hands the other strategies to their modules (`contrastive`, `dola`,
`group_beam`, `constrained`, `assisted` for assisted and prompt-lookup decoding), which drive the
same `_Decoding` state; streamers and cache classes are not provided: their keywords raise a
``ValueError`` naming them. The per-step score processing is `modeling.generation.logits`'s.
Shapes: B = batch, K = beams, R = rows decoded (B x K, or B x returned sequences), T = tokens so
far, V = vocabulary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import FIELDS, UNSUPPORTED, GenerationConfig, refuse_unsupported
from ..embeddings import position_ids_from_input_ids
from .constrained import constrained_beam_search
from .contrastive import contrastive_search
from .dola import dola_logits
from .group_beam import group_beam_search
from .logits import Criterion, Processor, ScoreRules, choose_tokens, ends_with, process_scores, stopped
from ..outputs import Cache, GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

#: the model inputs ``generate`` passes on to the model
MODEL_INPUTS = ("input_ids", "attention_mask", "inputs_embeds", "token_type_ids", "encoder_hidden_states",
                "encoder_attention_mask")
_NEG = -1.0e9  # HF's "impossible" beam score


class GenerationMixin:
    """``generate`` for a model whose ``forward`` returns ``logits`` and HF's legacy cache, with
    ``config`` (``pad_token_id``) and ``generation_config`` attributes."""

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, past_key_values: Optional[Cache] = None, attention_mask: Optional[Tensor] = None,
        **model_kwargs: Any,
    ) -> Dict[str, Any]:
        """One step's forward arguments (HF XL's rules): fairseq positions over the whole sequence
        (pads keep the padding position) and, with a cache, only the tokens after the cached ones
        (token types cut alike); the other model arguments unchanged."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = model_kwargs.pop("position_ids", None)
        if positions is None:
            positions = position_ids_from_input_ids(input_ids, self.config.pad_token_id)
        token_types = model_kwargs.pop("token_type_ids", None)
        if past_key_values:
            cached = past_key_values[0][0].shape[2]
            start = cached if input_ids.shape[1] > cached else input_ids.shape[1] - 1
            input_ids, positions = input_ids[:, start:], positions[:, start:]
            token_types = None if token_types is None else token_types[:, start:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions,
                "token_type_ids": token_types, "past_key_values": past_key_values, **model_kwargs}

    @staticmethod
    def _reorder_cache(past_key_values: Cache, beam_idx: Tensor) -> Cache:
        """The cache rows in the order ``beam_idx`` (R,) gives."""
        return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past_key_values)

    @torch.no_grad()
    def generate(
        self,
        inputs: Optional[Tensor] = None,
        generation_config: Optional[GenerationConfig] = None,
        logits_processor: Sequence[Processor] = (),
        stopping_criteria: Sequence[Criterion] = (),
        *,
        assistant_model: Optional[Any] = None,
        **kwargs: Any,
    ) -> Union[Tensor, GenerateDecoderOnlyOutput, GenerateBeamDecoderOnlyOutput]:
        """Continue the prompt ``inputs`` (or ``input_ids=`` / ``inputs_embeds=``; without one, a
        sequence holding ``bos_token_id``), as HF does.

        ``kwargs`` are `GenerationConfig` settings (over ``generation_config``, itself over the
        model's ``generation_config``) or model inputs (``attention_mask`` (default: pads
        masked), ``token_type_ids``, ``encoder_hidden_states``, ``encoder_attention_mask``).
        The strategy follows HF's rules (`GenerationConfig.generation_mode`): ``assistant_model``
        (a smaller model with the same vocabulary) or ``prompt_lookup_num_tokens``: assisted
        decoding (`modeling.generation.assisted`); ``constraints`` / ``force_words_ids``:
        constrained beam search; ``num_beams > 1``: beam search (beam sampling with
        ``do_sample``, diverse beam search with ``num_beam_groups``); otherwise contrastive search
        (``penalty_alpha`` with ``top_k``), greedy search or sampling, those two as DoLa decoding
        with ``dola_layers``. ``logits_processor`` / ``stopping_criteria``: extra callables as in
        HF (run after the built-in processors but before NaN removal and sampling's warpers).
        Returns the sequences (R, T): the prompt and the new tokens, or only the new tokens when
        the prompt came as embeddings; with ``return_dict_in_generate`` an output record holding
        what the ``output_*`` settings ask for.
        """
        settings, model_inputs = _settings(self, generation_config, inputs, kwargs)
        mode = settings.generation_mode
        run = _Decoding(self, settings, model_inputs)
        rules, criteria = run.rules(tuple(logits_processor)), tuple(stopping_criteria)
        if assistant_model is not None or settings.prompt_lookup_num_tokens is not None:
            from .assisted import assisted_search  # it builds on this module

            return assisted_search(run, rules, criteria, assistant=assistant_model)
        if mode == "dola_generation":
            return _search(run, rules, criteria, logits_of=dola_logits(run))
        strategy = {"constrained_beam_search": constrained_beam_search, "group_beam_search": group_beam_search,
                    "beam_search": _beam_search, "beam_sample": _beam_search, "contrastive_search": contrastive_search}
        return strategy.get(mode, _search)(run, rules, criteria)


def _settings(model: Any, generation_config: Optional[GenerationConfig], inputs: Optional[Tensor],
              kwargs: Dict[str, Any]) -> Tuple[GenerationConfig, Dict[str, Any]]:
    """The settings of one call and its model inputs; refuses what is neither, naming it."""
    refuse_unsupported(kwargs, where="generate()")
    for name in UNSUPPORTED:
        kwargs.pop(name, None)
    base = generation_config or getattr(model, "generation_config", None) or GenerationConfig.from_model_config(model.config)
    settings = GenerationConfig(**{f: getattr(base, f) for f in FIELDS})
    model_inputs = settings.update(**kwargs)
    unknown = [name for name in model_inputs if name not in MODEL_INPUTS]
    if unknown:
        raise ValueError(f"generate(): {', '.join(map(repr, unknown))} are neither generation settings nor model "
                         f"inputs it uses ({', '.join(MODEL_INPUTS)})")
    if inputs is not None:
        if model_inputs.get("input_ids") is not None:
            raise ValueError("generate(): give the prompt as inputs or as input_ids, not both")
        model_inputs["input_ids"] = inputs
    if model_inputs.get("input_ids") is None and model_inputs.get("inputs_embeds") is None:
        if settings.bos_token_id is None:
            raise ValueError("generate(): give a prompt (inputs, input_ids or inputs_embeds) or a bos_token_id")
        model_inputs["input_ids"] = torch.full((1, 1), settings.bos_token_id, dtype=torch.long, device=model.device)
    if not model.config.is_decoder:
        warnings.warn("generate() on a model whose config has is_decoder=False: attention is bidirectional and "
                      "there is no cache; set is_decoder=True for left-to-right generation", stacklevel=3)
    if settings.eos_ids and settings.pad_token_id is None:
        warnings.warn(f"generate(): no pad_token_id; finished rows are padded with eos_token_id {settings.eos_ids[0]}",
                      stacklevel=3)
        settings.pad_token_id = settings.eos_ids[0]
    settings.validate()
    return settings, model_inputs


class _Decoding:
    """One generation's state: the token rows so far (R, T), their attention mask, the other model
    inputs, the cache, and what the output record collects."""

    def __init__(self, model: Any, settings: GenerationConfig, model_inputs: Dict[str, Any]) -> None:
        self.model, self.settings = model, settings
        ids, embeds = model_inputs.pop("input_ids", None), model_inputs.pop("inputs_embeds", None)
        mask = model_inputs.pop("attention_mask", None)
        if mask is None:
            mask = _default_mask(ids, embeds, settings)
        copies = settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences
        expand = (lambda t: None if t is None else t.repeat_interleave(copies, dim=0))  # noqa: E731
        self.prompt_embeds = expand(embeds)
        self.ids = expand(ids) if ids is not None else torch.zeros(embeds.shape[0] * copies, 0, dtype=torch.long,
                                                                  device=embeds.device)
        self.mask = expand(mask)
        self.inputs = {k: expand(v) for k, v in model_inputs.items()}
        self.prompt_length = self.ids.shape[1]
        use_cache = settings.use_cache and model.config.is_decoder and model.config.use_cache is not False
        self.use_cache, self.past = use_cache, None
        budget = settings.max_new_tokens
        embeds_length = 0 if embeds is None or ids is not None else embeds.shape[1]
        self.max_length = self.prompt_length + budget if budget is not None else settings.max_length - embeds_length
        self.record: Dict[str, List[Any]] = {"scores": [], "logits": [], "attentions": [], "hidden_states": []}

    def rules(self, extra: Tuple[Processor, ...]) -> ScoreRules:
        s = self.settings
        sampling_beams = s.do_sample and s.num_beams > 1
        return ScoreRules(
            prompt_length=self.prompt_length, eos_token_ids=s.eos_ids, repetition_penalty=s.repetition_penalty,
            bad_words_ids=tuple(tuple(w) for w in s.bad_words_ids or ()), min_length=s.min_length,
            min_new_tokens=s.min_new_tokens or 0, remove_invalid_values=s.remove_invalid_values,
            do_sample=s.do_sample, temperature=s.temperature, top_k=s.top_k or 0, top_p=s.top_p,
            min_tokens_to_keep=max(2, len(s.eos_ids) + 1) if sampling_beams else 1, extra=extra,
        )

    def forward(self) -> Tensor:
        """Run the model on what the cache lacks; the last position's logits (R, V) in float32."""
        out = self.run_model()
        self.record_step(out)
        return out.logits[:, -1].float()

    def run_model(self, *, hidden_states: bool = False) -> Any:
        """Run the model on what the cache lacks (with every layer's states when ``hidden_states``);
        keep its cache; record nothing. Returns the model's output."""
        s = self.settings
        if self.prompt_embeds is None:
            step = self.model.prepare_inputs_for_generation(self.ids, past_key_values=self.past,
                                                            attention_mask=self.mask, **self.inputs)
        else:  # positions follow the embeddings (padding cannot be seen in them), as in the forward
            types = self.inputs.get("token_type_ids")
            step = {**self.inputs, "attention_mask": self.mask, "past_key_values": self.past}
            if self.past is None:
                embedded = self.model.get_input_embeddings()(self.ids)
                step["inputs_embeds"] = torch.cat([self.prompt_embeds, embedded.to(self.prompt_embeds.dtype)], dim=1)
            else:
                step["input_ids"] = self.ids[:, -1:]
                step["token_type_ids"] = None if types is None else types[:, -1:]
        out = self.model(**step, use_cache=self.use_cache, output_attentions=s.output_attentions,
                         output_hidden_states=s.output_hidden_states or hidden_states, return_dict=True)
        self.past = out.past_key_values if self.use_cache else None
        return out

    def record_step(self, out: Any) -> None:
        """Keep a step's attentions and hidden states where the output record asks for them."""
        self._keep("attentions", self.settings.output_attentions, out.attentions)
        self._keep("hidden_states", self.settings.output_hidden_states, out.hidden_states)

    def _keep(self, what: str, wanted: bool, value: Any) -> None:
        if wanted and self.settings.return_dict_in_generate:
            self.record[what].append(value)

    def keep_scores(self, logits: Tensor, scores: Tensor) -> None:
        self._keep("logits", self.settings.output_logits, logits)
        self._keep("scores", self.settings.output_scores, scores)

    def append(self, tokens: Tensor) -> None:
        """Add one token (R,) to every row: ids, attention mask, token types (the last one repeated)."""
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        types = self.inputs.get("token_type_ids")
        if types is not None:
            self.inputs["token_type_ids"] = torch.cat([types, types[:, -1:]], dim=1)

    def reorder(self, rows: Tensor) -> None:
        """Keep the rows ``rows`` (R,) of the ids, mask, per-row inputs and cache, in that order."""
        self.ids, self.mask = self.ids[rows], self.mask[rows]
        if self.past is not None:
            self.past = self.model._reorder_cache(self.past, rows)
        for name, value in self.inputs.items():
            if value is not None:
                self.inputs[name] = value.index_select(0, rows)

    def collected(self, what: str) -> Optional[Tuple[Any, ...]]:
        wanted = {"scores": "output_scores", "logits": "output_logits", "attentions": "output_attentions",
                  "hidden_states": "output_hidden_states"}[what]
        return tuple(self.record[what]) if getattr(self.settings, wanted) else None


def _default_mask(ids: Optional[Tensor], embeds: Optional[Tensor], settings: GenerationConfig) -> Tensor:
    """HF's default attention mask: pads masked when the prompt holds the pad token (and it is no
    end-of-sequence token), else ones."""
    if ids is None:
        return torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    pad = settings.pad_token_id
    if pad is not None and pad not in settings.eos_ids and bool((ids == pad).any()):
        return ids.ne(pad).long()
    return torch.ones_like(ids)


def _search(run: _Decoding, rules: ScoreRules, criteria: Tuple[Criterion, ...],
            logits_of: Optional[Callable[[_Decoding], Tuple[Tensor, Tensor]]] = None) -> Any:
    """Greedy search or sampling: one token per row and step; finished rows continue with pads.
    ``logits_of(run)``: a step's raw logits and those the scores come from (DoLa's contrast);
    default: the model's logits for both."""
    settings = run.settings
    unfinished = torch.ones(run.ids.shape[0], dtype=torch.bool, device=run.ids.device)
    while True:
        logits, steered = logits_of(run) if logits_of else (run.forward(),) * 2
        scores = process_scores(steered, run.ids, rules)
        run.keep_scores(logits, scores)
        tokens, _ = choose_tokens(scores, do_sample=settings.do_sample)
        if settings.eos_ids:
            tokens = tokens.masked_fill(~unfinished, settings.pad_token_id)
        run.append(tokens)
        unfinished &= ~(ends_with(run.ids, settings.eos_ids) | stopped(criteria, run.ids, scores))
        if run.ids.shape[1] >= run.max_length or not bool(unfinished.any()):
            break
    if not settings.return_dict_in_generate:
        return run.ids
    return GenerateDecoderOnlyOutput(
        sequences=run.ids, scores=run.collected("scores"), logits=run.collected("logits"),
        attentions=run.collected("attentions"), hidden_states=run.collected("hidden_states"), past_key_values=run.past,
    )


@dataclass
class _Beams:
    """Beam search bookkeeping per batch item: the K running beams (their rows are the run's) and
    the K best finished hypotheses (``done`` marks the slots that hold one)."""

    running_scores: Tensor  # (B, K) summed log-probabilities
    running_origins: Tensor  # (B, K, N) for each new token, the row it extended (-1: none yet)
    sequences: Tensor  # (B, K, L) finished hypotheses, padded with the fill value
    scores: Tensor  # (B, K) their length-penalised scores
    origins: Tensor  # (B, K, N)
    done: Tensor  # (B, K)
    fill: int  # what fills the sequences after their end

    @classmethod
    def start(cls, batch: int, beams: int, *, length: int, new_tokens: int, fill: int, device: torch.device) -> "_Beams":
        running = torch.zeros(batch, beams, device=device)
        running[:, 1:] = _NEG  # the K copies of the prompt: only the first one is extended at first
        origins = torch.full((batch, beams, new_tokens), -1, dtype=torch.long, device=device)
        return cls(running, origins, torch.full((batch, beams, length), fill, dtype=torch.long, device=device),
                   torch.full((batch, beams), _NEG, device=device), origins.clone(),
                   torch.zeros(batch, beams, dtype=torch.bool, device=device), fill)


@dataclass
class _Candidates:
    """One step's C best continuations per item (C = max(2, 1 + #eos) x K), in rank order (drawn
    order when sampling): their new ``tokens``, summed ``scores``, the ``rows`` they extend, the
    extended ``ids`` (B, C, T + 1) and ``origins``, and whether they ``end`` (eos, length, criterion)."""

    tokens: Tensor
    scores: Tensor
    rows: Tensor
    ids: Tensor
    origins: Tensor
    ends: Tensor


def _beam_search(run: _Decoding, rules: ScoreRules, criteria: Tuple[Criterion, ...]) -> Any:
    """Beam search (beam sampling with ``do_sample``) with HF's bookkeeping: each step keeps the
    best C continuations; those among the top K that end enter the finished pool with score /
    new_length ** length_penalty, the best K others run on."""
    settings, beams = run.settings, run.settings.num_beams
    eos = settings.eos_ids
    state = _Beams.start(run.ids.shape[0] // beams, beams, length=run.max_length,
                         new_tokens=run.max_length - run.prompt_length,
                         fill=(settings.pad_token_id or eos[0]) if eos else -1, device=run.ids.device)
    while True:
        step = run.ids.shape[1] - run.prompt_length
        logits = run.forward()
        log_probs = process_scores(F.log_softmax(logits, dim=-1), run.ids, rules)
        run.keep_scores(logits, log_probs)
        candidates = _candidates(run, state, log_probs, criteria, step=step)
        _finish(state, candidates, settings=settings, new_length=step + 1)
        alive = candidates.scores + candidates.ends.float() * _NEG
        keep = alive.topk(beams, dim=-1).indices
        state.running_scores = alive.gather(1, keep)
        state.running_origins = _take(candidates.origins, keep)
        run.reorder(candidates.rows.gather(1, keep).flatten())
        run.append(candidates.tokens.gather(1, keep).flatten())
        if not _beams_can_improve(state, candidates.ends, settings=settings, new_length=step + 1,
                                  max_new=run.max_length - run.prompt_length):
            break
    return _beam_output(run, state)


def _candidates(run: _Decoding, state: _Beams, log_probs: Tensor, criteria: Tuple[Criterion, ...], *,
                step: int) -> _Candidates:
    """The step's best continuations of the running beams, from their log-probabilities (R, V)."""
    batch, beams = state.running_scores.shape
    eos = run.settings.eos_ids
    count = max(2, 1 + len(eos)) * beams
    total = (log_probs.view(batch, beams, -1) + state.running_scores[..., None]).view(batch, -1)
    flat, scores = choose_tokens(total, do_sample=run.settings.do_sample, count=count)
    vocab = log_probs.shape[-1]
    tokens = flat % vocab
    rows = flat // vocab + torch.arange(batch, device=flat.device)[:, None] * beams
    ids = torch.cat([run.ids[rows], tokens[..., None]], dim=-1)
    origins = state.running_origins.view(batch * beams, -1)[rows].clone()
    origins[:, :, step] = rows
    ends = torch.isin(tokens, torch.tensor(list(eos), dtype=tokens.dtype, device=tokens.device))
    ends |= ids.shape[-1] >= run.max_length
    ends |= stopped(criteria, ids.flatten(0, 1), log_probs[rows.flatten()]).view(batch, count)
    return _Candidates(tokens, scores, rows, ids, origins, ends)


def _take(values: Tensor, index: Tensor) -> Tensor:
    """``values`` (B, N, ...) at ``index`` (B, M) along the second axis -> (B, M, ...)."""
    return values.gather(1, index.view(*index.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:]))


def _finish(state: _Beams, candidates: _Candidates, *, settings: GenerationConfig, new_length: int) -> None:
    """Merge the candidates among the top K that end into the finished pool (the best K stay)."""
    beams = state.scores.shape[1]
    ranks = torch.arange(candidates.scores.shape[1], device=candidates.scores.device)
    entering = candidates.ends & (ranks < beams)[None, :]
    final = candidates.scores / (new_length ** settings.length_penalty)
    full = state.done.all(dim=-1, keepdim=True) & (settings.early_stopping is True)
    final = final + full.float() * _NEG + (~entering).float() * _NEG
    padded = F.pad(candidates.ids, (0, state.sequences.shape[-1] - candidates.ids.shape[-1]), value=state.fill)
    merged_scores = torch.cat([state.scores, final], dim=1)
    pick = merged_scores.topk(beams, dim=-1).indices
    state.sequences = _take(torch.cat([state.sequences, padded], dim=1), pick)
    state.scores = merged_scores.gather(1, pick)
    state.origins = _take(torch.cat([state.origins, candidates.origins], dim=1), pick)
    state.done = _take(torch.cat([state.done, entering], dim=1), pick)


def _beams_can_improve(state: _Beams, ends: Tensor, *, settings: GenerationConfig, new_length: int, max_new: int) -> bool:
    """HF's rule to go on: a running beam could still beat a finished one, not every pool is full
    under ``early_stopping=True``, and some candidate did not just end."""
    length = max_new if settings.early_stopping == "never" and settings.length_penalty > 0 else new_length
    best_running = state.running_scores[:, :1] / (length ** settings.length_penalty)
    worst_done = torch.where(state.done, state.scores.min(dim=1, keepdim=True).values, torch.full_like(state.scores, _NEG))
    improvable = bool((best_running > worst_done).any())
    open_beams = not (bool(state.done.all()) and settings.early_stopping is True)
    return improvable and open_beams and not bool(ends.all())


def _beam_output(run: _Decoding, state: _Beams) -> Any:
    """The best ``num_return_sequences`` finished hypotheses per item, cut to the longest."""
    settings, keep = run.settings, run.settings.num_return_sequences
    sequences = state.sequences[:, :keep].flatten(0, 1)
    origins = state.origins[:, :keep].flatten(0, 1)
    generated = int((origins >= 0).sum(dim=1).max())
    sequences, origins = sequences[:, : run.prompt_length + generated], origins[:, :generated]
    if not settings.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=state.scores[:, :keep].flatten() if settings.output_scores else None,
        scores=run.collected("scores"), logits=run.collected("logits"), beam_indices=origins.to(torch.int32),
        attentions=run.collected("attentions"), hidden_states=run.collected("hidden_states"), past_key_values=run.past,
    )
