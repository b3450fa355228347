"""The corpus readers registered in ``spacy.registry.readers``.

``spacy-xlmrxl.Corpus.v1`` (``spacy.Corpus.v1`` over ``.spacy`` files whose examples carry the
QA question on the predicted doc too; the training configs use it) and the raw-format readers
``spacy-xlmrxl.UnerReader.v1``, ``spacy-xlmrxl.Sib200Reader.v1``,
``spacy-xlmrxl.SquadReader.v1`` and ``spacy-xlmrxl.RawTextReader.v1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Corpus, Example
from spacy.util import registry
from spacy.vocab import Vocab

from ..pipeline.qa.annotation import register_qa_extensions
from .docbin import FastDocBin
from .files import PathLike, infer_lang
from .sib200 import read_labels, sib200_docs
from .squad import read_squad_files, split_squad_files, squad_docs
from .text import text_docs
from .uner import uner_docs

# Doc extensions that are model INPUTS (not annotation): copied from the gold doc onto the
# predicted one, since ``nlp.make_doc(text)`` cannot know them (the QA question).
INPUT_EXTENSIONS: Tuple[str, ...] = ("question",)

register_qa_extensions()  # ``doc._.question`` / ``doc._.answers`` readable in any process


def make_example(predicted: Doc, reference: Doc) -> Example:
    """``Example(predicted, reference)`` with the `INPUT_EXTENSIONS` of the reference also set
    on the predicted doc (so that `xlmrxl_qa` sees the question, at evaluation too)."""
    for name in INPUT_EXTENSIONS:
        if reference._.get(name) is not None:
            predicted._.set(name, reference._.get(name))
    return Example(predicted, reference)


class TaskCorpus(Corpus):
    """``spacy.Corpus`` over ``.spacy`` files that reads them with `FastDocBin` and whose
    Examples carry the task inputs (`INPUT_EXTENSIONS`) on the predicted doc as well."""

    def read_docbin(self, vocab: Vocab, locs: Iterable[PathLike]) -> Iterator[Doc]:
        count = 0
        for loc in locs:
            if not str(loc).endswith(".spacy"):
                continue
            for doc in FastDocBin().from_disk(loc).get_docs(vocab):
                if len(doc):
                    yield doc
                    count += 1
                    if self.limit >= 1 and count >= self.limit:
                        return

    def _make_example(self, nlp: Language, reference: Doc, gold_preproc: bool) -> Example:
        example = super()._make_example(nlp, reference, gold_preproc)
        return make_example(example.predicted, reference)


class DocsCorpus:
    """A corpus reader over gold Docs built once (on first use) and kept as a DocBin.

    Calling it with an ``nlp`` yields `Example`s like ``spacy.Corpus.v1`` does (predicted =
    ``nlp.make_doc`` of the gold text, plus the task inputs, see `make_example`); `limit` keeps
    the first Docs only.
    """

    def __init__(self, build: Callable[[Language], Iterable[Doc]], *, limit: int = 0) -> None:
        self.build = build
        self.limit = limit
        self._docbin: Optional[DocBin] = None

    def reference_docs(self, nlp: Language) -> Iterator[Doc]:
        if self._docbin is None:
            docbin = FastDocBin()
            for i, doc in enumerate(self.build(nlp)):
                if self.limit and i >= self.limit:
                    break
                docbin.add(doc)
            self._docbin = docbin
        return self._docbin.get_docs(nlp.vocab)

    def __call__(self, nlp: Language) -> Iterator[Example]:
        for reference in self.reference_docs(nlp):
            yield make_example(nlp.make_doc(reference.text), reference)


@registry.readers("spacy-xlmrxl.Corpus.v1")
def create_task_corpus(
    path: Optional[Path], limit: int = 0, max_length: int = 0, gold_preproc: bool = False, shuffle: bool = False
) -> TaskCorpus:
    """``spacy.Corpus.v1`` with the task inputs (the QA question) on the predicted docs."""
    if path is None:
        raise ValueError("spacy-xlmrxl.Corpus.v1 needs a path to a .spacy file or a folder of them")
    return TaskCorpus(path, limit=limit, max_length=max_length, gold_preproc=gold_preproc, shuffle=shuffle)


@registry.readers("spacy-xlmrxl.UnerReader.v1")
def create_uner_reader(
    path: Union[str, List[str]], limit: int = 0, lang: Optional[str] = None, progress: bool = True,
    label_map: Optional[Dict[str, str]] = None,
) -> DocsCorpus:
    """UNER ``.iob2`` file(s) (a path or a list of paths, languages may differ) as a corpus;
    ``label_map`` renames entity types or drops them (``{"OTH": "O"}``), see `read_uner`."""
    return DocsCorpus(lambda nlp: uner_docs(nlp.vocab, path, lang=lang, label_map=label_map, progress=progress),
                      limit=limit)


@registry.readers("spacy-xlmrxl.Sib200Reader.v1")
def create_sib200_reader(
    path: Union[str, List[str]], labels_path: str, limit: int = 0, progress: bool = True
) -> DocsCorpus:
    """SIB-200 TSV file(s) as a textcat corpus (one-hot ``doc.cats`` over `labels_path`)."""
    return DocsCorpus(
        lambda nlp: sib200_docs(nlp, path, read_labels(labels_path), progress=progress), limit=limit
    )


@registry.readers("spacy-xlmrxl.SquadReader.v1")
def create_squad_reader(
    path: Union[str, List[str]],
    split: str = "all",
    seed: int = 0,
    n_dev_articles: int = 4,
    n_test_articles: int = 12,
    limit: int = 0,
    progress: bool = True,
) -> DocsCorpus:
    """SQuAD/XQuAD file(s) as a QA corpus; `split` (``train``, ``dev``, ``test`` or ``all``)
    keeps the articles `split_squad_files` assigns to it, over the union of the files' titles."""
    if split not in ("train", "dev", "test", "all"):
        raise ValueError(f"split must be train, dev, test or all, not {split!r}")

    def build(nlp: Language) -> Iterator[Doc]:
        parsed = read_squad_files(path)
        if split == "all":
            keep = None
        else:
            chosen = split_squad_files(parsed, seed=seed, n_dev=n_dev_articles, n_test=n_test_articles)
            keep = set(getattr(chosen, split))
        for file_path, articles in parsed.items():
            selected = [a for a in articles if keep is None or a.title in keep]
            yield from squad_docs(nlp, selected, lang=infer_lang(file_path), progress=progress, desc=file_path.name)

    return DocsCorpus(build, limit=limit)


@registry.readers("spacy-xlmrxl.RawTextReader.v1")
def create_raw_text_reader(
    path: Union[str, List[str]],
    paragraphs: bool = False,
    column: Optional[str] = None,
    limit: int = 0,
    progress: bool = True,
) -> DocsCorpus:
    """Raw text file(s) (one doc per line or paragraph, or a TSV column) for fill-mask."""
    return DocsCorpus(
        lambda nlp: text_docs(nlp, path, paragraphs=paragraphs, column=column, progress=progress), limit=limit
    )
