"""Pipelines on disk: save ids that tie the xlmrxl components of one save together, the check
that refuses a directory mixing two saves, and `save_pipeline_atomically`.

spaCy's ``nlp.to_disk`` (and so ``spacy train``'s ``model-last``) writes ``config.cfg``,
``meta.json`` and the tokenizer in place, then each component in turn; only each xlmrxl
component directory is swapped in atomically. Interrupted between two components, the
directory holds new and old ones. So every xlmrxl component writes `SAVE_FILE` into its
directory: the id of the save it belongs to. The components one ``nlp`` (one vocab) writes into
one directory share an id until one of them is written there again, which starts a new save;
this needs no change to ``nlp.to_disk`` and holds whatever the pipeline order. Loading a
component from a pipeline directory (one with ``config.cfg``) compares its id with that of every
``xlmrxl_transformer`` directory beside it: another id, or none on one side only, raises
`MixedSaveError` naming both directories and ids. Directories saved before save ids existed
(no id on either side) are not checked.

`save_pipeline_atomically` writes the whole pipeline into a staging directory beside the target
and swaps it in (`modeling.checkpoint.atomic_directory` without carrying old files over), so
the target is the old or the new complete pipeline at every instant; leftovers of an
interrupted save are removed by the next save of that target.
"""

from __future__ import annotations

import collections
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Set, Tuple

import srsly

from modeling.checkpoint import atomic_directory

SAVE_FILE = "save.json"
PIPELINE_CONFIG = "config.cfg"
_MAX_OPEN_SAVES = 64


class PipelineFileError(ValueError):
    """A file of a saved component cannot be used; the message names it."""


class MixedSaveError(PipelineFileError):
    """Components of one pipeline directory were written by different saves."""


# --------------------------------------------------------------------------- save ids
class _OpenSaves:
    """(vocab, pipeline directory) -> (save id, names of the components written with it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._saves: "collections.OrderedDict[Tuple[int, str], Tuple[str, Set[str]]]" = collections.OrderedDict()

    def save_id(self, vocab: Any, path: Path) -> str:
        key = (id(vocab), os.path.abspath(path.parent))
        with self._lock:
            save = self._saves.pop(key, None)
            if save is None or path.name in save[1]:  # written again: a new save of the pipeline
                save = (uuid.uuid4().hex, set())
            save[1].add(path.name)
            self._saves[key] = save
            while len(self._saves) > _MAX_OPEN_SAVES:
                self._saves.popitem(last=False)
            return save[0]


_OPEN_SAVES = _OpenSaves()


def save_stamp(vocab: Any, path: Path, *, shared_backbone: bool) -> Dict[str, Any]:
    """What a component saved to ``path`` writes into `SAVE_FILE` (its save's id)."""
    return {"save_id": _OPEN_SAVES.save_id(vocab, path), "component": path.name,
            "shared_backbone": bool(shared_backbone)}


def read_stamp(directory: Path) -> Optional[Dict[str, Any]]:
    """The `SAVE_FILE` of a component directory, or None when it has none."""
    path = directory / SAVE_FILE
    if not path.is_file():
        return None
    try:
        stamp = srsly.read_json(path)
    except (OSError, ValueError) as err:
        raise PipelineFileError(f"{path}: cannot read the save id ({err})") from err
    if not isinstance(stamp, dict) or not isinstance(stamp.get("save_id"), str):
        raise PipelineFileError(f"{path}: not a save id file (expected a JSON object with a 'save_id' string)")
    return stamp


def check_saved_together(path: Path) -> None:
    """Refuse a component directory beside an ``xlmrxl_transformer`` of another save (see the
    module docstring); nothing is checked outside a pipeline directory."""
    pipeline = path.parent
    if not (pipeline / PIPELINE_CONFIG).is_file():
        return
    own = read_stamp(path)
    for sibling in sorted(pipeline.iterdir()):
        if sibling.name == path.name or sibling.name.startswith(".") or not sibling.is_dir():
            continue
        other = read_stamp(sibling)
        if other is None or not other.get("shared_backbone"):
            continue
        if own is None or own["save_id"] != other["save_id"]:
            own_id = own["save_id"] if own else "none: written before save ids or by another version"
            raise MixedSaveError(
                f"{path} (save id {own_id}) and the transformer {sibling} (save id {other['save_id']}) "
                f"were written by different saves: {pipeline} mixes two saves (e.g. an nlp.to_disk or "
                "spacy train killed while saving), so it would predict neither the old nor the new "
                "pipeline. Save the pipeline again or use a complete copy "
                "(spacy_xlmrxl.pipeline.saving.save_pipeline_atomically never leaves a mix)"
            )


# --------------------------------------------------------------------------- staged saves
def save_pipeline_atomically(nlp: Any, path: os.PathLike | str, *, exclude: Iterable[str] = ()) -> Path:
    """``nlp.to_disk`` into a staging directory beside ``path``, then swapped in: ``path`` holds
    the old or the new complete pipeline whenever the process stops (see the module docstring)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PipelineFileError(f"{path}: exists and is not a directory; cannot save a pipeline there")
    with atomic_directory(path, keep_other_files=False) as staging:
        nlp.to_disk(staging, exclude=list(exclude))
    return path
