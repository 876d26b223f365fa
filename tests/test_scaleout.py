"""Scale-out: every stage under `accelerate launch` with 2 processes on CPU (gloo), through the launch
configs in recipes/accelerate/, against one process at the same global batch.

One process trains with batch 4; two processes with 2 each. Everything runs in fp32, so the training
losses must agree to float rounding (data parallelism only changes the order of the gradient sums;
FSDP also gathers and scatters the weights, which is exact). The RL policy samples its replies, and
each process draws its own, so its losses are compared only as "finite, and the same number of
steps"; its reward model is deterministic and compared in full.

- DDP (ddp.yaml): `run` (pretrain, sft, dpo) and `align --method rlhf` (reward, rlhf).
- FSDP2 (fsdp-cpu.yaml): `run` killed with SIGKILL after pretrain's first sharded checkpoint, then run
  again (pretrain resumes; sft and dpo train); `align --method kto`; and `align --method rlhf` by two
  launches of one process each, `--num_machines 2` on localhost: the multi-node rehearsal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MICRO, ROOT, invoke, read_manifest

from llmpipe.runs.seals import SEAL

CONFIGS = ROOT / "recipes" / "accelerate"
# pretrain trains 12 steps with a checkpoint every 4: the SIGKILL lands after the first one, well before the end.
# AdamW named: pretraining's default Muon is not sharded by FSDP (llmpipe/train/optim.py), which then trains with
# AdamW, so the one-process runs these are compared with must too.
SETTINGS = ["precision=fp32", "pretrain.max_steps=12", "pretrain.save_every=4", "pretrain.optimizer=adamw"]
STAGES = ("pretrain", "sft", "dpo", "reward", "rlhf")
# Measured (bench/scaleout.py): FSDP2 within 9.5e-7 of one process in any logged loss, 1.7e-7 relative.
FSDP_TOLERANCE = {"rel": 1e-5, "abs_": 1e-6}
# Two processes on two cores: one OpenMP thread each.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _per_device(batch: int) -> list[str]:
    return [f"{section}.batch_size={batch}" for section in ("pretrain", "sft", "align", "reward")]


def _launch_command(config: str, *args: str, launch: tuple[str, ...] = ("--num_processes", "2")) -> list[str]:
    accelerate = Path(sys.executable).parent / "accelerate"
    return [str(accelerate), "launch", "--config_file", str(CONFIGS / config), *launch, "-m", "llmpipe.cli", *args]


def _launch(config: str, *args: str) -> tuple[str, str]:
    """Run a 2-process launch to its end; returns its (stdout, stderr)."""
    done = subprocess.run(_launch_command(config, *args), capture_output=True, text=True, timeout=900, cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout, done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(stage_dir: Path) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in read_manifest(stage_dir)["evals"] if "loss" in h]


def _assert_losses_match(one: Path, two: Path, rel: float = 2e-4, abs_: float = 2e-5) -> None:
    a, b = _losses(one), _losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] and a
    for (step, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=rel, abs=abs_), f"{one.name} step {step}: {x} (1 process) vs {y} (2 processes)"


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The one-process run: micro chain, then kto and rlhf on its SFT, batch 4."""
    out = tmp_path_factory.mktemp("scaleout") / "single"
    for command, options in (("run", []), ("align", ["--method", "kto"]), ("align", ["--method", "rlhf"])):
        result = invoke(command, MICRO, *SETTINGS, *_per_device(4), *options, "--out", str(out), "--device", "cpu")
        assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, str]:
    """(two-process DDP run, the launches' output): micro chain, then rlhf on its SFT."""
    out = tmp_path_factory.mktemp("scaleout") / "ddp"
    output = ""
    for command, options in (("run", []), ("align", ["--method", "rlhf"])):
        output += _launch("ddp.yaml", command, MICRO, *SETTINGS, *_per_device(2), *options, "--out", str(out), "--device", "cpu")[0]
    return out, output


def test_every_stage_completes_under_a_two_process_launch(single, ddp):
    double, output = ddp
    for stage in ("tokenizer", *STAGES):
        assert read_manifest(double / stage)["status"] == "complete", stage
    # One summary table (run's: align prints only its stage folder), by the first process only.
    assert output.count("held-out implicit-reward accuracy") == 1
    # Both processes trained: the global batch, so the tokens seen, equals the one-process run's.
    assert read_manifest(double / "pretrain")["summary"]["tokens"] == read_manifest(single / "pretrain")["summary"]["tokens"]
    assert (double / "tokenizer" / "tokenizer.json").read_bytes() == (single / "tokenizer" / "tokenizer.json").read_bytes()
    assert {read_manifest(double / stage)["segments"][0]["engine"] for stage in STAGES} == {"ddp"}


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "reward"])
def test_ddp_losses_match_one_process_at_the_same_global_batch(single, ddp, stage):
    _assert_losses_match(single / stage, ddp[0] / stage)


def test_rl_policy_trains_the_same_steps_with_finite_losses(single, ddp):
    one, two = _losses(single / "rlhf"), _losses(ddp[0] / "rlhf")
    assert [s for s, _ in one] == [s for s, _ in two] and one
    assert all(abs(loss) < 1e3 for _, loss in two)
    assert read_manifest(ddp[0] / "rlhf")["reward_model"]["path"] == str((ddp[0] / "reward").resolve())


def _kill_after_checkpoint(command: list[str], checkpoints: Path) -> Path:
    """Start a launch, SIGKILL it and its workers once a checkpoint is sealed; returns that checkpoint."""
    import psutil

    launcher = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while launcher.poll() is None and time.time() < deadline and not list(checkpoints.glob(f"checkpoint-*/{SEAL}")):
        time.sleep(0.005)
    assert launcher.poll() is None, f"finished before it could be killed:\n{launcher.stderr.read()[-3000:]}"
    # torch's launcher starts each worker in a session of its own: kill them by id, then the launcher.
    workers = psutil.Process(launcher.pid).children(recursive=True)
    for process in [*workers, psutil.Process(launcher.pid)]:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(workers, timeout=60)
    launcher.wait(timeout=60)
    return max(checkpoints.glob(f"checkpoint-*/{SEAL}"), key=lambda p: int(p.parent.name.split("-")[1])).parent


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory) -> tuple[Path, Path, str]:
    """(two-process FSDP run, the checkpoint its SIGKILL left, the rerun's progress lines): micro chain killed
    during pretrain and run again, then kto; rlhf by two one-process "machines"."""
    out = tmp_path_factory.mktemp("scaleout") / "fsdp"
    run = ["run", MICRO, *SETTINGS, *_per_device(2), "--out", str(out), "--device", "cpu"]
    killed = _kill_after_checkpoint(_launch_command("fsdp-cpu.yaml", *run), out / ".pretrain.partial" / "checkpoints")
    # What the kill left: a sharded checkpoint, one file per process, and no whole-model weights.
    shards = sorted(p.name for p in (killed / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"] and not (killed / "model.safetensors").exists(), list(killed.iterdir())
    progress = _launch("fsdp-cpu.yaml", *run)[1]  # llmpipe's progress lines go to stderr
    _launch("fsdp-cpu.yaml", "align", MICRO, "--method", "kto", *SETTINGS, *_per_device(2), "--out", str(out), "--device", "cpu")
    port = _free_port()
    nodes = [subprocess.Popen(_launch_command("fsdp-cpu.yaml", "align", MICRO, "--method", "rlhf", *SETTINGS, *_per_device(2),
                                              "--out", str(out), "--device", "cpu",
                                              launch=("--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                                                      "--main_process_ip", "127.0.0.1", "--main_process_port", str(port))),
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return out, killed, progress


def test_fsdp_resumes_a_sigkilled_run_from_its_sharded_checkpoint(single, fsdp):
    out, killed, progress = fsdp
    assert f"pretrain  resuming from {killed}" in progress
    segments = read_manifest(out / "pretrain")["segments"]
    step = int(killed.name.split("-")[1])
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, step), (step, 12)]
    # The resumed run's losses are the uninterrupted one-process run's (below, for every stage).
    _assert_losses_match(single / "pretrain", out / "pretrain", **FSDP_TOLERANCE)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "kto", "reward"])
def test_fsdp_losses_match_one_process_at_the_same_global_batch(single, fsdp, stage):
    out = fsdp[0]
    assert all(s["engine"] == "fsdp2" and s["processes"] == 2 for s in read_manifest(out / stage)["segments"]), stage
    _assert_losses_match(single / stage, out / stage, **FSDP_TOLERANCE)


def test_fsdp_stages_are_plain_save_pretrained_folders(single, fsdp):
    import torch
    from transformers import AutoModelForCausalLM

    out = fsdp[0]
    for stage in ("pretrain", "sft", "dpo", "kto", "rlhf"):
        assert read_manifest(out / stage)["status"] == "complete", stage
        assert not any(p.name.startswith("pytorch_model_fsdp") for p in (out / stage).iterdir()), stage
    # The whole model was gathered: its weights are the one-process run's, to float rounding.
    gathered = AutoModelForCausalLM.from_pretrained(out / "dpo").state_dict()
    reference = AutoModelForCausalLM.from_pretrained(single / "dpo").state_dict()
    assert gathered.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(gathered[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_two_machines_on_localhost_train_the_rl_stages_together(single, fsdp):
    out = fsdp[0]
    for stage in ("reward", "rlhf"):
        assert all(s["engine"] == "fsdp2" and s["processes"] == 2 for s in read_manifest(out / stage)["segments"]), stage
    one, two = _losses(single / "rlhf"), _losses(out / "rlhf")
    assert [s for s, _ in one] == [s for s, _ in two] and all(abs(loss) < 1e3 for _, loss in two)
