"""Positive constraints for constrained beam search: what a generated sequence must contain.

Owns the constraint protocol under HF's names (`Constraint`: ``advance``, ``does_advance``,
``update``, ``reset``, ``remaining``, ``copy`` and ``seqlen``), `PhrasalConstraint` (a token
sequence), `DisjunctiveConstraint` (any one of several token sequences), `constraints_of` (the
``constraints`` / ``force_words_ids`` settings as constraint objects) and `ConstraintState`:
how far one sequence has got through a list of constraints (HF's ``ConstraintListState`` rules:
the sequence is read token by token, one constraint at a time is in progress, a token that does
not continue it puts it back, unfulfilled, at the end of the pending ones). `ConstraintState`
drives any object with the protocol, HF's constraint classes included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: the methods and attributes `ConstraintState` uses
PROTOCOL = ("advance", "does_advance", "update", "reset", "remaining", "copy", "seqlen")


class Constraint(ABC):
    """A condition on the generated sequence, met token by token. ``seqlen``: the most tokens it
    takes; ``completed``: whether the tokens given to ``update`` so far meet it."""

    seqlen: int
    completed: bool

    @abstractmethod
    def advance(self) -> Any:
        """The token (int) or tokens (list) that would take it one step further; None when complete."""

    @abstractmethod
    def does_advance(self, token_id: int) -> bool:
        """Whether ``token_id`` takes it one step further."""

    @abstractmethod
    def update(self, token_id: int) -> Tuple[bool, bool, bool]:
        """Read one token: (stepped further, now complete, progress lost and reset)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the progress made."""

    @abstractmethod
    def remaining(self) -> int:
        """How many tokens it still needs."""

    @abstractmethod
    def copy(self, stateful: bool = False) -> "Constraint":
        """A new constraint with the same condition (and, with ``stateful``, the same progress)."""


def _token_list(value: Any, what: str) -> List[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of token ids, got {value!r}")
    if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in value):
        raise ValueError(f"{what} must hold token ids (integers >= 0), got {value!r}")
    return list(value)


class PhrasalConstraint(Constraint):
    """The tokens ``token_ids``, in this order and without a gap."""

    def __init__(self, token_ids: List[int]) -> None:
        self.token_ids = _token_list(token_ids, "PhrasalConstraint token_ids")
        self.seqlen = len(self.token_ids)
        self.fulfilled = 0  # tokens of the phrase read so far
        self.completed = False

    def advance(self) -> Optional[int]:
        return None if self.completed else self.token_ids[self.fulfilled]

    def does_advance(self, token_id: int) -> bool:
        return not self.completed and token_id == self.token_ids[self.fulfilled]

    def update(self, token_id: int) -> Tuple[bool, bool, bool]:
        if not self.does_advance(token_id):
            self.reset()
            return False, False, True
        self.fulfilled += 1
        self.completed = self.fulfilled == self.seqlen
        return True, self.completed, False

    def reset(self) -> None:
        self.fulfilled, self.completed = 0, False

    def remaining(self) -> int:
        return self.seqlen - self.fulfilled

    def copy(self, stateful: bool = False) -> "PhrasalConstraint":
        new = PhrasalConstraint(self.token_ids)
        if stateful:
            new.fulfilled, new.completed = self.fulfilled, self.completed
        return new


class DisjunctiveConstraint(Constraint):
    """Any one of the token sequences ``nested_token_ids`` (none may begin another one)."""

    def __init__(self, nested_token_ids: List[List[int]]) -> None:
        if not isinstance(nested_token_ids, list) or not nested_token_ids:
            raise ValueError(f"DisjunctiveConstraint needs a non-empty list of token lists, got {nested_token_ids!r}")
        self.token_ids = [_token_list(ids, "each list of a DisjunctiveConstraint") for ids in nested_token_ids]
        self.trie: Dict[int, Any] = {}
        for ids in self.token_ids:
            node = self.trie
            for token in ids:
                node = node.setdefault(token, {})
        if _leaves(self.trie) != len(self.token_ids):
            raise ValueError(f"DisjunctiveConstraint: no token list may repeat or begin another one, got "
                             f"{nested_token_ids!r}")
        self.seqlen = max(len(ids) for ids in self.token_ids)
        self.current_seq: List[int] = []
        self.completed = False

    def _next(self) -> List[int]:
        node = self.trie
        for token in self.current_seq:
            node = node[token]
        return list(node)

    def advance(self) -> Optional[List[int]]:
        return self._next() or None

    def does_advance(self, token_id: int) -> bool:
        return token_id in self._next()

    def update(self, token_id: int) -> Tuple[bool, bool, bool]:
        stepped = self.does_advance(token_id)
        if stepped:
            self.current_seq.append(token_id)
        else:
            self.reset()
        self.completed = not self._next()
        return stepped, self.completed, not stepped

    def reset(self) -> None:
        self.current_seq, self.completed = [], False

    def remaining(self) -> int:
        return 0 if self.completed else self.seqlen - len(self.current_seq)

    def copy(self, stateful: bool = False) -> "DisjunctiveConstraint":
        new = DisjunctiveConstraint(self.token_ids)
        if stateful:  # a list of its own (HF's copy shares it, so a copy's progress leaks into the original)
            new.current_seq, new.completed = list(self.current_seq), self.completed
        return new


def _leaves(node: Dict[int, Any]) -> int:
    return sum(_leaves(child) for child in node.values()) if node else 1


def constraints_of(constraints: Optional[Sequence[Any]], force_words_ids: Optional[List[Any]]) -> List[Any]:
    """The constraints of one generation: ``constraints`` (objects with the `PROTOCOL`), then one
    per ``force_words_ids`` entry: a token list -> `PhrasalConstraint`, a list of token lists ->
    `DisjunctiveConstraint`. ``ValueError`` naming the setting for anything else."""
    found = list(constraints or ())
    for i, constraint in enumerate(found):
        missing = [name for name in PROTOCOL if not hasattr(constraint, name)]
        if missing:
            raise ValueError(f"generate(): constraints[{i}] ({type(constraint).__name__}) is no constraint: it lacks "
                             f"{', '.join(missing)}")
    if force_words_ids is not None:
        if not isinstance(force_words_ids, list) or not force_words_ids:
            raise ValueError(f"generate(): force_words_ids must be a non-empty list, got {force_words_ids!r}")
        for i, words in enumerate(force_words_ids):
            nested = isinstance(words, list) and bool(words) and isinstance(words[0], list)
            try:
                found.append(DisjunctiveConstraint(words) if nested else PhrasalConstraint(words))
            except ValueError as err:
                raise ValueError(f"generate(): force_words_ids[{i}]: {err}") from err
    return found


class ConstraintState:
    """How far one sequence has got through ``constraints`` (the originals are never changed):
    the ones met (``done``), the one in progress (``current``) and the ``pending`` ones."""

    def __init__(self, constraints: Sequence[Any]) -> None:
        self.constraints = constraints
        self.max_seqlen = max(c.seqlen for c in constraints)
        self.done: List[Any] = []
        self.current: Optional[Any] = None
        self.pending = [c.copy(stateful=False) for c in constraints]
        self.completed = False

    @classmethod
    def of(cls, constraints: Sequence[Any], token_ids: Sequence[int]) -> "ConstraintState":
        """The state after reading ``token_ids`` (plain ints) from the start."""
        state = cls(constraints)
        for token in token_ids:
            if state.completed:
                break
            state.add(token)
        return state

    @property
    def bank(self) -> int:
        """The progress made, in tokens: ``max_seqlen`` per constraint met, plus the steps of the one
        in progress (constrained beam search keeps beams of every progress level)."""
        partial = self.max_seqlen - self.current.remaining() if self.current is not None else 0
        return len(self.done) * self.max_seqlen + partial

    def advance(self) -> List[int]:
        """The tokens that make progress: the in-progress constraint's next ones, or else every
        pending constraint's first ones (duplicates kept, in order)."""
        sources = [self.current] if self.current is not None else self.pending
        tokens: List[int] = []
        for constraint in sources:
            step = constraint.advance()
            tokens.extend(step if isinstance(step, list) else [] if step is None else [step])
        return tokens

    def add(self, token: int) -> None:
        """Read one token."""
        if self.completed:
            return
        if self.current is not None:
            _, complete, reset = self.current.update(token)
            if reset:
                self.pending.append(self.current.copy(stateful=False))
                self.current = None
            elif complete:
                self.done.append(self.current)
                self.current = None
                self.completed = not self.pending
            return
        for i, constraint in enumerate(self.pending):
            if constraint.does_advance(token):
                stepped, complete, _ = constraint.update(token)
                if not stepped:
                    raise RuntimeError(f"{type(constraint).__name__}.update({token}) made no progress although "
                                       "does_advance said it would")
                del self.pending[i]
                if complete:
                    self.done.append(constraint)
                else:
                    self.current = constraint
                self.completed = not self.pending and self.current is None
                return

    def copy(self) -> "ConstraintState":
        """An independent state with the same progress."""
        new = ConstraintState(self.constraints)
        new.done = [c.copy(stateful=True) for c in self.done]
        new.current = None if self.current is None else self.current.copy(stateful=True)
        new.pending = [c.copy(stateful=False) for c in self.pending]
        new.completed = self.completed
        return new
