"""Pinned first steps of every post-training stage on the micro chain: a silent change of the training
maths of sft, dpo, kto, the reward model or grpo fails here (tests/test_golden_loss.py pins pretrain).

Each stage trains 4 steps through the CLI, fp32 on CPU with one thread, logging every step; the pins
are the loss and the gradient norm (before clipping) of each step, read from the manifest's log
history. The numbers were bit-identical between processes and within 2e-6 (loss) / 8e-6 (grad norm)
of 2-thread runs, so the tolerances below only absorb another CPU's kernels, while a 10% change of
any stage's learning rate moves at least one of its pins by several times its tolerance.

Settings that make the pins mean something on a model this small:
- The chain is its own fp32 pretrain (6 steps from the session's tokenizer) and sft: the session's
  micro run trains in bf16 wherever the CPU has it, which would make every number machine-dependent.
- No warmup, and learning rates above the recipe's for the preference stages (dpo and the reward
  model 1e-3, kto 5e-3), so that 4 steps move the loss well beyond the tolerance. The preference
  stages train on the first 32 pairs of data/prefs.train.jsonl; DPO and KTO score their reference
  before step 1 on the 16 rows (seeded sample) their 4 steps of 4 read (train.args.rows_for_steps).
  Probes, samples, held-out scoring and the gate are off.
- grpo samples its completions; the recipe's seed fixes them (same replies, same rewards in every
  run). Rule rewards alone pin nothing here: no reply of the micro model is ever right, so every
  exact_match reward is 0, the group advantages vanish and loss and gradient are exactly 0 at every
  step whatever the maths. So the grpo run keeps exact_match on data/verifiable.* and adds the
  chain's reward model (align.reward_model), whose scores differ between the replies of a prompt. Its
  loss is still close to 0 by construction (on-policy, the advantage term is 0 for equal-length replies
  and the KL term a few 1e-4), so the pin that tracks the update is the gradient norm; the loss is
  pinned as well (its 4th step, with replies of unequal length, is not small).
- reward: `align --method rlhf` trains the reward model (pinned), then a 1-step RLOO policy (not pinned).

If a deliberate change moves the numbers (initialisation, schedule, packing, a TRL upgrade, the
embedded data), re-pin them in the same commit and say why; the assertion message prints the new values.
Only the CLI and files on disk are used: the manifest is read as plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import MICRO, ROOT, invoke

# Per stage: the loss and gradient norm of steps 1-4 (fp32, one thread, seed 0), measured 2026-12-03 and re-pinned
# the same day when pretraining's defaults became Muon + WSD (every stage starts from it); dpo and kto also
# when they began to train on the rows their steps read (rows_for_steps).
GOLDEN = {
    "sft": {"loss": [5.928061, 5.868021, 5.865434, 5.855804], "grad_norm": [2.632672, 2.576253, 2.369114, 2.632689]},
    "dpo": {"loss": [0.693147, 0.670232, 0.683576, 0.677017], "grad_norm": [1.099064, 0.814070, 0.538069, 0.857901]},
    "kto": {"loss": [0.5, 0.503370, 0.576492, 0.489642], "grad_norm": [0.396992, 0.334230, 0.436210, 0.346590]},
    "reward": {"loss": [0.672945, 0.714461, 0.679917, 0.654818], "grad_norm": [1.682128, 2.916531, 2.842916, 4.342579]},
    "grpo": {"loss": [0.000001, 0.000321, 0.000689, 0.198859], "grad_norm": [1.564681, 1.452852, 1.286351, 1.670977]},
}
# Absolute tolerances: SFT's loss is ~6 (as pretrain's, test_golden_loss.py), the others' ~0.5.
LOSS_TOL = {"sft": 5e-4, "dpo": 1e-4, "kto": 1e-4, "reward": 1e-4, "grpo": 2e-5}
GRAD_TOL = 1e-3

FP32 = ["precision=fp32", "device=cpu", "monitor.report_to=[]"]
# 4 logged steps, one evaluation at the end, nothing else measured.
STEPS = ["max_steps=4", "log_every=1", "eval_every=4", "save_every=4", "eval_batches=1", "warmup_steps=0", "probes=[]",
         "sample_prompts=[]", "gate.action=off"]
VERIFIABLE = ["align.train_files=[data/verifiable.train.jsonl]", "align.validation_files=[data/verifiable.validation.jsonl]"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the pins do not depend on the machine's core count (summation order), and on a
    busy 2-core machine two threads per process run these steps many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cli(*args: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output


def _curves(folder: Path) -> dict[str, list[float]]:
    """Loss and gradient norm per logged training step, from the stage's manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    steps = [h for h in manifest["evals"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    return {"loss": [h["loss"] for h in steps], "grad_norm": [h["grad_norm"] for h in steps]}


def _check(stage: str, folder: Path) -> None:
    got = _curves(folder)
    message = f"{stage} moved: {json.dumps({k: [round(x, 6) for x in v] for k, v in got.items()})}"
    assert got["loss"] == pytest.approx(GOLDEN[stage]["loss"], abs=LOSS_TOL[stage]), message
    assert got["grad_norm"] == pytest.approx(GOLDEN[stage]["grad_norm"], abs=GRAD_TOL), message


@pytest.fixture(scope="module")
def chain(micro_run: Path, tmp_path_factory) -> Path:
    """An fp32 pretrain (the golden pretrain's settings) and a 4-step fp32 sft, plus prefs.head.jsonl beside the run."""
    run = tmp_path_factory.mktemp("golden-stages") / "run"
    lines = (ROOT / "data" / "prefs.train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (run.parent / "prefs.head.jsonl").write_text("".join(lines[:32]), encoding="utf-8")
    _cli("pretrain", MICRO, *FP32, "max_steps=6", "log_every=1", "eval_every=6", "save_every=6", "warmup_steps=1",
         "--from", str(micro_run / "tokenizer"), "--out", str(run))
    # Without replay: the pins are of TRL's SFT maths on chat rows (replay changes the batches, not the maths).
    _cli("sft", MICRO, *FP32, *STEPS, "accuracy_rows=0", "replay_fraction=0", "--out", str(run))
    return run


@pytest.fixture(scope="module")
def reward_model(chain: Path) -> Path:
    head = chain.parent / "prefs.head.jsonl"
    reward = ["reward.max_steps=4", "reward.log_every=1", "reward.eval_every=4", "reward.save_every=4", "reward.eval_batches=1",
              "reward.warmup_steps=0", "reward.learning_rate=1e-3", "reward.preference_rows=0", "reward.gate.action=off",
              f"reward.train_files=[{head}]"]
    # The policy after it: one RLOO step, held-out scoring on one prompt; not pinned.
    _cli("align", MICRO, "--method", "rlhf", *FP32, *STEPS, "max_steps=1", "eval_every=1", "save_every=1", "heldout_prompts=1",
         *reward, "--out", str(chain))
    return chain / "reward"


def test_sft_first_steps_match_the_pinned_values(chain: Path):
    _check("sft", chain / "sft")


@pytest.mark.parametrize("method, lr", [("dpo", "1e-3"), ("kto", "5e-3")])
def test_preference_first_steps_match_the_pinned_values(chain: Path, method: str, lr: str):
    head = chain.parent / "prefs.head.jsonl"
    _cli("align", MICRO, "--method", method, *FP32, *STEPS, f"learning_rate={lr}", "preference_rows=0",
         f"train_files=[{head}]", "--out", str(chain))
    _check(method, chain / method)


def test_reward_model_first_steps_match_the_pinned_values(reward_model: Path):
    _check("reward", reward_model)


def test_grpo_first_steps_match_the_pinned_values(chain: Path, reward_model: Path):
    _cli("align", MICRO, "--method", "grpo", *FP32, *STEPS, "learning_rate=1e-3", "heldout_prompts=1",
         f"align.reward_model={reward_model}", *VERIFIABLE, "--out", str(chain))
    manifest = json.loads((chain / "grpo" / "manifest.json").read_text())
    assert manifest["metrics"]["rewards"] == ["reward_model", "exact_match"]
    # The sampled replies: the same rewards in every run (seeded), and they differ within a group.
    assert all(h["reward_std"] > 0 for h in manifest["evals"] if "loss" in h)
    _check("grpo", chain / "grpo")
