"""What the preference methods share: DPO's and KTO's data and policy with its frozen reference, and
the held-out measures every align stage (the RL ones too) compares itself with its parent by.

Each method module reads top to bottom as: `load_data` -> `preference_trainer` -> `fit` -> its metrics -> `finish`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset, load_from_disk

from llmpipe.chat_format import fit_for_replies, load_chat_tokenizer, set_generation_stops
from llmpipe.core.console import say
from llmpipe.core.errors import UserError
from llmpipe.data.pipeline import heldout_texts, load_rows, validation_rows
from llmpipe.eval.pairs import pair_measures, pair_scores, reply_rewards, win_share
from llmpipe.runs.context import StageContext
from llmpipe.train.args import rows_for_steps, training_arguments
from llmpipe.train.fit import build_trainer
from llmpipe.train.lora import load_model, peft_config


def load_data(ctx: StageContext) -> tuple[Any, Any]:
    """The parent's chat tokenizer and the stage's rows of its registry data kind (checked, split, cleaned,
    decontaminated against the run's held-out rows); records the data report in the manifest."""
    cfg = ctx.cfg
    tokenizer = load_chat_tokenizer(ctx.parent_dir)
    data = load_rows(ctx.spec.data, cfg, heldout_texts(ctx.recipe) if cfg.cleaning.decontaminate else [])
    ctx.manifest.data = data.report.to_manifest()
    return tokenizer, data


def preference_trainer(ctx: StageContext, trainer_class: type, config_class: type, tokenizer: Any,
                       train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], layout: str = "plain",
                       **settings: Any) -> Any:
    """A TRL offline preference trainer (DPOTrainer, KTOTrainer) on the parent checkpoint and the align
    section; `settings`: the method's own config fields.

    The reference is frozen, so its log-probs are computed once for every row before training (TRL's
    `precompute_ref_log_probs`), not again at every step, and no reference copy is held: TRL takes
    them from the untrained policy, or with LoRA from the policy with its adapters disabled."""
    cfg = ctx.cfg
    policy = load_model(ctx.parent_dir, ctx)
    set_generation_stops(policy, tokenizer)
    adapters = peft_config(cfg.lora, policy, ctx.spec.section)  # None: full fine-tuning; a wrong target fails here
    used = rows_for_steps(train_rows, cfg, ctx.recipe.seed, PartialState().num_processes)
    if len(used) < len(train_rows):
        ctx.manifest.data["rows_for_steps"] = len(used)
        say(f"{ctx.spec.name}: {cfg.max_steps} steps read {len(used)} of the {len(train_rows)} training rows (a seeded sample); "
            "only those are scored by the reference")
    # Long prompts lose their oldest turns so that the replies fit max_length (TRL would cut the replies instead).
    train_rows, fitted = fit_for_replies(tokenizer, used, cfg.max_length)
    eval_rows, _ = fit_for_replies(tokenizer, eval_rows, cfg.max_length)
    ctx.manifest.data["prompts_fitted"] = {"max_length": cfg.max_length, **fitted}
    if fitted["shortened"]:
        say(f"{ctx.spec.name}: {fitted['shortened']} of {fitted['rows']} training prompts lost their oldest turns to leave room "
            f"for the replies in align.max_length {cfg.max_length}; {fitted['reply_cut']} replies are cut even so")
    args = training_arguments(config_class, cfg, ctx.recipe, ctx.writer, beta=cfg.beta, max_length=cfg.max_length,
                              include_num_input_tokens_seen="non_padding", precompute_ref_log_probs=True, **settings)
    folder = ctx.writer.checkpoints_dir / "datasets"
    return build_trainer(
        trainer_class,
        layout,
        tokenizer,
        cfg.max_length,
        model=policy,
        ref_model=None,
        args=args,
        train_dataset=disk_dataset(train_rows, folder / "train"),
        eval_dataset=disk_dataset(eval_rows, folder / "validation"),
        processing_class=tokenizer,
        peft_config=adapters,
    )


def disk_dataset(rows: list[dict[str, Any]], folder: Path) -> Any:
    """`rows` as a Dataset saved in `folder` (the stage's checkpoints folder, removed when it completes).

    TRL caches what it derives from a dataset (tokenized rows, precomputed reference log-probs) next
    to the dataset's files, and the first process writes what the others read. An in-memory dataset
    caches in a temporary folder of each process's own, so under a multi-process launch the others
    would not find the file."""
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            Dataset.from_list(rows).save_to_disk(str(folder))
    return load_from_disk(str(folder))


def heldout_pairs(cfg: Any) -> list[dict[str, Any]]:
    """The first `cfg.preference_rows` held-out preference pairs of an online-RL stage's validation files,
    or [] when they hold prompts, not pairs (grpo's verifiable questions). Only explicit validation
    files: a content-hash split of the train files as pairs would not be the split the stage's prompts
    were held out by."""
    if not cfg.validation_files:
        return []
    try:
        return validation_rows("preference", cfg)[: cfg.preference_rows]
    except UserError:  # the rows are prompts: they were read as such already, so nothing else is wrong
        return []


@dataclass
class HeldoutPreferences:
    """What an align stage measures on held-out data to compare itself with its parent, the frozen
    reference (llmpipe.eval.pairs): pairs by implicit reward, per-token and summed log-likelihood; with
    a reward model, its greedy replies' win rate over the parent's.

    `raw(model)` is taken before training (the policy is still the parent) and after; `metrics(before,
    after)` turns the two into the manifest's before → after figures."""

    tokenizer: Any
    pairs: list[dict[str, Any]]
    beta: float
    prompts: list[list[dict[str, str]]] = field(default_factory=list)
    reward_model: Any = None
    reward_tokenizer: Any = None
    max_new_tokens: int = 24
    # Why a measure is missing, for the manifest (no reward model, no held-out pairs).
    notes: dict[str, str] = field(default_factory=dict)

    def raw(self, model: Any) -> dict[str, Any]:
        """Per-pair log-likelihoods and per-prompt reward-model scores of `model`'s greedy replies."""
        out: dict[str, Any] = {}
        if self.pairs:
            out["pair_scores"] = pair_scores(model, self.tokenizer, self.pairs)
        if self.reward_model is not None and self.prompts:
            out["reply_rewards"] = reply_rewards(model, self.tokenizer, self.prompts, self.max_new_tokens,
                                                 self.reward_model, self.reward_tokenizer)
        return out

    def metrics(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """The manifest's pair and win-rate figures, `<name>_before` beside `<name>`.

        The parent is the reference, so its implicit-reward accuracy and win rate are measured against
        itself: 0.5 by definition, recorded as such rather than left out."""
        out: dict[str, Any] = {}
        parent, child = before.get("pair_scores"), after.get("pair_scores")
        if child is not None:
            reference = parent if parent is not None else child
            measured = {"before": pair_measures(reference, reference, self.beta),
                        "after": pair_measures(child, reference, self.beta)}
            for key, name in PAIR_KEYS.items():
                out[f"{name}_before"], out[name] = measured["before"][key], measured["after"][key]
            out["chosen_longer_share"] = measured["after"]["chosen_longer_share"]
            out["preference_rows"] = measured["after"]["rows"]
        parent_rewards, rewards = before.get("reply_rewards"), after.get("reply_rewards")
        if rewards is not None:
            parent_rewards = parent_rewards if parent_rewards is not None else rewards
            out["reward_model_win_rate_before"] = win_share([0.0] * len(rewards))
            out["reward_model_win_rate"] = win_share([a - b for a, b in zip(rewards, parent_rewards, strict=True)])
            out["win_rate_prompts"] = len(rewards)
        out.update({f"{name}_note": why for name, why in self.notes.items()})
        return out


# pair_measures' keys and the manifest's names for them (summed_logp_*: the labelled extra).
PAIR_KEYS = {
    "implicit_reward_accuracy": "implicit_reward_accuracy",
    "implicit_reward_margin": "implicit_reward_margin",
    "per_token_accuracy": "per_token_logp_accuracy",
    "per_token_margin": "per_token_logp_margin",
    "summed_accuracy": "summed_logp_accuracy",
    "summed_margin": "summed_logp_margin",
}

# The headline of DPO and KTO (on pairs), and why it is the one: the summary and the report show it.
IMPLICIT_REWARD_HEADLINE = "held-out implicit-reward accuracy"
IMPLICIT_REWARD_WHY = (
    "it is the stage's own reward, beta x (log pi - log pi_ref), and says whether training raised the chosen "
    "reply above the rejected one relative to the parent, whatever the replies' lengths; it is 0.5 before by "
    "definition (pi = pi_ref). per_token_logp_accuracy is the model's own ranking before -> after; "
    "summed_logp_accuracy mostly says which reply is shorter and is kept as an extra.")


def implicit_reward_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The summary's headline {name, before, after, why} of a preference stage with held-out pairs."""
    return {"name": IMPLICIT_REWARD_HEADLINE, "before": metrics.get("implicit_reward_accuracy_before"),
            "after": metrics.get("implicit_reward_accuracy"), "why": IMPLICIT_REWARD_WHY}
