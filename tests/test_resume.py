"""Resume that really resumes: a real `llmpipe` process killed with SIGKILL (or stopped with SIGTERM)
mid-training, then rerun, gives the same loss sequence as an uninterrupted run (fp32 on CPU: equal
to 1e-6, in practice bit for bit) and the same record (before-training measures, log history, tokens);
a checkpoint broken by a kill mid-save is skipped by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MICRO, ROOT, invoke, read_manifest

from llmpipe.runs import Manifest
from llmpipe.runs.folders import carry_record
from llmpipe.runs.seals import SEAL

COMMON = ["precision=fp32", "device=cpu", "log_every=1", "save_every=10", "warmup_steps=2", "probes=[]", "sample_prompts=[]"]
# (stage command, parent stage, stage folder, settings): big enough batches that the kill lands mid-run.
STAGES = {
    "pretrain": (["pretrain"], "tokenizer", "pretrain", ["max_steps=40", "batch_size=32", "eval_every=40"]),
    "sft": (["sft"], "pretrain", "sft", ["max_steps=30", "batch_size=16", "eval_every=30", "accuracy_rows=4"]),
    "dpo": (["align", "--method", "dpo"], "sft", "dpo", ["max_steps=30", "batch_size=8", "eval_every=30", "preference_rows=8"]),
}


def _args(stage: str, parent: Path, out: Path) -> list[str]:
    command, _, _, settings = STAGES[stage]
    return [*command, MICRO, *COMMON, *settings, "--from", str(parent), "--out", str(out)]


def _losses(folder: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in read_manifest(folder)["evals"] if "loss" in h}


# What a log-history entry says about training; the rest (tokens/s, MFU, runtimes) are timings.
LOGGED = ("loss", "eval_loss", "grad_norm", "learning_rate", "num_input_tokens_seen")


def _record(folder: Path) -> tuple[dict[str, float], list[tuple[int, dict[str, float]]], int]:
    """A finished stage's before-training measures, its log history and the tokens it trained on."""
    manifest = read_manifest(folder)
    before = {key: value for key, value in manifest["metrics"].items() if key.endswith("_before")}
    history = [(h["step"], {key: h[key] for key in LOGGED if key in h}) for h in manifest["evals"]]
    return before, history, manifest["summary"]["tokens"]


def _run_until_checkpoint(args: list[str], checkpoints: Path, step: int, sig: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "llmpipe.cli", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seal = checkpoints / f"checkpoint-{step}" / SEAL
    deadline = time.time() + 300
    while not seal.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, f"finished before it could be stopped:\n{process.stderr.read()[-2000:]}"
    process.send_signal(sig)
    process.wait(timeout=120)
    return process


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo"])
def test_sigkill_then_rerun_gives_the_uninterrupted_losses(stage: str, micro_run: Path, tmp_path: Path):
    _, parent_stage, folder, _ = STAGES[stage]
    parent = micro_run / parent_stage
    whole = invoke(*_args(stage, parent, tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    expected = _losses(tmp_path / "whole" / folder)
    before, history, tokens = _record(tmp_path / "whole" / folder)
    assert any(value is not None for value in before.values()) and tokens > 0, before

    killed = tmp_path / "killed"
    checkpoints = killed / f".{folder}.partial" / "checkpoints"
    process = _run_until_checkpoint(_args(stage, parent, killed), checkpoints, 10, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / folder).exists()

    resumed = invoke(*_args(stage, parent, killed))
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {checkpoints}/checkpoint-10" in resumed.output
    got = _losses(killed / folder)
    assert sorted(got) == sorted(expected)
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), (step, loss, expected[step])
    # The record is the uninterrupted run's: the "before" measures of the first segment, the log
    # history of both segments, the tokens of all steps; only the timings differ.
    got_before, got_history, got_tokens = _record(killed / folder)
    assert got_before == before
    assert [step for step, _ in got_history] == [step for step, _ in history]
    for (step, logged), (_, wanted) in zip(got_history, history):
        assert logged == pytest.approx(wanted, abs=1e-6), (step, logged, wanted)
    assert got_tokens == tokens
    segments = read_manifest(killed / folder)["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, 10), (10, max(expected))]
    summary = read_manifest(killed / folder)["summary"]
    assert summary["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in segments), abs=0.05)


def test_carried_record_stops_at_the_checkpoint_and_can_be_carried_again():
    # A work manifest whose run was killed during the save of step 20, which is not sealed: resume at 10.
    previous = Manifest.from_dict({
        "before": {"validation_loss": 6.2}, "evals": [{"step": s, "loss": 1.0} for s in (0, 5, 10, 15, 20)],
        "probes": [{"step": 0}, {"step": 20}], "monitor": {"anomalies": [{"step": 12}]},
        "segments": [{"from_step": 0, "to_step": 20, "wall_seconds": 3.0}], "metrics": {"x": 1}})
    carried = Manifest()
    carry_record(carried, previous, Path("checkpoint-10"))
    assert (carried.before, carried.evals, carried.probes, carried.monitor, carried.segments, carried.metrics) == (
        {"validation_loss": 6.2}, previous.evals[:3], [{"step": 0}], None,
        [{"from_step": 0, "to_step": 10, "wall_seconds": 3.0}], {})
    # Another process may read the manifest the first one rewrote: it carries the same record.
    again = Manifest()
    carry_record(again, carried, Path("checkpoint-10"))
    assert again == carried


def test_checkpoint_broken_mid_save_is_skipped_by_name(micro_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    checkpoints = out / ".pretrain.partial" / "checkpoints"
    _run_until_checkpoint(_args("pretrain", micro_run / "tokenizer", out), checkpoints, 20, signal.SIGKILL)
    newest = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    # What a kill in the middle of writing the weights leaves behind: a short file, no matching seal.
    with open(newest / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    resumed = invoke(*_args("pretrain", micro_run / "tokenizer", out))
    assert resumed.exit_code == 0, resumed.output
    assert f"warning: {newest} cannot be resumed from (model.safetensors is truncated" in resumed.output
    step = int(newest.name.split("-")[1])
    assert f"resuming from {checkpoints}/checkpoint-{step - 10}" in resumed.output


def test_sigterm_saves_a_checkpoint_and_exits_130(micro_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    checkpoints = out / ".pretrain.partial" / "checkpoints"
    process = _run_until_checkpoint(_args("pretrain", micro_run / "tokenizer", out), checkpoints, 10, signal.SIGTERM)
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr[-2000:]
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "stopped by SIGTERM at step" in error[0] and "Traceback" not in stderr
    step = int(error[0].split("at step ")[1].split()[0])
    assert (checkpoints / f"checkpoint-{step}" / SEAL).is_file()
    resumed = invoke(*_args("pretrain", micro_run / "tokenizer", out))
    assert resumed.exit_code == 0 and f"checkpoint-{step}" in resumed.output
