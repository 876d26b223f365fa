"""What an `accelerate launch` with DeepSpeed asks of a recipe, checked before anything trains.

A DeepSpeed JSON (recipes/accelerate/zero2.json, zero3.json) may state the batch, the accumulation, the
precision, the clipping and the optimiser itself. llmpipe's configs leave them on "auto", which the
HF Trainer fills from the recipe; a number there must equal what the recipe trains with, or the
Trainer refuses it (transformers' `HfTrainerDeepSpeedConfig.fill_match`) with a multi-line error
when the stage builds its trainer: after the stages before it have trained. `check_deepspeed`
makes the same comparison for every section the command trains, before the first one starts, and
says in one line which key of which file disagrees with which recipe key.

`train_batch_size` is the global batch: per-process batch x accumulation x processes. A launch whose
process count does not divide it can train it with no per-process batch at all; one that divides it
names the per-process batch that would.

The DeepSpeed path itself needs GPUs (and `pip install deepspeed`): it is untested here, only these
checks are (tests/test_launch_configs.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmpipe.config import Recipe, TrainConfig
from llmpipe.core.errors import UserError

AUTO = "auto"


def processes() -> int:
    """How many processes the launch started (WORLD_SIZE; 1 outside a launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_config_file() -> Path | None:
    """The DeepSpeed JSON of this launch (accelerate passes it as ACCELERATE_DEEPSPEED_CONFIG_FILE), or None."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    name = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    return None if name in ("", "none") else Path(name)


def _lookup(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted key (`bf16.enabled`), AUTO when the key is absent (the Trainer fills it)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return AUTO
        node = node[part]
    return node


def _line_of(text: str, key: str) -> int | None:
    """The line of the JSON text where `key`'s last part first appears (for the error's location)."""
    needle = f'"{key.rsplit(".", 1)[-1]}"'
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return None


def deepspeed_mismatches(config: dict[str, Any], cfg: TrainConfig, section: str, bf16: bool, world: int) -> list[tuple[str, str, str]]:
    """Where a DeepSpeed config disagrees with a recipe section trained by `world` processes (bf16: the
    recipe's resolved precision): [(json key, what is wrong, how to fix it)]; [] when consistent."""
    found: list[tuple[str, str, str]] = []
    global_batch = cfg.batch_size * cfg.grad_accum * world
    expected = {
        "train_micro_batch_size_per_gpu": (cfg.batch_size, f"{section}.batch_size"),
        "gradient_accumulation_steps": (cfg.grad_accum, f"{section}.grad_accum"),
        "gradient_clipping": (cfg.max_grad_norm, f"{section}.max_grad_norm"),
        "optimizer.params.lr": (cfg.learning_rate, f"{section}.learning_rate"),
        "optimizer.params.weight_decay": (cfg.weight_decay, f"{section}.weight_decay"),
        "bf16.enabled": (bf16, "precision"),
        "fp16.enabled": (False, "precision"),
    }
    total = _lookup(config, "train_batch_size")
    if total != AUTO:
        if not isinstance(total, int) or total % world:
            found.append(("train_batch_size", f"is {total}, which the {world} processes of this launch cannot split evenly",
                          "set it to auto (the recipe's batch_size x grad_accum x processes), or launch a process count that divides it"))
        elif total != global_batch:
            per_process = total // (cfg.grad_accum * world) if total % (cfg.grad_accum * world) == 0 else None
            fix = f"set {section}.batch_size={per_process}" if per_process else f"change {section}.grad_accum"
            found.append(("train_batch_size", f"is {total}, but {section}.batch_size {cfg.batch_size} x grad_accum "
                          f"{cfg.grad_accum} x {world} processes = {global_batch}", f"set it to auto, or {fix}"))
    for key, (wanted, field) in expected.items():
        value = _lookup(config, key)
        if value == AUTO or value == wanted:
            continue
        if key == "fp16.enabled":
            found.append((key, "is true, but llmpipe never trains in fp16 (bf16 autocast or fp32)", "set it to false or auto"))
        elif key == "bf16.enabled":
            found.append((key, f"is {str(value).lower()}, but the recipe trains in {'bf16' if bf16 else 'fp32'} here",
                          "set it to auto (the recipe's precision decides)"))
        else:
            found.append((key, f"is {value}, but {field} is {wanted}", f"set it to auto (the recipe decides), or {field}={value}"))
    return found


def check_deepspeed(recipe: Recipe, sections: list[str], bf16: bool) -> None:
    """Under a DeepSpeed launch: its JSON exists, is JSON, and agrees with every section the command
    trains (deepspeed_mismatches); the first disagreement is a one-line UserError naming the file,
    its line and the key."""
    path = deepspeed_config_file()
    if path is None:
        return
    if not path.is_file():
        raise UserError("DeepSpeed config file not found (accelerate reads it relative to the folder you launch from)",
                        file=str(path), field="deepspeed_config.deepspeed_config_file",
                        hint="launch from the folder the accelerate config's path is relative to, or make the path absolute")
    text = path.read_text(encoding="utf-8")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise UserError(f"not valid JSON ({e})", file=str(path)) from None
    world = processes()
    for section in sections:
        cfg = getattr(recipe, section, None)
        if not isinstance(cfg, TrainConfig):
            continue
        for key, what, fix in deepspeed_mismatches(config, cfg, section, bf16, world):
            raise UserError(what, file=str(path), line=_line_of(text, key), field=key, hint=fix)
