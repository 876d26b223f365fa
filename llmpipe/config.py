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

from llmpipe.core.errors import UserError

STAGES = ("tokenizer", "pretrain", "sft", "align")
ALIGN_METHODS = ("dpo", "kto", "rlhf", "grpo", "rloo")
# Align methods that train a policy online (generate, score, update); rlhf also trains a reward model.
RL_METHODS = ("rlhf", "grpo", "rloo")
RL_ALGORITHMS = ("rloo", "grpo")
# TRL 1.16 DPOTrainer loss types, each checked to train on pairs alone; robust and exo_pair also need
# align.label_smoothing > 0 (TRL refuses exo_pair without it; robust without it is plain sigmoid).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
NEEDS_LABEL_SMOOTHING = ("robust", "exo_pair")
PRECISIONS = ("auto", "bf16", "fp32")
GATE_ACTIONS = ("stop", "warn", "off")
ANOMALY_POLICIES = ("rollback", "stop", "skip")
REPORT_TO = ("tensorboard", "wandb")
# Settings that leave a stage's weights as they are (observers, speed): no retraining when only these differ.
NOT_IDENTITY = ("gate", "monitor", "compile")
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
    # Largest allowed rise of a protected held-out loss, relative to the parent's (2.0 = +200%).
    # Loose on purpose: on the tiny demo, chat tuning raises the pretraining text's loss by 167%
    # (a change of format, not of knowledge) and DPO the SFT chat loss by 114% (it lowers the
    # likelihood of chosen replies too); the probe suites are the finer check.
    max_loss_increase: float = 2.0
    # Largest allowed fall of a protected probe suite's (or preference set's) score, absolute.
    max_probe_drop: float = 0.15


@dataclass
class LoRAConfig:
    """LoRA adapters instead of full fine-tuning; the stage still leaves a merged model (llmpipe/train/lora.py)."""

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Module names to adapt; empty: the model family's defaults (llmpipe.models.LORA_TARGETS).
    target_modules: list[str] = field(default_factory=list)


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
    lora: LoRAConfig = field(default_factory=LoRAConfig)
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
    # DPO's robust / exo_pair: the assumed share of flipped preference labels, in [0, 0.5).
    label_smoothing: float = 0.0
    # KTO: loss weights of desirable and undesirable rows, to balance unequal counts (KTO paper, eq. 8).
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    lora: LoRAConfig = field(default_factory=LoRAConfig)
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
    compile: bool = False  # torch.compile: ~1.2x faster steps after a first step that compiles
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
            shared = {"seed": self.seed, "precision": self.precision, "compile": self.compile,
                      "monitor": dataclasses.asdict(self.monitor)}
        if stage == "pretrain":
            shared["model"] = self.model
        return {**shared, stage: dataclasses.asdict(getattr(self, stage))}


# ---------------------------------------------------------------------------------------------
# Loading, overriding and checking


def load_recipe(path: str | Path | None, overrides: list[str] = (), stage: str | None = None) -> Recipe:
    """Read a YAML recipe (or the defaults when `path` is None), apply `key=value` overrides, validate.

    In a stage command, a bare key (`max_steps=10`, `lora.r=4`) means that stage's key (`pretrain.max_steps`);
    dotted keys (`sft.learning_rate=1e-4`) and top-level keys (`seed=1`) work everywhere.
    """
    source = "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        source = str(path)
        p = Path(path)
        if p.is_dir():
            raise UserError("is a folder, not a recipe file", file=source, hint="give the path of a YAML recipe, e.g. recipes/tiny.yaml")
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
            raise UserError("recipe is not UTF-8 text", file=source, hint="re-encode it as UTF-8") from None
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
    from llmpipe.validation import validate

    validate(recipe)
    return recipe


def _parse_override(item: str, stage: str | None) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"override '{item}' is not key=value", hint="write it like pretrain.max_steps=10")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{item}' has an empty key", hint="write it like pretrain.max_steps=10")
    top_level = {f.name for f in dataclasses.fields(Recipe)}
    if stage and key.split(".")[0] not in top_level:  # max_steps, lora.r: the stage's own keys
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
    keys = all_keys()
    # Sections too ("pretrian" → "pretrain"), at the key's own depth, not only leaf keys.
    sections = sorted({k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)} - set(keys))
    sections = [s for s in sections if s.count(".") == key.count(".")]
    # A key of another section (pretrain.beta → align.beta) first: the same name elsewhere beats
    # a merely similar one here.
    tail = key.split(".")[-1]
    close = [k for k in keys if k.split(".")[-1] == tail and k != key][:1] if "." in key else []
    close = close or difflib.get_close_matches(key, keys + sections, n=1, cutoff=0.6)
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


def stage_identity(config: dict[str, Any]) -> dict[str, Any]:
    """A stage config without the NOT_IDENTITY settings: what decides whether two runs are the same."""
    return {
        key: stage_identity(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in NOT_IDENTITY
    }


def _with_defaults(old: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    filled = dict(old)
    for key, value in defaults.items():
        if key not in filled:
            filled[key] = value
        elif isinstance(value, dict) and isinstance(filled[key], dict):
            filled[key] = _with_defaults(filled[key], value)
    return filled


def same_settings(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a finished stage's recorded config and a new one train the same checkpoint.

    Settings added to llmpipe after the old stage was trained count as their defaults there (new
    settings default to the old behaviour), so an upgrade does not make finished stages stale."""
    if old is None:
        return False
    section = next((key for key in new if key in STAGES), None)
    if section is not None:
        old = _with_defaults(old, Recipe().stage_config(section))
    return stage_identity(old) == stage_identity(new)
