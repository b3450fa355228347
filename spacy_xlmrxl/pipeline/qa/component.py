"""``xlmrxl_qa``: extractive question answering over the doc text, with its own QA backbone.

Owns the `XLMRQuestionAnswerer` pipe: it reads the question(s) of a doc from ``doc._.question``
(a string or a list of strings), pairs each with the doc text as ``<s> Q </s></s> C </s>`` over
overlapping context chunks (``max_length`` positions, ``doc_stride`` shared context pieces, like
the HF QA pipeline), runs ``spacy-xlmrxl.QAModel.v2`` on length-sorted batches, a bounded round
of features at a time (`ROUND_BATCHES`, answers decoded chunk by chunk), and writes, per
question, the n-best answers to ``doc._.answers`` and the best answer to
``doc.spans[spans_key]`` (see `spacy_xlmrxl.scorers_qa` for the Doc conventions). Training takes
the gold answers of the reference doc (``doc._.answers`` or ``doc.spans["answers"]``, set by
`set_qa_annotation`): the loss is the mean of the start and end cross-entropies of each chunk,
whose target is the gold answer's pieces when the chunk holds it and ``<s>`` (position 0)
otherwise, as in HF. A doc without a question, or an empty doc, gets no answer and costs no
model call. `export_qa_to_hf` writes the trained model as an HF directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer

from ...backbone.nodes import backbone_shim, get_tokenizer, set_backbone_source
from ...backbone.settings import default_model_config
from ...ml.windows import WindowPlan, batch_windows, whole_sequence
from ..backbone_pipe import BackbonePipe
from ..update import Prepared, update_built_input
from .annotation import ANSWERS_KEY, QUESTIONS_ATTR, SCORES_ATTR, gold_answers_of, questions_of, register_qa_extensions
from .features import Answer, AnswerDecoder, QAFeature, gold_positions, iter_features, validate_window

DEFAULT_QA_MODEL = default_model_config("spacy-xlmrxl.QAModel.v2")

#: Inference runs the features in rounds of at most this many model batches' worth of positions.
ROUND_BATCHES = 8

register_qa_extensions()


@Language.factory(
    "xlmrxl_qa",
    assigns=["doc._.answers", "doc.spans"],
    default_config={
        "model": DEFAULT_QA_MODEL,
        "max_length": 384,
        "doc_stride": 128,
        "max_question_length": 64,
        "max_answer_length": 30,
        "top_k": 1,
        "no_answer_threshold": None,
        "spans_key": ANSWERS_KEY,
        "scorer": {"@scorers": "spacy-xlmrxl.qa_scorer.v1"},
    },
    default_score_weights={"qa_f1": 1.0, "qa_exact": 0.0},
)
def make_qa(nlp: Language, name: str, model: Model, max_length: int, doc_stride: int, max_question_length: int,
            max_answer_length: int, top_k: int, no_answer_threshold: Optional[float], spans_key: str,
            scorer: Optional[Callable]) -> "XLMRQuestionAnswerer":
    """Extractive QA. ``max_length``: positions per model input (question + context chunk +
    4 specials); ``doc_stride``: context pieces shared by consecutive chunks;
    ``max_question_length``/``max_answer_length``: in pieces; ``top_k``: answers kept per
    question; ``no_answer_threshold``: null = always answer, else answer only when the best span's
    log-probability exceeds the ``<s>``-``<s>`` null span's by at least this much."""
    return XLMRQuestionAnswerer(
        nlp.vocab, model, name=name, max_length=max_length, doc_stride=doc_stride,
        max_question_length=max_question_length, max_answer_length=max_answer_length, top_k=top_k,
        no_answer_threshold=no_answer_threshold, spans_key=spans_key, scorer=scorer,
    )


@dataclass
class _Batch:
    """The features of a batch of docs and how they were packed for the model."""

    features: List[QAFeature]
    owners: List[Tuple[int, int]]  # (doc index, question index) per feature
    plan: WindowPlan  # feature i is the plan's doc i, one window: its (batch, row) is plan.locate(i)


class XLMRQuestionAnswerer(BackbonePipe, TrainablePipe):
    """Extractive question answering; see the module docstring."""

    def __init__(self, vocab: Vocab, model: Model, name: str = "xlmrxl_qa", *, max_length: int = 384,
                 doc_stride: int = 128, max_question_length: int = 64, max_answer_length: int = 30,
                 top_k: int = 1, no_answer_threshold: Optional[float] = None, spans_key: str = ANSWERS_KEY,
                 scorer: Optional[Callable] = None) -> None:
        validate_window(max_length=max_length, doc_stride=doc_stride, max_question_length=max_question_length)
        if top_k < 1 or max_answer_length < 1:
            raise ValueError(f"top_k ({top_k}) and max_answer_length ({max_answer_length}) must be >= 1")
        register_qa_extensions()
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {
            "max_length": max_length, "doc_stride": doc_stride, "max_question_length": max_question_length,
            "max_answer_length": max_answer_length, "top_k": top_k, "no_answer_threshold": no_answer_threshold,
            "spans_key": spans_key,
        }

    # -- features
    def _iter_features(self, texts: Sequence[str], questions: Sequence[List[str]]
                       ) -> Iterator[Tuple[Tuple[int, int], QAFeature]]:
        """``((doc, question), feature)`` of every non-blank question of every non-empty text, one
        at a time (a doc's context is encoded as int32 arrays once for all its questions)."""
        tokenizer = get_tokenizer(self.model)
        for d, (text, doc_questions) in enumerate(zip(texts, questions)):
            asked = [(q, question) for q, question in enumerate(doc_questions) if question.strip()]
            if not text.strip() or not asked:
                continue
            (context_ids, context_offsets), = tokenizer.encode_arrays([text])
            for q, question in asked:
                for feature in iter_features(
                    tokenizer.encode_pieces(question).ids, context_ids, context_offsets,
                    max_length=self.cfg["max_length"], doc_stride=self.cfg["doc_stride"],
                    max_question_length=self.cfg["max_question_length"], question_index=q,
                    bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                ):
                    yield (d, q), feature

    def _pack(self, owned: Sequence[Tuple[Tuple[int, int], QAFeature]]) -> _Batch:
        """The features packed into model batches (each feature is one window of the plan)."""
        tokenizer = get_tokenizer(self.model)
        features = [feature for _, feature in owned]
        # a feature is one "window" covering its sequence minus the outer <s> ... </s>
        plan = batch_windows([f.input_ids[1:-1] for f in features], whole_sequence, bos_id=tokenizer.bos_id,
                             eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                             max_batch_pieces=self.model.attrs["max_batch_pieces"])
        return _Batch(features, [owner for owner, _ in owned], plan)

    def _features(self, texts: Sequence[str], questions: Sequence[List[str]]) -> _Batch:
        """All the features of the texts in one `_Batch` (training: one update)."""
        return self._pack(list(self._iter_features(texts, questions)))

    def _rounds(self, texts: Sequence[str], questions: Sequence[List[str]]) -> Iterator[_Batch]:
        """The features of the texts in `_Batch` es of at most `ROUND_BATCHES` model batches'
        worth of positions (a longer feature alone), so that inference holds the features, inputs
        and logits of one round at a time whatever the number of questions and chunks."""
        budget = ROUND_BATCHES * self.model.attrs["max_batch_pieces"]
        owned: List[Tuple[Tuple[int, int], QAFeature]] = []
        size = 0
        for owner, feature in self._iter_features(texts, questions):
            if owned and size + len(feature.input_ids) > budget:
                yield self._pack(owned)
                owned, size = [], 0
            owned.append((owner, feature))
            size += len(feature.input_ids)
        if owned:
            yield self._pack(owned)

    def _feature_logits(self, batch: _Batch, logits: List[Any]) -> List[Tuple[numpy.ndarray, numpy.ndarray]]:
        """(start, end) logits of each feature, padding cut off, as numpy float32."""
        host = [self.model.ops.to_numpy(x) for x in logits]
        out = []
        for i, feature in enumerate(batch.features):
            b, row = batch.plan.locate(i)
            seq = host[b][row, : len(feature.input_ids)]
            out.append((seq[:, 0], seq[:, 1]))
        return out

    # -- prediction
    def predict(self, docs: Iterable[Doc]) -> List[List[List[Answer]]]:
        """Per doc, per question, the n-best answers (``[]``: no question or no answer).

        The features run round by round (`_rounds`); each question's answers are decoded chunk by
        chunk (`AnswerDecoder`), so what is held besides one round is O(``top_k``) per question."""
        docs = list(docs)
        questions = [questions_of(doc) for doc in docs]
        results: List[List[List[Answer]]] = [[[] for _ in qs] for qs in questions]
        decoders: Dict[Tuple[int, int], AnswerDecoder] = {}
        for batch in self._rounds([doc.text for doc in docs], questions):
            logits = self._feature_logits(batch, self.model.predict(batch.plan.batches))
            for (d, q), feature, feature_logits in zip(batch.owners, batch.features, logits):
                if (d, q) not in decoders:
                    decoders[(d, q)] = AnswerDecoder(docs[d].text, top_k=self.cfg["top_k"],
                                                     max_answer_length=self.cfg["max_answer_length"],
                                                     no_answer_threshold=self.cfg["no_answer_threshold"])
                decoders[(d, q)].add(feature_logits, feature)
            del batch, logits
        for (d, q), decoder in decoders.items():
            results[d][q] = decoder.answers()
        return results

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[List[List[Answer]]]) -> None:
        """``doc._.answers`` (n-best dicts per question) and the best answers as spans."""
        key = self.cfg["spans_key"]
        for doc, per_question in zip(docs, predictions):
            doc._.answers = [[answer.to_dict() for answer in answers] for answers in per_question]
            spans, scores, owners = [], [], []
            for q, answers in enumerate(per_question):
                if answers:
                    span = doc.char_span(answers[0].start, answers[0].end, label="ANSWER",
                                         alignment_mode="expand")
                    if span is not None:
                        spans.append(span)
                        scores.append(answers[0].score)
                        owners.append(q)
            group = SpanGroup(doc, name=key, spans=spans)
            group.attrs[SCORES_ATTR] = scores
            group.attrs[QUESTIONS_ATTR] = owners
            doc.spans[key] = group

    # -- training
    def _training_batch(self, examples: Sequence[Example]) -> Tuple[_Batch, numpy.ndarray]:
        """Features of the reference docs and their (n_features, 2) gold start/end positions."""
        references = [eg.reference for eg in examples]
        batch = self._features([doc.text for doc in references], [questions_of(doc) for doc in references])
        golds = [gold_answers_of(doc) for doc in references]
        targets = numpy.zeros((len(batch.features), 2), dtype="int64")
        for i, (feature, (d, q)) in enumerate(zip(batch.features, batch.owners)):
            if golds[d][q]:  # the first gold answer is the training target
                targets[i] = gold_positions(feature, *golds[d][q][0])
        return batch, targets

    def update(self, examples: Iterable[Example], *, drop: float = 0.0, sgd: Optional[Optimizer] = None,
               losses: Optional[Dict[str, float]] = None) -> Dict[str, float]:
        return update_built_input(self, examples, self._prepare_update, drop=drop, sgd=sgd, losses=losses)

    def _prepare_update(self, examples: Sequence[Example]) -> Prepared:
        batch, targets = self._training_batch(examples)
        if not batch.features:
            return None
        return batch.plan.batches, lambda logits: self._loss(batch, targets, logits)

    def get_loss(self, examples: Iterable[Example], scores: List[Any]) -> Tuple[float, List[Any]]:
        """Loss and gradient for ``scores = model(features of the examples' reference docs)``."""
        examples = list(examples)
        validate_examples(examples, "XLMRQuestionAnswerer.get_loss")
        batch, targets = self._training_batch(examples)
        return self._loss(batch, targets, scores)

    def _loss(self, batch: _Batch, targets: numpy.ndarray, logits: List[Any]) -> Tuple[float, List[Any]]:
        """Mean over features of (CE(start) + CE(end)) / 2, softmax over the unpadded positions."""
        ops = self.model.ops
        host = [ops.to_numpy(x).astype("float32") for x in logits]
        grads = [numpy.zeros_like(x) for x in host]
        n = len(batch.features)
        loss = 0.0
        for i, (feature, target) in enumerate(zip(batch.features, targets)):
            b, row = batch.plan.locate(i)
            length = len(feature.input_ids)
            for k in (0, 1):
                scores = host[b][row, :length, k].astype("float64")
                probs = numpy.exp(scores - scores.max())
                probs /= probs.sum()
                loss -= float(numpy.log(max(probs[target[k]], 1e-30))) / (2 * n)
                probs[target[k]] -= 1.0
                grads[b][row, :length, k] = probs / (2 * n)
        return loss, [ops.asarray(g) for g in grads]

    # -- initialize
    def initialize(self, get_examples: Callable[[], Iterable[Example]], *, nlp: Optional[Language] = None,
                   checkpoint: Optional[str] = None, preset: Optional[str] = None,
                   tokenizer: Optional[str] = None) -> None:
        """Load the QA backbone (``checkpoint`` / ``preset`` / ``tokenizer`` override the model
        config) and check that the windows fit it."""
        validate_get_examples(get_examples, "XLMRQuestionAnswerer.initialize")
        set_backbone_source(self.model, checkpoint=checkpoint, preset=preset, tokenizer=tokenizer)
        self.model.initialize()
        self._after_load()

    def _after_load(self) -> None:
        shim = backbone_shim(self.model)
        if shim.has_module:
            limit = shim.module.config.max_sequence_length
            if self.cfg["max_length"] > limit:
                raise ValueError(f"[{self.name}] max_length ({self.cfg['max_length']}) exceeds the model's "
                                 f"{limit} positions; lower max_length")

    def add_label(self, label: str) -> int:
        raise NotImplementedError("xlmrxl_qa has no labels")
