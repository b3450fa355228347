"""Ray inference against single-process ``nlp.pipe``: same records, order, resume, killed actor;
toy components, and the project's own NER pipeline (configs/ner.cfg, tiny backbone).

One local Ray session (2 CPUs) is shared by the whole module to keep Ray's start-up cost once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: pip install '.[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed")

import spacy  # noqa: E402

from spacy_xlmrxl.distributed.ray_inference import doc_to_record, iter_corpus_file, main, run_pipeline_on_ray
from spacy_xlmrxl.distributed.ray_sinks import read_results

from . import toy_components  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]
TOY_CODE = str(Path(toy_components.__file__).resolve())
EXTENSIONS = ("answers",)  # other Doc extensions may be registered by whatever else is installed
RUN = dict(code_paths=[TOY_CODE], extensions=EXTENSIONS, num_actors=2, num_cpus_per_actor=0.5, progress=False)
WORDS = ["Acme", "hires", "Drsmith", "in", "Paris", "open", "lab", "news", "today", "?", "and", "the"]


@pytest.fixture(scope="module")
def ray_session():
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + i % 9))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> List[Path]:
    root = tmp_path_factory.mktemp("corpus")
    files = []
    for f in range(2):
        path = root / f"part{f}.jsonl"
        with path.open("w", encoding="utf8") as handle:
            for i in range(f * 60, f * 60 + 60):
                handle.write(json.dumps({"id": f"doc-{i}", "text": _text(i), "meta": i}) + "\n")
        files.append(path)
    text_file = root / "extra.txt"
    text_file.write_text("".join(_text(100 + i) + "\n" + ("\n" if i % 4 == 0 else "") for i in range(15)))
    files.append(text_file)
    return files


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return toy_components.build_toy_pipeline(tmp_path_factory.mktemp("model") / "toy")


def _expected(model: Path, files: List[Path]) -> List[Dict[str, Any]]:
    nlp = spacy.load(model)
    rows = [row for path in files for row in iter_corpus_file(path, text_field="text", id_field="id")]
    return [doc_to_record(doc_id, doc, EXTENSIONS) for (doc_id, _), doc in zip(rows, nlp.pipe(t for _, t in rows))]


def test_toy_pipeline_has_every_field(model_dir, corpus):
    records = _expected(model_dir, corpus)
    assert len(records) == 135 and len({r["id"] for r in records}) == 135
    assert any(r["ents"] for r in records) and all(set(r["cats"]) == {"POSITIVE", "NEGATIVE", "QUESTION"} for r in records)
    assert any(r["answers"] for r in records)
    assert records[-1]["id"].startswith("extra.txt:")


def test_jsonl_output_equals_single_process(ray_session, model_dir, corpus, tmp_path):
    out = tmp_path / "out.jsonl"
    summary = run_pipeline_on_ray(model_dir, corpus, out, batch_size=8, **RUN)
    assert summary.written == 135 and summary.skipped == 0
    assert read_results(out) == _expected(model_dir, corpus)


def test_parquet_from_dataset(ray_session, model_dir, tmp_path):
    rows = [{"uid": i, "body": _text(i)} for i in range(50)]
    out = tmp_path / "parts"
    run_pipeline_on_ray(model_dir, ray.data.from_items(rows), out, text_field="body", id_field="uid",
                        output_format="parquet", batch_size=7, **dict(RUN, num_actors=1))
    nlp = spacy.load(model_dir)
    expected = [doc_to_record(r["uid"], doc, EXTENSIONS) for r, doc in zip(rows, nlp.pipe(r["body"] for r in rows))]
    assert read_results(out) == expected


def test_cli_arguments(monkeypatch, tmp_path):
    seen = {}

    def fake_run(model_path, inputs, output, **kwargs):
        seen.update(kwargs, model_path=model_path, inputs=inputs, output=output)
        from spacy_xlmrxl.distributed.ray_inference import RunSummary

        return RunSummary(output=Path(output), written=3, skipped=1, seconds=0.0)

    monkeypatch.setattr("spacy_xlmrxl.distributed.ray_inference.run_pipeline_on_ray", fake_run)
    assert main(["model", "a.jsonl", "b.txt", "-o", str(tmp_path / "parts"), "--num-actors", "4",
                 "--num-gpus-per-actor", "1", "--no-resume", "--code", "x.py"]) == 0
    assert seen["inputs"] == ["a.jsonl", "b.txt"] and seen["output_format"] == "parquet"
    assert (seen["num_actors"], seen["num_gpus_per_actor"], seen["resume"], seen["code_paths"]) == (4, 1.0, False, ["x.py"])
    main(["model", "a.jsonl", "-o", "out.jsonl"])
    assert seen["output_format"] == "jsonl" and seen["resume"] is True


def test_resume_skips_written_ids(ray_session, model_dir, corpus, tmp_path):
    expected = _expected(model_dir, corpus)
    out = tmp_path / "resume.jsonl"
    # a previous run wrote 40 records (marked, so that a recomputation would show) and died mid-line
    done = [dict(r, cats={"PREWRITTEN": 1.0}) for r in expected[:40]]
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": "doc-40", "ents"')
    summary = run_pipeline_on_ray(model_dir, corpus, out, batch_size=8, **dict(RUN, num_actors=1))
    assert (summary.written, summary.skipped) == (95, 40)
    assert read_results(out) == done + expected[40:]


def test_killed_actor_is_retried(ray_session, corpus, tmp_path):
    marker = tmp_path / "crashed.marker"
    model = toy_components.build_toy_pipeline(tmp_path / "crashy", crash_marker=marker)
    marker_free = toy_components.build_toy_pipeline(tmp_path / "plain")
    out = tmp_path / "crash.jsonl"
    summary = run_pipeline_on_ray(model, corpus, out, batch_size=8, max_restarts=3, max_task_retries=3, **RUN)
    assert marker.exists(), "no actor was killed: the test did not exercise the retry"
    records = read_results(out)
    assert summary.written == 135 and len({r["id"] for r in records}) == 135
    assert records == _expected(marker_free, corpus)


# --------------------------------------------------------------------------- the project's NER
NER_TEXTS = ["Anna Berg went to Oslo with Acme", "Acme and the city of Berlin", "Oslo", "",
             "Ein langer Satz über Berlin, Oslo und Anna, der in mehrere Stücke zerfällt. " * 3]


@pytest.fixture(scope="module")
def ner_model(spm_model_path, tmp_path_factory) -> Path:
    """configs/ner.cfg with a tiny random backbone and a random NER head (so that it predicts
    entities of every label without training), saved with ``nlp.to_disk``."""
    import numpy
    from spacy.tokens import Doc, DocBin, Span
    from spacy.training.initialize import init_nlp
    from spacy.util import load_config

    root = tmp_path_factory.mktemp("ner")
    blank = spacy.blank("xx")
    docs = DocBin()
    for label, words, k in (("PER", ["Anna", "went"], 0), ("LOC", ["to", "Oslo"], 1), ("ORG", ["Acme", "hires"], 0)):
        doc = Doc(blank.vocab, words=words)
        doc.ents = [Span(doc, k, k + 1, label=label)]
        docs.add(doc)
    docs.to_disk(root / "train.spacy")
    config = load_config(REPO_ROOT / "configs" / "ner.cfg", overrides={
        "paths.train": str(root / "train.spacy"), "paths.dev": str(root / "train.spacy"), "paths.preset": "tiny",
        "paths.tokenizer": str(spm_model_path), "components.transformer.model.backbone.max_batch_pieces": 64,
        "components.transformer.model.windows.window": 24, "components.transformer.model.windows.stride": 16,
    }, interpolate=False)
    nlp = init_nlp(config)
    rng = numpy.random.default_rng(0)
    for node in nlp.get_pipe("ner").model.walk():
        for name in node.param_names:
            if node.has_param(name):
                param = node.get_param(name)
                node.set_param(name, rng.normal(0.0, 1.0, param.shape).astype("float32"))
    nlp.to_disk(root / "model")
    return root / "model"


def test_xlmrxl_ner_pipeline_on_ray_matches_nlp_pipe(ray_session, ner_model, tmp_path):
    """A saved xlmrxl_ner pipeline through Ray (2 actors): the records of a single-process
    ``nlp.pipe``, none lost or duplicated; a second run over more input resumes."""
    rows = [{"id": f"n{i}", "text": NER_TEXTS[i % len(NER_TEXTS)] + (f" {i}" if i % 3 else "")} for i in range(30)]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:18]))
    second.write_text("".join(json.dumps(r) + "\n" for r in rows[18:]))
    nlp = spacy.load(ner_model)
    assert nlp.pipe_names == ["transformer", "ner"]
    expected = [doc_to_record(r["id"], doc, EXTENSIONS) for r, doc in zip(rows, nlp.pipe(r["text"] for r in rows))]
    assert sum(len(r["ents"]) for r in expected) >= 10
    assert {e["label"] for r in expected for e in r["ents"]} == {"PER", "LOC", "ORG"}
    out = tmp_path / "ner.jsonl"
    run = dict(extensions=EXTENSIONS, num_actors=2, num_cpus_per_actor=0.5, progress=False, batch_size=4)
    summary = run_pipeline_on_ray(ner_model, [first], out, **run)
    assert (summary.written, summary.skipped) == (18, 0)
    assert read_results(out) == expected[:18]
    summary = run_pipeline_on_ray(ner_model, [first, second], out, **run)  # resumes: only the new ids
    assert (summary.written, summary.skipped) == (12, 18)
    records = read_results(out)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert records == expected
