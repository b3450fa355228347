"""Tests of modeling/generation/logits.py: each score rule against HF's logits processor of that name."""

from __future__ import annotations

import pytest
import torch

from modeling.generation.logits import ScoreRules, choose_tokens, ends_with, process_scores

generation = pytest.importorskip("transformers.generation")

VOCAB = 50


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, VOCAB, generator=generator) * 3
    sequences = torch.randint(0, VOCAB, (4, 7), generator=generator)
    sequences[1, -2:] = torch.tensor([3, 4])  # ends with a banned prefix
    return scores, sequences


@pytest.mark.parametrize(
    "rules,hf_processors",
    [
        (dict(repetition_penalty=1.7), lambda: [generation.RepetitionPenaltyLogitsProcessor(1.7)]),
        (dict(bad_words_ids=((3, 4, 9), (11,), (2,)), eos_token_ids=(2,)),
         lambda: [generation.NoBadWordsLogitsProcessor([[3, 4, 9], [11], [2]], eos_token_id=2)]),
        (dict(min_length=9, eos_token_ids=(2, 5)), lambda: [generation.MinLengthLogitsProcessor(9, [2, 5])]),
        (dict(min_new_tokens=3, prompt_length=5, eos_token_ids=(2,)),
         lambda: [generation.MinNewTokensLengthLogitsProcessor(5, 3, [2])]),
        (dict(min_new_tokens=2, prompt_length=5, eos_token_ids=(2,)),
         lambda: [generation.MinNewTokensLengthLogitsProcessor(5, 2, [2])]),
        (dict(do_sample=True, temperature=0.6, top_k=7, top_p=0.8),
         lambda: [generation.TemperatureLogitsWarper(0.6), generation.TopKLogitsWarper(7),
                  generation.TopPLogitsWarper(0.8)]),
        (dict(do_sample=True, top_k=1, top_p=0.05, min_tokens_to_keep=3),
         lambda: [generation.TopKLogitsWarper(1, min_tokens_to_keep=3),
                  generation.TopPLogitsWarper(0.05, min_tokens_to_keep=3)]),
        (dict(do_sample=False, temperature=0.5, top_k=3), lambda: []),  # warpers only when sampling
        # an eos id outside the vocabulary (HF's tests use -1 for "never ends") bans no token
        (dict(min_length=9, min_new_tokens=3, prompt_length=5, eos_token_ids=(-1, VOCAB)),
         lambda: [generation.MinLengthLogitsProcessor(9, [-1, VOCAB]),
                  generation.MinNewTokensLengthLogitsProcessor(5, 3, [-1, VOCAB])]),
    ],
    ids=["repetition", "bad_words", "min_length", "min_new_tokens", "min_new_tokens_reached", "warpers",
         "min_tokens_to_keep", "greedy_no_warpers", "eos_outside_vocabulary"],
)
def test_rules_equal_hfs_processors(rules, hf_processors, request: pytest.FixtureRequest) -> None:
    scores, sequences = _inputs()
    original = scores.clone()
    expected = scores.clone()
    for processor in hf_processors():
        expected = processor(sequences, expected)
    got = process_scores(scores, sequences, ScoreRules(**{"prompt_length": 0, **rules}))
    assert torch.equal(got, expected) and torch.equal(scores, original)  # the input is left alone
    idle = request.node.callspec.id in ("min_new_tokens_reached", "greedy_no_warpers",
                                        "eos_outside_vocabulary")
    assert torch.equal(got, original) == idle  # each other case changes scores


def test_invalid_values_removed_like_hf() -> None:
    scores, sequences = _inputs()
    scores[0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    expected = generation.InfNanRemoveLogitsProcessor()(sequences, scores.clone())
    assert torch.equal(process_scores(scores, sequences, ScoreRules(prompt_length=0, remove_invalid_values=True)), expected)


def test_extra_processors_run_after_the_built_in_rules_before_warpers() -> None:
    scores, sequences = _inputs()
    seen = []

    def spy(ids, values):
        seen.append(values.clone())
        return values + 1.0

    rules = ScoreRules(prompt_length=0, repetition_penalty=2.0, do_sample=True, temperature=0.5, extra=(spy,))
    got = process_scores(scores, sequences, rules)
    penalised = generation.RepetitionPenaltyLogitsProcessor(2.0)(sequences, scores.clone())
    assert torch.equal(seen[0], penalised) and torch.equal(got, (penalised + 1.0) / 0.5)


def test_choose_tokens_and_ends_with() -> None:
    scores, _ = _inputs()
    tokens, values = choose_tokens(scores, do_sample=False)
    assert torch.equal(tokens, scores.argmax(-1)) and torch.equal(values, scores.max(-1).values)
    top, top_values = choose_tokens(scores, do_sample=False, count=3)
    assert torch.equal(top_values, scores.topk(3).values) and torch.equal(top, scores.topk(3).indices)
    torch.manual_seed(3)
    drawn, drawn_values = choose_tokens(scores, do_sample=True, count=2)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.multinomial(scores.softmax(-1), 2))
    assert torch.equal(drawn_values, scores.gather(1, drawn))
    sequences = torch.tensor([[5, 2], [5, 7], [5, 9]])
    assert ends_with(sequences, (2, 9)).tolist() == [True, False, True]
    assert ends_with(sequences, ()).tolist() == [False, False, False]
