"""DocBin ``.spacy`` files: `FastDocBin` (user data without srsly's per-doc entry-point scan) and
`write_docbin`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from spacy.tokens import Doc, DocBin
from spacy.vocab import Vocab

from .files import PathLike


class FastDocBin(DocBin):
    """A ``DocBin`` that (de)serialises each doc's user data with ONE msgpack hook chain.

    ``srsly.msgpack_dumps`` / ``msgpack_loads`` rebuild their encoder / decoder chain for every
    call, re-reading the installed entry points: milliseconds per doc, which dominated loading
    a corpus with user data (QA questions, languages). Same bytes, same docs, same file format
    as ``DocBin(store_user_data=True)``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("store_user_data", True)
        super().__init__(**kwargs)
        self._packer: Any = None
        self._object_hook: Any = None

    def add(self, doc: Doc) -> None:
        store = self.store_user_data
        self.store_user_data = False
        try:
            super().add(doc)
        finally:
            self.store_user_data = store
        if store:
            if self._packer is None:
                from srsly.msgpack import Packer

                self._packer = Packer(use_bin_type=True)
            self.user_data.append(self._packer.pack(doc.user_data))

    def _unpack(self, packed: bytes) -> Any:
        import functools

        from srsly import msgpack

        if self._object_hook is None:
            hook = None
            for decoder in msgpack.msgpack_decoders.get_all().values():
                hook = functools.partial(decoder, chain=hook)
            self._object_hook = hook
        return msgpack.unpackb(packed, raw=False, use_list=False, object_pairs_hook=None, object_hook=self._object_hook)

    def get_docs(self, vocab: Vocab) -> Iterator[Doc]:
        packed, self.user_data = self.user_data, []  # spaCy's loop then skips its own unpacking
        try:
            for i, doc in enumerate(super().get_docs(vocab)):
                if i < len(packed) and packed[i] is not None:
                    doc.user_data.update(self._unpack(packed[i]))
                yield doc
        finally:
            self.user_data = packed


def write_docbin(docs: Iterable[Doc], path: PathLike) -> int:
    """Write Docs (with user data: language, QA gold, ids) to a ``.spacy`` file; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docbin = FastDocBin()
    for doc in docs:
        docbin.add(doc)
    docbin.to_disk(path)
    return len(docbin)
