"""Pretrain throughput: llmpipe's pretrain stage vs a minimal hand-written PyTorch loop.

Same model (preset, seed), same packed blocks, same optimiser, schedule, clipping and precision.
Prints a table and writes bench/results/pretrain_throughput.json. Run: `make bench` or
`python bench/pretrain_throughput.py --steps 60 --preset tiny`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def hand_written_loop(recipe, tokenizer_dir: Path, steps: int) -> dict:
    """nanoGPT-style loop: AdamW, warmup + cosine to min_lr, clip, autocast like the stage uses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from llmpipe.data.pipeline import stream_text
    from llmpipe.models import build_config
    from llmpipe.stages.pretrain import token_blocks
    from llmpipe.train.common import placement

    cfg = recipe.pretrain
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # The very blocks the stage trains on, from the same token cache.
    dataset, _ = token_blocks(cfg, tokenizer, tokenizer_dir, stream_text(cfg), [])
    blocks = torch.stack([dataset[i]["input_ids"] for i in range(len(dataset))])
    set_seed(recipe.seed)
    model = AutoModelForCausalLM.from_config(build_config(recipe.model, tokenizer))
    device = torch.device("cuda" if torch.cuda.is_available() and recipe.device != "cpu" else "cpu")
    model.to(device).train()
    bf16 = placement(recipe)["bf16"]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8,
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.learning_rate * step / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        floor = cfg.learning_rate * cfg.min_lr_ratio
        return floor + (cfg.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    generator = torch.Generator().manual_seed(recipe.seed)
    order = torch.randperm(len(blocks), generator=generator)
    losses = []
    started = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        index = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(blocks)]
        batch = blocks[index].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - started
    tokens = steps * cfg.batch_size * cfg.max_length
    return {"tokens": tokens, "wall_seconds": wall, "tokens_per_second": tokens / wall,
            "mean_loss": sum(losses) / len(losses), "bf16": bf16}


def llmpipe_stage(recipe, run_dir: Path) -> dict:
    """The real pretrain stage, evaluation and periodic saving pushed past the end of the run.

    With logging pushed past the end too, the summary's train loss is the mean over the run."""
    from llmpipe.runs import read_manifest
    from llmpipe.stages import pretrain

    folder = pretrain.run(recipe, run_dir)
    summary = read_manifest(folder)["summary"]
    return {"tokens": summary["tokens"], "wall_seconds": summary["wall_seconds"],
            "tokens_per_second": summary["tokens_per_second"], "mean_loss": summary["train_loss"]}


def main() -> None:
    """Run both, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pretrain_throughput.json")
    args = parser.parse_args()

    import torch

    from llmpipe import tokenizer as tokenizer_stage
    from llmpipe.config import load_recipe
    from llmpipe.console import quiet_libraries

    quiet_libraries()
    os.chdir(ROOT)
    never = 10**9
    recipe = load_recipe(None, [
        f"model={args.preset}", f"precision={args.precision}",
        f"pretrain.max_steps={args.steps}", f"pretrain.batch_size={args.batch_size}",
        f"pretrain.max_length={args.max_length}", f"pretrain.warmup_steps={min(20, args.steps)}",
        f"pretrain.eval_every={never}", f"pretrain.save_every={never}", f"pretrain.log_every={never}",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench"
        tokenizer_dir = tokenizer_stage.run(recipe, run_dir)
        baseline = hand_written_loop(recipe, tokenizer_dir, args.steps)
        stage = llmpipe_stage(recipe, run_dir)
    ratio = stage["tokens_per_second"] / baseline["tokens_per_second"]
    result = {
        "benchmark": "pretrain_throughput",
        "preset": args.preset, "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
        "precision": "bf16" if baseline["bf16"] else "fp32",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "hand_written_loop": baseline, "llmpipe_pretrain": stage, "ratio_llmpipe_over_loop": ratio,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"{'run':22s} {'tokens':>9s} {'wall s':>8s} {'tok/s':>9s} {'mean loss':>10s}")
    for name, row in (("hand-written loop", baseline), ("llmpipe pretrain", stage)):
        print(f"{name:22s} {row['tokens']:>9,d} {row['wall_seconds']:>8.1f} {row['tokens_per_second']:>9,.0f} {row['mean_loss']:>10.4f}")
    print(f"ratio llmpipe / loop: {ratio:.3f}  ({result['precision']}, {args.preset}, {args.batch_size}x{args.max_length} tokens/step)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
