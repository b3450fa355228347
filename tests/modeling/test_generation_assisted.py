"""Tests of modeling/generation/assisted.py: assisted decoding (``assistant_model``) and
prompt-lookup decoding against HF's on the same weights (target and assistant), and against
greedy search: the same tokens, scores, logits, per-step attentions and hidden states, cache, the
same forward passes (drafting schedule, confidence threshold) and, with the same seed, the same
sampled tokens; the settings' checks and errors."""

from __future__ import annotations

import copy
import random
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import torch
from torch import Tensor

from modeling.generation.assisted import PromptLookup, crop_cache
from modeling.generation.config import GenerationConfig
from modeling.heads import XLMRobertaXLForCausalLM

from .test_model import assert_close, make_pair, random_ids

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
PromptLookupCandidateGenerator = pytest.importorskip("transformers.generation.candidate_generator").PromptLookupCandidateGenerator

Pair = Tuple[Any, XLMRobertaXLForCausalLM]  # (HF's model, ours) with the same weights
NO_EOS = dict(eos_token_id=-1)  # as in HF's tests: nothing ends early (HF's prompt lookup needs an eos id)


@pytest.fixture(scope="module")
def pair() -> Pair:
    return make_pair("ForCausalLM", is_decoder=True)


@pytest.fixture(scope="module")
def assistants(pair: Pair) -> Dict[str, Pair]:
    """Assistants (HF's and ours, same weights): the model itself (every draft accepted), the
    model with slightly perturbed weights (some accepted), and a smaller model (1 layer, other
    weights: hardly any)."""
    hf = copy.deepcopy(pair[0])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.002)
    close = copy.deepcopy(pair[1])
    close.load_state_dict(hf.state_dict())
    small = make_pair("ForCausalLM", is_decoder=True, seed=3, num_hidden_layers=1)
    return {"self": pair, "close": (hf, close), "small": small}


@pytest.fixture(autouse=True)
def _default_drafting_settings(assistants: Dict[str, Pair]) -> Iterator[None]:
    """Each test leaves every model's drafting settings at HF's defaults (a "heuristic" run
    writes its last draft length back to the assistant, here possibly the model itself)."""
    yield
    for models in assistants.values():
        _configure(models, tokens=20, threshold=0.4)


def _configure(assistant: Pair, *, tokens: int = 3, schedule: str = "constant", threshold: Optional[float] = None) -> None:
    for model in assistant:
        config = model.generation_config
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = tokens, schedule
        config.assistant_confidence_threshold = threshold


def _prompt() -> Tensor:
    return random_ids(batch=1, length=6, seed=7)[0]


@pytest.fixture(scope="module")
def looping_prompt(pair: Pair) -> Tensor:
    """A prompt whose greedy continuation repeats n-grams of it (prompt lookup finds drafts)."""
    ids = random_ids(batch=1, length=6, seed=4)[0]
    prompt = pair[1].generate(ids, max_new_tokens=6, **NO_EOS)
    assert prompt[0, -4:].tolist()[:2] == prompt[0, -2:].tolist()  # it ends with a repeated pair
    return prompt


def _both(models: Pair, ids: Tensor, assistant: Optional[Pair] = None, seed: int = 0, **kwargs: Any) -> Tuple[Any, Any]:
    """HF's and our ``generate`` on the same prompt (each with its own assistant), same seed."""
    results = []
    for side, model in enumerate(models):
        extra = {} if assistant is None else {"assistant_model": assistant[side]}
        torch.manual_seed(seed)
        results.append(model.generate(ids, **kwargs, **extra))
    return results[0], results[1]


@contextmanager
def _forward_lengths(*models: Any) -> Iterator[List[int]]:
    """The input length of every forward pass of ``models``, in call order."""
    lengths: List[int] = []
    hooks = [model.register_forward_pre_hook(lambda m, args, kw: lengths.append(kw["input_ids"].shape[1]),
                                             with_kwargs=True) for model in dict.fromkeys(models)]
    try:
        yield lengths
    finally:
        for hook in hooks:
            hook.remove()


SCHEDULES = {
    "constant": dict(tokens=3),
    "confident": dict(tokens=4, threshold=0.4),
    "heuristic": dict(tokens=2, schedule="heuristic"),
    "transient": dict(tokens=5, schedule="heuristic_transient", threshold=0.2),
}
SETTINGS = {
    "plain": dict(max_new_tokens=12, **NO_EOS),
    "processors": dict(max_new_tokens=10, repetition_penalty=1.3, bad_words_ids=[[1, 0], [17]], min_new_tokens=3,
                       remove_invalid_values=True, **NO_EOS),
    "max_length": dict(max_length=13, **NO_EOS),
}


# ------------------------------------------------------------------ greedy: greedy search's tokens, HF's outputs
@pytest.mark.parametrize("kind,schedule", [("self", "constant"), ("self", "heuristic"), ("close", "confident"),
                                           ("close", "heuristic"), ("close", "transient"), ("small", "confident")])
def test_greedy_assisted_decoding_gives_greedy_tokens_and_hfs_forward_passes(
        pair: Pair, assistants: Dict[str, Pair], kind: str, schedule: str) -> None:
    """The same tokens as greedy search; every forward pass of model and assistant the same
    length as HF's (so the same drafts, confidence stops and schedule); the assistant's
    ``num_assistant_tokens`` afterwards as HF leaves it."""
    assistant, ids = assistants[kind], _prompt()
    greedy = pair[1].generate(ids, **SETTINGS["plain"])
    seen = []
    for side in (0, 1):
        _configure(assistant, **SCHEDULES[schedule])
        with _forward_lengths(pair[side], assistant[side]) as lengths:
            out = pair[side].generate(ids, assistant_model=assistant[side], **SETTINGS["plain"])
        assert torch.equal(out, greedy), side
        seen.append((lengths, assistant[side].generation_config.num_assistant_tokens))
    assert seen[1] == seen[0]
    if kind == "self" and schedule == "heuristic":  # every draft accepted: +2 per round, kept on the assistant
        assert seen[1][1] > 2


def test_a_draft_is_checked_in_one_pass_and_the_caches_cut_back(pair: Pair) -> None:
    """With a copy of the model as assistant (every draft of 3 accepted, plus the model's own
    token): the model runs once per 4 tokens, on the uncached token and the draft; the
    assistant reruns the last two tokens, then one per drafted token."""
    assistant = copy.deepcopy(pair[1])
    _configure((assistant,), tokens=3)
    with _forward_lengths(pair[1]) as model_passes, _forward_lengths(assistant) as assistant_passes:
        out = pair[1].generate(_prompt(), assistant_model=assistant, max_new_tokens=12, **NO_EOS)
    assert torch.equal(out, pair[1].generate(_prompt(), max_new_tokens=12))
    assert model_passes == [6 + 3, 1 + 3, 1 + 3]
    assert assistant_passes == [6, 1, 1] + [2, 1, 1] * 2


@pytest.mark.parametrize("kind,case", [("close", "processors"), ("self", "max_length")])
def test_greedy_assisted_decoding_with_settings_equals_hf(pair: Pair, assistants: Dict[str, Pair], kind: str,
                                                         case: str) -> None:
    _configure(assistants[kind], tokens=3, threshold=0.4)
    expected, got = _both(pair, _prompt(), assistants[kind], **SETTINGS[case])
    assert torch.equal(got, expected)
    assert torch.equal(got, pair[1].generate(_prompt(), **SETTINGS[case]))


@pytest.mark.parametrize("kind", ["self", "close", "lookup"])
def test_end_of_sequence_stops_as_in_greedy_search(pair: Pair, assistants: Dict[str, Pair], looping_prompt: Tensor,
                                                   kind: str) -> None:
    """An eos the model produces mid-way ends the sequence there, as in greedy search and HF."""
    ids = looping_prompt if kind == "lookup" else _prompt()
    greedy = pair[1].generate(ids, max_new_tokens=12, **NO_EOS)
    eos = int(greedy[0, ids.shape[1] + 3])
    kwargs: Dict[str, Any] = dict(max_new_tokens=12, eos_token_id=eos, pad_token_id=1)
    if kind == "lookup":
        kwargs["prompt_lookup_num_tokens"] = 4
    else:
        _configure(assistants[kind], tokens=4)
    expected, got = _both(pair, ids, None if kind == "lookup" else assistants[kind], **kwargs)
    assert torch.equal(got, expected) and torch.equal(got, pair[1].generate(ids, max_new_tokens=12, eos_token_id=eos))
    assert got[0, -1] == eos and got.shape[1] < greedy.shape[1]


@pytest.mark.parametrize("kind", ["self", "close", "lookup"])
def test_dict_output_equals_hf_and_greedy_search(pair: Pair, assistants: Dict[str, Pair], looping_prompt: Tensor,
                                                 kind: str) -> None:
    """Scores, logits and cache as HF's assisted decoding returns them; per-token attentions and
    hidden states those of greedy search (HF's and ours). HF's own assisted record differs from
    them only in the first round's entries after the prompt's (it repeats the prompt's first rows)."""
    ids = looping_prompt if kind == "lookup" else _prompt()
    kwargs: Dict[str, Any] = dict(max_new_tokens=9, output_scores=True, output_logits=True, output_attentions=True,
                                  output_hidden_states=True, return_dict_in_generate=True, **NO_EOS)
    greedy_hf, greedy = _both(pair, ids, **kwargs)
    if kind == "lookup":
        kwargs["prompt_lookup_num_tokens"] = 3
    else:
        _configure(assistants[kind], tokens=3)
    expected, got = _both(pair, ids, None if kind == "lookup" else assistants[kind], **kwargs)
    assert torch.equal(got.sequences, expected.sequences) and torch.equal(got.sequences, greedy.sequences)
    for field in ("scores", "logits"):
        assert_close(getattr(got, field), getattr(expected, field), what=field)
        assert_close(getattr(got, field), getattr(greedy_hf, field), what=f"{field} vs greedy")
    for field in ("attentions", "hidden_states"):
        assert_close(getattr(got, field), getattr(greedy_hf, field), what=field)
        assert_close(getattr(got, field), getattr(greedy, field), what=f"{field} vs ours")
    if kind == "self":  # the first round accepts its 3 candidates and adds 1 token
        for field in ("attentions", "hidden_states"):
            assert_close(getattr(got, field)[4:], getattr(expected, field)[4:], what=field)
    assert_close(got.past_key_values, tuple(tuple(layer) for layer in expected.past_key_values), what="cache")
    assert got.past_key_values[0][0].shape[2] == got.sequences.shape[1] - 1


# ------------------------------------------------------------------ prompt lookup
@pytest.mark.parametrize("tokens,ngram", [(2, None), (4, 1), (10, 3)])
def test_prompt_lookup_gives_greedy_tokens_with_fewer_passes(pair: Pair, looping_prompt: Tensor, tokens: int,
                                                             ngram: Optional[int]) -> None:
    """Greedy search's tokens, and HF's (HF 4.53 may add some past ``max_new_tokens``, see
    below); drafts checked and accepted: fewer forward passes than tokens."""
    kwargs: Dict[str, Any] = dict(max_new_tokens=12, prompt_lookup_num_tokens=tokens, max_matching_ngram_size=ngram,
                                  **NO_EOS)
    expected = pair[0].generate(looping_prompt, **kwargs)
    with _forward_lengths(pair[1]) as lengths:
        got = pair[1].generate(looping_prompt, **kwargs)
    assert torch.equal(got, pair[1].generate(looping_prompt, max_new_tokens=12))
    assert torch.equal(got, expected[:, : got.shape[1]])
    assert lengths[0] > looping_prompt.shape[1] and len(lengths) < 12


@pytest.mark.parametrize("budget", [2, 3])
def test_prompt_lookup_stays_within_max_new_tokens(pair: Pair, looping_prompt: Tensor, budget: int) -> None:
    """A draft never runs past the length limit (HF 4.53's prompt lookup may: its drafts are cut
    at the limit, not one short of it, and then accepted whole)."""
    got = pair[1].generate(looping_prompt, max_new_tokens=budget, prompt_lookup_num_tokens=10, eos_token_id=None)
    assert torch.equal(got, pair[1].generate(looping_prompt, max_new_tokens=budget, eos_token_id=None))


def test_prompt_lookup_drafts_equal_hfs() -> None:
    """The draft for a sequence: the same tokens as HF's candidate generator proposes (longest
    n-gram first, its first earlier occurrence, cut before eos), on many random sequences of a
    small vocabulary."""
    rng = random.Random(0)
    found = 0
    for _ in range(400):
        ids = torch.tensor([rng.randrange(6) for _ in range(rng.randrange(1, 16))])
        tokens, ngram, eos = rng.randrange(1, 5), rng.randrange(1, 4), rng.choice([(), (0,), (0, 5)])
        reference = PromptLookupCandidateGenerator(eos_token_id=torch.tensor(eos or (-1,)), num_output_tokens=tokens,
                                                   max_matching_ngram_size=ngram, max_length=100)
        expected = reference.get_candidates(ids[None])[0][0, ids.shape[0]:]
        draft = PromptLookup(tokens=tokens, max_ngram=ngram, eos_token_ids=eos).lookup(ids, count=tokens)
        assert torch.equal(draft, expected), (ids, tokens, ngram, eos)
        found += draft.numel() > 0
    assert found > 100
    assert PromptLookup(tokens=3, eos_token_ids=(0,)).lookup(torch.tensor([7, 4, 0, 9, 7, 4]), count=3).numel() == 0
    assert PromptLookup(tokens=3).lookup(torch.tensor([7, 4, 0, 9, 7, 4]), count=2).tolist() == [0, 9]


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("kind", ["close", "small", "lookup"])
def test_sampling_draws_hfs_tokens_with_the_same_seed(pair: Pair, assistants: Dict[str, Pair], looping_prompt: Tensor,
                                                      kind: str) -> None:
    """Speculative sampling of an assistant's drafts (prompt lookup: the model's draws checked
    against the draft) consumes the random stream as HF does: the same tokens for the same seed.
    (Prompt lookup with drafts of one token: longer ones near the length limit are cut one token
    shorter than HF's, which changes the last draws.)"""
    ids = looping_prompt if kind == "lookup" else _prompt()
    kwargs: Dict[str, Any] = dict(do_sample=True, max_new_tokens=12, top_k=20, temperature=0.7, **NO_EOS)
    if kind == "lookup":
        kwargs["prompt_lookup_num_tokens"] = 1
    else:
        _configure(assistants[kind], tokens=3, threshold=0.4)
    assistant = None if kind == "lookup" else assistants[kind]
    expected, got = _both(pair, ids, assistant, seed=1, **kwargs)
    assert torch.equal(got, expected)
    torch.manual_seed(2)
    other = pair[1].generate(ids, **kwargs, **({} if assistant is None else {"assistant_model": assistant[1]}))
    assert not torch.equal(other, got)  # the draw depends on the seed


# ------------------------------------------------------------------ settings, checks, errors
def test_crop_cache_cuts_self_attention_and_keeps_cross_attention() -> None:
    layer = tuple(torch.randn(1, 2, length, 4) for length in (7, 7, 5, 5))
    cropped = crop_cache((layer, layer), 3)
    assert [t.shape[2] for t in cropped[1]] == [3, 3, 5, 5] and torch.equal(cropped[0][0], layer[0][:, :, :3])
    assert cropped[0][2] is layer[2]


def test_generation_config_holds_the_settings(tmp_path: Any) -> None:
    settings = GenerationConfig(prompt_lookup_num_tokens=3, max_matching_ngram_size=1, num_assistant_tokens=5,
                                num_assistant_tokens_schedule="heuristic", assistant_confidence_threshold=None)
    settings.save_pretrained(tmp_path)
    assert transformers.GenerationConfig.from_pretrained(tmp_path).prompt_lookup_num_tokens == 3  # HF reads ours
    assert GenerationConfig.from_pretrained(tmp_path) == settings
    transformers.GenerationConfig(assistant_early_exit=2).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="assistant_early_exit"):
        GenerationConfig.from_pretrained(tmp_path / "hf")


def test_generation_config_prompt_lookup_setting_is_used(pair: Pair, looping_prompt: Tensor) -> None:
    model = copy.deepcopy(pair[1])
    model.generation_config.prompt_lookup_num_tokens = 4
    with _forward_lengths(model) as lengths:
        out = model.generate(looping_prompt, max_new_tokens=8)
    assert torch.equal(out, pair[1].generate(looping_prompt, max_new_tokens=8))
    assert lengths[0] == looping_prompt.shape[1] + 4 and len(lengths) < 8


def _bad(pair: Pair, assistants: Dict[str, Pair], case: str) -> Dict[str, Any]:
    ids = _prompt()
    other_vocab = XLMRobertaXLForCausalLM(pair[1].config.copy(vocab_size=999))
    encoder = XLMRobertaXLForCausalLM(pair[1].config.copy(is_decoder=False))
    wrong_schedule = copy.deepcopy(pair[1])
    wrong_schedule.generation_config.num_assistant_tokens_schedule = "sometimes"
    assistant = {"assistant_model": assistants["small"][1]}
    return {
        "both": dict(inputs=ids, prompt_lookup_num_tokens=2, **assistant),
        "beams": dict(inputs=ids, num_beams=2, **assistant),
        "returned": dict(inputs=ids, do_sample=True, num_return_sequences=2, **assistant),
        "batch": dict(inputs=random_ids(batch=2, length=6)[0], **assistant),
        "embeds": dict(inputs_embeds=pair[1].get_input_embeddings()(ids).detach(), **assistant),
        "no_cache": dict(inputs=ids, use_cache=False, prompt_lookup_num_tokens=2),
        "vocab": dict(inputs=ids, assistant_model=other_vocab),
        "encoder": dict(inputs=ids, assistant_model=encoder),
        "schedule": dict(inputs=ids, assistant_model=wrong_schedule),
        "lookup_tokens": dict(inputs=ids, prompt_lookup_num_tokens=0, max_matching_ngram_size=2),
        "ngram": dict(inputs=ids, prompt_lookup_num_tokens=2, max_matching_ngram_size=0),
        "tokenizer": dict(inputs=ids, assistant_tokenizer=object(), **assistant),
    }[case]


@pytest.mark.parametrize("case,match", [
    ("both", "assistant_model or prompt_lookup_num_tokens"), ("beams", "num_beams"),
    ("returned", "num_return_sequences"), ("batch", "batch size 1"), ("embeds", "inputs_embeds"),
    ("no_cache", "use_cache"), ("vocab", "vocab_size 999"), ("encoder", "is_decoder"),
    ("schedule", "assistant_model.generation_config.*num_assistant_tokens_schedule"),
    ("lookup_tokens", "prompt_lookup_num_tokens"), ("ngram", "max_matching_ngram_size"),
    ("tokenizer", "assistant_tokenizer"),
])
def test_what_assisted_decoding_cannot_serve_is_refused_by_name(pair: Pair, assistants: Dict[str, Pair], case: str,
                                                                match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pair[1].generate(max_new_tokens=3, **_bad(pair, assistants, case))


def test_drafting_settings_come_from_the_assistant_and_others_are_warned_about(pair: Pair) -> None:
    """As in HF, ``num_assistant_tokens`` & co. are read from the assistant's config; one given
    to ``generate`` that differs is named in a warning (HF ignores it silently)."""
    assistant = copy.deepcopy(pair[1])
    _configure((assistant,), tokens=2)
    with _forward_lengths(pair[1]) as lengths, pytest.warns(UserWarning, match="num_assistant_tokens=5 is not used"):
        pair[1].generate(_prompt(), assistant_model=assistant, num_assistant_tokens=5, max_new_tokens=6, **NO_EOS)
    assert lengths == [6 + 2, 1 + 2]
