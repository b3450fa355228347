"""Tests of spacy_xlmrxl.readers: UNER / SIB-200 / SQuAD / raw text parsing, errors, splits,
DocBin round trips and the registered corpus readers (tiny files in tmp dirs; real data when
``../shared`` is there)."""

import json
from pathlib import Path

import pytest
import spacy
from hypothesis import given
from hypothesis import strategies as st
from spacy.tokens import DocBin
from spacy.util import registry

from spacy_xlmrxl.training.docbin import write_docbin
from spacy_xlmrxl.training.files import DataFormatError, infer_lang
from spacy_xlmrxl.training.sib200 import read_labels, read_sib200, sib200_docs
from spacy_xlmrxl.training.squad import read_squad, read_squad_files, split_articles, split_squad_files, squad_docs
from spacy_xlmrxl.training.text import read_text
from spacy_xlmrxl.training.uner import infer_spaces, iob2_spans, parse_label_map, read_uner, repair_iob2, uner_docs

UNER_TEXT = """# sent_id = s1
# text = Kjeld Christensen bor i Aarhus.
1\tKjeld\tB-PER\tB-PER#O\ts
2\tChristensen\tI-PER\tI-PER#O\ts
3\tbor\tO\tO#O\ts
4\ti\tO\tO#O\ts
5\tAarhus\tB-LOC\tB-LOC#O\ts
6\t.\tO\tO#O\ts

# sent_id = s2
# text = SID-huset ligger (i) byen
1\tSID-huset\tI-ORG\tO\t-
2\tligger\tO\tO\t-
3\t(\tO\tO\t-
4\ti\tO\tO\t-
5\t)\tO\tO\t-
6\tbyen\tI-LOC\tO\t-
"""


@pytest.fixture
def nlp():
    return spacy.blank("xx")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf8")
    return path


# ------------------------------------------------------------------------------------ UNER
def test_uner_docs_ents_spaces_lang_and_repair(tmp_path, nlp):
    path = write(tmp_path / "da" / "train.iob2", UNER_TEXT)
    docs = list(uner_docs(nlp.vocab, path))
    assert [d.text for d in docs] == ["Kjeld Christensen bor i Aarhus.", "SID-huset ligger (i) byen"]
    assert [(e.text, e.label_) for e in docs[0].ents] == [("Kjeld Christensen", "PER"), ("Aarhus", "LOC")]
    # I-X without a preceding X opens an entity (IOB2 repair)
    assert [(e.text, e.label_) for e in docs[1].ents] == [("SID-huset", "ORG"), ("byen", "LOC")]
    assert all(d.user_data["lang"] == "da" for d in docs)
    assert docs[0].user_data["sent_id"] == "s1"


def test_uner_several_files_one_corpus(tmp_path, nlp):
    da = write(tmp_path / "da" / "test.iob2", UNER_TEXT)
    en = write(tmp_path / "en_ewt-ud-test.iob2", "1\tHi\tO\t-\t-\n2\tBob\tB-PER\t-\t-\n")
    docs = list(uner_docs(nlp.vocab, [da, en]))
    assert [d.user_data["lang"] for d in docs] == ["da", "da", "en"]
    assert docs[-1].text == "Hi Bob"  # no `# text`: single spaces
    assert [e.text for e in docs[-1].ents] == ["Bob"]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("1\tKjeld\tB-PER\tB-PER#O", "expected 5 tab-separated columns"),
        ("1\tKjeld\tB-PER\tx\ty\tz", "found 6"),
        ("1\tKjeld\tB-MISC\tx\ty", "unknown tag 'B-MISC'"),
        ("1\tKjeld\tPER\tx\ty", "unknown tag 'PER'"),
        ("x\tKjeld\tO\tx\ty", "token index 'x'"),
    ],
)
def test_uner_malformed_line_names_file_and_line(tmp_path, line, fragment):
    path = write(tmp_path / "bad.iob2", "# text = ok\n1\tok\tO\t-\t-\n\n# text = Kjeld\n" + line + "\n")
    with pytest.raises(DataFormatError) as info:
        list(read_uner(path))
    assert f"{path}:5:" in str(info.value)
    assert fragment in str(info.value)


def test_uner_any_labels_when_asked(tmp_path):
    path = write(tmp_path / "x.iob2", "1\tParis\tB-GPE\t-\t-\n")
    (sentence,) = read_uner(path, labels=None)
    assert sentence.tags == ["B-GPE"]


UNER_OTH = """# text = Anna saw Star Wars in Oslo
1\tAnna\tB-PER\t-\t-
2\tsaw\tO\t-\t-
3\tStar\tB-OTH\t-\t-
4\tWars\tI-OTH\t-\t-
5\tin\tO\t-\t-
6\tOslo\tB-LOC\t-\t-
"""


def test_uner_oth_is_refused_with_a_map_hint(tmp_path, nlp):
    path = write(tmp_path / "en" / "test.iob2", UNER_OTH)
    with pytest.raises(DataFormatError) as info:
        list(uner_docs(nlp.vocab, path))
    assert f"{path}:4:" in str(info.value) and "--map OTH=O" in str(info.value)


def test_uner_label_map_drops_or_renames(tmp_path, nlp):
    path = write(tmp_path / "en" / "test.iob2", UNER_OTH)
    (dropped,) = uner_docs(nlp.vocab, path, label_map={"OTH": "O"})
    assert [(e.text, e.label_) for e in dropped.ents] == [("Anna", "PER"), ("Oslo", "LOC")]
    (renamed,) = uner_docs(nlp.vocab, path, label_map={"OTH": "MISC"})  # the target is allowed
    assert [(e.text, e.label_) for e in renamed.ents] == [("Anna", "PER"), ("Star Wars", "MISC"), ("Oslo", "LOC")]
    (merged,) = uner_docs(nlp.vocab, path, label_map={"OTH": "O", "LOC": "GPE"}, labels=["PER", "GPE"])
    assert [(e.text, e.label_) for e in merged.ents] == [("Anna", "PER"), ("Oslo", "GPE")]
    (sentence,) = read_uner(path, label_map={"OTH": "O"})
    assert sentence.tags == ["B-PER", "O", "O", "O", "O", "B-LOC"]


def test_uner_registered_reader_takes_a_label_map(tmp_path, nlp):
    path = write(tmp_path / "en" / "test.iob2", UNER_OTH)
    reader = registry.readers.get("spacy-xlmrxl.UnerReader.v1")
    (example,) = reader(path=str(path), progress=False, label_map={"OTH": "O"})(nlp)
    assert [e.label_ for e in example.reference.ents] == ["PER", "LOC"]


@pytest.mark.parametrize("items, fragment", [(["OTH"], "expects TAG=NEW"), (["=O"], "expects TAG=NEW"),
                                             (["OTH="], "expects TAG=NEW"), (["O=PER"], "O is not an entity type"),
                                             (["A B=O"], "without spaces")])
def test_uner_bad_label_map(items, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_label_map(items)


def test_infer_spaces_from_text_and_fallback():
    assert infer_spaces(["a", "b", "."], "a b.") == [True, False, False]
    assert infer_spaces(["a", "b"], "a  b ") == [True, True]
    # a word that is not in the text (UD multi-word token): single spaces
    assert infer_spaces(["zu", "dem", "Haus"], "zum Haus") == [True, True, False]
    assert infer_spaces(["a", "b"], None) == [True, False]
    assert infer_spaces(["a"], "a b") == [False]  # trailing text not covered: fallback


TAGS = st.lists(st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]), max_size=30)


@given(TAGS)
def test_iob2_spans_cover_exactly_the_tagged_tokens(tags):
    spans = iob2_spans(tags)
    covered = [i for start, end, _ in spans for i in range(start, end)]
    assert covered == [i for i, tag in enumerate(tags) if tag != "O"]  # sorted, no overlap
    for start, end, label in spans:
        assert all(tags[i][2:] == label for i in range(start, end))
        # a span starts at B- or at an I- that does not continue the same type
        assert tags[start].startswith("B-") or start == 0 or tags[start - 1][2:] != label
        # and stops where the next tag does not continue it
        assert end == len(tags) or not (tags[end].startswith("I-") and tags[end][2:] == label)


@given(TAGS)
def test_repair_iob2_is_idempotent_and_valid(tags):
    repaired = repair_iob2(tags)
    assert repair_iob2(repaired) == repaired
    for i, tag in enumerate(repaired):
        if tag.startswith("I-"):
            assert i > 0 and repaired[i - 1][2:] == tag[2:]


# ------------------------------------------------------------------------------------ SIB-200
SIB_TEXT = (
    "index_id\tcategory\ttext\n"
    '7\tsports\t"He said ""yes""."\n'
    "8\ttravel\tPlain text, no quotes.\n"
    '9\thealth\t"A tab\tinside"\n'
)


def test_sib200_csv_quoting_and_one_hot_cats(tmp_path, nlp):
    labels = ["sports", "travel", "health"]
    path = write(tmp_path / "eng_Latn" / "train.tsv", SIB_TEXT)
    docs = list(sib200_docs(nlp, path, labels))
    assert [d.text for d in docs] == ['He said "yes".', "Plain text, no quotes.", "A tab\tinside"]
    assert docs[0].cats == {"sports": 1.0, "travel": 0.0, "health": 0.0}
    assert [max(d.cats, key=d.cats.get) for d in docs] == ["sports", "travel", "health"]
    assert docs[0].user_data == {"index_id": "7", "lang": "eng_Latn"}


def test_sib200_columns_by_header_name(tmp_path):
    path = write(tmp_path / "x.tsv", "text\tindex_id\tcategory\nHello\t1\tsports\n")
    (row,) = read_sib200(path, labels=["sports"])
    assert (row.index_id, row.category, row.text, row.line) == ("1", "sports", "Hello", 2)


@pytest.mark.parametrize(
    "body, line, fragment",
    [
        ("1\tsports\tok\n2\tsports\n", 3, "expected 3 tab-separated fields"),
        ("1\tsports\tok\n2\tweather\tRain.\n", 3, "unknown category 'weather'"),
        ("1\tsports\tok\n2\tsports\t \n", 3, "empty text"),
    ],
)
def test_sib200_bad_rows_name_file_and_line(tmp_path, body, line, fragment):
    path = write(tmp_path / "bad.tsv", "index_id\tcategory\ttext\n" + body)
    with pytest.raises(DataFormatError) as info:
        list(read_sib200(path, labels=["sports"]))
    assert f"{path}:{line}:" in str(info.value) and fragment in str(info.value)


def test_sib200_missing_column(tmp_path):
    path = write(tmp_path / "bad.tsv", "id\tcategory\ttext\n1\tsports\tok\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:1: .*lacks column\(s\) \['index_id'\]"):
        list(read_sib200(path))


def test_read_labels(tmp_path):
    assert read_labels(write(tmp_path / "l.txt", "a\n\nb\n")) == ["a", "b"]
    with pytest.raises(DataFormatError, match="l2.txt:2: duplicate label 'a'"):
        read_labels(write(tmp_path / "l2.txt", "a\na\n"))


# ------------------------------------------------------------------------------------ SQuAD
def squad_json(titles, lang):
    data = []
    for t, title in enumerate(titles):
        context = f"{title} was founded in {1900 + t} by {lang} people."
        answer = str(1900 + t)
        data.append(
            {
                "title": title,
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": f"{title}-q",
                                "question": f"When was {title} founded ({lang})?",
                                "answers": [{"answer_start": context.index(answer), "text": answer}],
                            }
                        ],
                    }
                ],
            }
        )
    return {"version": "1.1", "data": data}


TITLES = [f"Article_{i}" for i in range(10)]


@pytest.fixture
def squad_files(tmp_path):
    paths = []
    for lang in ("en", "de"):
        path = tmp_path / f"xquad.{lang}.json"
        path.write_text(json.dumps(squad_json(TITLES, lang)), encoding="utf8")
        paths.append(path)
    return paths


def test_squad_docs_carry_question_and_answers(squad_files, nlp):
    articles = read_squad(squad_files[1])
    doc = next(squad_docs(nlp, articles[:1], lang="de"))
    assert doc.text == "Article_0 was founded in 1900 by de people."
    assert doc._.question == "When was Article_0 founded (de)?"
    ((answer,),) = doc._.answers
    assert doc.text[answer["start"] : answer["end"]] == answer["text"] == "1900"
    assert doc.user_data["title"] == "Article_0" and doc.user_data["lang"] == "de"
    assert doc.user_data["qa_ids"] == ["Article_0-q"]


def test_split_articles_is_disjoint_deterministic_and_seeded():
    split = split_articles(TITLES, seed=3, n_dev=2, n_test=3)
    parts = [set(split.train), set(split.dev), set(split.test)]
    assert [len(p) for p in parts] == [5, 2, 3]
    assert set().union(*parts) == set(TITLES) and sum(map(len, parts)) == len(TITLES)
    assert split_articles(list(reversed(TITLES)) * 2, seed=3, n_dev=2, n_test=3) == split
    others = {split_articles(TITLES, seed=s, n_dev=2, n_test=3).test for s in range(6)}
    assert len(others) > 1  # the seed matters
    with pytest.raises(ValueError):
        split_articles(TITLES, seed=0, n_dev=5, n_test=5)


def test_squad_split_over_all_languages_leaks_no_article(squad_files, nlp):
    parsed = read_squad_files(squad_files)
    split = split_squad_files(parsed, seed=0, n_dev=2, n_test=3)
    reader = registry.readers.get("spacy-xlmrxl.SquadReader.v1")
    titles = {}
    for part in ("train", "dev", "test"):
        corpus = reader(path=[str(p) for p in squad_files], split=part, n_dev_articles=2, n_test_articles=3, progress=False)
        examples = list(corpus(nlp))
        titles[part] = {eg.reference.user_data["title"] for eg in examples}
        assert titles[part] == set(getattr(split, part))
        assert {eg.reference.user_data["lang"] for eg in examples} == {"en", "de"}
        # the question is a model input: it is on the predicted doc too
        assert all(eg.predicted._.question == eg.reference._.question for eg in examples)
    assert not titles["train"] & titles["test"] and not titles["train"] & titles["dev"]


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].pop("question"), "data[1].paragraphs[0].qas[0]: missing key 'question'"),
        (lambda d: d["data"][0].pop("title"), "data[0]: missing key 'title'"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=0), "is not at answer_start=0"),
        (lambda d: d["data"][0]["paragraphs"][0].update(context=3), "context: expected str, found int"),
    ],
)
def test_squad_malformed_json_names_file_and_location(tmp_path, mutate, fragment):
    data = squad_json(TITLES[:2], "en")
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf8")
    with pytest.raises(DataFormatError) as info:
        read_squad(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_squad_invalid_json_has_line(tmp_path):
    path = write(tmp_path / "bad.json", '{"data": [\n  {"title": }\n]}')
    with pytest.raises(DataFormatError, match=r"bad.json:2: invalid JSON"):
        read_squad(path)


# ------------------------------------------------------------------------------------ raw text
def test_read_text_lines_paragraphs_and_column(tmp_path):
    path = write(tmp_path / "t.txt", "one\ntwo\n\n  \nthree\nfour\n")
    assert list(read_text(path)) == ["one", "two", "three", "four"]
    assert list(read_text(path, paragraphs=True)) == ["one two", "three four"]
    tsv = write(tmp_path / "t.tsv", SIB_TEXT)
    assert list(read_text(tsv, column="text"))[0] == 'He said "yes".'
    with pytest.raises(DataFormatError, match="lacks column"):
        list(read_text(tsv, column="sentence"))


# ------------------------------------------------------------------------------------ DocBin / readers
def test_docbin_round_trip_keeps_gold_and_user_data(tmp_path, nlp, squad_files):
    uner = write(tmp_path / "da" / "dev.iob2", UNER_TEXT)
    docs = list(uner_docs(nlp.vocab, uner)) + list(squad_docs(nlp, read_squad(squad_files[0])[:1]))
    assert write_docbin(docs, tmp_path / "out" / "x.spacy") == len(docs)
    back = list(DocBin().from_disk(tmp_path / "out" / "x.spacy").get_docs(nlp.vocab))
    assert [d.text for d in back] == [d.text for d in docs]
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in back] == [[(e.start, e.end, e.label_) for e in d.ents] for d in docs]
    assert back[-1]._.question == docs[-1]._.question
    assert back[0].user_data["lang"] == "da"
    # same bytes as a plain DocBin with user data
    plain = DocBin(store_user_data=True)
    for doc in docs:
        plain.add(doc)
    assert plain.to_bytes() == (tmp_path / "out" / "x.spacy").read_bytes()


def test_task_corpus_copies_question_to_predicted(tmp_path, nlp, squad_files):
    docs = squad_docs(nlp, read_squad(squad_files[0]))
    write_docbin(docs, tmp_path / "qa.spacy")
    corpus = registry.readers.get("spacy-xlmrxl.Corpus.v1")(path=tmp_path / "qa.spacy", limit=3)
    examples = list(corpus(nlp))
    assert len(examples) == 3
    assert all(eg.predicted._.question and eg.predicted._.question == eg.reference._.question for eg in examples)
    assert all(eg.predicted._.answers is None for eg in examples)  # gold stays on the reference


def test_registered_uner_sib_text_readers(tmp_path, nlp):
    uner = write(tmp_path / "da" / "dev.iob2", UNER_TEXT)
    examples = list(registry.readers.get("spacy-xlmrxl.UnerReader.v1")(path=str(uner), progress=False)(nlp))
    assert [e.text for e in examples[0].reference.ents] == ["Kjeld Christensen", "Aarhus"]
    assert examples[0].predicted.text == examples[0].reference.text and not examples[0].predicted.ents
    labels = write(tmp_path / "labels.txt", "sports\ntravel\nhealth\n")
    sib = write(tmp_path / "eng_Latn" / "dev.tsv", SIB_TEXT)
    reader = registry.readers.get("spacy-xlmrxl.Sib200Reader.v1")(path=[str(sib)], labels_path=str(labels), limit=2, progress=False)
    assert [eg.reference.cats["sports"] for eg in reader(nlp)] == [1.0, 0.0]
    assert len(list(reader(nlp))) == 2  # a reader can be called again (every epoch)
    raw = registry.readers.get("spacy-xlmrxl.RawTextReader.v1")(path=str(sib), column="text", progress=False)
    assert [eg.reference.text for eg in raw(nlp)][1] == "Plain text, no quotes."


def test_infer_lang():
    assert infer_lang("x/da_ddt-ud-train.iob2") == "da"
    assert infer_lang("ner/uner/ru/test.iob2") == "ru"
    assert infer_lang("sib200/zho_Hans/dev.tsv") == "zho_Hans"
    assert infer_lang("xquad.vi.json") == "vi"
    assert infer_lang("corpus/train.txt") is None


# ------------------------------------------------------------------------------------ real data
def test_real_uner_matches_sources_md(shared_data, nlp):
    """Counts documented in ../shared/data/SOURCES.md for da/dev: 564 sentences, 10332 tokens,
    LOC 107, ORG 106, PER 166 (B- tags; no repairs needed in this file)."""
    docs = list(uner_docs(nlp.vocab, shared_data / "ner" / "uner" / "da" / "dev.iob2"))
    assert len(docs) == 564 and sum(len(d) for d in docs) == 10332
    labels = [e.label_ for d in docs for e in d.ents]
    assert {label: labels.count(label) for label in set(labels)} == {"LOC": 107, "ORG": 106, "PER": 166}


def test_real_sib200_and_xquad(shared_data, nlp):
    sib = shared_data / "textcat" / "sib200"
    labels = read_labels(sib / "labels.txt")
    assert len(labels) == 7
    docs = list(sib200_docs(nlp, sib / "eng_Latn" / "dev.tsv", labels))
    assert len(docs) == 99 and all(sum(d.cats.values()) == 1.0 for d in docs)
    assert not any(d.text.startswith('"') and d.text.endswith('"') for d in docs)
    articles = read_squad(shared_data / "qa" / "xquad" / "xquad.de.json")
    assert (len(articles), sum(len(p.questions) for a in articles for p in a.paragraphs)) == (48, 1190)
