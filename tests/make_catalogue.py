"""Regenerate docs/bad-inputs.md: run every case of tests/test_bad_inputs.py, record the message each
one gives, and write them as a table. Usage: `make catalogue` or `.venv/bin/python tests/make_catalogue.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bad_inputs_cases import CASES, DOC, render_doc

TESTS = Path(__file__).resolve().parent


def main() -> int:
    """Run the catalogue with recording on; write the docs file only if every case passed."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "messages.jsonl"
        env = {**os.environ, "LLMPIPE_WRITE_CATALOGUE": str(record)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{TESTS / 'test_bad_inputs.py'}::test_bad_input"]
        # Fixed arguments, no shell: the same interpreter runs pytest on the catalogue.
        status = subprocess.run(command, cwd=TESTS.parent, env=env).returncode
        if status != 0:
            print(f"some cases failed; {DOC} left as it was", file=sys.stderr)
            return status
        messages = {row["id"]: row["message"] for row in map(json.loads, record.read_text(encoding="utf-8").splitlines())}
    missing = [case.id for case in CASES if case.id not in messages]
    if missing:
        print(f"no message recorded for {', '.join(missing)}; {DOC} left as it was", file=sys.stderr)
        return 1
    DOC.write_text(render_doc(messages), encoding="utf-8")
    print(f"{DOC}: {len(CASES)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
