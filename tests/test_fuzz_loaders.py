"""Fuzzing the data loaders with hypothesis: random rows (any JSON value, nested, odd strings, wrong
types, near-valid chat/preference shapes) and random bytes, through `read_rows`, every row converter
and `load_suite`. Every outcome must be a clean load or a UserError whose message is one line.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpipe.core.errors import UserError
from llmpipe.data.formats import CONVERTERS
from llmpipe.data.io import SourceRow, read_rows
from llmpipe.eval.probes import load_suite

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# Text that likes trouble: line breaks of every kind, NUL, surrogate-free odd Unicode, empty.
ODD_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "\n", "\r\n", "\u2028", "\x00", "\n\nHuman: hi\n\nAssistant: yo", "user", "assistant", "a|b"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), ODD_TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(ODD_TEXT, inner, max_size=4)),
                           max_leaves=12)
ROLES = st.one_of(st.sampled_from(["user", "assistant", "system", "bot", ""]), JSON_VALUES)
MESSAGE = st.one_of(st.fixed_dictionaries({"role": ROLES, "content": st.one_of(ODD_TEXT, JSON_VALUES)}), JSON_VALUES)
MESSAGES = st.one_of(st.lists(MESSAGE, max_size=4), JSON_VALUES)
FIELDS = ["text", "messages", "prompt", "chosen", "rejected", "completion", "label", "answer", "conversations",
          "instruction", "input", "output"]
# A row: some of the fields llmpipe looks at, each holding a near-valid or arbitrary value, plus junk keys.
ROWS = st.builds(
    lambda known, junk: {**junk, **known},
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(MESSAGES, JSON_VALUES, ODD_TEXT), max_size=5),
    st.dictionaries(ODD_TEXT, JSON_VALUES, max_size=2),
)
SUFFIXES = [".jsonl", ".json", ".csv", ".txt", ".parquet", ".jsonl.gz"]
# Lines that broke readers before: a 5000-digit integer (a plain ValueError from json), deep nesting
# (RecursionError), a byte-order mark, NaN, a CSV row with more cells than its header.
NASTY = st.sampled_from(["1" * 5000, "[" * 50000, "\ufeff{\"text\": \"a\"}", "NaN", '{"text": NaN}', "a,b\n1,2,3", '"unclosed', "\x00"])
CSV_TEXT = st.lists(st.lists(st.one_of(ODD_TEXT, st.just('"')), max_size=4).map(",".join), min_size=1, max_size=4).map("\n".join)


def _one_line(error: UserError) -> None:
    message = error.one_line()
    assert len(message.splitlines()) == 1, repr(message)


def _convert_all(row: dict[str, Any]) -> None:
    for kind, convert in CONVERTERS.items():
        try:
            convert(SourceRow(row, "rows.jsonl", 7))
        except UserError as error:
            _one_line(error)
            assert error.line == 7, (kind, error.one_line())


def _read(path: Path) -> None:
    try:
        for source in read_rows(str(path)):
            _convert_all(source.data)
    except UserError as error:
        _one_line(error)


@FUZZ
@given(ROWS)
def test_converters_give_rows_or_one_line_errors(row: dict[str, Any]):
    _convert_all(row)


@FUZZ
@given(st.lists(st.one_of(ROWS, JSON_VALUES), min_size=1, max_size=4), st.sampled_from([".jsonl", ".json", ".jsonl.gz"]))
def test_read_rows_of_random_json(values: list[Any], suffix: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rows{suffix}"
        text = json.dumps(values) if suffix == ".json" else "".join(json.dumps(v) + "\n" for v in values)
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
        _read(path)


@FUZZ
@given(st.lists(st.one_of(NASTY, CSV_TEXT, ODD_TEXT), min_size=1, max_size=4), st.sampled_from(SUFFIXES))
def test_read_rows_of_random_text(lines: list[str], suffix: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rows{suffix}"
        text = "\n".join(lines).encode("utf-8", "surrogatepass")
        path.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
        _read(path)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(SUFFIXES), st.booleans())
def test_read_rows_of_random_bytes(data: bytes, suffix: str, gzipped: bool):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rows{suffix}"
        # Valid gzip around random bytes too, so the reader behind the decompressor gets fuzzed.
        path.write_bytes(gzip.compress(data) if gzipped and suffix.endswith(".gz") else data)
        _read(path)


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=30), NASTY, JSON_VALUES.map(json.dumps), ROWS.map(json.dumps),
                          st.builds(lambda row: json.dumps({"prompt": "p", "check": "choice", "choices": ["a", "b"], **row}), ROWS)),
                max_size=4), st.binary(max_size=40))
def test_load_suite_gives_probes_or_one_line_errors(lines: list[str], noise: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        for content in ("\n".join(lines).encode(), noise):
            path = Path(tmp) / "suite.jsonl"
            path.write_bytes(content)
            try:
                load_suite(path)
            except UserError as error:
                _one_line(error)
