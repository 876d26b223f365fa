"""The same commands on real public data (../shared/data): alpaca for SFT, hh-rlhf for DPO."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MICRO, SHARED_DATA, invoke, read_manifest

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "alpaca.train.jsonl").exists(), reason="../shared/data not present")


def test_chain_on_shakespeare_alpaca_and_hh(tmp_path: Path):
    d = SHARED_DATA
    result = invoke(
        "run", MICRO, "--out", str(tmp_path / "real"),
        f"tokenizer.train_files={d}/tinyshakespeare.train.jsonl",
        f"tokenizer.validation_files={d}/tinyshakespeare.validation.jsonl",
        f"pretrain.train_files={d}/tinyshakespeare.train.jsonl",
        f"pretrain.validation_files={d}/tinyshakespeare.validation.jsonl",
        f"sft.train_files={d}/alpaca.train.jsonl",
        f"sft.validation_files={d}/alpaca.validation.jsonl",
        f"align.train_files={d}/hh_helpful_base.train.jsonl",
        f"align.validation_files={d}/hh_helpful_base.validation.jsonl",
        "align.max_length=128",
    )
    assert result.exit_code == 0, result.output
    sft = read_manifest(tmp_path / "real" / "sft")
    rows = {s["split"]: s["rows"] for s in sft["data"]["sources"]}
    assert rows == {"train": 3985, "validation": 258}
    # What cleaning dropped is counted, and the rest is what SFT trained on.
    assert sft["data"]["train_rows"] == 3985 - sum(sft["data"]["dropped"].values())
    # Alpaca has no `answer` field, so SFT reports held-out loss before → after.
    assert sft["summary"]["metric"]["name"] == "held-out loss"
    assert sft["summary"]["metric"]["after"] < sft["summary"]["metric"]["before"]
    dpo = read_manifest(tmp_path / "real" / "dpo")
    assert {s["split"]: s["rows"] for s in dpo["data"]["sources"]} == {"train": 1853, "validation": 112}
    metrics = dpo["metrics"]
    for key in ("implicit_reward_accuracy", "per_token_logp_accuracy", "summed_logp_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0 and 0.0 <= metrics[f"{key}_before"] <= 1.0, key
    assert metrics["preference_rows"] == 16 and metrics["implicit_reward_accuracy_before"] == 0.5
    assert dpo["metrics"]["reward_accuracy"] is not None
    assert "held-out implicit-reward accuracy" in result.stdout
