"""Tests of the ``xlmrxl_qa`` component on the tiny preset, the real tokenizer and XQuAD data."""

import gc
import json
import tracemalloc

import pytest
import spacy
from spacy.training import Example
from spacy.util import fix_random_seed
from thinc.api import Adam

from spacy_xlmrxl.backbone.source import BackboneError
from spacy_xlmrxl.export import export_qa_to_hf
from spacy_xlmrxl.pipeline.qa import component as qa_component
from spacy_xlmrxl.pipeline.qa.annotation import set_qa_annotation
from spacy_xlmrxl.pipeline.qa.component import XLMRQuestionAnswerer

WINDOW = {"max_length": 96, "doc_stride": 16, "max_question_length": 24}


def qa_nlp(spm_model_path, **overrides):
    nlp = spacy.blank("en")
    config = {"model": {"backbone": {"checkpoint": None, "preset": "tiny", "tokenizer": str(spm_model_path), "seed": 0}},
              "top_k": 3, **WINDOW, **overrides}
    nlp.add_pipe("xlmrxl_qa", config=config)
    return nlp


def xquad_examples(nlp, shared_data, n_paragraphs=2, n_questions=2):
    data = json.loads((shared_data / "qa" / "xquad" / "xquad.en.json").read_text(encoding="utf8"))
    examples = []
    for paragraph in data["data"][0]["paragraphs"][:n_paragraphs]:
        for qa in paragraph["qas"][:n_questions]:
            reference = nlp.make_doc(paragraph["context"])
            answer = qa["answers"][0]
            span = (answer["answer_start"], answer["answer_start"] + len(answer["text"]))
            set_qa_annotation(reference, question=qa["question"], answers=[span], qid=qa["id"])
            predicted = nlp.make_doc(paragraph["context"])
            predicted._.question = qa["question"]
            examples.append(Example(predicted, reference))
    return examples


@pytest.fixture(scope="module")
def trained(spm_model_path, shared_data):
    """A tiny QA pipeline trained until it answers its two training questions (one context)."""
    fix_random_seed(0)
    nlp = qa_nlp(spm_model_path)
    examples = xquad_examples(nlp, shared_data, n_paragraphs=1, n_questions=2)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    history = []
    for step in range(16):
        if step == 10:
            optimizer.learn_rate = 0.002  # settle (4 seeds reach EM 1 by step 13 of this schedule)
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        history.append(losses["xlmrxl_qa"])
    return nlp, examples, history


def ask(nlp, text, question):
    doc = nlp.make_doc(text)
    doc._.question = question
    return doc


def test_loss_falls(trained):
    _, _, history = trained
    assert all(loss > 0 for loss in history)
    assert history[-1] < history[0] * 0.5


def test_learns_the_training_answers(trained):
    nlp, examples, _ = trained
    for eg in examples:
        doc = nlp(ask(nlp, eg.reference.text, eg.reference._.question))
        assert doc._.answers[0][0]["text"] == eg.reference._.answers[0][0]["text"]
    scores = nlp.evaluate(examples)
    assert (scores["qa_exact"], scores["qa_f1"]) == (1.0, 1.0)


def test_features_use_several_chunks_with_gold_in_one(trained):
    nlp, examples, _ = trained
    qa = nlp.get_pipe("xlmrxl_qa")
    batch, targets = qa._training_batch(examples[:1])
    assert len(batch.features) >= 3
    assert all(len(f.input_ids) <= WINDOW["max_length"] for f in batch.features)
    holding = [t for t in targets if tuple(t) != (0, 0)]
    assert holding and len(holding) < len(targets)  # other chunks point to <s>
    start, end = examples[0].reference._.answers[0][0]["start"], examples[0].reference._.answers[0][0]["end"]
    for feature, (first, last) in zip(batch.features, targets):
        if first:
            c0 = feature.context_start
            assert feature.offsets[first - c0][0] <= start and feature.offsets[last - c0][1] >= end


def test_predictions_inside_the_context(trained):
    nlp, examples, _ = trained
    for eg in examples:
        doc = nlp(ask(nlp, eg.reference.text, eg.reference._.question))
        (answers,) = doc._.answers
        assert 1 <= len(answers) <= 3
        assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
        for answer in answers:
            assert 0 <= answer["start"] < answer["end"] <= len(doc.text)
            assert answer["text"] == doc.text[answer["start"] : answer["end"]]
            assert 0.0 < answer["score"] <= 1.0
        (span,) = doc.spans["answers"]
        assert span.start_char <= answers[0]["start"] and span.end_char >= answers[0]["end"]
        assert span.label_ == "ANSWER"
        assert doc.spans["answers"].attrs["questions"] == [0]


def test_several_questions_no_question_and_empty_docs(trained):
    nlp, examples, _ = trained
    text = examples[0].reference.text
    docs = [
        ask(nlp, text, [examples[0].reference._.question, "   ", examples[1].reference._.question]),
        nlp.make_doc(text),  # no question
        ask(nlp, "", "What?"),  # empty context
        ask(nlp, text, []),
    ]
    docs = list(nlp.pipe(docs))
    assert [len(a) for a in docs[0]._.answers] == [3, 0, 3]
    assert sorted(docs[0].spans["answers"].attrs["questions"]) == [0, 2]
    assert docs[1]._.answers == [] and len(docs[1].spans["answers"]) == 0
    assert docs[2]._.answers == [[]]
    assert docs[3]._.answers == []
    with pytest.raises(TypeError, match="question"):
        nlp(ask(nlp, text, 42))


def test_pipe_batch_equals_one_by_one(trained):
    nlp, examples, _ = trained
    def docs():
        return [ask(nlp, eg.reference.text, eg.reference._.question) for eg in examples] + [nlp.make_doc("x")]
    batched = list(nlp.pipe(docs(), batch_size=8))
    single = [nlp(doc) for doc in docs()]
    for a, b in zip(batched, single):
        assert [[(x["start"], x["end"]) for x in q] for q in a._.answers] == \
               [[(x["start"], x["end"]) for x in q] for q in b._.answers]
        for qa, qb in zip(a._.answers, b._.answers):
            assert [x["score"] for x in qa] == pytest.approx([x["score"] for x in qb], rel=1e-4)


def _answers(docs):
    return [[(x["start"], x["end"], x["score"]) for x in q] for doc in docs for q in doc._.answers]


def test_rounds_give_the_answers_of_one_round(trained, monkeypatch):
    """Features in rounds of one model batch (and decoded chunk by chunk) answer as one round:
    the same spans, scores up to float32 rounding (other rows share a model call)."""
    nlp, examples, _ = trained
    def docs():
        return [ask(nlp, eg.reference.text, [eg.reference._.question, "Who?", "When was it?"]) for eg in examples]
    whole = list(nlp.pipe(docs()))
    qa = nlp.get_pipe("xlmrxl_qa")
    assert len(list(qa._rounds([d.text for d in docs()], [d._.question for d in docs()]))) == 1
    monkeypatch.setattr(qa_component, "ROUND_BATCHES", 0)  # every feature alone
    assert len(list(qa._rounds([d.text for d in docs()], [d._.question for d in docs()]))) > 6
    rounds = list(nlp.pipe(docs()))
    assert [[a[:2] for a in q] for q in _answers(rounds)] == [[a[:2] for a in q] for q in _answers(whole)]
    assert [a[2] for q in _answers(rounds) for a in q] == pytest.approx([a[2] for q in _answers(whole) for a in q], rel=1e-4)


def test_qa_memory_does_not_grow_with_the_questions(trained, monkeypatch):
    """What predict holds at once is one round of features (and O(top_k) per question), not the
    features of every question x context chunk: 8x the questions, about the same traced peak
    (before: ~8x, the features, inputs and logits of all questions at once)."""
    nlp, examples, _ = trained
    qa = nlp.get_pipe("xlmrxl_qa")
    monkeypatch.setattr(qa_component, "ROUND_BATCHES", 1)
    context = " ".join(eg.reference.text for eg in examples) * 3
    peaks = []
    for n_questions in (4, 32):
        doc = ask(nlp, context, [f"What is number {i}?" for i in range(n_questions)])
        qa.predict([doc])  # warm up
        gc.collect()
        tracemalloc.start()
        try:
            answers = qa.predict([doc])
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(answers[0]) == n_questions and all(answers[0])
        peaks.append(peak - kept)
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_to_disk_from_disk_same_predictions(trained, tmp_path):
    nlp, examples, _ = trained
    nlp.to_disk(tmp_path / "qa")
    assert (tmp_path / "qa" / "xlmrxl_qa" / "backbone" / "model.safetensors").is_file()
    loaded = spacy.load(tmp_path / "qa")
    for eg in examples[:2]:
        a = nlp(ask(nlp, eg.reference.text, eg.reference._.question))._.answers
        b = loaded(ask(loaded, eg.reference.text, eg.reference._.question))._.answers
        assert [[(x["text"], x["start"], x["end"]) for x in q] for q in a] == \
               [[(x["text"], x["start"], x["end"]) for x in q] for q in b]
        assert [x["score"] for x in a[0]] == pytest.approx([x["score"] for x in b[0]], rel=1e-5)


def test_export_to_hf_dir_and_back(trained, tmp_path):
    nlp, examples, _ = trained
    out = export_qa_to_hf(nlp, tmp_path / "hf-qa")
    assert (out / "config.json").is_file() and (out / "sentencepiece.bpe.model").is_file()
    again = spacy.blank("en")
    again.add_pipe("xlmrxl_qa", config={"model": {"backbone": {"checkpoint": str(out)}}, "top_k": 3, **WINDOW})
    again.initialize()
    for eg in examples:
        a = nlp(ask(nlp, eg.reference.text, eg.reference._.question))._.answers
        b = again(ask(again, eg.reference.text, eg.reference._.question))._.answers
        assert [[(x["start"], x["end"]) for x in q] for q in a] == [[(x["start"], x["end"]) for x in q] for q in b]


def test_evaluate_reports_squad_scores(trained):
    nlp, examples, _ = trained
    scores = nlp.evaluate(examples)
    assert 0.0 <= scores["qa_exact"] <= scores["qa_f1"] <= 1.0


def test_no_answer_threshold_switches_answers_off(trained):
    nlp, examples, _ = trained
    qa = nlp.get_pipe("xlmrxl_qa")
    doc = ask(nlp, examples[0].reference.text, examples[0].reference._.question)
    qa.cfg["no_answer_threshold"] = 1e9
    try:
        assert nlp(doc)._.answers == [[]]
        assert len(doc.spans["answers"]) == 0
    finally:
        qa.cfg["no_answer_threshold"] = None


def test_missing_checkpoint_message(spm_model_path, tmp_path):
    nlp = spacy.blank("en")  # tests run offline with an empty HF cache (tests/conftest.py)
    nlp.add_pipe("xlmrxl_qa")  # default config: facebook/xlm-roberta-xl, loaded in initialize
    with pytest.raises(BackboneError, match="preset"):
        nlp.initialize()
    with pytest.raises(BackboneError, match="local-dir"):
        dummy = Example(nlp.make_doc("x"), nlp.make_doc("x"))
        nlp.get_pipe("xlmrxl_qa").initialize(lambda: [dummy], checkpoint=str(tmp_path / "local-dir"))


def test_settings_are_validated(spm_model_path):
    with pytest.raises(ValueError, match="doc_stride"):
        qa_nlp(spm_model_path, max_length=64, doc_stride=48, max_question_length=16)
    nlp = qa_nlp(spm_model_path, max_length=1000, doc_stride=16, max_question_length=16)
    with pytest.raises(ValueError, match="max_length"):
        nlp.initialize()
    assert isinstance(qa_nlp(spm_model_path).get_pipe("xlmrxl_qa"), XLMRQuestionAnswerer)


def test_set_qa_annotation_checks_spans():
    nlp = spacy.blank("en")
    doc = nlp.make_doc("Paris is in France.")
    set_qa_annotation(doc, question=["Where?", "What?"], answers=[[(12, 18)], []], qid=["a", "b"])
    assert doc._.answers == [[{"text": "France", "start": 12, "end": 18}], []]
    assert doc.user_data["qa_ids"] == ["a", "b"]
    with pytest.raises(ValueError):
        set_qa_annotation(doc, question="Where?", answers=[(12, 99)])
    with pytest.raises(ValueError):
        set_qa_annotation(doc, question=["Where?"], answers=[[], []])


def test_checkpoint_with_other_num_labels_gives_a_start_end_head(spm_model_path, tmp_path):
    """A checkpoint of another task (config num_labels 9, no qa_outputs) gets a fresh 2-output QA
    head; a saved pipeline whose config.json says 9 labels beside a 2-row head (as written
    before the head followed num_labels) still loads."""
    from modeling import XLMRobertaXLConfig
    from modeling.heads import XLMRobertaXLForTokenClassification
    from spacy_xlmrxl.backbone.nodes import backbone_shim

    XLMRobertaXLForTokenClassification(XLMRobertaXLConfig.from_preset("tiny", num_labels=9)).save_pretrained(
        tmp_path / "ner")
    nlp = spacy.blank("en")
    nlp.add_pipe("xlmrxl_qa", config={"model": {"backbone": {"checkpoint": str(tmp_path / "ner"),
                                                             "tokenizer": str(spm_model_path)}},
                                      "top_k": 3, **WINDOW})
    nlp.initialize()
    module = backbone_shim(nlp.get_pipe("xlmrxl_qa").model).module
    assert module.qa_outputs.out_features == 2 == module.config.num_labels
    text, question = "Aarhus is the second largest city in Denmark.", "Where is Aarhus?"
    answers = nlp(ask(nlp, text, question))._.answers
    assert len(answers[0]) == 3
    nlp.to_disk(tmp_path / "pipeline")
    config_file = tmp_path / "pipeline" / "xlmrxl_qa" / "backbone" / "config.json"
    config = json.loads(config_file.read_text())
    config["id2label"] = {str(i): f"T{i}" for i in range(9)}
    config["label2id"] = {f"T{i}": i for i in range(9)}
    config_file.write_text(json.dumps(config))
    loaded = spacy.load(tmp_path / "pipeline")
    assert backbone_shim(loaded.get_pipe("xlmrxl_qa").model).module.config.num_labels == 2
    again = loaded(ask(loaded, text, question))._.answers
    assert [(a["start"], a["end"]) for a in again[0]] == [(a["start"], a["end"]) for a in answers[0]]
