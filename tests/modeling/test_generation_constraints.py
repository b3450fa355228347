"""Tests of modeling/generation/constraints.py: our constraint classes and `ConstraintState`
against HF's (``transformers.generation.beam_constraints``) on random token streams, copies, and
the errors for bad constraints."""

from __future__ import annotations

import random
from typing import Any, List

import pytest

from modeling.generation.constraints import ConstraintState, DisjunctiveConstraint, PhrasalConstraint, constraints_of

hf = pytest.importorskip("transformers.generation.beam_constraints")

WORDS: List[Any] = [[3, 4], [[5, 6, 7], [5, 8], [9]], [4, 3, 4]]


def _ours(words: Any) -> Any:
    return DisjunctiveConstraint(words) if isinstance(words[0], list) else PhrasalConstraint(words)


def _hfs(words: Any) -> Any:
    return hf.DisjunctiveConstraint(words) if isinstance(words[0], list) else hf.PhrasalConstraint(words)


@pytest.mark.parametrize("seed", range(30))
def test_state_follows_hfs_constraint_list_state(seed: int) -> None:
    """Token by token over a random stream (mostly tokens that make progress, some that break it):
    the same progress (bank), the same next tokens, the same completion; and the same when driving
    HF's own classes."""
    rng = random.Random(seed)
    reference = hf.ConstraintListState([_hfs(w) for w in WORDS])
    ours = ConstraintState([_ours(w) for w in WORDS])
    driven = ConstraintState([_hfs(w) for w in WORDS])
    for _ in range(30):
        expected = (reference.get_bank(), reference.advance() or [], reference.completed)
        assert (ours.bank, ours.advance(), ours.completed) == expected
        assert (driven.bank, driven.advance(), driven.completed) == expected
        token = rng.choice(ours.advance() if ours.advance() and rng.random() < 0.7 else [3, 4, 5, 6, 7, 8, 9, 10])
        for state in (reference, ours, driven):
            state.add(token)
    assert ours.completed  # the streams complete every constraint (after losing progress on the way)


@pytest.mark.parametrize("seed", range(10))
def test_copies_keep_their_own_progress(seed: int) -> None:
    """A copy advanced by a token equals the state of the stream plus that token, and leaves the
    original alone (HF's DisjunctiveConstraint shares its progress with its copies)."""
    rng = random.Random(seed)
    constraints = [_ours(w) for w in WORDS]
    stream = [rng.choice([3, 4, 5, 6, 8, 9]) for _ in range(rng.randrange(1, 8))]
    state = ConstraintState.of(constraints, stream)
    before = (state.bank, state.advance(), state.completed)
    for token in state.advance():
        advanced = state.copy()
        advanced.add(token)
        fresh = ConstraintState.of(constraints, [*stream, token])
        assert (advanced.bank, advanced.advance(), advanced.completed) == (fresh.bank, fresh.advance(), fresh.completed)
        assert (state.bank, state.advance(), state.completed) == before


def test_hfs_disjunctive_copy_shares_its_progress() -> None:
    """Why ours differs: HF's copy(stateful=True) hands out the original's progress list."""
    original = hf.DisjunctiveConstraint([[5, 6], [5, 7]])
    original.update(5)
    original.copy(stateful=True).update(6)
    assert original.current_seq == [5, 6]
    ours = DisjunctiveConstraint([[5, 6], [5, 7]])
    ours.update(5)
    ours.copy(stateful=True).update(6)
    assert ours.current_seq == [5]


def test_phrasal_and_disjunctive_steps() -> None:
    phrase = PhrasalConstraint([3, 4])
    assert (phrase.advance(), phrase.update(3), phrase.remaining()) == (3, (True, False, False), 1)
    assert phrase.update(9) == (False, False, True) and phrase.remaining() == 2  # progress lost
    assert [phrase.update(3), phrase.update(4), phrase.advance()] == [(True, False, False), (True, True, False), None]
    words = DisjunctiveConstraint([[5, 6, 7], [5, 8]])
    assert (words.advance(), words.seqlen, words.update(5), words.advance()) == ([5], 3, (True, False, False), [6, 8])
    assert words.update(8) == (True, True, False) and words.remaining() == 0 and words.advance() is None


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PhrasalConstraint([]), "non-empty list"),
        (lambda: PhrasalConstraint([3, -1]), "integers >= 0"),
        (lambda: PhrasalConstraint((3, 4)), "non-empty list"),
        (lambda: DisjunctiveConstraint([]), "non-empty list of token lists"),
        (lambda: DisjunctiveConstraint([[5, 6], [5]]), "begin another"),
        (lambda: DisjunctiveConstraint([[5, 6], [5, 6]]), "repeat"),
        (lambda: constraints_of(None, [[3], [[4, 5], "x"]]), r"force_words_ids\[1\]"),
        (lambda: constraints_of([PhrasalConstraint([3]), "abc"], None), r"constraints\[1\] \(str\)"),
    ],
)
def test_bad_constraints_are_refused_by_name(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
