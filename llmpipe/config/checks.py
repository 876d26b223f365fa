"""Checks of a loaded recipe, run before any heavy import: a typo costs a second, not a training run.

The range and choice checks come from each setting's declared limits (llmpipe/config/fields.py);
what is written here by hand are the rules that span settings or need more than a range: the run
name, non-empty train files, one mixture weight per file, the align method's own constraints.
"""

from __future__ import annotations

import importlib.util

from llmpipe.config.constants import DEFAULT_METHOD, NEEDS_LABEL_SMOOTHING, RL_ALGORITHMS, RL_METHODS, SFT_LOSS
from llmpipe.config.fields import leaves, problem, value_at
from llmpipe.config.presets import AUTO, QK_NORM_FAMILIES, ROPE_FAMILIES
from llmpipe.config.schema import STAGE_SECTIONS, LoRAConfig, Recipe, TrainConfig
from llmpipe.core.errors import UserError
from llmpipe.registry import stage_spec


def validate(recipe: Recipe) -> None:
    """Check every setting of `recipe`; raise a UserError naming the first bad key (exit code 2)."""
    check_name(recipe)
    check_limits(recipe)
    check_model(recipe)
    check_budget(recipe)
    check_data(recipe)
    check_preference(recipe)
    check_online_rl(recipe)
    check_monitor(recipe)


def _need(recipe: Recipe, ok: bool, key: str, what: str) -> None:
    if not ok:
        raise UserError(what, file=recipe.source, field=key)


def check_limits(recipe: Recipe) -> None:
    """The declared range and choices of every setting, in recipe order."""
    for leaf in leaves(Recipe):
        what = problem(leaf, value_at(recipe, leaf.key))
        if what is not None:
            raise UserError(what, file=recipe.source, field=leaf.key)


def check_name(recipe: Recipe) -> None:
    """The name becomes the run folder runs/<name>: a path in it would write outside runs/."""
    name = recipe.name
    _need(recipe, bool(name.strip()) and name not in (".", "..") and not any(c in name for c in "/\\\0"), "name",
          f"must be a plain folder name (no '/', '\\' or '..'), got {name!r}")


# The pretraining budgets: at most one is given.
BUDGETS = ("time_budget", "tokens", "tokens_per_param")


def check_budget(recipe: Recipe) -> None:
    """At most one pretraining budget (it replaces max_steps, so a recipe's step count and a budget given on the
    command line work together); `model: auto` needs one that leaves the size free (a time or token budget:
    tokens_per_param is a ratio to a size already chosen)."""
    cfg = recipe.pretrain
    given = [name for name in BUDGETS if getattr(cfg, name)]
    if len(given) > 1:
        raise UserError(f"give one budget, not {' and '.join('pretrain.' + g for g in given)}",
                        file=recipe.source, field=f"pretrain.{given[1]}", hint="keep one of them (set the others to 0)")
    if recipe.model.preset == AUTO:
        _need(recipe, bool(cfg.time_budget or cfg.tokens), "model.preset",
              "auto sizes the model to a budget: set pretrain.time_budget (seconds) or pretrain.tokens")


def check_model(recipe: Recipe) -> None:
    """The `model` section's keys fit together and the family has what they ask for."""
    given = recipe.model
    if given.preset == AUTO:
        for key in ("layers", "width", "heads"):
            _need(recipe, not getattr(given, key), f"model.{key}",
                  "is chosen by model: auto; leave it 0, or name a preset and set it there")
        return
    shape = recipe.model.resolved()
    family, heads = shape["family"], shape["heads"]
    modern = " or ".join(ROPE_FAMILIES)
    _need(recipe, shape["width"] % heads == 0, "model.width" if given.width else "model.heads",
          f"width {shape['width']} must be a multiple of heads ({heads}): each head gets width / heads dimensions")
    _need(recipe, family in ROPE_FAMILIES or shape["kv_heads"] == heads, "model.kv_heads",
          f"family {family} has one key/value head per query head; use family {modern} for grouped-query attention")
    _need(recipe, heads % shape["kv_heads"] == 0, "model.kv_heads",
          f"must divide model.heads ({heads}), got {shape['kv_heads']}: each key/value head serves a whole group of "
          "query heads")
    _need(recipe, family in ROPE_FAMILIES or not given.rope_theta, "model.rope_theta",
          f"family {family} learns its positions and has no rotary base; use family {modern}, or leave it 0")
    _need(recipe, family not in ROPE_FAMILIES or (shape["width"] // heads) % 2 == 0, "model.heads",
          f"rotary positions need an even head size; width / heads is {shape['width'] // heads}")
    _need(recipe, family in QK_NORM_FAMILIES or not given.qk_norm, "model.qk_norm",
          f"family {family} has no QK-norm in transformers; use family {' or '.join(QK_NORM_FAMILIES)} (llama's "
          "layout plus QK-norm), or set it false")
    _need(recipe, not (given.mlp_ratio and given.intermediate), "model.intermediate",
          "give model.intermediate or model.mlp_ratio, not both: both set the MLP's size")


def check_data(recipe: Recipe) -> None:
    """Every stage has training data, and mixture weights match its train files one to one."""
    for section in STAGE_SECTIONS:
        cfg = getattr(recipe, section)
        if not hasattr(cfg, "train_files"):  # an imported base model reads no data
            continue
        _need(recipe, bool(cfg.train_files), f"{section}.train_files", "needs at least one file")
        if isinstance(cfg, TrainConfig):
            _need(recipe, not cfg.mixture_weights or len(cfg.mixture_weights) == len(cfg.train_files),
                  f"{section}.mixture_weights", f"needs one weight per train file ({len(cfg.train_files)})")


def check_preference(recipe: Recipe) -> None:
    """DPO loss options, KTO's batch, and the LoRA sections of sft and align."""
    al = recipe.align
    _need(recipe, al.loss_type not in NEEDS_LABEL_SMOOTHING or al.label_smoothing > 0, "align.label_smoothing",
          f"loss_type {al.loss_type} needs label_smoothing > 0 (e.g. 0.1: the assumed share of flipped labels)")
    # DEFAULT_METHOD is DPO, the method whose loss types TRL combines with loss_weights. Other methods do not read
    # rpo_alpha (nor loss_type), so that one recipe (the demo's sets 0.3) also serves `align --method kto` or cai.
    _need(recipe, al.rpo_alpha == 0 or al.method != DEFAULT_METHOD or al.loss_type != SFT_LOSS, "align.rpo_alpha",
          f"adds TRL's {SFT_LOSS} loss beside the DPO loss, and loss_type {SFT_LOSS} leaves no DPO loss: set rpo_alpha 0 "
          "or another loss_type")
    # KTO (the method on unpaired rows) estimates its KL term from the other rows of the batch.
    # (Method cai trains on unpaired rows when align.cai.train names the stage that does.)
    spec = stage_spec(al.method)
    unpaired = spec.data == "unpaired" or (spec.generates and stage_spec(al.cai.train).data == "unpaired")
    _need(recipe, not unpaired or al.batch_size >= 2, "align.batch_size",
          "KTO needs >= 2 rows per batch: its KL estimate pairs each prompt with another row's completion")
    for section in (s for s in STAGE_SECTIONS if hasattr(getattr(recipe, s), "lora")):
        lora: LoRAConfig = getattr(recipe, section).lora
        _need(recipe, "lm_head" not in lora.target_modules, f"{section}.lora.target_modules",
              "lm_head cannot take an adapter: TRL's loss reads lm_head.weight directly, so it would never train")
        _need(recipe, lora.quantize == "none" or lora.enabled, f"{section}.lora.quantize",
              f"quantizes the base that LoRA adapters train on; set {section}.lora.enabled=true, or quantize=none")


def check_online_rl(recipe: Recipe) -> None:
    """The online-RL keys of `align` only where the method uses them, and the `reward` section."""
    al, online = recipe.align, recipe.align.method in RL_METHODS
    with_reward_model = [name for name in RL_METHODS if stage_spec(name).trains_first]
    _need(recipe, bool(stage_spec(al.method).trains_first) or al.rl in (RL_ALGORITHMS[0], al.method), "align.rl",
          f"only method {' or '.join(with_reward_model)} takes an RL algorithm; method {al.method} names its own")
    _need(recipe, online or not al.reward_model, "align.reward_model",
          f"method {al.method} uses no reward model; use {', '.join(RL_METHODS)}")
    _need(recipe, online or not al.rewards, "align.rewards",
          f"method {al.method} uses no rule rewards; use {', '.join(RL_METHODS)}")
    _need(recipe, not online or al.batch_size % al.num_generations == 0, "align.batch_size",
          f"counts completions, so it must be a multiple of align.num_generations ({al.num_generations}); "
          f"got {al.batch_size}")
    _need(recipe, not recipe.reward.probes and not recipe.reward.sample_prompts, "reward.probes",
          "a reward model does not generate: leave reward.probes and reward.sample_prompts empty")


def check_monitor(recipe: Recipe) -> None:
    """A logging target must be installed: found here, not after a stage has trained for an hour."""
    for target in recipe.monitor.report_to:
        _need(recipe, importlib.util.find_spec(target) is not None, "monitor.report_to",
              f"{target} is not installed (pip install {target}, or drop it from monitor.report_to)")
