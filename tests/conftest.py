"""Shared fixtures: one micro-preset chain trained once per test session through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Token caches of the tests stay out of the user's ~/.cache.
os.environ.setdefault("LLMPIPE_CACHE", tempfile.mkdtemp(prefix="llmpipe-test-cache-"))

ROOT = Path(__file__).resolve().parent.parent
MICRO = str(ROOT / "recipes" / "micro.yaml")
SHARED_DATA = ROOT.parent / "shared" / "data"
RUN_OUTPUT = "run-output.txt"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # Tests name data/ and recipes/ relative to the repository root (resolved from there, as overrides are).
    monkeypatch.chdir(ROOT)


def read_manifest(stage_dir: Path) -> dict | None:
    """A stage folder's manifest.json as written (the on-disk format is what tests pin), or None."""
    path = Path(stage_dir) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def invoke(*args: str):
    """Run the llmpipe CLI in-process; returns Click's Result (exit_code, stdout, stderr, output)."""
    from typer.testing import CliRunner

    from llmpipe.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """A complete tokenizer → pretrain → sft → dpo run of the micro recipe (read-only for tests)."""
    run_dir = tmp_path_factory.mktemp("micro") / "run"
    os.chdir(ROOT)
    result = invoke("run", MICRO, "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    # What the run printed, for tests of its console lines (beside the run folder, not inside it).
    (run_dir.parent / RUN_OUTPUT).write_text(result.output, encoding="utf-8")
    return run_dir


@pytest.fixture
def micro_copy(micro_run, tmp_path) -> Path:
    """A private copy of the micro run that a test may change."""
    target = tmp_path / "run"
    shutil.copytree(micro_run, target)
    return target
