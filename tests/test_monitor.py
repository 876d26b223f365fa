"""The training monitor: TensorBoard files, probes during training, and the NaN / spike guard acting
per policy without losing the last good checkpoint (NaNs injected into a real micro pretraining)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest

from llmpipe.runs import manifest_sha

STEPS = ["max_steps=8", "save_every=2", "eval_every=4", "log_every=1", "warmup_steps=1", "precision=fp32"]


@pytest.fixture
def poison(monkeypatch):
    """Make chosen training steps produce a NaN (or huge) loss and NaN gradients, like a real blow-up."""
    import torch
    from transformers import Trainer

    plan: dict[int, float] = {}
    seen: list[int] = []
    original = Trainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = original(self, model, inputs, num_items_in_batch)
        step = self.state.global_step + 1
        if step in plan:
            factor = plan.pop(step)  # once: a rollback replays the step with clean numbers
            seen.append(step)
            if math.isnan(factor):
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(float("nan"))
            return loss * factor if not math.isnan(factor) else loss * torch.tensor(float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "training_step", training_step)
    return plan, seen


def _weights_finite(folder: Path) -> bool:
    from safetensors.torch import load_file

    return all(bool(t.isfinite().all()) for t in load_file(folder / "model.safetensors").values())


def test_nan_with_stop_policy_keeps_the_last_good_checkpoint(micro_copy: Path, poison):
    plan, seen = poison
    plan[5] = float("nan")
    before = manifest_sha(micro_copy / "pretrain")
    result = invoke("pretrain", MICRO, *STEPS, "monitor.on_anomaly=stop", "--out", str(micro_copy), "--restart")
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    message = errors[0]
    assert "not finite at step 5" in message and "checkpoint-4" in message
    assert manifest_sha(micro_copy / "pretrain") == before  # the finished stage is untouched
    kept = micro_copy / ".pretrain.partial" / "checkpoints" / "checkpoint-4"
    assert _weights_finite(kept)
    assert not (micro_copy / ".pretrain.partial" / "checkpoints" / "checkpoint-6").exists()


def test_nan_with_rollback_policy_resumes_with_lower_lr_and_finishes(micro_copy: Path, poison):
    plan, seen = poison
    plan[5] = float("nan")
    result = invoke("pretrain", MICRO, *STEPS, "--out", str(micro_copy), "--restart")
    assert result.exit_code == 0, result.output
    assert seen == [5]
    manifest = read_manifest(micro_copy / "pretrain")
    monitor = manifest["monitor"]
    assert monitor["rollbacks"] == 1
    assert [(a["step"], a["kind"], a["action"]) for a in monitor["anomalies"]] == [(5, "nan", "rollback")]
    assert _weights_finite(micro_copy / "pretrain")
    losses = [h["loss"] for h in manifest["evals"] if "loss" in h]
    assert all(math.isfinite(x) for x in losses[-3:])
    lrs = {h["step"]: h["learning_rate"] for h in manifest["evals"] if "learning_rate" in h}
    # Unscaled, pretraining's WSD schedule holds the peak rate at steps 5 and 6; the rollback halves it.
    assert lrs[5] == pytest.approx(2e-3) and lrs[6] == pytest.approx(0.5 * lrs[5])


def test_loss_spike_is_detected_and_skipped(micro_copy: Path, poison):
    plan, seen = poison
    plan[7] = 50.0
    result = invoke("pretrain", MICRO, *STEPS, "monitor.on_anomaly=skip", "monitor.spike_window=4",
                    "--out", str(micro_copy), "--restart")
    assert result.exit_code == 0, result.output
    anomalies = read_manifest(micro_copy / "pretrain")["monitor"]["anomalies"]
    assert [(a["step"], a["kind"], a["action"]) for a in anomalies] == [(7, "spike", "skip")]
    assert anomalies[0]["loss"] > 3 * anomalies[0]["reference"]


def test_rollback_without_a_checkpoint_stops_with_a_clear_message(micro_copy: Path, poison):
    plan, _ = poison
    plan[1] = float("nan")
    result = invoke("pretrain", MICRO, *STEPS, "--out", str(micro_copy), "--restart")
    assert result.exit_code == 3, result.output
    assert "no checkpoint to roll back to" in result.stderr


def test_monitor_records_tensorboard_probes_samples_and_mfu(micro_run: Path):
    pretrain = micro_run / "pretrain"
    manifest = read_manifest(pretrain)
    assert list((pretrain / "tensorboard").glob("events.out.tfevents.*"))
    probes = manifest["probes"]
    assert probes[0]["step"] == 0 and probes[-1]["step"] == manifest["summary"]["steps"]
    assert {p["suite"] for p in probes} == {"probes.text"} and all(0 <= p["score"] <= 1 for p in probes)
    assert manifest["samples"] and {"step", "prompt", "reply"} <= set(manifest["samples"][0])
    logs = [h for h in manifest["evals"] if "loss" in h]
    assert all(h["tokens_per_second"] > 0 and 0 < h["mfu"] < 1 for h in logs)
    assert manifest["monitor"]["peak_flops"] > 0 and manifest["monitor"]["anomalies"] == []
    # The steps' own span: inside the fit, which also holds set-up, final evaluation and save.
    assert 0 < manifest["monitor"]["train_seconds"] < manifest["summary"]["wall_seconds"]
    assert manifest["monitor"]["compile_seconds"] is None
    assert manifest["protected"]["probes"][0]["file"] == "protected/probes.text.jsonl"
    assert (pretrain / "protected" / "pretrain-validation.jsonl").is_file()


def test_compile_is_a_speed_setting_that_trains_and_reports_its_compile_time(micro_copy: Path):
    before = read_manifest(micro_copy / "pretrain")
    # Not part of a stage's identity: a finished stage is kept as it is.
    result = invoke("pretrain", MICRO, "compile=true", "--out", str(micro_copy))
    assert result.exit_code == 0, result.output
    assert read_manifest(micro_copy / "pretrain") == before
    result = invoke("pretrain", MICRO, "compile=true", "--restart", "--out", str(micro_copy))
    assert result.exit_code == 0, result.output
    assert "torch.compile took about" in result.output
    after = read_manifest(micro_copy / "pretrain")
    assert after["config"]["compile"] is True and after["monitor"]["compile_seconds"] > 0
    # Compiled kernels round differently, so the losses are close to eager's, not equal.
    eager = [h["loss"] for h in before["evals"] if "loss" in h]
    compiled = [h["loss"] for h in after["evals"] if "loss" in h]
    assert compiled == pytest.approx(eager, rel=2e-2)


def test_bad_monitor_settings_fail_up_front():
    result = invoke("pretrain", MICRO, "monitor.on_anomaly=ignore")
    assert result.exit_code == 2 and '"monitor.on_anomaly"' in result.stderr
    result = invoke("pretrain", MICRO, "monitor.report_to=[mlflow]")
    assert result.exit_code == 2 and "unknown target" in result.stderr
