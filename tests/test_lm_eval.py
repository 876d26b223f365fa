"""A checkpoint evaluates with lm-evaluation-harness as a plain local HF model folder, on a local task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytest.importorskip("lm_eval")

TASK_DIR = ROOT / "tests" / "fixtures" / "lm_eval_task"
TASK = "llmpipe_colours"


def test_lm_eval_scores_the_sft_checkpoint_on_a_local_task(micro_run: Path, tmp_path: Path):
    output = tmp_path / "lm_eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    command = [
        sys.executable, "-m", "lm_eval",
        "--model", "hf",
        "--model_args", f"pretrained={micro_run / 'sft'},dtype=float32",
        "--tasks", TASK,
        "--include_path", str(TASK_DIR),
        "--device", "cpu",
        "--batch_size", "4",
        "--limit", "10",
        "--output_path", str(output),
    ]
    # The task's data_files path is relative to the repository root, as in the README command.
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results_files = list(output.rglob("results_*.json"))
    assert len(results_files) == 1, done.stderr[-3000:]
    result = json.loads(results_files[0].read_text(encoding="utf-8"))["results"][TASK]
    assert result["sample_len"] == 10
    assert 0.0 <= result["acc,none"] <= 1.0 and 0.0 <= result["acc_norm,none"] <= 1.0
