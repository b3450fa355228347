"""Where Ray inference writes: the JSONL and Parquet result sinks (with resume: ids already
written are skipped) and `read_results`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]
OUTPUT_FORMATS = ("jsonl", "parquet")


# --------------------------------------------------------------------------- sinks
class _JsonlSink:
    """One JSON record per line; resume reads the ids back and drops a torn last line."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and path.exists():
            path.unlink()
        self.handle = None

    def existing_ids(self) -> List[str]:
        if not self.path.exists():
            return []
        ids: List[str] = []
        good_end = 0
        with self.path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                try:
                    ids.append(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    break
                good_end += len(line)
        if good_end != self.path.stat().st_size:  # a run died while writing: drop the torn tail
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
        return ids

    def write(self, results: Sequence[str]) -> None:
        if self.handle is None:
            self.handle = self.path.open("a", encoding="utf8")
        self.handle.write("".join(r + "\n" for r in results))
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _parquet_schema() -> Any:
    import pyarrow as pa

    ent = pa.struct([("label", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string())])
    return pa.schema([("id", pa.string()), ("ents", pa.list_(ent)),
                      ("cats", pa.map_(pa.string(), pa.float64())), ("extras", pa.string())])


class _ParquetSink:
    """A directory of ``part-NNNNNN.parquet`` files written atomically, ``rows_per_part`` each.

    Columns: ``id``, ``ents`` (list of structs), ``cats`` (map) and ``extras`` (JSON of the
    extension fields). Resume reads the ``id`` column of the existing parts.
    """

    def __init__(self, path: Path, *, resume: bool, rows_per_part: int = 10_000) -> None:
        self.path = path
        self.rows_per_part = rows_per_part
        if not resume and path.exists():
            for part in path.glob("part-*.parquet"):
                part.unlink()
        path.mkdir(parents=True, exist_ok=True)
        self.buffer: List[Dict[str, Any]] = []

    def _parts(self) -> List[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def existing_ids(self) -> List[str]:
        import pyarrow.parquet as pq

        for tmp in self.path.glob("*.tmp"):
            tmp.unlink()
        return [str(i) for part in self._parts() for i in pq.read_table(part, columns=["id"])["id"].to_pylist()]

    def write(self, results: Sequence[str]) -> None:
        self.buffer.extend(json.loads(r) for r in results)
        while len(self.buffer) >= self.rows_per_part:
            self._write_part(self.buffer[: self.rows_per_part])
            self.buffer = self.buffer[self.rows_per_part:]

    def _write_part(self, records: List[Dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {
            "id": [r["id"] for r in records],
            "ents": [r["ents"] for r in records],
            "cats": [list(r["cats"].items()) for r in records],
            "extras": [json.dumps({k: v for k, v in r.items() if k not in ("id", "ents", "cats")},
                                  ensure_ascii=False) for r in records],
        }
        parts = self._parts()
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        target = self.path / f"part-{index:06d}.parquet"
        tmp = target.with_suffix(".tmp")
        pq.write_table(pa.table(columns, schema=_parquet_schema()), tmp)
        os.replace(tmp, target)

    def close(self) -> None:
        if self.buffer:
            self._write_part(self.buffer)
            self.buffer = []


def make_sink(output: Path, output_format: str, *, resume: bool) -> Union[_JsonlSink, _ParquetSink]:
    if output_format == "jsonl":
        return _JsonlSink(output, resume=resume)
    if output_format == "parquet":
        return _ParquetSink(output, resume=resume)
    raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")


def read_results(output: PathLike, output_format: Optional[str] = None) -> List[Dict[str, Any]]:
    """The records of a run's output, in order, in the JSONL record form for both formats."""
    path = Path(output)
    fmt = output_format or ("parquet" if path.is_dir() else "jsonl")
    if fmt == "jsonl":
        with path.open(encoding="utf8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    import pyarrow.parquet as pq

    records = []
    for part in sorted(path.glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            record = {"id": row["id"], "ents": row["ents"], "cats": dict(row["cats"])}
            record.update(json.loads(row["extras"]))
            records.append(record)
    return records
