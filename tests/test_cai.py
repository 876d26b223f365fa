"""Constitutional AI (`llmpipe align --method cai`) on the micro chain: the constitution file, the stage end
to end through the CLI (its dataset, manifest, gate and report), training on pairs, and resume after a
real SIGKILL during generation that regenerates none of the finished prompts and ends where an
uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MICRO, ROOT, invoke, read_manifest

from llmpipe.core.errors import UserError
from llmpipe.data.constitution import load_constitution
from llmpipe.report import write_report
from llmpipe.runs import manifest_sha

# fp32 on the CPU, as tests/test_resume.py: a resumed run must match an uninterrupted one to the last bit.
# Sampled (seeded per batch): the micro model's greedy replies are the same few tokens whatever it is
# asked, so revisions would equal drafts; samples differ, and must come out the same after a resume.
# (Greedy generation, the default, runs in tests/test_readme_commands.py: `llmpipe align tiny --method cai`.)
COMMON = ["precision=fp32", "device=cpu", "probes=[]", "sample_prompts=[]", "suites.score_stages=false", "align.cai.temperature=1.0"]
PROMPTS = 8 + 4  # the micro recipe's align.cai.prompts and heldout_prompts
KILL_AFTER = 4  # lines: the first generation batch (align.cai.generation_batch 4), then SIGKILL


def _args(micro_run: Path, out: Path, *extra: str) -> list[str]:
    return ["align", MICRO, "--method", "cai", *COMMON, *extra, "--from", str(micro_run / "sft"), "--out", str(out)]


def _lines(stage: Path) -> list[dict]:
    return [json.loads(line) for line in (stage / "revisions.jsonl").read_text(encoding="utf-8").splitlines()]


def _losses(stage: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in read_manifest(stage)["evals"] if "loss" in h}


@pytest.fixture(scope="module")
def whole(micro_run: Path, tmp_path_factory) -> Path:
    """An uninterrupted cai stage (supervised on the revisions, the default) from the micro run's SFT."""
    out = tmp_path_factory.mktemp("cai") / "whole"
    result = invoke(*_args(micro_run, out))
    assert result.exit_code == 0, result.output
    return out / "cai"


# ---- the constitution file ---------------------------------------------------------------------

def test_the_default_constitution_and_a_markdown_one(tmp_path: Path):
    default = load_constitution(ROOT / "data" / "constitution.yaml")
    assert len(default.principles) >= 6 and all(p.critique and p.revision for p in default.principles)
    md = tmp_path / "c.md"
    md.write_text("# Mine\nA preamble.\n\n## kind\nCritique: Is it unkind?\nRevision: Rewrite it\n  kindly.\n\n"
                  "## short\nrevision: Shorter.\ncritique: Too long?\n", encoding="utf-8")
    got = load_constitution(md)
    assert [(p.name, p.critique, p.revision, p.line) for p in got.principles] == [
        ("kind", "Is it unkind?", "Rewrite it kindly.", 4), ("short", "Too long?", "Shorter.", 9)]


@pytest.mark.parametrize("name, text, message", [
    ("c.yaml", "principles:\n  - name: a\n    critique: x\n    revision: y\n  - name: b\n    critique: x\n",
     ':5: "principles[1].revision" missing'),
    ("c.yaml", "principles:\n  - critique: x\n    revison: y\n", ':3: "principles[0].revison" unknown key'),
    ("c.yaml", "principles:\n  - name: a\n    critique: x\n    revision: y\n  - name: a\n    critique: x\n    revision: y\n",
     ":5: \"name\" principle name 'a' is used twice (first on line 2)"),
    ("c.yaml", "principles: []\n", "holds no principles"),
    ("c.yaml", "principles:\n  - just a sentence\n", ':2: "principles[0]" must be a mapping'),
    ("c.md", "## kind\nCritique: Is it unkind?\n", ":1: \"revision\" principle 'kind' has no Revision: paragraph"),
    ("c.txt", "principles: []\n", "unsupported constitution file type '.txt'"),
])
def test_a_bad_constitution_is_one_located_line(tmp_path: Path, name: str, text: str, message: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_constitution(path)
    assert message in caught.value.one_line() and caught.value.one_line().startswith(str(path))


def test_finished_lines_are_kept_for_the_same_key_and_dropped_for_another(tmp_path: Path):
    from llmpipe.stages.cai import DATASET, KEY_FILE, _finished_rows

    key = {"constitution_sha256": "a", "prompts_sha256": "b"}
    assert _finished_rows(tmp_path, key) == {} and json.loads((tmp_path / KEY_FILE).read_text()) == key
    rows = [{"split": "train", "index": i, "draft": "d", "revision": "r"} for i in range(3)]
    whole = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / DATASET).write_text(whole + '{"split": "train", "ind', encoding="utf-8")  # a kill mid-write
    # A rerun (generation finished or not, training killed or not) reads the lines back; the half line goes.
    assert _finished_rows(tmp_path, key) == {("train", i): r for i, r in enumerate(rows)}
    assert (tmp_path / DATASET).read_text(encoding="utf-8") == whole
    assert _finished_rows(tmp_path, dict(key)) == {("train", i): r for i, r in enumerate(rows)}
    # Another constitution (or judge, prompts, settings): the lines were made from something else.
    assert _finished_rows(tmp_path, {**key, "constitution_sha256": "c"}) == {} and not (tmp_path / DATASET).exists()


# ---- the stage ---------------------------------------------------------------------------------

def test_cai_generates_saves_and_trains_on_revisions(whole: Path):
    rows = _lines(whole)
    assert len(rows) == PROMPTS and [r["split"] for r in rows] == ["train"] * 8 + ["validation"] * 4
    principles = {p.name: p for p in load_constitution(ROOT / "data" / "constitution.yaml").principles}
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and isinstance(row["draft"], str) and isinstance(row["revision"], str)
        principle = principles[row["principle"]]
        assert (row["critique_request"], row["revision_request"]) == (principle.critique, principle.revision)
    assert len({r["principle"] for r in rows}) > 1  # drawn per prompt, not one for all

    manifest = read_manifest(whole)
    generated = manifest["generation"]
    assert generated["constitution"]["sha256"] == manifest["files"]["constitution.yaml"]
    assert generated["prompts"] == {"train": 8, "validation": 4} and generated["judge"] is None
    revised = sum(r["revision"] != r["draft"] and bool(r["draft"]) and bool(r["revision"]) for r in rows)
    assert generated["revised"] == revised > 0 and generated["reused_prompts"] == 0
    assert generated["trained_rows"] == sum(bool(r["revision"]) for r in rows if r["split"] == "train")
    assert sum(generated["principle_counts"].values()) == PROMPTS and generated["examples"]
    assert "revisions.jsonl" in manifest["files"] and not (whole / "revisions.key.json").exists()

    metrics = manifest["metrics"]
    assert metrics["trained_as"] == "sft" and metrics["validation_loss"] < metrics["validation_loss_before"]
    headline = manifest["summary"]["metric"]
    assert headline["name"] == "held-out implicit-reward accuracy" and headline["before"] == 0.5
    assert manifest["gate"]["parent_stage"] == "sft" and manifest["gate"]["checks"]
    assert manifest["protected"]["heldout"][0]["kind"] == "chat"

    report = write_report(whole.parent)["markdown"].read_text(encoding="utf-8")
    assert "### Generated data" in report and "| prompt | principle | draft | critique | revision |" in report
    example = generated["examples"][0]
    assert example["principle"] in report


def test_cai_trains_dpo_on_pairs_with_a_judge_and_a_markdown_constitution(micro_run: Path, tmp_path: Path):
    constitution = tmp_path / "mine.md"
    constitution.write_text("## plain\nCritique: Is it plain?\nRevision: Say it plainly.\n", encoding="utf-8")
    judge = micro_run / "dpo"
    result = invoke(*_args(micro_run, tmp_path / "run", "align.cai.train=dpo", "max_steps=2", f"align.cai.judge={judge}",
                           f"align.cai.constitution={constitution}"))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "run" / "cai")
    rows = _lines(tmp_path / "run" / "cai")
    assert {r["principle"] for r in rows} == {"plain"} and (tmp_path / "run" / "cai" / "constitution.md").is_file()
    assert manifest["generation"]["judge"] == {"path": str(judge.resolve()), "stage": "dpo",
                                               "manifest_sha256": manifest_sha(judge)}
    assert manifest["metrics"]["trained_as"] == "dpo" and manifest["protected"]["heldout"][0]["kind"] == "preference"
    assert manifest["generation"]["trained_rows"] == sum(r["split"] == "train" and r["draft"] and r["revision"]
                                                          and r["revision"] != r["draft"] for r in rows)
    assert manifest["metrics"]["implicit_reward_accuracy"] is not None


def test_sigkill_during_generation_resumes_without_redoing_finished_prompts(whole: Path, micro_run: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "killed"
    # A real llmpipe process that kills itself with SIGKILL once the first batch's lines are written and flushed.
    script = (
        "import os, signal, sys\n"
        "import llmpipe.stages.cai as cai\n"
        "write, count = cai._write_row, [0]\n"
        "def killing(out, row):\n"
        "    write(out, row)\n"
        "    count[0] += 1\n"
        f"    if count[0] == {KILL_AFTER}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "cai._write_row = killing\n"
        "from llmpipe.cli import app\n"
        "app(sys.argv[1:])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-c", script, *_args(micro_run, out)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    dataset = out / ".cai.partial" / "revisions.jsonl"
    assert len(dataset.read_text(encoding="utf-8").splitlines()) == KILL_AFTER and not (out / "cai").exists()
    with open(dataset, "ab") as f:  # what a kill in the middle of a write leaves: half a line
        f.write(b'{"split": "train", "index": 4, "pro')

    import llmpipe.stages.cai as cai

    generated = []
    revise = cai._revise
    monkeypatch.setattr(cai, "_revise", lambda batch, *rest: generated.extend((j.split, j.index) for j in batch) or revise(batch, *rest))
    resumed = invoke(*_args(micro_run, out))
    assert resumed.exit_code == 0, resumed.output
    assert f"generating for {PROMPTS - KILL_AFTER} prompts ({KILL_AFTER} already in revisions.jsonl)" in resumed.output
    assert generated == [("train", i) for i in range(KILL_AFTER, 8)] + [("validation", i) for i in range(4)]

    stage = out / "cai"
    assert _lines(stage) == _lines(whole)  # the half line is gone, and the rest is what an uninterrupted run wrote
    manifest, reference = read_manifest(stage), read_manifest(whole)
    assert manifest["generation"]["reused_prompts"] == KILL_AFTER
    assert manifest["generation"]["generated_prompts"] == PROMPTS - KILL_AFTER
    assert manifest["files"]["revisions.jsonl"] == reference["files"]["revisions.jsonl"]
    got, expected = _losses(stage), _losses(whole)
    assert sorted(got) == sorted(expected)
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), (step, loss, expected[step])
    for key in ("implicit_reward_accuracy", "validation_loss", "validation_loss_before"):
        assert manifest["metrics"][key] == pytest.approx(reference["metrics"][key], abs=1e-6), key
