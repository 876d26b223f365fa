"""Pinned losses of a tiny fixed-seed pretraining run: a silent change of the training maths fails here.

fp32 on CPU, so the numbers do not depend on bf16 support. If a deliberate change moves them (new
initialisation, schedule, packing, the embedded data), re-pin them in the same commit and say why;
the assertion message prints the new values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest

# Losses at steps 1-6 of the micro preset on data/ (fp32, seed 0), measured 2026-12-03 with pretraining's Muon + WSD
# defaults (AdamW + cosine before: 6.1633, 6.1640, 6.0657, 5.9137, 5.9069, 5.8326).
GOLDEN_LOSSES = [6.1633, 6.1640, 6.1098, 5.9889, 5.9423, 5.8053]


def pretrain_losses(micro_run: Path, out: Path) -> list[float]:
    result = invoke("pretrain", MICRO, "precision=fp32", "device=cpu", "max_steps=6", "log_every=1",
                    "eval_every=6", "save_every=6", "warmup_steps=1", "--from", str(micro_run / "tokenizer"),
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    history = read_manifest(out / "pretrain")["evals"]
    return [h["loss"] for h in history if "loss" in h]


def test_first_losses_match_the_pinned_values(micro_run: Path, tmp_path: Path):
    losses = pretrain_losses(micro_run, tmp_path / "golden")
    assert len(losses) == 6
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=5e-4), f"losses moved: {losses}"
    assert losses[-1] < losses[0]
