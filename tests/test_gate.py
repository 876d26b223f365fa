"""The regression gate: a stage trained to forget what its parent knew stops `llmpipe run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke, read_manifest

from llmpipe.eval.gate import compare


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def sky_world(tmp_path: Path) -> list[str]:
    """Pretraining says the sky is blue; SFT then teaches, with a high learning rate, that it is green."""
    text = [{"text": f"note {i}: the sky is blue. the sky is blue. the grass is wet."} for i in range(200)]
    chat = [{"messages": [{"role": "user", "content": f"tell me about the sky, {i}"},
                          {"role": "assistant", "content": "the sky is green. the sky is green. the sky is green."}]}
            for i in range(200)]
    probe = [{"name": "sky", "prompt": "the sky is", "check": "choice", "choices": [" blue", " green"], "answer": " blue"}]
    recipe = tmp_path / "sky.yaml"
    recipe.write_text("""
name: sky
model: micro
precision: fp32
tokenizer: {vocab_size: 300}
pretrain:
  max_steps: 30
  batch_size: 4
  max_length: 32
  learning_rate: 3.0e-3
  warmup_steps: 2
  eval_every: 30
  save_every: 30
  eval_batches: 2
  sample_prompts: []
  cleaning: {exact_dedup: false, near_dedup: false, decontaminate: false}
sft:
  max_steps: 30
  batch_size: 4
  max_length: 48
  learning_rate: 5.0e-3
  warmup_steps: 1
  eval_every: 30
  save_every: 30
  eval_batches: 2
  accuracy_rows: 0
  probes: []
  sample_prompts: []
  cleaning: {exact_dedup: false, decontaminate: false}
  replay_fraction: 0   # the planted forgetting: replaying the pretraining text would soften it
suites: {sample: 4, max_new_tokens: 8}
""", encoding="utf-8")
    files = {
        "pretrain.train_files": _write(tmp_path / "text.jsonl", text),
        "pretrain.validation_files": _write(tmp_path / "text.val.jsonl", text[:12]),
        "tokenizer.train_files": str(tmp_path / "text.jsonl"),
        "tokenizer.validation_files": str(tmp_path / "text.val.jsonl"),
        "pretrain.probes": _write(tmp_path / "sky.probes.jsonl", probe),
        "sft.train_files": _write(tmp_path / "chat.jsonl", chat),
        "sft.validation_files": _write(tmp_path / "chat.val.jsonl", chat[:12]),
    }
    return [str(recipe)] + [f"{k}=[{v}]" for k, v in files.items()]


def test_planted_regression_stops_the_run(sky_world: list[str], tmp_path: Path):
    run = tmp_path / "run"
    result = invoke("run", *sky_world, "--out", str(run))
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    message = errors[0]
    assert "sft regressed against its parent pretrain" in message and "sft.gate.action=warn" in message
    gate = read_manifest(run / "sft")["gate"]
    checks = {c["name"]: c for c in gate["checks"]}
    # The model forgot the probe: pretraining made it prefer " blue", SFT turned that into " green".
    assert not checks["sky.probes"]["passed"]
    assert (checks["sky.probes"]["parent"], checks["sky.probes"]["child"]) == (1.0, 0.0)
    assert checks["pretrain-validation"]["child"] > checks["pretrain-validation"]["parent"]
    assert not (run / "dpo").exists()  # the run stopped before the next stage
    assert (run / "report" / "report.md").is_file()

    # Rerunning stops again without retraining; accepting the regression goes on from the same checkpoint.
    again = invoke("sft", *sky_world, "--out", str(run))
    assert again.exit_code == 3 and "skipping" in again.output
    accepted = invoke("sft", *sky_world, "sft.gate.action=warn", "--out", str(run))
    assert accepted.exit_code == 0, accepted.output
    assert "skipping" in accepted.output


def test_compare_applies_relative_loss_and_absolute_score_tolerances():
    parent = {"text": {"kind": "loss", "value": 2.0}, "probes": {"kind": "score", "value": 0.8}, "gone": {"kind": "loss", "value": 1}}
    child = {"text": {"kind": "loss", "value": 2.9}, "probes": {"kind": "score", "value": 0.7}}
    checks = {c["name"]: c for c in compare(parent, child, max_loss_increase=0.5, max_probe_drop=0.15)}
    assert set(checks) == {"text", "probes"}
    assert checks["text"]["change"] == pytest.approx(0.45) and checks["text"]["passed"]
    assert checks["probes"]["change"] == pytest.approx(-0.1) and checks["probes"]["passed"]
    strict = {c["name"]: c["passed"] for c in compare(parent, child, max_loss_increase=0.4, max_probe_drop=0.05)}
    assert strict == {"text": False, "probes": False}


def test_gate_off_records_nothing(micro_copy: Path):
    result = invoke("sft", "recipes/micro.yaml", "sft.gate.action=off", "max_steps=2", "--out", str(micro_copy), "--restart")
    assert result.exit_code == 0, result.output
    assert read_manifest(micro_copy / "sft")["gate"] is None


def test_micro_chain_passes_its_gates(micro_run: Path):
    for stage, parent in (("sft", "pretrain"), ("dpo", "sft")):
        gate = read_manifest(micro_run / stage)["gate"]
        assert gate["parent_stage"] == parent and gate["passed"]
        assert {c["kind"] for c in gate["checks"]} == {"loss", "score"}
