"""Every bad input of the catalogue (tests/bad_inputs_cases.py) through the CLI: exit code 2, one
`error:` line that says where and how to fix, no traceback, finished checkpoints untouched, and the
message as docs/bad-inputs.md shows it.

`LLMPIPE_WRITE_CATALOGUE=FILE` records the messages instead of comparing them with the docs;
tests/make_catalogue.py uses it to regenerate docs/bad-inputs.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from bad_inputs_cases import CASES, DOC, REGENERATE, Case, Ctx, doc_rows, normalise, render_row
from conftest import invoke

from llmpipe.core.files import sha256_file
from llmpipe.runs import manifest_sha, read_manifest

RECORD = os.environ.get("LLMPIPE_WRITE_CATALOGUE")
# A message says how to fix the mistake: a hint after " — ", or it states the rule itself.
HOW_TO_FIX = re.compile(r" — |\b(must|needs|expected|choose|did you mean|use|set|pass|give)\b")
# ... and where it is: a file (path:line:), or a quoted field or argument.
WHERE = re.compile(r"^error: (\S+: |.*\"[^\"]+\"|.*'[^']+')")


def _fill(text: str, tmp: Path, run: Path | None) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{run}", str(run) if run else "{run}")


def _snapshot(run: Path | None) -> dict[str, Any]:
    """Manifest sha256 and file hashes of every finished stage of the run copy."""
    if run is None:
        return {}
    stages = [p for p in sorted(run.iterdir()) if (read_manifest(p) or {}).get("status") == "complete"]
    return {p.name: (manifest_sha(p), {f.name: sha256_file(f) for f in sorted(p.iterdir()) if f.is_file()}) for p in stages}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    run = request.getfixturevalue("micro_copy") if case.run else None
    if case.setup is not None:
        case.setup(Ctx(tmp=tmp_path, run=run, monkeypatch=monkeypatch))
    before = _snapshot(run)

    result = invoke(*(_fill(arg, tmp_path, run) for arg in case.args))

    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert result.stderr.rstrip("\n").endswith(line), "the error must be the last thing printed"
    assert _fill(case.expect, tmp_path, run) in line, line
    assert WHERE.search(line), f"the message does not say where: {line}"
    assert HOW_TO_FIX.search(line), f"the message does not say how to fix it: {line}"
    if run is not None:
        assert _snapshot(run) == before, "a finished stage changed"

    message = normalise(line, tmp_path)
    if RECORD:
        with open(RECORD, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": case.id, "message": message}) + "\n")
        return
    row = doc_rows(DOC.read_text(encoding="utf-8")).get(case.input)
    assert row == render_row(case.input, message), f"{DOC.name} is stale for case {case.id}: regenerate it with {REGENERATE}"


def test_catalogue_is_complete_and_the_doc_lists_every_case():
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES) and len({c.input for c in CASES}) == len(CASES)
    assert not any("|" in c.input for c in CASES), "an input description must not hold '|'"
    listed = list(doc_rows(DOC.read_text(encoding="utf-8"))) if DOC.is_file() else []
    assert listed == [c.input for c in CASES], f"{DOC} does not list the catalogue's cases: regenerate it with {REGENERATE}"
