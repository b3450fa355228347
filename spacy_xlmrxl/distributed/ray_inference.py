"""Distributed inference with Ray Data: any saved spaCy pipeline over a large corpus.

Owns `run_pipeline_on_ray` and its CLI (``python -m spacy_xlmrxl.distributed.ray_inference``),
the record written per document (`doc_to_record`), the JSONL/Parquet result sinks with resume,
and `read_results`. The engine is Ray Data: input files are read by Ray read tasks (one per file),
documents are processed by an actor pool (``map_batches(..., concurrency=num_actors)``, one
``spacy.load`` per actor, GPUs per actor configurable), and the driver streams the results, in
input order (``preserve_order``), into the output. Actors that die are restarted by Ray and their
batches retried (``max_restarts`` / ``max_task_retries``), so nothing is lost or duplicated.

Record per document (JSON object, one per line in JSONL)::

    {"id": "doc-1", "ents": [{"label": "ORG", "start": 0, "end": 6, "text": "Google"}],
     "cats": {"POS": 0.9}, "answers": [...], "fill_mask": [...]}

``start``/``end`` are character offsets into the text; ``answers``/``fill_mask`` (or any other
``Doc._`` extension named in ``extensions``) are present only when the extension is registered.
Ids are always strings (a JSONL id ``7`` is written as ``"7"``); text files get ids
``"<file name>:<line number>"`` (1-based; blank lines are skipped but counted). Ids must be unique.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy

from .ray_sinks import OUTPUT_FORMATS, PathLike, make_sink

INPUT_SUFFIXES = (".jsonl", ".json", ".txt")
DEFAULT_EXTENSIONS = ("answers", "fill_mask")


# --------------------------------------------------------------------------- records
def _jsonable(value: Any) -> Any:
    """A JSON-serialisable copy of an extension value (dataclasses, spans, numpy, containers)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, numpy.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "start_char") and hasattr(value, "end_char") and hasattr(value, "text"):
        return {"text": value.text, "start": int(value.start_char), "end": int(value.end_char)}
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    return str(value)


def doc_to_record(doc_id: str, doc: Any, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> Dict[str, Any]:
    """The result of one document: id, entities (char offsets), cats and registered extensions."""
    from spacy.tokens import Doc

    record: Dict[str, Any] = {
        "id": str(doc_id),
        "ents": [
            {"label": ent.label_, "start": ent.start_char, "end": ent.end_char, "text": ent.text}
            for ent in doc.ents
        ],
        "cats": {str(k): float(v) for k, v in doc.cats.items()},
    }
    for name in extensions:
        if Doc.has_extension(name):
            record[name] = _jsonable(getattr(doc._, name))
    return record


# --------------------------------------------------------------------------- inputs
def _input_files(inputs: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: List[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in INPUT_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    if not files:
        raise ValueError(f"no input files ({', '.join(INPUT_SUFFIXES)}) found in {inputs!r}")
    return files


def iter_corpus_file(path: Path, *, text_field: str, id_field: str) -> Iterator[Tuple[str, str]]:
    """``(id, text)`` of each document of a JSONL or text file, in file order."""
    is_json = path.suffix in (".jsonl", ".json")
    with path.open(encoding="utf8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            default_id = f"{path.name}:{lineno}"
            if not is_json:
                yield default_id, line.rstrip("\n")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err})") from err
            if not isinstance(row, dict) or text_field not in row:
                raise ValueError(f"{path}:{lineno}: no field {text_field!r}")
            yield str(row.get(id_field, default_id)), str(row[text_field])


def _file_read_fn(path: Path, text_field: str, id_field: str, done: FrozenSet[str], chunk_rows: int):
    """The body of one Ray read task: the not-yet-done documents of one file, in chunks."""

    def read() -> Iterator[Any]:
        import pyarrow

        ids: List[str] = []
        texts: List[str] = []
        for doc_id, text in iter_corpus_file(path, text_field=text_field, id_field=id_field):
            if doc_id in done:
                continue
            ids.append(doc_id)
            texts.append(text)
            if len(ids) >= chunk_rows:
                yield pyarrow.table({"id": ids, "text": texts})
                ids, texts = [], []
        if ids:
            yield pyarrow.table({"id": ids, "text": texts})

    return read


def _files_dataset(files: List[Path], text_field: str, id_field: str, done: FrozenSet[str], chunk_rows: int):
    """A Ray Dataset of ``id``/``text`` rows read by one Ray read task per file."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class CorpusFiles(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return sum(path.stat().st_size for path in files)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                           data_context: Any = None) -> List[ReadTask]:
            return [
                ReadTask(
                    _file_read_fn(path, text_field, id_field, done, chunk_rows),
                    BlockMetadata(num_rows=None, size_bytes=path.stat().st_size, exec_stats=None,
                                  input_files=[str(path)]),
                    per_task_row_limit=per_task_row_limit,
                )
                for path in files
            ]

    return ray.data.read_datasource(CorpusFiles())


def _select_columns(batch: Any, *, text_field: str, id_field: str, done: FrozenSet[str]) -> Dict[str, Any]:
    """Map a user Dataset batch to string ``id``/``text`` columns without the done ids."""
    ids = [str(i) for i in batch[id_field]]
    keep = [k for k, doc_id in enumerate(ids) if doc_id not in done]
    texts = batch[text_field]
    return {
        "id": numpy.array([ids[k] for k in keep], dtype=object),
        "text": numpy.array([str(texts[k]) for k in keep], dtype=object),
    }


# --------------------------------------------------------------------------- actor
class PipelineActor:
    """A Ray Data actor UDF: loads the pipeline once, then maps ``id``/``text`` batches to records.

    The result columns are ``id`` and ``result`` (the record as a JSON string), so that blocks
    have one schema whatever the pipeline's labels or extensions are.
    """

    def __init__(self, *, model_path: str, code_paths: Sequence[str] = (),
                 extensions: Sequence[str] = DEFAULT_EXTENSIONS, pipe_batch_size: int = 64,
                 use_gpu: bool = False) -> None:
        import spacy
        from spacy.util import import_file

        for code in code_paths:
            import_file(Path(code).stem, code)
        if use_gpu:
            spacy.require_gpu()
        self.nlp = spacy.load(model_path)
        self.extensions = tuple(extensions)
        self.pipe_batch_size = pipe_batch_size

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        ids = [str(i) for i in batch["id"]]
        docs = self.nlp.pipe([str(t) for t in batch["text"]], batch_size=self.pipe_batch_size)
        results = [
            json.dumps(doc_to_record(doc_id, doc, self.extensions), ensure_ascii=False)
            for doc_id, doc in zip(ids, docs)
        ]
        return {"id": numpy.array(ids, dtype=object), "result": numpy.array(results, dtype=object)}


# --------------------------------------------------------------------------- driver
@dataclasses.dataclass
class RunSummary:
    """What a run did: documents written now, skipped as already done, and the wall time."""

    output: Path
    written: int
    skipped: int
    seconds: float


class _Progress:
    def __init__(self, *, enabled: bool, skipped: int, every_s: float = 10.0) -> None:
        self.enabled, self.skipped, self.every_s = enabled, skipped, every_s
        self.start = self.last = time.monotonic()
        self.written = 0

    def update(self, n: int, *, final: bool = False) -> None:
        self.written += n
        now = time.monotonic()
        if self.enabled and (final or now - self.last >= self.every_s):
            rate = self.written / max(now - self.start, 1e-9)
            print(f"[ray_inference] {self.written} docs written, {self.skipped} skipped as done, "
                  f"{rate:.1f} docs/s{' (done)' if final else ''}", file=sys.stderr, flush=True)
            self.last = now


@contextlib.contextmanager
def _order_preserved() -> Iterator[None]:
    """Ray Data keeps input order for the Datasets created inside (a Dataset copies the current
    context when it is created)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    previous_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        yield
    finally:
        context.execution_options.preserve_order = previous_order


def run_pipeline_on_ray(
    model_path: PathLike,
    inputs: Any,
    output: PathLike,
    *,
    text_field: str = "text",
    id_field: str = "id",
    batch_size: int = 64,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float = 1,
    output_format: str = "jsonl",
    resume: bool = True,
    code_paths: Sequence[PathLike] = (),
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    max_restarts: Optional[int] = None,
    max_task_retries: Optional[int] = None,
    chunk_rows: int = 1024,
    address: Optional[str] = None,
    progress: bool = True,
) -> RunSummary:
    """Run the spaCy pipeline saved at ``model_path`` over ``inputs`` with a Ray actor pool.

    ``inputs``: JSONL/JSON-lines/text files, directories of them, or a ``ray.data.Dataset``
    with ``text_field`` and ``id_field`` columns. ``output``: a ``.jsonl`` file or a Parquet
    directory. With ``resume`` the ids already in ``output`` are skipped and the new records
    appended after them; as the driver writes in input order, the output stays in input order.
    ``batch_size`` documents go to an actor at a time; ``code_paths`` are Python files imported
    in each actor before ``spacy.load`` (custom components, like ``spacy --code``). Reading needs
    one CPU besides the actors' ``num_actors * num_cpus_per_actor``: with fewer, Ray Data waits.
    ``max_restarts``/``max_task_retries`` (None: Ray Data's default, unlimited) govern how often
    a dead actor is restarted and its batch retried.
    Ray is initialised (``ray.init(address=address)``) unless it already is.
    """
    import ray
    import ray.data

    if batch_size < 1 or num_actors < 1:
        raise ValueError("batch_size and num_actors must be >= 1")
    started = time.monotonic()
    sink = make_sink(Path(output), output_format, resume=resume)
    written_ids = sink.existing_ids() if resume else []
    done = set(written_ids)
    if len(done) != len(written_ids):
        raise ValueError(f"{output} already holds duplicate ids; refusing to resume into it")
    if not ray.is_initialized():
        ray.init(address=address)
    with _order_preserved():  # the output's order is the input's
        ds = _build_dataset(inputs, model_path, text_field=text_field, id_field=id_field, done=frozenset(done),
                            batch_size=batch_size, num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor,
                            num_cpus_per_actor=num_cpus_per_actor, code_paths=code_paths, extensions=extensions,
                            max_restarts=max_restarts, max_task_retries=max_task_retries, chunk_rows=chunk_rows)
    ds.context.execution_options.preserve_order = True  # also for a Dataset given as input
    report = _Progress(enabled=progress, skipped=len(done))
    _write_results(ds, sink, done, report)
    return RunSummary(output=Path(output), written=report.written, skipped=len(written_ids),
                      seconds=time.monotonic() - started)


def _write_results(ds: Any, sink: Any, done: Set[str], report: "_Progress") -> None:
    """Stream ``ds``'s records into ``sink`` in input order; an id seen twice (in the output
    already or in the input) is an error."""
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ids = [str(i) for i in batch["id"]]
            for doc_id in ids:
                if doc_id in done:
                    raise ValueError(f"document id {doc_id!r} occurs twice in the input")
                done.add(doc_id)
            sink.write([str(r) for r in batch["result"]])
            report.update(len(ids))
    finally:
        sink.close()
    report.update(0, final=True)


def _build_dataset(inputs: Any, model_path: PathLike, *, text_field: str, id_field: str, done: FrozenSet[str],
                   batch_size: int, num_actors: int, num_gpus_per_actor: float, num_cpus_per_actor: float,
                   code_paths: Sequence[PathLike], extensions: Sequence[str], max_restarts: Optional[int],
                   max_task_retries: Optional[int], chunk_rows: int) -> Any:
    """The lazy Ray Dataset of ``id``/``result`` rows: read (or select) -> actor pool."""
    import ray.data

    if isinstance(inputs, ray.data.Dataset):
        ds = inputs.map_batches(_select_columns, batch_format="numpy",
                                fn_kwargs={"text_field": text_field, "id_field": id_field, "done": done})
    else:
        ds = _files_dataset(_input_files(inputs), text_field, id_field, done, chunk_rows)
    # Ray Data's own default for actor pools is to restart actors and retry their tasks forever
    retries = {k: v for k, v in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries))
               if v is not None}
    ds = ds.map_batches(
        PipelineActor,
        fn_constructor_kwargs={
            "model_path": str(model_path),
            "code_paths": [str(Path(c).resolve()) for c in code_paths],
            "extensions": tuple(extensions),
            "pipe_batch_size": batch_size,
            "use_gpu": num_gpus_per_actor > 0,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=num_gpus_per_actor,
        num_cpus=num_cpus_per_actor,
        **retries,
    )

    return ds


# --------------------------------------------------------------------------- CLI
def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spacy_xlmrxl.distributed.ray_inference",
        description="Run a saved spaCy pipeline over JSONL/text files with Ray Data actor pools.",
    )
    parser.add_argument("model_path", help="directory of a pipeline saved with nlp.to_disk")
    parser.add_argument("inputs", nargs="+", help="JSONL / text files or directories of them")
    parser.add_argument("--output", "-o", required=True, help="output .jsonl file or Parquet directory")
    parser.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, default=None,
                        help="default: parquet if --output does not end in .jsonl")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--id-field", default="id")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--num-gpus-per-actor", type=float, default=0)
    parser.add_argument("--num-cpus-per-actor", type=float, default=1)
    parser.add_argument("--no-resume", action="store_true", help="overwrite the output")
    parser.add_argument("--code", action="append", default=[], help="Python file with custom components")
    parser.add_argument("--extension", action="append", default=None,
                        help=f"Doc._ extension to write (repeatable; default: {', '.join(DEFAULT_EXTENSIONS)})")
    parser.add_argument("--max-restarts", type=int, default=None, help="default: unlimited (Ray Data)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local or RAY_ADDRESS)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    fmt = args.output_format or ("jsonl" if str(args.output).endswith(".jsonl") else "parquet")
    summary = run_pipeline_on_ray(
        args.model_path, args.inputs, args.output, text_field=args.text_field, id_field=args.id_field,
        batch_size=args.batch_size, num_actors=args.num_actors,
        num_gpus_per_actor=args.num_gpus_per_actor, num_cpus_per_actor=args.num_cpus_per_actor,
        output_format=fmt, resume=not args.no_resume, code_paths=args.code,
        extensions=tuple(args.extension or DEFAULT_EXTENSIONS), max_restarts=args.max_restarts,
        max_task_retries=args.max_restarts, address=args.address,
    )
    print(json.dumps({"output": str(summary.output), "written": summary.written,
                      "skipped": summary.skipped, "seconds": round(summary.seconds, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
