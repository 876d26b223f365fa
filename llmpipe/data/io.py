"""Read rows from local files (JSONL, JSON, Parquet, CSV, plain text, folders, .gz) or the Hub.

Every row comes with where it came from (file and line, or row index), so that a bad row can be
reported as `file:line` instead of a KeyError deep inside a trainer.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_file

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
        raise UserError("data file not found", file=spec,
                        hint="check the path (a recipe file's relative paths start at its folder, an override's at the current folder)")
    if not found:
        raise UserError(f"no data files ({', '.join(SUFFIXES)}, optionally .gz) found here", file=spec,
                        hint="check the pattern or folder, or name the files")
    return found


def _supported(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(SUFFIXES)


def _open_text(path: Path) -> io.TextIOBase:
    # utf-8-sig: a byte-order mark (Excel's CSV export writes one) is dropped, not read as part of the
    # first column's name or the first JSON line.
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


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
                        raise UserError(f"invalid JSON: {e.msg} (column {e.colno})", file=where, line=number,
                                        hint="each line must be one complete JSON object") from None
                    except ValueError as e:  # not a JSONDecodeError: an integer of over 4300 digits
                        raise UserError(f"invalid JSON: {e}", file=where, line=number) from None
                    if not isinstance(data, dict):
                        raise UserError(f"expected a JSON object per line, got {type(data).__name__}", file=where, line=number)
                    yield SourceRow(data, where, number)
        elif name.endswith(".json"):
            with _open_text(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise UserError(f"invalid JSON: {e.msg} (column {e.colno})", file=where, line=e.lineno,
                                    hint="a .json data file holds one JSON list of objects") from None
                except ValueError as e:  # not a JSONDecodeError: an integer of over 4300 digits
                    raise UserError(f"invalid JSON: {e}", file=where) from None
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
                reader = csv.DictReader(f)
                try:
                    for row in reader:
                        if None in row:  # DictReader files extra cells under the key None
                            raise UserError(f"has {len(row) - 1 + len(row[None])} cells but the header names {len(row) - 1}",
                                            file=where, line=reader.line_num, hint="quote cells that hold commas")
                        yield SourceRow(dict(row), where, reader.line_num)
                except csv.Error as e:
                    raise UserError(f"invalid CSV: {e}", file=where, line=reader.line_num, hint="fix the quoting on that line") from None
        elif name.endswith(".parquet"):
            import pyarrow
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except pyarrow.ArrowException as e:  # ArrowInvalid: not Parquet, truncated, bad footer
                detail = str(e).splitlines()[0].split(". ")[0]  # pyarrow's first sentence says what is wrong
                raise UserError(f"not a readable Parquet file ({detail})", file=where,
                                hint="write it again with pandas/pyarrow, or use JSONL") from None
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
    except RecursionError:
        raise UserError("JSON nested too deeply to read", file=where, hint="flatten the rows") from None
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a .gz whose compressed data is damaged
        raise UserError(f"cannot read file: {e}", file=where, hint="check that the file is whole and of the type its name says") from None


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
    if spec.startswith("hf:"):
        return {"source": spec}
    return {"source": spec, "files": [{"path": str(p), "sha256": sha256_file(p)} for p in expand_paths(spec)]}
