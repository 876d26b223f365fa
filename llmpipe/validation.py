"""Range and choice checks of a loaded recipe, run before any heavy import: a typo costs a second."""

from __future__ import annotations

from typing import Any

from llmpipe.registry import ALIGN_METHODS, RL_METHODS
from llmpipe.config import ANOMALY_POLICIES, DEVICES, DPO_LOSS_TYPES, GATE_ACTIONS, NEEDS_LABEL_SMOOTHING, PRECISIONS, REPORT_TO, RL_ALGORITHMS, LoRAConfig, MonitorConfig, Recipe, TrainConfig
from llmpipe.core.errors import UserError


def validate(recipe: Recipe) -> None:
    """Check ranges and choices of every setting; raise a UserError naming the first bad key."""
    src = recipe.source

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(what, file=src, field=key)

    from llmpipe.models import PRESETS  # light module: plain dicts, no torch

    # The name becomes the run folder runs/<name>: a path in it would write outside runs/.
    need(bool(recipe.name.strip()) and recipe.name not in (".", "..") and not any(c in recipe.name for c in "/\\\0"),
         "name", f"must be a plain folder name (no '/', '\\' or '..'), got {recipe.name!r}")
    need(recipe.model in PRESETS, "model", f"unknown model preset; choose one of {', '.join(PRESETS)}")
    need(recipe.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
    need(recipe.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    need(recipe.seed >= 0, "seed", "must be >= 0")
    tok = recipe.tokenizer
    need(260 <= tok.vocab_size <= 1_000_000, "tokenizer.vocab_size", "must be between 260 and 1000000 (256 bytes + special tokens)")
    need(tok.min_frequency >= 1, "tokenizer.min_frequency", "must be >= 1")
    need(tok.max_train_bytes > 0, "tokenizer.max_train_bytes", "must be > 0")
    need(bool(tok.train_files), "tokenizer.train_files", "needs at least one file")
    for stage in ("pretrain", "sft", "align", "reward"):
        cfg: TrainConfig = getattr(recipe, stage)
        need(bool(cfg.train_files), f"{stage}.train_files", "needs at least one file")
        for key in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every", "eval_batches"):
            need(getattr(cfg, key) >= 1, f"{stage}.{key}", "must be >= 1")
        need(cfg.max_length >= 8, f"{stage}.max_length", "must be >= 8")
        need(0 < cfg.learning_rate < 1, f"{stage}.learning_rate", "must be in (0, 1)")
        need(0 <= cfg.min_lr_ratio <= 1, f"{stage}.min_lr_ratio", "must be in [0, 1]")
        need(0 <= cfg.warmup_steps <= cfg.max_steps, f"{stage}.warmup_steps", "must be in [0, max_steps]")
        need(cfg.weight_decay >= 0, f"{stage}.weight_decay", "must be >= 0")
        need(cfg.max_grad_norm > 0, f"{stage}.max_grad_norm", "must be > 0")
        need(0 < cfg.validation_fraction < 1, f"{stage}.validation_fraction", "must be in (0, 1)")
        need(cfg.bad_rows in ("fail", "skip"), f"{stage}.bad_rows", "must be fail or skip")
        need(not cfg.mixture_weights or len(cfg.mixture_weights) == len(cfg.train_files), f"{stage}.mixture_weights",
             f"needs one weight per train file ({len(cfg.train_files)})")
        need(all(w > 0 for w in cfg.mixture_weights), f"{stage}.mixture_weights", "weights must be > 0")
        clean = cfg.cleaning
        need(clean.min_chars >= 0 and clean.max_chars >= 0, f"{stage}.cleaning.min_chars", "lengths must be >= 0")
        need(0 < clean.max_repeated_line_share <= 1, f"{stage}.cleaning.max_repeated_line_share", "must be in (0, 1]")
        need(0 < clean.near_dedup_threshold < 1, f"{stage}.cleaning.near_dedup_threshold", "must be in (0, 1)")
        need(clean.near_dedup_ngram >= 1 and clean.decontaminate_ngram >= 1, f"{stage}.cleaning.near_dedup_ngram",
             "n-gram sizes must be >= 1")
        need(16 <= clean.near_dedup_permutations <= 1024, f"{stage}.cleaning.near_dedup_permutations", "must be in [16, 1024]")
        need(cfg.probe_every >= 0, f"{stage}.probe_every", "must be >= 0 (0: at every evaluation)")
        need(cfg.gate.action in GATE_ACTIONS, f"{stage}.gate.action", f"must be one of {', '.join(GATE_ACTIONS)}")
        need(cfg.gate.max_loss_increase >= 0, f"{stage}.gate.max_loss_increase", "must be >= 0 (a relative rise)")
        need(0 <= cfg.gate.max_probe_drop <= 1, f"{stage}.gate.max_probe_drop", "must be in [0, 1]")
    _validate_monitor(recipe.monitor, need)
    need(recipe.sft.accuracy_rows >= 0, "sft.accuracy_rows", "must be >= 0")
    need(recipe.sft.max_new_tokens >= 1, "sft.max_new_tokens", "must be >= 1")
    al = recipe.align
    need(al.method in ALIGN_METHODS, "align.method", f"must be one of {', '.join(ALIGN_METHODS)}")
    need(al.beta > 0, "align.beta", "must be > 0")
    need(al.loss_type in DPO_LOSS_TYPES, "align.loss_type", f"must be one of {', '.join(DPO_LOSS_TYPES)}")
    need(al.preference_rows >= 0, "align.preference_rows", "must be >= 0")
    _validate_rl(recipe, need)
    _validate_preference(recipe, need)


def _validate_preference(recipe: Recipe, need: Any) -> None:
    """DPO loss options, KTO's batch and weights, and the LoRA sections of sft and align."""
    al = recipe.align
    need(0 <= al.label_smoothing < 0.5, "align.label_smoothing", "must be in [0, 0.5)")
    need(al.loss_type not in NEEDS_LABEL_SMOOTHING or al.label_smoothing > 0, "align.label_smoothing",
         f"loss_type {al.loss_type} needs label_smoothing > 0 (e.g. 0.1: the assumed share of flipped labels)")
    need(al.desirable_weight > 0 and al.undesirable_weight > 0, "align.desirable_weight", "KTO weights must be > 0")
    need(al.method != "kto" or al.batch_size >= 2, "align.batch_size",
         "KTO needs >= 2 rows per batch: its KL estimate pairs each prompt with another row's completion")
    for stage in ("sft", "align"):
        lora: LoRAConfig = getattr(recipe, stage).lora
        need(lora.r >= 1, f"{stage}.lora.r", "must be >= 1 (the adapters' rank)")
        need(lora.alpha > 0, f"{stage}.lora.alpha", "must be > 0")
        need(0 <= lora.dropout < 1, f"{stage}.lora.dropout", "must be in [0, 1)")
        need("lm_head" not in lora.target_modules, f"{stage}.lora.target_modules",
             "lm_head cannot take an adapter: TRL's loss reads lm_head.weight directly, so it would never train")


def _validate_rl(recipe: Recipe, need: Any) -> None:
    """The online-RL keys of `align` and the `reward` section."""
    from llmpipe.eval.rewards import RULES

    al, online = recipe.align, recipe.align.method in RL_METHODS
    need(al.rl in RL_ALGORITHMS, "align.rl", f"must be one of {', '.join(RL_ALGORITHMS)}")
    need(al.method == "rlhf" or al.rl in ("rloo", al.method), "align.rl",
         f"only method rlhf takes an RL algorithm; method {al.method} names its own")
    need(online or not al.reward_model, "align.reward_model", f"method {al.method} uses no reward model; use rlhf, grpo or rloo")
    need(online or not al.rewards, "align.rewards", f"method {al.method} uses no rule rewards; use rlhf, grpo or rloo")
    for name in al.rewards:
        need(name in RULES, "align.rewards", f"unknown reward {name!r}; choose from {', '.join(RULES)}")
    need(al.num_generations >= 2, "align.num_generations", "must be >= 2 (each completion is compared with its siblings)")
    need(not online or al.batch_size % al.num_generations == 0, "align.batch_size",
         f"counts completions, so it must be a multiple of align.num_generations ({al.num_generations}); got {al.batch_size}")
    need(al.max_new_tokens >= 1, "align.max_new_tokens", "must be >= 1")
    need(al.temperature > 0, "align.temperature", "must be > 0 (sampling is what RL learns from)")
    need(al.max_kl > 0, "align.max_kl", "must be > 0")
    need(al.heldout_prompts >= 1, "align.heldout_prompts", "must be >= 1")
    need(recipe.reward.preference_rows >= 0, "reward.preference_rows", "must be >= 0")
    need(not recipe.reward.probes and not recipe.reward.sample_prompts, "reward.probes",
         "a reward model does not generate: leave reward.probes and reward.sample_prompts empty")


def _validate_monitor(mon: MonitorConfig, need: Any) -> None:
    import importlib.util

    for target in mon.report_to:
        need(target in REPORT_TO, "monitor.report_to", f"unknown target {target!r}; choose from {', '.join(REPORT_TO)}")
        need(importlib.util.find_spec(target) is not None, "monitor.report_to",
             f"{target} is not installed (pip install {target}, or drop it from monitor.report_to)")
    need(mon.on_anomaly in ANOMALY_POLICIES, "monitor.on_anomaly", f"must be one of {', '.join(ANOMALY_POLICIES)}")
    need(mon.spike_factor > 1, "monitor.spike_factor", "must be > 1")
    need(mon.spike_window >= 2, "monitor.spike_window", "must be >= 2")
    need(mon.max_rollbacks >= 0, "monitor.max_rollbacks", "must be >= 0")
    need(0 < mon.rollback_lr_factor <= 1, "monitor.rollback_lr_factor", "must be in (0, 1]")
    need(mon.peak_tflops >= 0, "monitor.peak_tflops", "must be >= 0 (0: measured or known)")
