"""Read rows from local files (JSONL, JSON, Parquet, CSV, plain text, folders, .gz) or the Hub.

Every row comes with where it came from (file and line, or row index), so that a bad row can be
reported as `file:line` instead of a KeyError deep inside a trainer.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmpipe.errors import UserError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")


@dataclass
class SourceRow:
    """One raw row and its origin."""

    data: dict[str, Any]
    file: str
    line: int


def expand_paths(spec: str) -> list[Path]:
    """A file, a folder (its supported files, recursively, sorted) or a glob -> existing files."""
    path = Path(spec)
    if any(ch in spec for ch in "*?["):
        anchor = Path(spec.split("*")[0].split("?")[0].split("[")[0]).parent
        found = sorted(p for p in anchor.glob(str(Path(spec).relative_to(anchor))) if p.is_file())
    elif path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _supported(p))
    elif path.is_file():
        return [path]
    else:
        raise UserError("data file not found", file=spec, hint="check the path (relative paths start at the current folder)")
    if not found:
        raise UserError(f"no data files ({', '.join(SUFFIXES)}, optionally .gz) found here", file=spec)
    return found


def _supported(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(SUFFIXES)


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def read_rows(spec: str) -> Iterator[SourceRow]:
    """Yield every row of a file/folder/glob, or of a Hub dataset `hf:NAME[:CONFIG][@SPLIT][#REVISION]`."""
    if spec.startswith("hf:"):
        yield from _read_hub(spec)
        return
    for path in expand_paths(spec):
        yield from _read_file(path)


def _read_file(path: Path) -> Iterator[SourceRow]:
    name = path.name.lower().removesuffix(".gz")
    where = str(path)
    try:
        if name.endswith(".jsonl"):
            with _open_text(path) as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        data = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"invalid JSON: {e.msg} (column {e.colno})", file=where, line=number) from None
                    if not isinstance(data, dict):
                        raise UserError(f"expected a JSON object per line, got {type(data).__name__}", file=where, line=number)
                    yield SourceRow(data, where, number)
        elif name.endswith(".json"):
            with _open_text(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise UserError(f"invalid JSON: {e.msg}", file=where, line=e.lineno) from None
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))  # {"data": [...]} style wrappers
            if not isinstance(data, list):
                raise UserError("a .json data file must hold a list of objects", file=where)
            for index, row in enumerate(data):
                if not isinstance(row, dict):
                    raise UserError(f"row {index} is {type(row).__name__}, expected an object", file=where)
                # For a JSON array the "line" is the row index, 1-based.
                yield SourceRow(row, where, index + 1)
        elif name.endswith(".csv"):
            with _open_text(path) as f:
                for number, row in enumerate(csv.DictReader(f), start=2):
                    yield SourceRow(dict(row), where, number)
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            for index, row in enumerate(table.to_pylist()):
                yield SourceRow(row, where, index + 1)
        elif name.endswith(".txt"):
            # A plain-text file is one document; packing splits it into blocks later.
            with _open_text(path) as f:
                yield SourceRow({"text": f.read()}, where, 1)
        else:
            raise UserError(f"unsupported file type; use one of {', '.join(SUFFIXES)}", file=where)
    except UnicodeDecodeError:
        raise UserError("file is not UTF-8 text", file=where, hint="re-encode it as UTF-8") from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read file: {e}", file=where) from None


def _read_hub(spec: str) -> Iterator[SourceRow]:
    """`hf:NAME[:CONFIG][@SPLIT][#REVISION]` through datasets.load_dataset.

    NAME is a Hub id or a local folder of data files (how it is tested offline); the split defaults
    to train, the revision to the default branch."""
    body, _, revision = spec[3:].partition("#")
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    import datasets

    try:
        dataset = datasets.load_dataset(name, config or None, split=split or "train", revision=revision or None)
    except Exception as e:  # the hub and loaders raise many types; all mean "cannot load this"
        raise UserError(f"cannot load dataset: {type(e).__name__}: {str(e).splitlines()[0]}", file=spec) from None
    for index, row in enumerate(dataset):
        yield SourceRow(dict(row), spec, index + 1)


def file_record(spec: str) -> dict[str, Any]:
    """What a manifest records of one data source: path and sha256 of each file."""
    from llmpipe.runs import sha256_file

    if spec.startswith("hf:"):
        return {"source": spec}
    return {"source": spec, "files": [{"path": str(p), "sha256": sha256_file(p)} for p in expand_paths(spec)]}
