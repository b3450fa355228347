"""Tests of modeling/generation/'s contrastive search, DoLa decoding, diverse (group) and
constrained beam search against HF's ``generate`` on the same weights: the same tokens (sampling:
with the same seed) and the output record's fields within 1e-5; each setting's checks.

Contrastive search is compared with HF given the candidates' true positions (HF's XL class puts
every candidate at position 2, see modeling/generation/contrastive.py), our DisjunctiveConstraint
with HF's whose copies keep their own progress (HF's share it)."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Tuple

import pytest
import torch
from torch import Tensor

from modeling.generation import DisjunctiveConstraint, GenerationConfig, PhrasalConstraint
from modeling.heads import XLMRobertaXLForCausalLM

from .test_generation import _both, _frequent_token, _prompt
from .test_model import assert_close, make_pair

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
hf_constraints = pytest.importorskip("transformers.generation.beam_constraints")

RECORD = dict(output_scores=True, output_logits=True, output_attentions=True, output_hidden_states=True,
              return_dict_in_generate=True)


@pytest.fixture(scope="module")
def pair() -> Tuple[Any, XLMRobertaXLForCausalLM]:
    return make_pair("ForCausalLM", is_decoder=True)


@pytest.fixture(scope="module")
def deep_pair() -> Tuple[Any, XLMRobertaXLForCausalLM]:
    """Six layers: room for DoLa's lower and upper candidate layers."""
    return make_pair("ForCausalLM", is_decoder=True, num_hidden_layers=6)


def _scores_close(got: Tuple[Tensor, ...], expected: Tuple[Tensor, ...], what: str) -> None:
    """Per-step scores: -inf at the same places, the rest within 1e-5."""
    assert len(got) == len(expected), what
    for step, (a, b) in enumerate(zip(got, expected)):
        assert torch.equal(a.isinf(), b.isinf()), f"{what}[{step}]: -inf elsewhere"
        assert_close(a.masked_fill(a.isinf(), 0.0), b.masked_fill(b.isinf(), 0.0), what=f"{what}[{step}]")


def _record_equals_hf(got: Any, expected: Any) -> None:
    """Sequences equal; scores, logits, attentions, hidden states, cache (and sequences_scores) close."""
    assert type(got).__name__ == type(expected).__name__ and torch.equal(got.sequences, expected.sequences)
    _scores_close(got.scores, expected.scores, "scores")
    for field in ("logits", "attentions", "hidden_states", "sequences_scores"):
        if getattr(expected, field, None) is None:
            assert getattr(got, field, None) is None, field
        else:
            assert_close(getattr(got, field), getattr(expected, field), what=field)
    hf_cache = None if expected.past_key_values is None else tuple(tuple(layer) for layer in expected.past_key_values)
    assert_close(got.past_key_values, hf_cache, what="past_key_values")


# ------------------------------------------------------------------ contrastive search
@pytest.fixture
def hf_true_positions(pair: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The pair, HF's model giving each contrastive candidate its true position (the prompt's
    tokens and the new ones before it, as the attention mask counts them: pads are masked)."""
    hf = pair[0]
    original = hf.prepare_inputs_for_generation

    def prepare(input_ids: Tensor, past_key_values: Any = None, attention_mask: Tensor = None, **kwargs: Any) -> Any:
        step = original(input_ids, past_key_values=past_key_values, attention_mask=attention_mask, **kwargs)
        if past_key_values is not None and input_ids.shape[1] == 1:
            step["position_ids"] = hf.config.pad_token_id + attention_mask.sum(dim=1, keepdim=True)
        return step

    monkeypatch.setattr(hf, "prepare_inputs_for_generation", prepare)
    return pair


CONTRASTIVE = {
    "plain": dict(max_new_tokens=6, penalty_alpha=0.6, top_k=4),
    "low_memory": dict(max_new_tokens=6, penalty_alpha=0.6, top_k=4, low_memory=True),
    "processors": dict(max_new_tokens=5, penalty_alpha=0.3, top_k=3, repetition_penalty=1.3,
                       bad_words_ids=[[1, 0], [17]], min_new_tokens=3),
}


def _hf_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """HF's low_memory takes one row only (it indexes the candidates of every row by each row's
    choice); its batched path is the reference for ours."""
    return {k: v for k, v in kwargs.items() if k != "low_memory"}


@pytest.mark.parametrize("padding", ["none", "left", "right"])
@pytest.mark.parametrize("case", sorted(CONTRASTIVE))
def test_contrastive_search_equals_hf_given_true_positions(hf_true_positions: Any, case: str, padding: str) -> None:
    hf, ours = hf_true_positions
    ids, mask = _prompt(padding)
    expected = hf.generate(ids, attention_mask=mask, **_hf_kwargs(CONTRASTIVE[case]))
    assert torch.equal(ours.generate(ids, attention_mask=mask, **CONTRASTIVE[case]), expected)


@pytest.mark.parametrize("low_memory", [False, True])
def test_contrastive_record_and_eos_equal_hf_given_true_positions(hf_true_positions: Any, low_memory: bool) -> None:
    hf, ours = hf_true_positions
    ids, mask = _prompt("left")
    kwargs: Dict[str, Any] = dict(max_new_tokens=4, penalty_alpha=0.6, top_k=4, **RECORD)
    expected = hf.generate(ids, attention_mask=mask, **kwargs)
    _record_equals_hf(ours.generate(ids, attention_mask=mask, low_memory=low_memory, **kwargs), expected)
    eos = int(expected.sequences[0, ids.shape[1] + 1])  # row 0 ends at its second new token
    eos_kwargs = dict(max_new_tokens=6, penalty_alpha=0.6, top_k=4, eos_token_id=eos, pad_token_id=1)
    expected = hf.generate(ids, attention_mask=mask, **eos_kwargs)
    got = ours.generate(ids, attention_mask=mask, low_memory=low_memory, **eos_kwargs)
    assert torch.equal(got, expected) and (got[0, ids.shape[1] + 2:] == 1).all()


def test_contrastive_candidates_sit_at_their_true_positions(pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours: the k candidates of a step at the position after the sequence; HF's XL class: at 2."""
    seen: Dict[str, list] = {"hf": [], "ours": []}
    for name, model in zip(("hf", "ours"), pair):
        embeddings = model.roberta.embeddings

        def spy(*args: Any, _seen: list = seen[name], _forward: Any = embeddings.forward, **kwargs: Any) -> Any:
            _seen.append(kwargs["position_ids"][:, -1].tolist())
            return _forward(*args, **kwargs)

        monkeypatch.setattr(embeddings, "forward", spy)
        ids, mask = _prompt("none")
        model.generate(ids, attention_mask=mask, max_new_tokens=3, penalty_alpha=0.6, top_k=2)
    length = ids.shape[1]
    assert seen["ours"] == [[length + 1] * 3] + [[length + 2 + step] * 6 for step in range(3)]
    assert seen["hf"][1:] == [[2] * 6] * 3


def test_contrastive_search_needs_a_decoder(pair: Any) -> None:
    encoder = XLMRobertaXLForCausalLM(pair[1].config.copy(is_decoder=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the is_decoder warning of generate
        with pytest.raises(ValueError, match="is_decoder=True"):
            encoder.generate(_prompt()[0], max_new_tokens=2, penalty_alpha=0.6, top_k=3)


# ------------------------------------------------------------------ DoLa
DOLA = {
    "low": dict(max_new_tokens=5, dola_layers="low"),
    "high": dict(max_new_tokens=5, dola_layers="high", repetition_penalty=1.2),
    "layers": dict(max_new_tokens=5, dola_layers=[0, 2, 4, 9]),  # 9 is beyond the last layer: left out
    "sample": dict(max_new_tokens=5, dola_layers="high", do_sample=True, top_k=20, temperature=0.8),
}


@pytest.mark.parametrize("case", sorted(DOLA))
def test_dola_equals_hf(deep_pair: Any, case: str) -> None:
    ids, mask = _prompt("left")
    expected, got = _both(deep_pair, ids, mask, seed=5, **DOLA[case])
    assert torch.equal(got, expected)


def test_dola_returns_the_sequences_asked_for(deep_pair: Any) -> None:
    """``num_return_sequences=2`` with sampling: two per prompt, drawn as HF draws for the prompts
    given twice (HF's DoLa returns one per prompt whatever num_return_sequences says)."""
    hf, ours = deep_pair
    ids, mask = _prompt("left")
    kwargs = dict(max_new_tokens=4, dola_layers=[1, 3], do_sample=True)
    torch.manual_seed(5)
    expected = hf.generate(ids.repeat_interleave(2, dim=0), attention_mask=mask.repeat_interleave(2, dim=0), **kwargs)
    torch.manual_seed(5)
    got = ours.generate(ids, attention_mask=mask, num_return_sequences=2, **kwargs)
    assert got.shape[0] == 2 * ids.shape[0] and torch.equal(got, expected)


def test_dola_dict_output_equals_hf(deep_pair: Any) -> None:
    """HF's own DoLa test's settings (eos -1: never ends) with a record of everything."""
    ids, mask = _prompt("right")
    kwargs = dict(max_new_tokens=4, dola_layers="low", do_sample=True, eos_token_id=-1, bad_words_ids=[[1, 0]],
                  repetition_penalty=1.2, remove_invalid_values=True, top_k=10, top_p=0.7, temperature=0.7, **RECORD)
    expected, got = _both(deep_pair, ids, mask, seed=3, **kwargs)
    _record_equals_hf(got, expected)


def test_dola_layers_are_checked_and_ignored_by_beams(pair: Any, deep_pair: Any) -> None:
    ids, mask = _prompt()
    with pytest.raises(ValueError, match="leaves no layer"):  # 3 layers, tied embeddings: HF fails in torch.stack
        pair[1].generate(ids, max_new_tokens=2, dola_layers="low")
    with pytest.raises(ValueError, match="leaves no layer"):
        deep_pair[1].generate(ids, max_new_tokens=2, dola_layers=[6, 7])
    with pytest.raises(ValueError, match=">= 0"):
        deep_pair[1].generate(ids, max_new_tokens=2, dola_layers=[-1])
    with pytest.raises(ValueError, match="dola_layers must be"):
        deep_pair[1].generate(ids, max_new_tokens=2, dola_layers="middle")
    with pytest.warns(UserWarning, match="dola_layers is ignored by beam search"):
        got = deep_pair[1].generate(ids, attention_mask=mask, max_new_tokens=3, num_beams=2, dola_layers="low")
    assert torch.equal(got, deep_pair[1].generate(ids, attention_mask=mask, max_new_tokens=3, num_beams=2))


# ------------------------------------------------------------------ diverse (group) beam search
GROUPS = {
    "two_groups": dict(max_new_tokens=6, num_beams=4, num_beam_groups=2, diversity_penalty=1.5),
    "returned": dict(max_new_tokens=6, num_beams=6, num_beam_groups=3, diversity_penalty=0.5,
                     num_return_sequences=3, length_penalty=2.0),
    "early_stopping": dict(max_new_tokens=6, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                           early_stopping=True),
    "never": dict(max_new_tokens=6, num_beams=4, num_beam_groups=4, diversity_penalty=1.0, early_stopping="never",
                  length_penalty=0.5),
    "no_cache": dict(max_length=12, num_beams=4, num_beam_groups=2, diversity_penalty=1.0, use_cache=False),
}


def test_group_beam_dict_output_equals_hf(pair: Any) -> None:
    ids, mask = _prompt("left")
    kwargs = dict(max_new_tokens=5, num_beams=4, num_beam_groups=2, diversity_penalty=1.5, num_return_sequences=2,
                  length_penalty=1.5, eos_token_id=_frequent_token(pair[0], ids, mask), **RECORD)
    expected, got = _both(pair, ids, mask, **kwargs)
    _record_equals_hf(got, expected)
    # beam_indices: the row each new token extended (HF's group search mixes the groups' histories
    # up there); following them through the recorded log-probabilities gives sequences_scores
    for i, origins in enumerate(got.beam_indices):
        steps = [(t, row) for t, row in enumerate(origins.tolist()) if row >= 0]
        total = sum(float(got.scores[t][row, got.sequences[i, ids.shape[1] + t]]) for t, row in steps)
        assert abs(total / len(steps) ** 1.5 - float(got.sequences_scores[i])) < 1e-5


# ------------------------------------------------------------------ constrained beam search
CONSTRAINED = {
    "phrase": dict(max_new_tokens=6, num_beams=4, force_words_ids=[[17, 18]]),
    "phrase_and_words": dict(max_new_tokens=7, num_beams=4, force_words_ids=[[17, 18], [[30, 31], [40]]],
                             num_return_sequences=2),
    "two_phrases": dict(max_new_tokens=8, num_beams=5, force_words_ids=[[5, 6], [7, 8, 9]], length_penalty=0.5),
    "early_stopping": dict(max_new_tokens=6, num_beams=3, force_words_ids=[[17]], early_stopping=True),
    "no_cache": dict(max_new_tokens=5, num_beams=3, force_words_ids=[[22, 23]], use_cache=False),
}


BEAM_CASES = {**{f"group_{k}": v for k, v in GROUPS.items()}, **{f"constrained_{k}": v for k, v in CONSTRAINED.items()}}


@pytest.mark.parametrize("with_eos", [False, True])
@pytest.mark.parametrize("case", sorted(BEAM_CASES))
def test_group_and_constrained_beam_search_equal_hf(pair: Any, case: str, with_eos: bool) -> None:
    ids, mask = _prompt("left")
    eos = dict(eos_token_id=_frequent_token(pair[0], ids, mask), pad_token_id=1) if with_eos else {}
    expected, got = _both(pair, ids, mask, **BEAM_CASES[case], **eos)
    assert torch.equal(got, expected)
    (words, *others) = BEAM_CASES[case].get("force_words_ids", [None, None])
    for row in got if not others else ():  # one phrase: every sequence holds it (the prompt counts)
        text = row.tolist()
        assert any(text[i:i + len(words)] == words for i in range(len(text))), (words, text)


@pytest.mark.parametrize("words", [[[17, 18]], [[17, 18], [[30, 31], [40]]]])
def test_constrained_dict_output_equals_hf(pair: Any, words: Any) -> None:
    """The record as HF's; beam_indices too, except where a returned sequence does not meet the
    constraints: HF then gives none (first sequence) or fails (a later one), we give them."""
    ids, mask = _prompt("left")
    kwargs = dict(max_new_tokens=6, num_beams=4, num_return_sequences=2, force_words_ids=words,
                  eos_token_id=_frequent_token(pair[0], ids, mask), **RECORD)
    expected, got = _both(pair, ids, mask, **kwargs)
    _record_equals_hf(got, expected)
    assert (expected.beam_indices is None) == (len(words) > 1)  # both kinds of record are seen
    if expected.beam_indices is not None:
        assert torch.equal(got.beam_indices, expected.beam_indices)
    assert got.beam_indices.shape == got.sequences.shape


BRANCHING = [[[[17, 18], [17, 19], [17, 20]]], [[[5, 6, 7], [5, 8]], [40, 41]]]


@pytest.mark.parametrize("words", BRANCHING)
def test_hfs_constraint_objects_give_hfs_tokens(pair: Any, words: Any) -> None:
    """``constraints`` takes any object with the protocol: HF's own classes give HF's tokens."""
    hf, ours = pair
    ids, mask = _prompt()
    objects = [hf_constraints.DisjunctiveConstraint(w) if isinstance(w[0], list)
               else hf_constraints.PhrasalConstraint(w) for w in words]
    kwargs = dict(max_new_tokens=7, num_beams=5, num_return_sequences=2, length_penalty=0.5)
    expected = hf.generate(ids, attention_mask=mask, force_words_ids=words, **kwargs)
    assert torch.equal(ours.generate(ids, attention_mask=mask, constraints=objects, **kwargs), expected)


@pytest.mark.parametrize("words", BRANCHING)
def test_our_disjunctive_constraint_equals_hfs_with_its_own_progress(pair: Any, words: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """HF's DisjunctiveConstraint.copy(stateful=True) shares the progress list with the original, so
    the second branch of a disjunction scores as no progress; ours copies it. With HF's copy
    fixed the tokens are the same."""
    hf, ours = pair
    ids, mask = _prompt()
    original = hf_constraints.DisjunctiveConstraint.copy

    def copy(self: Any, stateful: bool = False) -> Any:
        new = original(self, stateful)
        if stateful:
            new.current_seq = list(self.current_seq)
        return new

    monkeypatch.setattr(hf_constraints.DisjunctiveConstraint, "copy", copy)
    expected, got = _both(pair, ids, mask, max_new_tokens=7, num_beams=5, force_words_ids=words)
    assert torch.equal(got, expected)


def test_constraint_objects_are_not_written_to_the_generation_config() -> None:
    settings = GenerationConfig(num_beams=2, constraints=[PhrasalConstraint([5, 6])], force_words_ids=[[7]])
    assert settings.to_dict() == {"force_words_ids": [[7]], "num_beams": 2}
    assert isinstance(DisjunctiveConstraint([[5, 6], [7]]).copy(), DisjunctiveConstraint)


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("kwargs", [
    {}, dict(do_sample=True), dict(num_beams=3), dict(num_beams=3, do_sample=True),
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0), dict(penalty_alpha=0.6, top_k=4),
    dict(penalty_alpha=0.6, top_k=1), dict(penalty_alpha=0.6, do_sample=True), dict(dola_layers="low"),
    dict(dola_layers="low", do_sample=True), dict(num_beams=2, force_words_ids=[[5]]),
    dict(penalty_alpha=0.6, top_k=4, dola_layers="high"),
])
def test_generation_mode_is_hfs(kwargs: Dict[str, Any]) -> None:
    expected = transformers.GenerationConfig(**kwargs).get_generation_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ours warns where HF logs that dola_layers is ignored
        assert GenerationConfig(**kwargs).generation_mode == expected.value


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(force_words_ids=[[17]]), "num_beams > 1"),
        (dict(force_words_ids=[[17]], num_beams=2, do_sample=True), "do_sample=False"),
        (dict(force_words_ids=[], num_beams=2), "at least one constraint"),
        (dict(force_words_ids=[[-3]], num_beams=2), r"force_words_ids\[0\]"),
        (dict(force_words_ids=[[5], [[6, 7], [6]]], num_beams=2), r"force_words_ids\[1\].*begin another"),
        (dict(constraints=[object()], num_beams=2), r"constraints\[0\] \(object\) is no constraint"),
        (dict(num_beams=4, num_beam_groups=3, diversity_penalty=1.0), "divisible by num_beam_groups"),
        (dict(num_beams=4, diversity_penalty=1.0), "diversity_penalty needs num_beam_groups > 1"),
        (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=True), "do_sample=False"),
    ],
)
def test_bad_strategy_settings_are_refused_by_name(pair: Any, kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pair[1].generate(_prompt()[0], max_new_tokens=2, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(penalty_alpha=0.6, top_k=3), dict(dola_layers=[0, 1]),
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0), dict(num_beams=3, force_words_ids=[[17, 18]]),
], ids=["contrastive", "dola", "group_beam", "constrained"])
def test_inputs_embeds_prompt_gives_the_new_tokens_of_the_ids_prompt(pair: Any, kwargs: Dict[str, Any]) -> None:
    _, ours = pair
    ids, _ = _prompt()
    embeds = ours.get_input_embeddings()(ids).detach()
    from_ids = ours.generate(ids, max_new_tokens=4, **kwargs)
    assert torch.equal(ours.generate(inputs_embeds=embeds, max_new_tokens=4, **kwargs), from_ids[:, ids.shape[1]:])
