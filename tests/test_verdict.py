"""The release verdict on the micro chain: every answer yes gives exit code 0; a failure planted on each
question (in a copy's manifests, or through a recipe threshold) gives exit code 3 and names it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest

# The micro model answers nothing (its replies have no words), which the rubric reads as refusing every
# benign prompt: its over-refusal is 1.0. The bound is lifted here so that the baseline is all yes.
LENIENT = "verdict.max_over_refusal=1"
QUESTIONS = ("learned", "generalised", "follows instructions", "safer", "no regression", "stable")


def _edit(stage_dir: Path, change: Callable[[dict], None]) -> None:
    path = stage_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _no_learning(m: dict) -> None:
    m["summary"]["metric"]["after"] = m["summary"]["metric"]["before"]


def _overfit(m: dict) -> None:
    m["summary"]["val_loss"] = 2 * m["summary"]["train_loss"]


def _instructions_dropped(m: dict) -> None:
    m["suites"]["before"]["instructions"]["prompt_accuracy"] = 0.9


def _more_harmful(m: dict) -> None:
    m["suites"]["after"]["safety"]["harmful_compliance_rate"] = m["suites"]["before"]["safety"]["harmful_compliance_rate"] + 0.5


def _gate_failed(m: dict) -> None:
    m["gate"]["passed"] = False
    m["gate"]["checks"][0]["passed"] = False


def _skipped_anomaly(m: dict) -> None:
    m["monitor"]["anomalies"] = [{"step": 3, "kind": "spike", "loss": 9.0, "reference": 0.7, "action": "skip"}]


PLANTED = {"learned": _no_learning, "generalised": _overfit, "follows instructions": _instructions_dropped,
           "safer": _more_harmful, "no regression": _gate_failed, "stable": _skipped_anomaly}


def test_verdict_is_yes_on_every_question_of_the_micro_chain(micro_run: Path):
    result = invoke("verdict", str(micro_run), MICRO, LENIENT)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"release verdict for {micro_run / 'dpo'} (dpo): READY")
    answers = {line[:22].strip(): line[22:].split()[0] for line in lines[2:]}
    assert answers == dict.fromkeys(QUESTIONS, "yes")


@pytest.mark.parametrize("question", QUESTIONS)
def test_a_planted_failure_gives_exit_code_3_and_names_the_question(micro_copy: Path, question: str):
    _edit(micro_copy / "dpo", PLANTED[question])
    result = invoke("verdict", str(micro_copy), MICRO, LENIENT)
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {micro_copy / 'dpo'}: release verdict: no on {question} — the table above gives the numbers; "
                      "retrain, or set other thresholds in the recipe's verdict section (llmpipe keys --grep verdict)"]
    row = next(line for line in result.stdout.splitlines() if line.startswith(question))
    assert row[22:].startswith("no"), row


def test_thresholds_in_the_recipe_decide(micro_run: Path):
    floor = invoke("verdict", str(micro_run), MICRO, LENIENT, "verdict.min_instruction_score=0.5")
    assert floor.exit_code == 3 and "no on follows instructions" in floor.stderr
    # Without a recipe the stage's recorded thresholds apply: micro's over-refusal bound (0.5) says no.
    recorded = invoke("verdict", str(micro_run))
    assert recorded.exit_code == 3 and "no on safer" in recorded.stderr
    refused = re.search(r"over-refusal [\d.]+ → ([\d.]+) \(bound 0\.5\)", recorded.stdout)
    assert refused and float(refused.group(1)) > 0.5, recorded.stdout


def test_the_run_succeeds_and_its_report_opens_with_the_verdict(micro_run: Path):
    # The micro run's verdict has a no (safer: over-refusal), yet `llmpipe run` exited 0 (conftest asserts it).
    report = (micro_run / "report" / "report.md").read_text(encoding="utf-8")
    first = report.split("\n## ")[1]
    assert first.startswith("Release verdict: dpo\n\nnot ready: no on safer")
    assert all(f"| {q} | " in first for q in QUESTIONS)
    html = (micro_run / "report" / "report.html").read_text(encoding="utf-8")
    # The HTML too: its first section after the title is the verdict, its table before the next section.
    first_html = html.split("<h2>")[1]
    assert first_html.startswith("Release verdict: dpo</h2>") and "<h2>" not in first_html
    assert '<td class="no">no</td>' in first_html and all(f"<td>{q}</td>" in first_html for q in QUESTIONS)


def test_verdict_scores_missing_suites_first_and_keeps_children_valid(micro_run: Path, micro_copy: Path):
    _edit(micro_copy / "dpo", lambda m: m.update(suites=None))
    sft_identity = read_manifest(micro_copy / "dpo")["parent"]["manifest_sha256"]
    result = invoke("verdict", str(micro_copy), MICRO, LENIENT, "suites.sample=4")
    assert result.exit_code == 0, result.output
    # dpo had no scores and sft none with 4 prompts: both scored, each kept in its own manifest's eval.
    for stage in ("dpo", "sft"):
        scored = read_manifest(micro_copy / stage)["eval"]["suites"]
        assert scored["settings"]["sample"] == 4 and scored["instructions"]["prompts"] == 4
    assert "4 prompts" in result.stdout
    # The copy's manifests still name the original run's folders; only the copy was written.
    assert "suites" not in read_manifest(micro_run / "sft")["eval"]
    rerun = invoke("run", MICRO, "--out", str(micro_copy))
    assert rerun.exit_code == 0 and rerun.output.count("skipping") == 4
    assert read_manifest(micro_copy / "dpo")["parent"]["manifest_sha256"] == sft_identity
