"""The typed manifest: its generated documentation is current, it round-trips, and manifests written
before it (no `version`, other keys) still load and keep their identity when rewritten."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import MICRO, invoke

from llmpipe.runs import Manifest, StageRef, manifest_sha, read_manifest, write_manifest
from llmpipe.runs.manifest import markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"


def test_docs_manifest_md_is_generated_from_the_field_declarations():
    assert DOC.read_text(encoding="utf-8") == markdown(), (
        "docs/manifest.md is stale: regenerate it with `make docs`")


def test_every_field_is_documented():
    for line in markdown().splitlines():
        if line.startswith("| `"):
            assert line.rstrip(" |").split("|")[-1].strip(), line


def test_round_trip(tmp_path):
    manifest = Manifest(stage="sft", status="complete", config={"seed": 0, "sft": {"max_steps": 3}},
                        parent=StageRef(path="/x/pretrain", stage="pretrain", manifest_sha256="ab"), metrics={"a": 1.5})
    write_manifest(tmp_path, manifest)
    back = read_manifest(tmp_path)
    assert back == manifest
    assert back.section() == {"max_steps": 3}


def test_an_old_manifest_loads_and_rewriting_it_keeps_its_identity(tmp_path):
    old = {"stage": "sft", "status": "complete", "config": {"seed": 0, "monitor": {"x": 1}, "sft": {"max_steps": 3}},
           "parent": {"path": "/p", "stage": "pretrain", "manifest_sha256": "cd"}, "summary": {"steps": 3},
           "metrics": {"validation_loss": 2.0}, "a_key_of_another_version": [1, 2]}
    (tmp_path / "manifest.json").write_text(json.dumps(old), encoding="utf-8")
    before = manifest_sha(tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest.version == 1 and manifest.parent.stage == "pretrain" and manifest.summary == {"steps": 3}
    assert manifest.section() == {"max_steps": 3}  # not the monitor section
    manifest.eval["heldout"] = {"value": 1.0}  # what `llmpipe eval` adds
    write_manifest(tmp_path, manifest)
    written = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert set(written) == set(old) | {"eval"}
    assert written["a_key_of_another_version"] == [1, 2]
    assert manifest_sha(tmp_path) == before  # `eval` is outside the identity children record


def test_a_damaged_manifest_reads_with_defaults(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "sft", "status": "complete", "gate": "oops",
                                                         "evals": {"not": "a list"}, "wall_seconds": "12"}))
    manifest = read_manifest(tmp_path)
    assert manifest.gate is None and manifest.evals == [] and manifest.wall_seconds is None
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert read_manifest(tmp_path) is None


def test_a_run_folder_in_the_old_manifest_format_still_skips(micro_copy: Path):
    """A run finished before the typed manifest (no `version`, no `before` / `segments`, absent fields
    rather than nulls, the parent's sha256 over that JSON) is complete as it is: `run` skips every stage."""
    order = ["tokenizer", "pretrain", "sft", "dpo"]
    for name in order:
        path = micro_copy / name / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8"))
        old = {k: v for k, v in manifest.items() if k not in ("version", "before", "segments") and v is not None}
        if old.get("parent"):
            old["parent"]["manifest_sha256"] = manifest_sha(micro_copy / old["parent"]["stage"])
        path.write_text(json.dumps(old, indent=2), encoding="utf-8")
    before = {name: (micro_copy / name / "manifest.json").read_text(encoding="utf-8") for name in order}
    result = invoke("run", MICRO, "--out", str(micro_copy))
    assert result.exit_code == 0, result.output
    for name in order:
        assert f"{name}: complete in {micro_copy / name}, skipping" in result.output
        assert (micro_copy / name / "manifest.json").read_text(encoding="utf-8") == before[name]
