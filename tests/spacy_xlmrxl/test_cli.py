"""Tests of the ``spacy-xlmrxl`` command line (spacy_xlmrxl.cli), on tiny files in tmp dirs."""

import hashlib
import json
import random
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from thinc.api import Config

from spacy_xlmrxl.backbone.settings import backbone_blocks
from spacy_xlmrxl.cli import main
from spacy_xlmrxl.cli.config import merge_config
from spacy_xlmrxl.cli.evaluate import majority_tag_baseline, mask_probe
from spacy_xlmrxl.cli.tables import metrics_table
from spacy_xlmrxl.training.docbin import write_docbin

REPO = Path(__file__).resolve().parents[2]
UNER = "# text = Bo bor i Aarhus.\n1\tBo\tB-PER\t-\t-\n2\tbor\tO\t-\t-\n3\ti\tO\t-\t-\n4\tAarhus\tB-LOC\t-\t-\n5\t.\tO\t-\t-\n\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf8")
    return path


def docs_of(path: Path):
    return list(DocBin().from_disk(path).get_docs(spacy.blank("xx").vocab))


def test_convert_uner_merged_and_per_file(tmp_path):
    da = write(tmp_path / "uner" / "da" / "test.iob2", UNER)
    de = write(tmp_path / "uner" / "de" / "test.iob2", UNER.replace("bor", "wohnt"))
    main(["convert-uner", str(da), str(de), "--output", str(tmp_path / "all.spacy"), "--no-progress"])
    docs = docs_of(tmp_path / "all.spacy")
    assert [d.user_data["lang"] for d in docs] == ["da", "de"]
    assert [(e.text, e.label_) for e in docs[1].ents] == [("Bo", "PER"), ("Aarhus", "LOC")]
    main(["convert-uner", str(da), str(de), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test-da.spacy", "test-de.spacy"]
    assert docs_of(tmp_path / "out" / "test-de.spacy")[0].text == "Bo wohnt i Aarhus."


def test_convert_reports_file_and_line(tmp_path, capsys):
    bad = write(tmp_path / "bad.iob2", UNER + "1\tBo\tB-PER\n")
    with pytest.raises(SystemExit) as info:
        main(["convert-uner", str(bad), "--output", str(tmp_path / "x.spacy"), "--no-progress"])
    assert info.value.code == 1
    assert f"{bad}:8:" in "".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):  # exactly one of --output / --output-dir
        main(["convert-uner", str(bad), "--no-progress"])


def test_convert_uner_map_drops_or_renames_oth(tmp_path, capsys):
    oth = write(tmp_path / "uner" / "en" / "test.iob2", UNER.replace("B-LOC", "B-OTH"))
    with pytest.raises(SystemExit):  # UNER's PER/ORG/LOC by default; the error suggests the map
        main(["convert-uner", str(oth), "--output", str(tmp_path / "x.spacy"), "--no-progress"])
    assert "--mapOTH=O" in "".join(capsys.readouterr().out.split())  # msg.fail wraps lines
    main(["convert-uner", str(oth), "--map", "OTH=O", "--output", str(tmp_path / "drop.spacy"), "--no-progress"])
    assert [(e.text, e.label_) for e in docs_of(tmp_path / "drop.spacy")[0].ents] == [("Bo", "PER")]
    main(["convert-uner", str(oth), "--map", "OTH=MISC", "--map", "PER=PERSON", "--output",
          str(tmp_path / "rename.spacy"), "--no-progress"])
    assert [e.label_ for e in docs_of(tmp_path / "rename.spacy")[0].ents] == ["PERSON", "MISC"]
    with pytest.raises(SystemExit):
        main(["convert-uner", str(oth), "--map", "OTH", "--output", str(tmp_path / "y.spacy"), "--no-progress"])
    assert "TAG=NEW" in capsys.readouterr().out


def test_convert_sib200_and_text(tmp_path):
    labels = write(tmp_path / "labels.txt", "sports\ntravel\n")
    tsv = write(tmp_path / "eng_Latn" / "dev.tsv", 'index_id\tcategory\ttext\n1\tsports\t"A ""quoted"" goal."\n2\ttravel\tTrains.\n')
    main(["convert-sib200", str(tsv), "--labels-file", str(labels), "--output-dir", str(tmp_path / "tc"), "--no-progress"])
    docs = docs_of(tmp_path / "tc" / "dev-eng_Latn.spacy")
    assert [d.cats for d in docs] == [{"sports": 1.0, "travel": 0.0}, {"sports": 0.0, "travel": 1.0}]
    assert docs[0].text == 'A "quoted" goal.'
    main(["convert-text", str(tsv), "--column", "text", "--output", str(tmp_path / "t.spacy"), "--no-progress"])
    assert [d.text for d in docs_of(tmp_path / "t.spacy")] == ['A "quoted" goal.', "Trains."]


def test_convert_squad_writes_disjoint_splits(tmp_path):
    inputs = []
    for lang in ("en", "de"):
        data = []
        for i in range(8):
            context = f"Text {i} in {lang} says {i * 7}."
            data.append({"title": f"T{i}", "paragraphs": [{"context": context, "qas": [
                {"id": f"q{i}", "question": f"What does text {i} say?", "answers": [{"answer_start": context.index(str(i * 7)), "text": str(i * 7)}]}]}]})
        path = tmp_path / f"xquad.{lang}.json"
        path.write_text(json.dumps({"data": data}), encoding="utf8")
        inputs.append(str(path))
    out = tmp_path / "qa"
    main(["convert-squad", *inputs, "--output-dir", str(out), "--seed", "1", "--dev-articles", "2", "--test-articles", "3", "--no-progress"])
    split = json.loads((out / "split.json").read_text())
    assert (len(split["train"]), len(split["dev"]), len(split["test"]), split["seed"]) == (3, 2, 3, 1)
    titles = {name: {d.user_data["title"] for d in docs_of(out / f"{name}.spacy")} for name in ("train", "dev", "test-en", "test-de")}
    assert titles["train"] == set(split["train"]) and titles["dev"] == set(split["dev"])
    assert titles["test-en"] == titles["test-de"] == set(split["test"])
    doc = docs_of(out / "test-de.spacy")[0]
    ((answer,),) = doc._.answers
    assert doc.text[answer["start"] : answer["end"]] == answer["text"] and "in de" in doc.text


def test_check_data(tmp_path, capsys):
    data = tmp_path / "data"
    write(data / "ner" / "x.txt", "x\n")
    project = tmp_path / "proj"
    project.mkdir()
    digest = hashlib.sha256(b"x\n").hexdigest()
    srsly.write_yaml(project / "project.yml", {"assets": [{"dest": "assets/ner/x.txt", "sha256": digest}]})
    with pytest.raises(SystemExit) as info:
        main(["check-data", "--project", str(project / "project.yml"), "--no-progress"])
    assert info.value.code == 1 and "spacy project assets" in " ".join(capsys.readouterr().out.split())
    main(["check-data", "--project", str(project / "project.yml"), "--data-dir", str(data), "--no-progress"])
    assert (project / "assets" / "ner" / "x.txt").read_text() == "x\n"
    write(tmp_path / "SUMS", f"{'0' * 64}  ner/x.txt\n")
    with pytest.raises(SystemExit):
        main(["check-data", "--project", str(project / "project.yml"), "--sums", str(tmp_path / "SUMS"), "--no-progress"])


def tiny_ner_docs(nlp):
    texts = [("Anna bor i Aarhus .", [(0, 1, "PER"), (3, 4, "LOC")]), ("Bo bor i Odense .", [(0, 1, "PER"), (3, 4, "LOC")]),
             ("Anna er i Odense .", [(0, 1, "PER"), (3, 4, "LOC")]), ("Aarhus er stor .", [(0, 1, "LOC")])]
    docs = []
    for text, ents in texts:
        doc = spacy.tokens.Doc(nlp.vocab, words=text.split())
        doc.ents = [spacy.tokens.Span(doc, s, e, label=label) for s, e, label in ents]
        docs.append(doc)
    return docs


def test_majority_tag_baseline_predicts_most_frequent_tag(tmp_path):
    nlp = spacy.blank("xx")
    train = tiny_ner_docs(nlp)
    # "Aarhus" is B-LOC twice, "Anna" B-PER twice; unseen "Ib" gets O
    gold = tiny_ner_docs(nlp)[:1]
    test = spacy.tokens.Doc(nlp.vocab, words="Ib og Anna i Aarhus".split())
    test.ents = [spacy.tokens.Span(test, 0, 1, label="PER"), spacy.tokens.Span(test, 2, 3, label="PER"), spacy.tokens.Span(test, 4, 5, label="LOC")]
    (example,) = majority_tag_baseline(train, [test])
    assert [(e.text, e.label_) for e in example.predicted.ents] == [("Anna", "PER"), ("Aarhus", "LOC")]
    write_docbin(train, tmp_path / "train.spacy")
    write_docbin([test] + gold, tmp_path / "test-da.spacy")
    main(["baseline-ner", str(tmp_path / "train.spacy"), str(tmp_path / "test-da.spacy"), "--output-dir", str(tmp_path / "m")])
    scores = json.loads((tmp_path / "m" / "ner-baseline-da.json").read_text())
    assert scores["ents_p"] == 1.0 and scores["ents_r"] == pytest.approx(4 / 5)
    assert scores["token_acc"] == pytest.approx(9 / 10) and scores["all_o_token_acc"] == pytest.approx(5 / 10)
    assert scores["all_o_ents_f"] == 0.0 and scores["n_examples"] == 2


def test_evaluate_matches_spacy_evaluate(tmp_path):
    """Our multi-file evaluate gives the scores of `spacy evaluate` (same Language.evaluate)."""
    from spacy.cli.evaluate import evaluate as spacy_evaluate

    nlp = spacy.blank("xx")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PER", "pattern": "Anna"}, {"label": "LOC", "pattern": "Odense"}])
    nlp.to_disk(tmp_path / "model")
    write_docbin(tiny_ner_docs(nlp), tmp_path / "test-da.spacy")
    main(["evaluate", str(tmp_path / "model"), str(tmp_path / "test-da.spacy"), "--output-dir", str(tmp_path / "m"), "--prefix", "ner-"])
    ours = json.loads((tmp_path / "m" / "ner-da.json").read_text())
    theirs = spacy_evaluate(str(tmp_path / "model"), tmp_path / "test-da.spacy")
    assert 0 < ours["ents_f"] < 1 and ours["n_examples"] == 4
    for key in ("ents_p", "ents_r", "ents_f"):
        assert ours[key] == pytest.approx(theirs[key])


def test_metrics_table(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    srsly.write_json(metrics / "ner-da.json", {"ents_p": 0.5, "ents_r": 0.25, "ents_f": 1 / 3, "speed": 100.0, "n_examples": 7})
    srsly.write_json(metrics / "ner-de.json", {"ents_p": 0.1, "ents_r": 0.2, "ents_f": 0.2, "n_examples": 3})
    srsly.write_json(metrics / "qa-en.json", {"qa_exact": 0.1, "qa_f1": 0.2})
    srsly.write_json(metrics / "other-x.json", {"acc": 0.5, "speed": 9.0, "name": "text"})
    table = metrics_table(sorted(metrics.iterdir()), meta=["preset: small"])
    lines = table.splitlines()
    assert lines[0] == "preset: small"
    assert "| da | 50.0 | 25.0 | 33.3 | 7 |" in lines
    assert "| mean | 30.0 | 22.5 | 26.7 | |" in lines
    assert "| en | 10.0 | 20.0 | - |" in lines
    assert "| x | 50.0 | - |" in lines  # unknown task: every number but speed
    main(["metrics-table", *map(str, sorted(metrics.iterdir())), "--output", str(tmp_path / "t.md"), "--meta", "preset: small"])
    assert (tmp_path / "t.md").read_text().strip() == table.strip()


class FakeTokenizer:
    """Whitespace 'pieces' with the sentencepiece word marker, ids from a fixed vocabulary."""

    def __init__(self, words):
        self.ids = {w: i + 10 for i, w in enumerate(words)}

    def encode_pieces(self, text):
        class Encoding:
            pass

        encoding = Encoding()
        encoding.ids, encoding.offsets, start = [], [], 0
        for word in text.split():
            start = text.index(word, start)
            encoding.ids.append(self.ids[word])
            encoding.offsets.append((start, start + len(word)))
            start += len(word)
        return encoding

    def convert_ids_to_tokens(self, ids):
        names = {i: w for w, i in self.ids.items()}
        return ["\u2581" + names[i] for i in ids]


def test_mask_probe_masks_one_whole_word():
    tokenizer = FakeTokenizer(["the", "cat", "sat", "42"])
    masked, gold = mask_probe("the cat sat 42", tokenizer, random.Random(0))
    word = [w for w, i in tokenizer.ids.items() if i == gold][0]
    assert word.isalpha() and masked == "the cat sat 42".replace(word, "<mask>", 1)
    assert mask_probe("42", tokenizer, random.Random(0)) is None


def test_merge_config_applies_backbone_keys_everywhere(tmp_path):
    base = Config().from_disk(REPO / "configs" / "ner.cfg", interpolate=False)
    overrides = Config().from_str(
        "[backbone]\nmixed_precision = \"bf16\"\ngrad_checkpointing = true\n\n[training]\nmax_steps = 7\n\n"
        "[training.optimizer]\n\n[training.optimizer.learn_rate]\ninitial_rate = 0.00002\n"
    )
    merged = merge_config(base, overrides)
    model = merged["components"]["transformer"]["model"]["backbone"]
    assert model["mixed_precision"] == "bf16" and model["grad_checkpointing"] is True
    assert model["preset"] == "${paths.preset}"  # variables stay
    assert merged["training"]["max_steps"] == 7 and merged["training"]["eval_frequency"] == base["training"]["eval_frequency"]
    assert merged["training"]["optimizer"]["learn_rate"]["@schedules"] == "warmup_linear.v1"
    assert "backbone" not in merged
    with pytest.raises(ValueError, match="no block"):
        merge_config(Config().from_str("[training]\nseed = 1\n"), Config().from_str("[backbone]\nfreeze = true\n"))


def test_xl_gpu_overrides_merge_into_every_config(tmp_path):
    from spacy.util import load_model_from_config

    for name in ("ner", "textcat", "qa", "fill_mask"):
        out = tmp_path / f"{name}-xl.cfg"
        main(["merge-config", str(REPO / "configs" / f"{name}.cfg"), str(REPO / "configs" / "xl_gpu.cfg"), "--output", str(out)])
        config = Config().from_disk(out)
        blocks = [c["model"]["backbone"] for c in config["components"].values() if "backbone" in c["model"]]
        assert blocks and blocks == backbone_blocks(config)
        assert all(b["mixed_precision"] == "bf16" and b["grad_checkpointing"] for b in blocks)
        load_model_from_config(config, auto_fill=True, validate=True)  # builds, loads no weights


def test_export_hf_needs_a_known_task(tmp_path):
    with pytest.raises(SystemExit):
        main(["export-hf", str(tmp_path), str(tmp_path / "out"), "--task", "parser"])
