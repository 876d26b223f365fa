"""Scale-out on CPU: every training stage in one process against two processes under DDP and under FSDP2.

The same chain as tests/test_scaleout.py (micro preset, fp32, pretrain 12 steps): one process with
batch 4, then `accelerate launch` of 2 processes with batch 2 each (the same global batch) through
recipes/accelerate/ddp.yaml and fsdp-cpu.yaml: `run` (pretrain, sft, dpo), `align --method kto` and
`align --method rlhf` (reward, rlhf). For each stage and engine: the largest difference of a logged
training loss from the one-process run (absolute and relative), the largest difference of a
finished weight, and the stage's training seconds. The RL policy samples its replies per process,
so its row says only how far apart two samplings land. Training seconds are only comparable on a
quiet machine (each engine's stages are separate launches on the same 2 cores).

Prints a table and writes bench/results/scaleout.json. Run: `python bench/scaleout.py` (about 3
minutes on 2 cores; `--engines fsdp` for one engine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# AdamW named: pretraining's default Muon falls back to AdamW under FSDP (llmpipe/train/optim.py), so the
# one-process run it is compared with names it too.
SETTINGS = ["precision=fp32", "pretrain.max_steps=12", "pretrain.save_every=4", "pretrain.optimizer=adamw", "--device", "cpu"]
COMMANDS = (("run",), ("align", "--method", "kto"), ("align", "--method", "rlhf"))
STAGES = ("pretrain", "sft", "dpo", "kto", "reward", "rlhf")
CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp-cpu.yaml"}


def per_device(batch: int) -> list[str]:
    """The batch of every training section."""
    return [f"{section}.batch_size={batch}" for section in ("pretrain", "sft", "align", "reward")]


def train(out: Path, engine: str | None) -> float:
    """The chain into `out`: one process (engine None) or a 2-process launch; returns the wall seconds."""
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if engine else dict(os.environ)
    for command in COMMANDS:
        recipe = [str(ROOT / "recipes" / "micro.yaml"), *SETTINGS, *per_device(2 if engine else 4), "--out", str(out)]
        if engine:
            accelerate = str(Path(sys.executable).parent / "accelerate")
            argv = [accelerate, "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / CONFIGS[engine]),
                    "--num_processes", "2", "-m", "llmpipe.cli", *command, *recipe]
        else:
            argv = [sys.executable, "-m", "llmpipe.cli", *command, *recipe]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.time() - started


def manifest(folder: Path) -> dict[str, Any]:
    """A stage folder's manifest."""
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def compare(single: Path, other: Path, stage: str) -> dict[str, Any]:
    """Loss and weight differences of one stage against the one-process run, and its training seconds."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    losses = [[(h["step"], h["loss"]) for h in manifest(folder / stage)["evals"] if "loss" in h] for folder in (single, other)]
    pairs = [(a, b) for (_, a), (_, b) in zip(*losses)]
    loader = AutoModelForSequenceClassification if stage == "reward" else AutoModelForCausalLM
    weights = [loader.from_pretrained(folder / stage).state_dict() for folder in (single, other)]
    segments = manifest(other / stage)["segments"]
    return {
        "steps": [s for s, _ in losses[1]],
        "max_abs_loss_diff": max(abs(a - b) for a, b in pairs),
        "max_rel_loss_diff": max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs),
        "max_abs_weight_diff": max((weights[0][k].float() - weights[1][k].float()).abs().max().item() for k in weights[0]),
        "engine": segments[0].get("engine"),
        "train_seconds": round(sum(s.get("wall_seconds") or 0 for s in segments), 2),
        "same_steps": bool(losses[0]) and [s for s, _ in losses[0]] == [s for s, _ in losses[1]],
    }


def main() -> int:
    """Train the chain once per engine, print the table, write the JSON."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # the weight-loading bars of the comparisons
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="ddp,fsdp", help="comma-separated: ddp, fsdp")
    engines = parser.parse_args().engines.split(",")
    rows, walls = [], {}
    with tempfile.TemporaryDirectory(prefix="llmpipe-scaleout-") as tmp:
        single = Path(tmp) / "single"
        walls["single"] = train(single, None)
        for engine in engines:
            walls[engine] = train(Path(tmp) / engine, engine)
            for stage in STAGES:
                row = {"stage": stage, "engine_config": CONFIGS[engine], **compare(single, Path(tmp) / engine, stage)}
                rows.append(row)
    print(f"{'stage':9s} {'config':14s} {'engine':7s} {'max |dloss|':>11s} {'rel':>9s} {'max |dw|':>9s} {'train s':>8s}")
    for r in rows:
        print(f"{r['stage']:9s} {r['engine_config']:14s} {r['engine']:7s} {r['max_abs_loss_diff']:11.2e} "
              f"{r['max_rel_loss_diff']:9.2e} {r['max_abs_weight_diff']:9.2e} {r['train_seconds']:8.2f}")
    print("wall seconds of the whole chain: " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))
    import accelerate
    import torch
    import transformers

    result = {"device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), 2 processes, gloo",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__},
              "settings": SETTINGS, "rows": rows, "chain_wall_seconds": {k: round(v, 1) for k, v in walls.items()},
              "note": "rlhf samples per process: its differences are two samplings', not an error"}
    out = ROOT / "bench" / "results" / "scaleout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
