"""Tests of the ``xlmrxl_fill_mask`` component: tokenizer rule, predictions, MLM training, export."""

import ctypes
import gc

import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from spacy.util import fix_random_seed
from thinc.api import Adam

from spacy_xlmrxl.backbone.nodes import backbone_shim
from spacy_xlmrxl.export import export_fill_mask_to_hf
from spacy_xlmrxl.ml import task_models
from spacy_xlmrxl.ml.task_models import MLMInput
from spacy_xlmrxl.pipeline.fill_mask.component import add_mask_special_case, fill_text
from spacy_xlmrxl.pipeline.fill_mask.top_k import TopK

CORPUS = [
    "The cat sat on the mat and looked at the dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Der Hund schläft im Garten, während die Katze spielt.",
]
MASKED = "Paris is the <mask> of France."
LONG = " ".join(["<mask> sat on the mat."] + CORPUS * 3 + ["The end <mask>"])


@pytest.mark.parametrize("lang", ["en", "xx"])
def test_mask_stays_one_token(lang):
    nlp = spacy.blank(lang)
    add_mask_special_case(nlp)
    add_mask_special_case(nlp)  # idempotent
    assert [t.text for t in nlp.make_doc(MASKED)] == ["Paris", "is", "the", "<mask>", "of", "France", "."]
    for text, expected in [("the<mask> of", ["the", "<mask>", "of"]), ("a <mask><mask> b", ["a", "<mask>", "<mask>", "b"]),
                           ("(<mask>).", ["(", "<mask>", ")", "."]), ("x<mask>y", ["x", "<mask>", "y"])]:
        assert [t.text for t in nlp.make_doc(text)] == expected
    reloaded = spacy.blank(lang).from_bytes(nlp.to_bytes())
    assert [t.text for t in reloaded.make_doc("a <mask><mask> b")] == ["a", "<mask>", "<mask>", "b"]


def test_fill_text():
    assert fill_text("Paris is the <mask> of France.", ["\u2581capital"]) == "Paris is the capital of France."
    assert fill_text("<mask> and<mask>", ["\u2581A", "\u2581B"]) == "A and B"
    assert fill_text("walk <mask> now", ["ing"]) == "walking now"
    assert fill_text("no mask", []) == "no mask"


def fill_nlp(spm_model_path, lang="en", **model):
    nlp = spacy.blank(lang)
    config = {"model": {"backbone": {"checkpoint": None, "preset": "tiny", "tokenizer": str(spm_model_path), "seed": 0},
                        "windows": {"window": 16, "stride": 8}, **model}, "top_k": 4}
    nlp.add_pipe("xlmrxl_fill_mask", config=config)
    return nlp


@pytest.fixture(scope="module")
def trained(spm_model_path):
    fix_random_seed(0)
    nlp = fill_nlp(spm_model_path, lang="xx")
    examples = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t in CORPUS]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    history = []
    for _ in range(8):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        history.append(losses["xlmrxl_fill_mask"])
    return nlp, history


def test_mlm_loss_falls_on_a_repeated_corpus(trained):
    _, history = trained
    assert all(loss > 0 for loss in history)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.5


def test_predictions(trained):
    nlp, _ = trained
    tokenizer = nlp.get_pipe("xlmrxl_fill_mask").model.attrs["tokenizer"]
    doc = nlp(MASKED)
    assert [t.text for t in doc].count("<mask>") == 1
    (fillers,) = doc._.fill_mask
    assert len(fillers) == 4
    scores = [f["score"] for f in fillers]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    for filler in fillers:
        assert filler["token_id"] not in tokenizer.all_special_ids
        assert filler["piece"] == tokenizer.convert_ids_to_tokens(filler["token_id"])
        assert filler["token"] == tokenizer.decode([filler["token_id"]]).strip()
    assert "<mask>" not in doc._.filled_text
    assert doc._.filled_text == fill_text(MASKED, [fillers[0]["piece"]])


def test_long_doc_masks_through_windows(trained):
    nlp, _ = trained
    fill = nlp.get_pipe("xlmrxl_fill_mask")
    encodings, plan = fill._plan([LONG])
    assert len(plan.doc_windows[0]) > 3
    doc = nlp(LONG)
    assert len(doc._.fill_mask) == 2 and all(len(f) == 4 for f in doc._.fill_mask)


def reference_fillers(fill, inputs):
    """The fillers as the component computed them before the chunking (issue 17): the logits of
    every mask at once (``model.predict``), one float64 softmax over all of them."""
    tokenizer = fill.model.attrs["tokenizer"]
    logits = fill.model.ops.to_numpy(fill.model.predict(inputs))
    allowed = numpy.zeros((logits.shape[1],), dtype=bool)
    allowed[: len(tokenizer)] = True
    allowed[[i for i in tokenizer.all_special_ids if i < logits.shape[1]]] = False
    scores = numpy.where(allowed, logits.astype("float64"), -numpy.inf)
    scores = numpy.exp(scores - scores.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    k = min(int(fill.cfg["top_k"]), int(allowed.sum()))
    rows = []
    for probs in scores:
        best = numpy.argpartition(-probs, k - 1)[:k]
        best = best[numpy.argsort(-probs[best], kind="stable")]
        rows.append([(int(i), float(probs[i])) for i in best])
    return rows


def masked_input(fill, docs):
    piece_ids, plan = fill._plan([doc.text for doc in docs])
    mask_id = fill.model.attrs["tokenizer"].mask_id
    positions = [plan.piece_slot(d, int(p)) for d, ids in enumerate(piece_ids) for p in numpy.flatnonzero(ids == mask_id)]
    return MLMInput(plan.batches, numpy.asarray(positions)), plan


def test_chunked_fillers_equal_the_unchunked_computation(trained, monkeypatch):
    """Fillers and scores are the unchunked computation's: bit-identical when the masks' logits
    come from one LM-head product as before (masks of one window batch, at most LOGIT_CHUNK of
    them); with more chunks, the same fillers and scores up to the float32 rounding of the LM
    head's matrix product over fewer rows (BLAS rounds a row's dot products by the number of
    rows; batching docs differently did the same before)."""
    nlp, _ = trained
    fill = nlp.get_pipe("xlmrxl_fill_mask")
    docs = [nlp.make_doc(" ".join(["The <mask> sat on the <mask>."] * 6)), nlp.make_doc(MASKED)]
    inputs, plan = masked_input(fill, docs)
    assert len(inputs.positions) == 13 and len(plan.batches) == 1 and len(plan.windows) > 4
    expected = reference_fillers(fill, inputs)
    got = [[(f["token_id"], f["score"]) for f in fillers] for doc in fill.predict(docs) for fillers in doc]
    assert got == expected  # one chunk: bit-identical
    monkeypatch.setattr(task_models, "LOGIT_CHUNK", 3)
    chunked = [[(f["token_id"], f["score"]) for f in fillers] for doc in fill.predict(docs) for fillers in doc]
    assert [[i for i, _ in row] for row in chunked] == [[i for i, _ in row] for row in expected]
    assert [s for row in chunked for _, s in row] == pytest.approx([s for row in expected for _, s in row], rel=1e-5)


def test_top_k_is_the_float64_softmax_whatever_the_chunks():
    """Given the same logits, `TopK` fed in chunks of any size and order gives bit-identically the
    ids and scores of one float64 softmax over all rows (ties included)."""
    rng = numpy.random.default_rng(0)
    logits = (rng.standard_normal((23, 3000)) * 4).astype("float32")
    logits[:, 10:14] = logits[:, 9:10]  # ties
    best = TopK(23, top_k=5, n_allowed=2900, excluded=[0, 1, 2, 3, 9, 2999])
    order = rng.permutation(23)
    for start, stop in [(0, 1), (1, 8), (8, 9), (9, 23)]:
        rows = order[start:stop]
        best.add(rows, logits[rows])
    allowed = numpy.zeros(3000, dtype=bool)
    allowed[:2900] = True
    allowed[[0, 1, 2, 3, 9]] = False
    scores = numpy.where(allowed, logits.astype("float64"), -numpy.inf)
    scores = numpy.exp(scores - scores.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    for row, probs in enumerate(scores):
        top = numpy.argpartition(-probs, 4)[:5]
        top = top[numpy.argsort(-probs[top], kind="stable")]
        assert best.ids[row].tolist() == top.tolist() and best.scores[row].tolist() == probs[top].tolist()
    assert TopK(2, top_k=9, n_allowed=6, excluded=[0, 1]).ids.shape == (2, 0)
    few = TopK(1, top_k=9, n_allowed=6, excluded=[0, 1])
    few.add(numpy.array([0]), logits[:1, :8])
    assert few.ids.shape == (1, 4) and sorted(few.ids[0].tolist()) == [2, 3, 4, 5]


def _peak_rss_above_start(fn):
    """Peak resident memory (MiB) of ``fn()`` above the resident memory when it starts (Linux,
    glibc: the free memory the allocator holds is given back first, so that it cannot hide a
    growth)."""
    def read(key):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(key)) / 1024

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM (the peak) to the current resident size
    except (OSError, AttributeError):
        pytest.skip("needs glibc and Linux's /proc/self/clear_refs to measure a peak")
    start = read("VmRSS")
    fn()
    return read("VmHWM") - start


def test_fill_mask_memory_does_not_grow_with_the_masks(trained, monkeypatch):
    """Peak memory of predict is bounded by a chunk of masks (LOGIT_CHUNK x 250,880 logits), not
    by the number of masks. Before: ~6.7 MB per mask (the logits of all masks at once and float64
    copies of them): measured with this test's docs, 172 MiB for 25 masks, 1350 MiB for 200;
    now about 20 MiB for both with LOGIT_CHUNK = 8 (64 MiB with the default 64)."""
    nlp, _ = trained
    fill = nlp.get_pipe("xlmrxl_fill_mask")
    monkeypatch.setattr(task_models, "LOGIT_CHUNK", 8)
    few, many = (nlp.make_doc(" ".join(["The <mask> sat."] * n)) for n in (25, 200))
    fill.predict([nlp.make_doc(MASKED)])  # warm up
    few_peak = _peak_rss_above_start(lambda: fill.predict([few]))
    many_peak = _peak_rss_above_start(lambda: fill.predict([many]))
    chunk_mib = 8 * 250_880 * 4 / 2**20
    assert many_peak < 1.5 * few_peak + chunk_mib, (few_peak, many_peak)


def test_no_mask_and_empty_docs(trained):
    nlp, _ = trained
    for text in ["", "no mask here", "   "]:
        doc = nlp(text)
        assert doc._.fill_mask == []
        assert doc._.filled_text == text


def test_pipe_batch_equals_one_by_one(trained):
    nlp, _ = trained
    texts = [MASKED, "no mask", LONG, "", "a <mask><mask> b"]
    batched = list(nlp.pipe(texts, batch_size=5))
    for doc, text in zip(batched, texts):
        single = nlp(text)
        assert [[f["token_id"] for f in m] for m in doc._.fill_mask] == [[f["token_id"] for f in m] for m in single._.fill_mask]
        for a, b in zip(doc._.fill_mask, single._.fill_mask):
            assert [f["score"] for f in a] == pytest.approx([f["score"] for f in b], rel=1e-4)


def test_to_disk_from_disk_same_predictions(trained, tmp_path):
    nlp, _ = trained
    nlp.to_disk(tmp_path / "fill")
    loaded = spacy.load(tmp_path / "fill")
    assert [t.text for t in loaded.make_doc(MASKED)].count("<mask>") == 1
    for text in [MASKED, LONG]:
        a, b = nlp(text)._.fill_mask, loaded(text)._.fill_mask
        assert [[f["token_id"] for f in m] for m in a] == [[f["token_id"] for f in m] for m in b]
        assert [f["score"] for f in a[0]] == pytest.approx([f["score"] for f in b[0]], rel=1e-5)


def test_export_starts_other_components_from_the_adapted_backbone(trained, tmp_path):
    nlp, _ = trained
    out = export_fill_mask_to_hf(nlp, tmp_path / "adapted")
    assert (out / "config.json").is_file() and (out / "sentencepiece.bpe.model").is_file()
    adapted = backbone_shim(nlp.get_pipe("xlmrxl_fill_mask").model).module.state_dict()
    qa = spacy.blank("en")
    qa.add_pipe("xlmrxl_qa", config={"model": {"backbone": {"checkpoint": str(out)}}})
    qa.initialize()
    loaded = backbone_shim(qa.get_pipe("xlmrxl_qa").model).module.state_dict()
    roberta = [k for k in adapted if k.startswith("roberta.")]
    assert roberta and all(k in loaded for k in roberta)
    for key in roberta:
        assert torch.equal(adapted[key], loaded[key]), key
    # the whole masked LM round-trips too: same fillers from the exported checkpoint
    again = spacy.blank("xx")
    again.add_pipe("xlmrxl_fill_mask", config={"model": {"backbone": {"checkpoint": str(out)}}, "top_k": 4})
    again.initialize()
    assert [f["token_id"] for f in again(MASKED)._.fill_mask[0]] == [f["token_id"] for f in nlp(MASKED)._.fill_mask[0]]


def test_masking_is_seeded_and_fresh_per_update(spm_model_path):
    from modeling.tokenizer import XLMRobertaTokenizer

    draws = []
    for _ in range(2):
        nlp = fill_nlp(spm_model_path)
        fill = nlp.get_pipe("xlmrxl_fill_mask")
        fill.model.attrs["tokenizer"] = XLMRobertaTokenizer.from_pretrained(str(spm_model_path))  # no weights needed
        examples = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t in CORPUS]
        first, second = fill._masked_input(examples), fill._masked_input(examples)
        draws.append([(inputs.positions.tolist(), targets.tolist()) for inputs, targets in (first, second)])
        assert draws[-1][0] != draws[-1][1]  # a fresh masking on every update
        inputs, targets = first
        _, plan = fill._plan([eg.reference.text for eg in examples])
        for (b, row, col), target in zip(inputs.positions, targets):
            assert plan.batches[b].input_ids[row, col] == target  # targets are the unmasked pieces
    assert draws[0] == draws[1]  # same seed, same masks


def test_default_scorer_reports_masked_word_accuracy(trained):
    from spacy_xlmrxl.pipeline.fill_mask.scoring import score_fill_mask

    nlp, _ = trained
    fill = nlp.get_pipe("xlmrxl_fill_mask")
    assert fill.scorer is score_fill_mask
    assert nlp.config["components"]["xlmrxl_fill_mask"]["scorer"] == {"@scorers": "spacy-xlmrxl.fill_mask_scorer.v1"}
    predicted = nlp(MASKED)
    (fillers,) = predicted._.fill_mask
    # references restoring the text with the 1st filler / a later word-starting one among the
    # first five (a word-inner piece would glue onto the left word): a top-1 hit / a top-5 hit only
    hit = Example(predicted, nlp.make_doc(fill_text(MASKED, [fillers[0]["piece"]])))
    later = next(f["piece"] for f in fillers[1:5] if f["piece"].startswith("\u2581") and f["piece"] != fillers[0]["piece"])
    second = nlp(MASKED)
    near = Example(second, nlp.make_doc(fill_text(MASKED, [later])))
    assert fill.score([hit]) == {"fill_mask_acc": 1.0, "fill_mask_top5": 1.0}
    assert fill.score([hit, near]) == {"fill_mask_acc": 0.5, "fill_mask_top5": 1.0}


def test_scorer_agrees_with_evaluate_fill_mask_cli(trained):
    import random

    from spacy_xlmrxl.backbone.nodes import get_tokenizer
    from spacy_xlmrxl.cli.evaluate import evaluate_fill_mask, mask_probe

    nlp, _ = trained
    fill = nlp.get_pipe("xlmrxl_fill_mask")
    texts = CORPUS * 4
    cli = evaluate_fill_mask(nlp, texts, texts, seed=3)
    rng = random.Random(3)
    probes = [(mask_probe(text, get_tokenizer(fill.model), rng), text) for text in texts]
    examples = [Example(nlp(probe[0]), nlp.make_doc(text)) for probe, text in probes if probe is not None]
    assert len(examples) == cli["n_examples"] == len(texts)
    scores = fill.score(examples)
    assert (scores["fill_mask_acc"], scores["fill_mask_top5"]) == (cli["fill_mask_acc"], cli["fill_mask_top5"])
    assert scores["fill_mask_top5"] > 0  # the model has learnt something of the corpus
