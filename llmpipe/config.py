"""Typed recipe configuration: YAML recipes, dotted `key=value` overrides, validation up front.

A recipe is one YAML file with a few top-level keys (seed, model, device, precision) and one section
per stage. Every key has a default that works, so an empty recipe trains the `tiny` model on the
embedded `data/`. Values are coerced to the declared type and checked before any heavy import, so a
typo costs a second, not a training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmpipe.errors import UserError

STAGES = ("tokenizer", "pretrain", "sft", "align")
ALIGN_METHODS = ("dpo", "rlhf", "grpo", "rloo")
# Align methods that train a policy online (generate, score, update); rlhf also trains a reward model.
RL_METHODS = ("rlhf", "grpo", "rloo")
RL_ALGORITHMS = ("rloo", "grpo")
# Loss types of TRL's DPOTrainer that need no extra inputs (TRL 1.x `DPOConfig.loss_type`).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
)
PRECISIONS = ("auto", "bf16", "fp32")
GATE_ACTIONS = ("stop", "warn", "off")
ANOMALY_POLICIES = ("rollback", "stop", "skip")
REPORT_TO = ("tensorboard", "wandb")
# Settings that observe a stage without changing its weights: a finished stage is not retrained
# (or refused) when only these differ.
NOT_IDENTITY = ("gate", "monitor")
DEVICES = ("auto", "cpu", "cuda", "mps")
DATA = "data"


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained on the pretraining text."""

    train_files: list[str] = field(default_factory=lambda: [f"{DATA}/pretrain.train.jsonl"])
    validation_files: list[str] = field(default_factory=lambda: [f"{DATA}/pretrain.validation.jsonl"])
    vocab_size: int = 4096
    min_frequency: int = 2
    # Tokenizer training needs a sample, not the whole corpus: cap the bytes read.
    max_train_bytes: int = 100_000_000


@dataclass
class CleaningConfig:
    """What happens to training rows before training: normalisation, filters, dedup, decontamination."""

    normalize_unicode: bool = True
    min_chars: int = 1
    max_chars: int = 0  # 0: no limit
    # Drop rows whose duplicated lines make up more than this share of their characters (1: off).
    max_repeated_line_share: float = 0.5
    exact_dedup: bool = True
    near_dedup: bool = False
    near_dedup_threshold: float = 0.8
    near_dedup_ngram: int = 5
    near_dedup_permutations: int = 128
    # Drop training rows sharing a word n-gram with the run's held-out chat/preference rows.
    decontaminate: bool = True
    decontaminate_ngram: int = 13


@dataclass
class GateConfig:
    """The regression check of a finished stage against its parent, on the parent's protected
    held-out sets and probe suites (pretrain's parent is a tokenizer, so pretrain has none)."""

    # stop: the run stops with exit code 3 (the checkpoint is kept); warn: report and go on; off.
    action: str = "stop"
    # Largest allowed rise of a protected held-out loss, relative to the parent's (0.5 = +50%).
    max_loss_increase: float = 0.5
    # Largest allowed fall of a protected probe suite's (or preference set's) score, absolute.
    max_probe_drop: float = 0.15


@dataclass
class TrainConfig:
    """Data and optimisation settings every training stage shares."""

    # Files, folders, globs or hf:NAME[:CONFIG][@SPLIT][#REVISION] sources.
    train_files: list[str] = field(default_factory=list)
    validation_files: list[str] = field(default_factory=list)
    # Share of the training mix drawn from each train file (same order); empty: every row once.
    mixture_weights: list[float] = field(default_factory=list)
    # Rename the data's own columns to llmpipe's, e.g. {question: prompt, response: completion}.
    columns: dict[str, str] = field(default_factory=dict)
    # A row that fails its format check: "fail" stops with file:line, "skip" drops and counts it.
    bad_rows: str = "fail"
    # Share of training rows held out when no validation file is given (deterministic by row hash).
    validation_fraction: float = 0.05
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    max_steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 256
    eval_every: int = 50
    eval_batches: int = 20
    save_every: int = 100
    log_every: int = 10
    # Probe suites (JSONL, see llmpipe/eval/probes.py) scored during training and protected for the
    # next stage's regression gate; every `probe_every` steps (0: at every evaluation).
    probes: list[str] = field(default_factory=list)
    probe_every: int = 0
    # Prompts whose greedy continuations are logged with the probes (user turns in chat stages).
    sample_prompts: list[str] = field(default_factory=list)
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass
class PretrainConfig(TrainConfig):
    """Next-token prediction on packed text blocks, from random initialisation."""

    train_files: list[str] = field(default_factory=lambda: [f"{DATA}/pretrain.train.jsonl"])
    validation_files: list[str] = field(default_factory=lambda: [f"{DATA}/pretrain.validation.jsonl"])
    max_steps: int = 300
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    # Web-style corpora repeat themselves; chat and preference rows are short and near-dedup
    # would merge rows that differ in the one word that matters.
    cleaning: CleaningConfig = field(default_factory=lambda: CleaningConfig(near_dedup=True))
    probes: list[str] = field(default_factory=lambda: [f"{DATA}/probes.text.jsonl"])
    sample_prompts: list[str] = field(default_factory=lambda: ["The kettle is", "Question: What is 2 plus 3? Answer:"])


@dataclass
class SFTConfig(TrainConfig):
    """Chat tuning with loss on assistant tokens only."""

    train_files: list[str] = field(default_factory=lambda: [f"{DATA}/sft.train.jsonl"])
    validation_files: list[str] = field(default_factory=lambda: [f"{DATA}/sft.validation.jsonl"])
    max_steps: int = 100
    learning_rate: float = 5e-4
    packing: bool = True
    # Held-out rows with an `answer` field scored by greedy generation, before and after.
    accuracy_rows: int = 100
    max_new_tokens: int = 24
    probes: list[str] = field(default_factory=lambda: [f"{DATA}/probes.chat.jsonl"])
    sample_prompts: list[str] = field(default_factory=lambda: ["What colour is the kettle?", "What is 2 plus 3?"])


@dataclass
class AlignConfig(TrainConfig):
    """Preference tuning of the SFT model (DPO, frozen SFT model as reference)."""

    method: str = "dpo"
    train_files: list[str] = field(default_factory=lambda: [f"{DATA}/prefs.train.jsonl"])
    validation_files: list[str] = field(default_factory=lambda: [f"{DATA}/prefs.validation.jsonl"])
    max_steps: int = 60
    batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 5
    eval_every: int = 30
    beta: float = 0.1
    loss_type: str = "sigmoid"
    # Held-out pairs scored by "does the model give the chosen reply the higher log-likelihood".
    preference_rows: int = 200
    probes: list[str] = field(default_factory=lambda: [f"{DATA}/probes.chat.jsonl"])
    sample_prompts: list[str] = field(default_factory=lambda: ["What colour is the kettle?", "What is 2 plus 3?"])
    # Online RL (methods rlhf, grpo, rloo; see llmpipe/stages/rl.py). Prompts come from the train files:
    # preference rows' prompt, chat rows without their last reply, or prompt rows ({prompt, answer}).
    # The RL algorithm of method rlhf (grpo and rloo name their own).
    rl: str = "rloo"
    # A finished reward stage folder: rlhf uses it instead of training one; grpo/rloo add it to their rules.
    reward_model: str = ""
    # Rule rewards (llmpipe/rewards.py): exact_match, format, length. Empty: [exact_match] for grpo and
    # rloo, none for rlhf (the reward model alone).
    rewards: list[str] = field(default_factory=list)
    # Completions sampled per prompt; batch_size counts completions, so it must be a multiple of this.
    num_generations: int = 4
    max_new_tokens: int = 24
    temperature: float = 1.0
    # Bound on the policy's mean KL to the SFT reference per reply (nats) on held-out prompts; reported.
    max_kl: float = 2.0
    # Held-out prompts measured before and after (reward, KL, exact-match accuracy).
    heldout_prompts: int = 64


@dataclass
class RewardModelConfig(TrainConfig):
    """The reward model of method rlhf: the SFT model with a scalar head, trained on preference pairs.

    Its own section (not align's) because it wants other steps and learning rate than the policy, and
    a finished reward model must not go stale when only the policy's settings change."""

    train_files: list[str] = field(default_factory=lambda: [f"{DATA}/prefs.train.jsonl"])
    validation_files: list[str] = field(default_factory=lambda: [f"{DATA}/prefs.validation.jsonl"])
    max_steps: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    eval_every: int = 30
    max_length: int = 128
    # Held-out pairs scored by "does the chosen reply get the higher reward", before and after.
    preference_rows: int = 200


@dataclass
class MonitorConfig:
    """Logging and the loss guard of every training stage (not part of a stage's identity)."""

    # tensorboard (event files in <stage>/tensorboard) and/or wandb; [] for neither.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # A NaN/inf loss or gradient, or a loss above spike_factor x the median of the last
    # spike_window steps, always has its update dropped; then: skip (go on), stop (exit code 3, last
    # good checkpoint kept) or rollback (resume from the last checkpoint with the learning rate
    # scaled by rollback_lr_factor, dropping the offending batch; at most max_rollbacks times).
    on_anomaly: str = "rollback"
    spike_factor: float = 3.0
    spike_window: int = 20
    max_rollbacks: int = 3
    rollback_lr_factor: float = 0.5
    # Peak TFLOP/s per device for MFU; 0: a known GPU's data sheet, else measured once per machine.
    peak_tflops: float = 0.0


@dataclass
class Recipe:
    """A whole pipeline: shared settings plus one section per stage."""

    name: str = "tiny"
    seed: int = 0
    model: str = "tiny"
    device: str = "auto"
    precision: str = "auto"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    reward: RewardModelConfig = field(default_factory=RewardModelConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # Where the recipe came from, for error messages; not a setting.
    source: str = field(default="<defaults>", metadata={"internal": True})

    def stage_config(self, stage: str) -> dict[str, Any]:
        """The settings that define a stage's result: its section plus the shared keys it uses.

        Two runs of a stage with equal stage_config produce the same checkpoint, so this is what a
        finished stage is compared against before it is skipped or refused.
        """
        shared: dict[str, Any] = {}
        if stage != "tokenizer":  # tokenizer training depends on its data and sizes alone
            shared = {"seed": self.seed, "precision": self.precision, "monitor": dataclasses.asdict(self.monitor)}
        if stage == "pretrain":
            shared["model"] = self.model
        return {**shared, stage: dataclasses.asdict(getattr(self, stage))}


# ---------------------------------------------------------------------------------------------
# Loading, overriding and checking


def load_recipe(path: str | Path | None, overrides: list[str] = (), stage: str | None = None) -> Recipe:
    """Read a YAML recipe (or the defaults when `path` is None), apply `key=value` overrides, validate.

    In a stage command, a bare key (`max_steps=10`) means that stage's key (`pretrain.max_steps`);
    dotted keys (`sft.learning_rate=1e-4`) and top-level keys (`seed=1`) work everywhere.
    """
    source = "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise UserError("recipe file not found", file=source, hint="give the path of a YAML recipe, e.g. recipes/tiny.yaml")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"invalid YAML: {problem}", file=source, line=line, hint="fix the YAML syntax") from None
        except UnicodeDecodeError:
            raise UserError("recipe is not UTF-8 text", file=source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError("a recipe must be a YAML mapping of keys to values", file=source)
        raw = loaded
    for item in overrides:
        key, value = _parse_override(item, stage)
        _set_dotted(raw, key, value)
    recipe = _build(Recipe, raw, prefix="", source=source)
    recipe.source = source
    validate(recipe)
    return recipe


def _parse_override(item: str, stage: str | None) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"override '{item}' is not key=value", hint="write it like pretrain.max_steps=10")
    key, value = item.split("=", 1)
    key = key.strip()
    top_level = {f.name for f in dataclasses.fields(Recipe)}
    if stage and "." not in key and key not in top_level:
        key = f"{stage}.{key}"
    # YAML syntax for the value: numbers, booleans and [lists] work as in a recipe file.
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def all_keys() -> list[str]:
    """Every valid dotted key of a recipe, for suggestions and documentation."""
    def walk(cls: type, prefix: str) -> list[str]:
        hints = typing.get_type_hints(cls)
        keys = []
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                keys += walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                keys.append(f"{prefix}{f.name}")
        return keys

    return walk(Recipe, "")


def _unknown_key(key: str, source: str) -> UserError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    if not close:  # a bare key of the wrong section: match on the last part
        tail = key.split(".")[-1]
        close = [k for k in all_keys() if k.split(".")[-1] == tail][:1]
    hint = f"did you mean '{close[0]}'?" if close else "run 'llmpipe keys' to list the valid keys"
    return UserError("unknown key", file=source, field=key, hint=hint)


def _build(cls: type, raw: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(dotted, source)
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise UserError("must be a section of keys", file=source, field=dotted)
            kwargs[key] = _build(kind, value, prefix=f"{dotted}.", source=source)
        else:
            kwargs[key] = _coerce(value, kind, dotted, source)
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, dotted: str, source: str) -> Any:
    def bad(expected: str) -> UserError:
        return UserError(f"expected {expected}, got {value!r}", file=source, field=dotted)

    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if kind is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                raise bad("an integer") from None
            if number.is_integer():
                return int(number)
        raise bad("an integer")
    if kind is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            # PyYAML reads `1e-3` (no dot) as a string; float() takes it.
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if kind is str:
        if isinstance(value, bool):
            # YAML 1.1 reads a bare off/on/no/yes as a boolean; in a text setting it meant the word.
            return "on" if value else "off"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise bad("a string")
    if typing.get_origin(kind) is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad("a list")
        item = typing.get_args(kind)[0]
        return [_coerce(v, item, dotted, source) for v in value]
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise bad("a mapping of names to names, e.g. {question: prompt}")
        return dict(value)
    raise bad(str(kind))  # pragma: no cover - every declared type is handled above


def validate(recipe: Recipe) -> None:
    """Check ranges and choices of every setting; raise a UserError naming the first bad key."""
    src = recipe.source

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(what, file=src, field=key)

    from llmpipe.models import PRESETS  # light module: plain dicts, no torch

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


def _validate_rl(recipe: Recipe, need: Any) -> None:
    """The online-RL keys of `align` and the `reward` section."""
    from llmpipe.rewards import RULES  # light module: no torch

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


def stage_identity(config: dict[str, Any]) -> dict[str, Any]:
    """A stage config without the NOT_IDENTITY settings: what decides whether two runs are the same."""
    return {
        key: stage_identity(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in NOT_IDENTITY
    }
