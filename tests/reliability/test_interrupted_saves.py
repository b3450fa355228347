"""Interrupted saves: a pipeline directory loads as the old pipeline or the new one, or refuses
to load with `MixedSaveError`; never as a silent mix of the two.

Each case forks a child that saves the "new" pipeline over a copy of the "old" one and stops it
at its N-th write step (every file opened for writing, mkdir, rename, remove, rmtree and the
directory exchange, seen through an audit hook; the removals inside an rmtree count as the
rmtree, which only ever deletes a dot-named staging or retired directory), by ``os._exit`` (a
kill: nothing is cleaned up) or by an exception, for N = 1, 2, ... until a save runs through. The parent then loads the
directory and compares its predictions (backbone vectors, NER scores, textcat scores) with those
of the old and the new pipeline; the new one differs from the old in the backbone and in both
heads, so any mix shows. A slowed write killed by SIGKILL halfway through a file covers the
partial files that steps alone do not produce.

Two ways to save: ``nlp.to_disk`` as ``spacy train`` does it (each xlmrxl component is swapped
in atomically; spaCy's own files are written in place), and `save_pipeline_atomically`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy
import pytest
import spacy
import torch
from spacy.util import fix_random_seed

import modeling.checkpoint.safetensors as safetensors_module  # where write_shards finds write_safetensors
import modeling.checkpoint.saving as saving_module
from spacy_xlmrxl.backbone.nodes import backbone_shim
from spacy_xlmrxl.pipeline.ner import XLMRNer
from spacy_xlmrxl.pipeline.saving import SAVE_FILE, MixedSaveError, save_pipeline_atomically

from .conftest import build_shared_pipeline

TEXTS = ["Anna lives in Paris .", "Oslo won the cup . " * 6]
KILLED, RAISED, SAVED, FIRED_BUT_SAVED, FAILED = 77, 78, 0, 79, 1
SPACY_FILES = ("tokenizer", "meta.json", "config.cfg", "vocab")
_WRITE_EVENTS = {"os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.mkdir", "shutil.rmtree",
                 "os.link", "os.symlink", "os.truncate", "exchange"}
_REMOVALS = {"os.remove", "os.unlink", "os.rmdir"}


# --------------------------------------------------------------------------- old and new pipelines
def _predictions(nlp) -> List[numpy.ndarray]:
    docs = list(nlp.pipe(TEXTS))
    ner_scores = nlp.get_pipe("xlmrxl_ner").model.predict(docs)
    return ([d._.xlmrxl.tokvecs["mean"] for d in docs] + [numpy.asarray(s) for s in ner_scores]
            + [numpy.array([d.cats[k] for k in sorted(d.cats)]) for d in docs])


def _same(a: List[numpy.ndarray], b: List[numpy.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and numpy.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def versions(spm_model_path, tmp_path_factory) -> Dict[str, Any]:
    """``nlp`` (in its new state), the old pipeline's directory, old and new predictions."""
    root = tmp_path_factory.mktemp("versions")
    fix_random_seed(3)
    nlp = build_shared_pipeline(spm_model_path)
    nlp.to_disk(root / "old")
    with torch.no_grad():  # the new pipeline: another backbone and other heads
        for param in backbone_shim(nlp.get_pipe("xlmrxl_transformer").model).module.parameters():
            param.add_(0.05 * torch.randn_like(param))
    for name in ("xlmrxl_ner", "xlmrxl_textcat"):
        layer = nlp.get_pipe(name).model.get_ref("output_layer")
        weights = layer.get_param("W")
        layer.set_param("W", weights + numpy.random.default_rng(0).normal(0, 0.5, weights.shape).astype(weights.dtype))
    nlp.to_disk(root / "new")
    old, new = _predictions(spacy.load(root / "old")), _predictions(spacy.load(root / "new"))
    assert not any(numpy.array_equal(x, y) for x, y in zip(old, new))  # every output tells them apart
    return {"nlp": nlp, "old_dir": root / "old", "old": old, "new": new}


# --------------------------------------------------------------------------- save ids
def _save_ids(path: Path) -> Dict[str, str]:
    return {d.name: json.loads((d / SAVE_FILE).read_text())["save_id"] for d in sorted(path.iterdir())
            if (d / SAVE_FILE).is_file()}


def test_one_save_id_per_save_whatever_the_order(versions, tmp_path):
    nlp, path = versions["nlp"], tmp_path / "pipeline"
    nlp.to_disk(path)
    first = _save_ids(path)
    assert sorted(first) == sorted(nlp.pipe_names) and len(set(first.values())) == 1
    nlp.to_disk(path)  # the next save: a new id for every component
    second = _save_ids(path)
    assert len(set(second.values())) == 1 and set(second.values()) != set(first.values())
    for name in reversed(nlp.pipe_names):  # the heads before the transformer: still one save
        nlp.get_pipe(name).to_disk(path / name)
    third = _save_ids(path)
    assert len(set(third.values())) == 1 and set(third.values()) != set(second.values())
    assert _outcome(path, versions) == "new"
    nlp.get_pipe("xlmrxl_textcat").to_disk(path / "xlmrxl_textcat")  # written again on its own: a new save
    with pytest.raises(MixedSaveError, match=f"{path / 'xlmrxl_textcat'}.*{third['xlmrxl_transformer']}"):
        spacy.load(path)


# --------------------------------------------------------------------------- interrupting a save in a child
class _Interrupter:
    """Counts write steps (audit events) and stops the process at step ``stop_at``."""

    def __init__(self, stop_at: int, mode: str, report: int) -> None:
        self.stop_at, self.mode, self.report, self.count, self.fired = stop_at, mode, report, 0, False

    def __call__(self, event: str, args: Tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not writes:
                return
        elif event not in _WRITE_EVENTS or (event in _REMOVALS and not os.path.isabs(args[0])):
            return  # an rmtree's own removals (relative to its directory's descriptor)
        self.count += 1
        if self.count == self.stop_at:
            self.fired = True
            step = f"{event} {args[0] if args else ''}"
            os.write(self.report, step.encode())  # tell the parent where it stopped
            if self.mode == "kill":
                os._exit(KILLED)
            raise OSError(f"injected failure at write step {self.count}: {step}")


def _run_child(save: Callable[[], None], stop_at: int, mode: str, *, exchange: bool = True) -> Tuple[int, str]:
    """Run ``save`` in a forked child stopped at write step ``stop_at``: (exit code, the step)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = FAILED
        try:
            os.close(read_end)
            hook = _Interrupter(stop_at, mode, write_end)
            real_exchange = saving_module._exchange

            def audited_exchange(a: Path, b: Path) -> bool:
                sys.audit("exchange", str(b))
                return exchange and real_exchange(a, b)

            saving_module._exchange = audited_exchange
            sys.addaudithook(hook)
            try:
                save()
                code = FIRED_BUT_SAVED if hook.fired else SAVED
            except BaseException:  # noqa: BLE001 - the injected failure, as the save passed it on
                code = RAISED if hook.fired else FAILED
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        step = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), step


def _outcome(path: Path, versions: Dict[str, Any]) -> str:
    """old / new / mixed (refused with MixedSaveError) / missing / error: ... / SILENT MIX."""
    if not path.exists():
        return "missing"
    try:
        nlp = spacy.load(path)
    except MixedSaveError as err:
        assert str(path / "xlmrxl_transformer") in str(err), str(err)  # names both directories
        return "mixed"
    except Exception as err:  # noqa: BLE001 - classified by the caller
        return f"error: {type(err).__name__}: {err}"
    predictions = _predictions(nlp)
    return "old" if _same(predictions, versions["old"]) else "new" if _same(predictions, versions["new"]) \
        else "SILENT MIX"


def _leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


def _copy_old(old: Path, path: Path) -> None:
    """A copy of the old pipeline; the files of xlmrxl components are hard links (their saves
    never write into an existing directory), spaCy's own files real copies (written in place)."""
    def link_or_copy(source: str, target: str) -> None:
        if Path(source).relative_to(old).parts[0].startswith("xlmrxl_"):
            os.link(source, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(old, path, copy_function=link_or_copy)


Check = Callable[[int, str, str, Path], None]


def _sweep(tmp_path: Path, versions: Dict[str, Any], save: Callable[[Any, Path], None], mode: str, check: Check,
           *, exchange: bool = True) -> List[str]:
    """Interrupt ``save(nlp, path)`` at every write step; ``check(step number, step, outcome,
    path)`` each result (the step's directory is removed afterwards). The outcomes, in order."""
    outcomes = []
    for stop_at in range(1, 500):
        path = tmp_path / f"step-{stop_at}" / "pipeline"
        _copy_old(versions["old_dir"], path)
        code, step = _run_child(lambda: save(versions["nlp"], path), stop_at, mode, exchange=exchange)
        if code == SAVED:  # past the last step
            assert _outcome(path, versions) == "new"
            return outcomes
        assert code in (KILLED, RAISED, FIRED_BUT_SAVED), (stop_at, step, code)
        outcomes.append(_outcome(path, versions))
        check(stop_at, step, outcomes[-1], path)
        shutil.rmtree(path.parent)
    raise AssertionError("the save never ran through")


def _to_disk(nlp, path: Path) -> None:
    nlp.to_disk(path)


# --------------------------------------------------------------------------- nlp.to_disk (spacy train's saves)
@pytest.mark.parametrize("mode", ["kill", pytest.param("raise", marks=pytest.mark.slow)])
def test_interrupted_nlp_to_disk_never_loads_a_silent_mix(mode, versions, tmp_path):
    def check(stop_at: int, step: str, outcome: str, path: Path) -> None:
        assert outcome != "SILENT MIX", (stop_at, step)
        # spaCy writes config.cfg, meta.json, the tokenizer and the vocab in place: a kill there
        # may leave one of them broken, and spaCy's load error says which
        if outcome.startswith("error"):
            assert any(f"{path}/{name}" in step for name in SPACY_FILES), (step, outcome)
        if _leftovers(path):  # the next save removes what the interrupted one left
            versions["nlp"].to_disk(path)
            assert _leftovers(path) == [], (stop_at, step)

    outcomes = _sweep(tmp_path, versions, _to_disk, mode, check)
    assert {"old", "new", "mixed"} <= set(outcomes), outcomes  # it stopped between components too


def _pause(ready: int) -> None:
    os.write(ready, b"1")
    signal.pause()  # killed here


def _slow_head_model(ready: int) -> None:
    def write_half(self, target: Path, nodes) -> None:
        data = self.model.to_bytes()
        with target.open("wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            _pause(ready)

    XLMRNer._write_model = write_half


def _slow_config(ready: int) -> None:
    config_cls = type(spacy.blank("xx").config)

    def write_half(self, path, **kwargs) -> None:
        text = self.to_str()
        with Path(path).open("w", encoding="utf8") as handle:
            handle.write(text[: len(text) // 2])
            handle.flush()
            _pause(ready)

    config_cls.to_disk = write_half


def _slow_weights(ready: int) -> None:
    real = safetensors_module.write_safetensors

    def write_half(path, specs, produce, **kwargs) -> None:
        done = []

        def produce_half(name: str):
            if len(done) == len(specs) // 2:
                _pause(ready)
            done.append(name)
            return produce(name)

        real(path, specs, produce_half, **kwargs)

    safetensors_module.write_safetensors = write_half


# what is slowed down and killed halfway through its file -> what loading the directory gives
HALFWAY = {"ner-model": (_slow_head_model, "mixed"), "config.cfg": (_slow_config, "error"),
           "transformer-weights": (_slow_weights, "old")}


@pytest.mark.parametrize("staged", [False, True], ids=["nlp.to_disk", "staged"])
@pytest.mark.parametrize("part", sorted(HALFWAY))
def test_a_write_killed_halfway_through_a_file(part, staged, versions, tmp_path):
    """The issue's case (``ner-model``): killed while ``nlp.to_disk`` writes a head, the directory
    holds the new transformer and the old heads, and loading refuses it naming both
    directories; a staged save leaves the old pipeline. The next save cleans up."""
    slow_down, expected = HALFWAY[part]
    path = tmp_path / "pipeline"
    _copy_old(versions["old_dir"], path)
    save = save_pipeline_atomically if staged else _to_disk
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            slow_down(ready_write)
            save(versions["nlp"], path)
        finally:
            os._exit(FAILED)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"1"  # it is halfway through the file
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(ready_read)
    outcome = _outcome(path, versions)
    # a half config.cfg (spaCy's own file, written in place): spaCy's load error, e.g. "Can't find
    # component 'xlmrxl_transformer' in [components] block in the config"
    assert outcome.startswith("old" if staged else expected), outcome
    if staged:
        assert (path / "config.cfg").read_bytes() == (versions["old_dir"] / "config.cfg").read_bytes()
    assert _leftovers(path.parent) or (part == "config.cfg" and not staged)  # staged or inside a component
    save(versions["nlp"], path)  # the next save cleans up and completes it
    assert _leftovers(path.parent) == [] and _outcome(path, versions) == "new"


# --------------------------------------------------------------------------- staged saves
@pytest.mark.parametrize("mode, exchange", [
    ("kill", True), pytest.param("raise", True, marks=pytest.mark.slow),
    pytest.param("kill", False, marks=pytest.mark.slow, id="kill-two-renames")])
def test_interrupted_staged_save_is_the_old_or_the_new_pipeline(mode, exchange, versions, tmp_path):
    old_config = (versions["old_dir"] / "config.cfg").read_bytes()
    old_entries = {p.name for p in versions["old_dir"].iterdir()}

    def check(stop_at: int, step: str, outcome: str, path: Path) -> None:
        if outcome == "missing":  # only between the two renames of a swap without RENAME_EXCHANGE
            assert not exchange, (stop_at, step)
            (retired,) = path.parent.glob(".pipeline.old-*")
            assert _outcome(retired, versions) == "old", (stop_at, step)
        else:
            assert outcome in ("old", "new"), (stop_at, step, outcome)
            assert (path / "config.cfg").read_bytes() == old_config  # never truncated
            assert outcome == "new" or {p.name for p in path.iterdir()} == old_entries
        if _leftovers(path.parent):  # the next save removes what the interrupted one left
            save_pipeline_atomically(versions["nlp"], path)
            assert _leftovers(path.parent) == [] and (path / "config.cfg").is_file(), (stop_at, step)

    outcomes = _sweep(tmp_path, versions, save_pipeline_atomically, mode, check, exchange=exchange)
    assert {"old", "new"} <= set(outcomes), outcomes
    assert ("missing" in outcomes) == (not exchange and mode == "kill"), outcomes  # the window was hit


def test_staged_save_replaces_the_directory_exactly(versions, tmp_path):
    """No file of the old pipeline is carried over (a component left out is gone)."""
    path = tmp_path / "pipeline"
    shutil.copytree(versions["old_dir"], path)
    (path / "stray").write_text("from an older save")
    save_pipeline_atomically(versions["nlp"], path, exclude=["xlmrxl_textcat"])
    assert not (path / "stray").exists() and not (path / "xlmrxl_textcat").exists()
    with pytest.raises(Exception, match="xlmrxl_textcat"):
        spacy.load(path)  # config.cfg still lists it: spaCy refuses the incomplete pipeline
    save_pipeline_atomically(versions["nlp"], path)
    assert _outcome(path, versions) == "new"
