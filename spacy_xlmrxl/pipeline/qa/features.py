"""Extractive-QA features: question/context windows with a doc stride, gold positions, span decoding.

Owns the piece-level logic of `xlmrxl_qa` that needs no model: building the pair sequences
``<s> Q </s></s> C </s>`` over overlapping context chunks (``doc_stride`` is the number of context
pieces two consecutive chunks share, as in the HF question-answering pipeline), locating a gold
answer's pieces in a chunk (position 0, the ``<s>`` "null" span, when the chunk does not hold it,
as HF does), and turning start/end logits of all chunks back into n-best answers with character
offsets in the context, a maximum answer length (in pieces) and a SQuAD2-style no-answer
threshold (`decode_answers`; `AnswerDecoder` does it chunk by chunk with O(top_k) memory). Pure
Python + numpy; no torch, spaCy or thinc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy

Offset = Tuple[int, int]
BOS_ID = 0
EOS_ID = 2

# `<s> Q </s></s> C </s>`: the specials around a question/context pair
N_PAIR_SPECIALS = 4


@dataclass(frozen=True)
class QAFeature:
    """One model input: a question with one chunk of the context.

    ``input_ids`` is ``<s> Q </s></s> C </s>`` (length ``n_seq``); the chunk's context pieces sit
    at sequence positions ``[context_start, context_start + len(offsets))`` and ``offsets[i]`` is
    the character span, in the context text, of the piece at ``context_start + i``.
    """

    input_ids: Tuple[int, ...]
    context_start: int
    offsets: Tuple[Offset, ...]
    question_index: int
    chunk_index: int

    @property
    def context_end(self) -> int:
        """Sequence position one past the chunk's last context piece."""
        return self.context_start + len(self.offsets)


@dataclass(frozen=True)
class Answer:
    """A predicted answer: character span ``[start, end)`` in the context, text and probability."""

    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> Dict[str, object]:
        return {"text": self.text, "start": self.start, "end": self.end, "score": self.score}


def validate_window(*, max_length: int, doc_stride: int, max_question_length: int) -> None:
    """Raise ``ValueError`` naming the setting when the window cannot hold any context."""
    room = max_length - N_PAIR_SPECIALS - max_question_length
    if max_question_length < 1:
        raise ValueError(f"max_question_length must be >= 1, got {max_question_length}")
    if room < 1:
        raise ValueError(
            f"max_length ({max_length}) leaves no room for context after {N_PAIR_SPECIALS} specials "
            f"and max_question_length ({max_question_length}) pieces"
        )
    if not 0 <= doc_stride < room:
        raise ValueError(
            f"doc_stride ({doc_stride}, the overlap between context chunks) must be >= 0 and "
            f"smaller than the context room of a window ({room} = max_length - "
            f"{N_PAIR_SPECIALS} - max_question_length)"
        )


def chunk_spans(n_context: int, chunk_length: int, doc_stride: int) -> List[Tuple[int, int]]:
    """``[start, end)`` context-piece ranges of length <= ``chunk_length`` covering all pieces.

    Consecutive chunks share ``doc_stride`` pieces; the last chunk ends at ``n_context``. An empty
    context gives one empty chunk so that every question still gets a feature.
    """
    if chunk_length < 1 or not 0 <= doc_stride < chunk_length:
        raise ValueError(f"need 0 <= doc_stride ({doc_stride}) < chunk_length ({chunk_length})")
    spans: List[Tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + chunk_length, n_context)
        spans.append((start, end))
        if end >= n_context:
            return spans
        start = end - doc_stride


def build_features(question_ids: Sequence[int], context_ids: Sequence[int], context_offsets: Sequence[Offset],
                   **settings: Any) -> List[QAFeature]:
    """The list of `iter_features` (same arguments)."""
    return list(iter_features(question_ids, context_ids, context_offsets, **settings))


def iter_features(
    question_ids: Sequence[int],
    context_ids: Sequence[int],
    context_offsets: Sequence[Offset],
    *,
    max_length: int,
    doc_stride: int,
    max_question_length: int,
    question_index: int = 0,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> Iterator[QAFeature]:
    """Pair the question (truncated to ``max_question_length`` pieces) with each context chunk,
    one feature at a time. ``context_ids`` / ``context_offsets`` may be lists or numpy arrays
    ((n,) ids, (n, 2) offsets); the features hold Python ints."""
    if len(context_ids) != len(context_offsets):
        raise ValueError("context_ids and context_offsets differ in length")
    question = list(question_ids[:max_question_length])
    room = max_length - N_PAIR_SPECIALS - len(question)
    overlap = min(doc_stride, room - 1)
    prefix = [bos_id, *question, eos_id, eos_id]
    for chunk_index, (start, end) in enumerate(chunk_spans(len(context_ids), room, overlap)):
        yield QAFeature(
            input_ids=tuple(prefix + _as_list(context_ids[start:end]) + [eos_id]),
            context_start=len(prefix),
            offsets=tuple(tuple(o) for o in _as_list(context_offsets[start:end])),
            question_index=question_index,
            chunk_index=chunk_index,
        )


def _as_list(values: Any) -> List[Any]:
    """A slice of a list or a numpy array as a list of Python values."""
    return values.tolist() if isinstance(values, numpy.ndarray) else list(values)


def gold_positions(feature: QAFeature, start_char: int, end_char: int) -> Tuple[int, int]:
    """Sequence positions of the first and last piece of the answer ``[start_char, end_char)``.

    ``(0, 0)`` (the null span) when the chunk does not hold the whole answer, or for an empty
    (no-answer) gold span.
    """
    if end_char <= start_char:
        return 0, 0
    covering = [
        i for i, (s, e) in enumerate(feature.offsets) if e > s and s < end_char and e > start_char
    ]
    if not covering:
        return 0, 0
    first, last = covering[0], covering[-1]
    if feature.offsets[first][0] > start_char or feature.offsets[last][1] < end_char:
        return 0, 0
    return feature.context_start + first, feature.context_start + last


def _log_softmax(logits: numpy.ndarray, allowed: numpy.ndarray) -> numpy.ndarray:
    masked = numpy.where(allowed, logits.astype("float64"), -numpy.inf)
    top = masked.max()
    return masked - (top + numpy.log(numpy.exp(masked - top).sum()))


def feature_candidates(
    start_logits: numpy.ndarray,
    end_logits: numpy.ndarray,
    feature: QAFeature,
    *,
    top_k: int,
    max_answer_length: int,
) -> Tuple[float, List[Tuple[float, int, int]]]:
    """Null log-probability and the ``top_k`` best ``(log_prob, first, last)`` context-piece spans.

    ``start_logits``/``end_logits``: (n_seq,) for this feature (padding already cut off).
    Probabilities are softmaxes over the chunk's context positions plus position 0 (the null
    span); ``first``/``last`` index ``feature.offsets``.
    """
    n_seq = len(feature.input_ids)
    allowed = numpy.zeros((n_seq,), dtype=bool)
    allowed[0] = True
    allowed[feature.context_start : feature.context_end] = True
    log_start = _log_softmax(numpy.asarray(start_logits)[:n_seq], allowed)
    log_end = _log_softmax(numpy.asarray(end_logits)[:n_seq], allowed)
    null = float(log_start[0] + log_end[0])
    n_ctx = len(feature.offsets)
    if n_ctx == 0:
        return null, []
    ctx = slice(feature.context_start, feature.context_end)
    scores = log_start[ctx][:, None] + log_end[ctx][None, :]
    first, last = numpy.indices((n_ctx, n_ctx))
    valid = (last >= first) & (last - first < max_answer_length)
    # spans of nothing but whitespace pieces (a lone "▁" has an empty offset) are no answer
    empty = numpy.array([s == e for s, e in feature.offsets])
    valid &= ~empty[:, None] & ~empty[None, :]
    scores = numpy.where(valid, scores, -numpy.inf)
    flat = scores.ravel()
    k = min(top_k, int(valid.sum()))
    if k == 0:
        return null, []
    best = numpy.argpartition(-flat, k - 1)[:k]
    best = best[numpy.argsort(-flat[best], kind="stable")]
    return null, [(float(flat[i]), int(i // n_ctx), int(i % n_ctx)) for i in best]


def decode_answers(
    logits: Sequence[Tuple[numpy.ndarray, numpy.ndarray]],
    features: Sequence[QAFeature],
    context: str,
    *,
    top_k: int = 1,
    max_answer_length: int = 30,
    no_answer_threshold: Optional[float] = None,
) -> List[Answer]:
    """n-best answers of ONE question over all of its chunks, best first.

    ``logits[i]`` is ``(start_logits, end_logits)`` of ``features[i]``. A span found in several
    overlapping chunks counts once with its best score. With ``no_answer_threshold`` set, the
    question gets no answer (``[]``) when the best span's log-probability minus the null span's
    (the lowest over the chunks, as in SQuAD2 post-processing) is below the threshold.
    """
    decoder = AnswerDecoder(context, top_k=top_k, max_answer_length=max_answer_length,
                            no_answer_threshold=no_answer_threshold)
    for feature_logits, feature in zip(logits, features):
        decoder.add(feature_logits, feature)
    return decoder.answers()


class AnswerDecoder:
    """`decode_answers` fed one chunk at a time, holding O(``top_k``) spans whatever the number
    of chunks: the best score of each span seen (only the ``top_k`` best once there are more
    than ``4 * top_k``: a span dropped then cannot come back into the n-best but with a higher
    score, which it then gets) and the lowest null score. The answers are those of
    `decode_answers` over all the chunks given."""

    def __init__(self, context: str, *, top_k: int = 1, max_answer_length: int = 30,
                 no_answer_threshold: Optional[float] = None) -> None:
        if top_k < 1 or max_answer_length < 1:
            raise ValueError(f"top_k ({top_k}) and max_answer_length ({max_answer_length}) must be >= 1")
        self.context = context
        self.top_k = top_k
        self.max_answer_length = max_answer_length
        self.no_answer_threshold = no_answer_threshold
        self.best: Dict[Tuple[int, int], float] = {}
        self.null: Optional[float] = None  # the lowest null score so far

    def add(self, logits: Tuple[numpy.ndarray, numpy.ndarray], feature: QAFeature) -> None:
        """Take one chunk: ``(start_logits, end_logits)`` of ``feature``."""
        null, spans = feature_candidates(logits[0], logits[1], feature, top_k=self.top_k,
                                         max_answer_length=self.max_answer_length)
        self.null = null if self.null is None else min(self.null, null)
        for score, first, last in spans:
            start, end = _strip(self.context, feature.offsets[first][0], feature.offsets[last][1])
            if start < end and score > self.best.get((start, end), -numpy.inf):
                self.best[(start, end)] = score
        if len(self.best) > 4 * self.top_k:
            self.best = dict(self._ranked())

    def _ranked(self) -> List[Tuple[Tuple[int, int], float]]:
        return sorted(self.best.items(), key=lambda item: (-item[1], item[0]))[: self.top_k]

    def answers(self) -> List[Answer]:
        """The n-best answers of the chunks so far, best first (``[]``: none, or below the
        no-answer threshold)."""
        ranked = self._ranked()
        if not ranked:
            return []
        if self.no_answer_threshold is not None and self.null is not None:
            if ranked[0][1] - self.null < self.no_answer_threshold:
                return []
        return [Answer(text=self.context[s:e], start=s, end=e, score=float(numpy.exp(score)))
                for (s, e), score in ranked]


def _strip(text: str, start: int, end: int) -> Tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
