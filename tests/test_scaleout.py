"""Scale-out: every stage under `accelerate launch` with 2 processes on CPU (gloo), through the
tested DDP config in recipes/accelerate/, against one process at the same global batch.

One process trains with batch 4; two processes with 2 each. Both run in fp32, so the training
losses must agree to float rounding (DDP only changes the order of the gradient sums). The RL
policy samples its replies, and each process draws its own, so its losses are compared only as
"finite, and the same number of steps"; its reward model is deterministic and compared in full.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MICRO, ROOT, invoke, read_manifest

DDP_CONFIG = ROOT / "recipes" / "accelerate" / "ddp.yaml"
FP32 = ["precision=fp32"]
STAGES = ("pretrain", "sft", "dpo", "reward", "rlhf")


def _per_device(batch: int) -> list[str]:
    return [f"{section}.batch_size={batch}" for section in ("pretrain", "sft", "align", "reward")]


def _launch(*args: str) -> str:
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--config_file", str(DDP_CONFIG), "--num_processes", "2",
               "-m", "llmpipe.cli", *args]
    # One OpenMP thread per process: two processes on two cores.
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def _losses(stage_dir: Path) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in read_manifest(stage_dir)["evals"] if "loss" in h]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, str]:
    """(one-process run, two-process run, the launch's stdout): micro chain, then rlhf on its SFT."""
    root = tmp_path_factory.mktemp("scaleout")
    single, double = root / "single", root / "double"
    for command, options in (("run", []), ("align", ["--method", "rlhf"])):
        result = invoke(command, MICRO, *FP32, *_per_device(4), *options, "--out", str(single), "--device", "cpu")
        assert result.exit_code == 0, result.output
    stdout = ""
    for command, options in (("run", []), ("align", ["--method", "rlhf"])):
        stdout += _launch(command, MICRO, *FP32, *_per_device(2), *options, "--out", str(double), "--device", "cpu")
    return single, double, stdout


def test_every_stage_completes_under_a_two_process_launch(runs):
    single, double, stdout = runs
    for stage in ("tokenizer", *STAGES):
        assert read_manifest(double / stage)["status"] == "complete", stage
    # One summary table per command, printed by the first process only.
    assert stdout.count("held-out implicit-reward accuracy") == 1
    # Both processes trained: the global batch, so the tokens seen, equals the one-process run's.
    assert read_manifest(double / "pretrain")["summary"]["tokens"] == read_manifest(single / "pretrain")["summary"]["tokens"]
    assert (double / "tokenizer" / "tokenizer.json").read_bytes() == (single / "tokenizer" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "reward"])
def test_losses_match_one_process_at_the_same_global_batch(runs, stage):
    single, double, _ = runs
    one, two = _losses(single / stage), _losses(double / stage)
    assert [s for s, _ in one] == [s for s, _ in two] and one
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=2e-4, abs=2e-5), f"{stage} step {step}: {a} (1 process) vs {b} (2 processes)"


def test_rl_policy_trains_the_same_steps_with_finite_losses(runs):
    single, double, _ = runs
    one, two = _losses(single / "rlhf"), _losses(double / "rlhf")
    assert [s for s, _ in one] == [s for s, _ in two] and one
    assert all(abs(loss) < 1e3 for _, loss in two)
    assert read_manifest(double / "rlhf")["reward_model"]["path"] == str((double / "reward").resolve())


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "zero2.yaml", "zero3.yaml"])
def test_accelerate_configs_are_valid(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "recipes" / "accelerate" / name))
    assert config.mixed_precision in ("no", None) or name.startswith("zero")
    deepspeed = getattr(config, "deepspeed_config", None) or {}
    if "deepspeed_config_file" in deepspeed:
        ds = json.loads((ROOT / deepspeed["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[4])
