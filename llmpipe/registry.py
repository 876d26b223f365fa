"""The stage registry: every stage llmpipe can train, declared once.

A stage is one module under `llmpipe/stages/` with a `train(ctx)` function, plus one `StageSpec` entry
below. Everything that used to list the stages (parents, run order, the CLI hint that trains a missing
parent, `data check` kinds, the report's and summary's order, the align methods the config accepts)
is derived from this table. Adding an align method is one module plus one entry here.

This module is data only (config layer: it imports nothing of llmpipe), so the config's checks and the
run folders can consult it without importing any training code; the pipeline imports a stage's module
by the name given here only when it trains that stage.
"""

from __future__ import annotations

from dataclasses import dataclass

# The sections `llmpipe run` trains, in order (the align section trains the recipe's align.method; the
# reward section is trained by method rlhf, not by `run`).
RUN_ORDER = ("tokenizer", "pretrain", "sft", "align")


@dataclass(frozen=True)
class StageSpec:
    """What a stage is: its folder name, the recipe section it reads, the stages it may start from, its data."""

    name: str  # the stage folder runs/<run>/<name> and the manifest's `stage`
    section: str  # the recipe section of its settings
    parents: tuple[str, ...]  # stages it can start from; the first is the default parent
    data: str  # the row kind it reads: text, chat, preference, unpaired or prompt
    help: str  # one line for `llmpipe --help` and the docs
    method: bool = False  # selected by `align.method` (the align section holds several)
    online: bool = False  # samples replies and learns from rewards (RL)
    trains_first: tuple[str, ...] = ()  # stages its method trains before it (rlhf: its reward model)
    generates: bool = False  # writes its own training data first (cai: drafts, critiques, revisions), then trains offline
    gated: bool = True  # checked against its parent by the regression gate (a reward model has no likelihood)
    builds_model: bool = False  # builds its model from the recipe's `model` section (so `model` is in its identity)
    language_model: bool = True  # leaves a causal LM (the tokenizer stage leaves only a tokenizer)
    imports: bool = False  # takes its model from outside the run (a Hugging Face folder, hub id or GGUF), trains nothing
    module_name: str = ""  # the module under llmpipe/stages/ when not the stage's own name (the RL methods share one)

    @property
    def answers_chats(self) -> bool:
        """Leaves a chat model whose replies the instruction-following and safety suites judge: trained on chat,
        preference or prompt rows, and generating (not a reward model, which the gate skips for the same reason)."""
        return self.language_model and not self.imports and self.data != "text" and self.gated

    @property
    def module(self) -> str:
        """The module whose `train(ctx)` trains this stage."""
        return f"llmpipe.stages.{self.module_name or self.name}"


# The base stage (an imported model) comes last among the parents: a run that trained the usual parent uses it.
_POLICY_PARENTS = ("sft", "dpo", "rlhf", "grpo", "rloo", "base")

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("base", "base", (), "none", "import a Hugging Face model (folder, hf:ORG/NAME[@REVISION] or .gguf) as the "
                  "start of the run", gated=False, imports=True),
        StageSpec("tokenizer", "tokenizer", (), "text", "byte-level BPE with a chat template, trained on the pretraining text",
                  gated=False, language_model=False),
        StageSpec("pretrain", "pretrain", ("tokenizer", "base"), "text",
                  "next-token prediction on packed text, from random init or continued from a base model",
                  builds_model=True),
        StageSpec("sft", "sft", ("pretrain", "sft", "base"), "chat", "chat tuning, loss on assistant turns only"),
        StageSpec("dpo", "align", ("sft", "dpo", "base"), "preference", "DPO and its loss variants on preference pairs", method=True),
        StageSpec("kto", "align", ("sft", "kto", "dpo", "base"), "unpaired", "KTO on unpaired good / bad replies", method=True),
        StageSpec("reward", "reward", ("sft", "dpo", "base"), "preference", "a reward model (scalar head) on preference pairs",
                  gated=False),
        StageSpec("rlhf", "align", _POLICY_PARENTS, "prompt", "RLOO or GRPO against a reward model", method=True, online=True,
                  trains_first=("reward",), module_name="rl"),
        StageSpec("grpo", "align", _POLICY_PARENTS, "prompt", "GRPO on rule rewards (verifiable answers)", method=True,
                  online=True, module_name="rl"),
        StageSpec("rloo", "align", _POLICY_PARENTS, "prompt", "RLOO on rule rewards (verifiable answers)", method=True,
                  online=True, module_name="rl"),
        StageSpec("cai", "align", ("sft", "dpo", "kto", "base"), "prompt", "Constitutional AI: the model drafts, critiques "
                  "and revises its replies against a constitution, then trains on the revisions", method=True, generates=True),
    )
}
# Report and summary order: the registry's.
STAGE_ORDER = tuple(STAGES)
ALIGN_METHODS = tuple(name for name, spec in STAGES.items() if spec.method)
RL_METHODS = tuple(name for name, spec in STAGES.items() if spec.online)
DEFAULT_METHOD = ALIGN_METHODS[0]
# The RL algorithms of method rlhf (`align.rl`); methods grpo and rloo are each one of them on rule rewards.
RL_ALGORITHMS = ("rloo", "grpo")
# The stage a run from scratch starts with: it leaves the tokenizer (and chat template) every later stage uses.
TOKENIZER = "tokenizer"
# The stage a run from an existing model starts with instead (no tokenizer stage: the model brings its own).
BASE = "base"
# The stage that trains a reward model (what `align.reward_model` must name, and what rlhf trains first).
REWARD_MODEL = "reward"
# How method cai trains on the data it generated, each like the stage of that name: supervised on the
# revisions (sft, the default: the first), or revision-chosen / draft-rejected pairs (dpo) or unpaired rows (kto).
CAI_TRAINING = ("sft", "dpo", "kto")


def stage_spec(name: str) -> StageSpec:
    """The declaration of stage `name` (KeyError for a name the registry does not hold)."""
    return STAGES[name]


def section_stages(section: str) -> tuple[StageSpec, ...]:
    """The stages trained from one recipe section (align: every method)."""
    return tuple(spec for spec in STAGES.values() if spec.section == section)


def stage_for(section: str, method: str | None = None) -> StageSpec:
    """The stage a command of `section` trains: the section's own stage, or the align method's."""
    if any(spec.method for spec in section_stages(section)):  # align: the recipe picks the method
        return STAGES[method or DEFAULT_METHOD]
    return next(spec for spec in STAGES.values() if spec.section == section and not spec.method)


def command_for(name: str) -> str:
    """The `llmpipe` command that trains stage `name` (for hints: "run 'llmpipe align --method dpo' first")."""
    spec = STAGES[name]
    if spec.method:
        return f"align --method {name}"
    users = [s.name for s in STAGES.values() if name in s.trains_first]
    if users:  # trained as part of a method (reward, by rlhf)
        return f"align --method {users[0]}"
    return spec.section


def data_kind(section: str, method: str | None = None) -> str:
    """The row kind a section's stage reads (align: by method)."""
    return stage_for(section, method).data
