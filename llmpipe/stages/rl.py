"""Online RL stages of align: the policy samples replies to prompts, a reward scores them, and TRL's
RLOOTrainer or GRPOTrainer pushes the policy toward the better ones, with a KL penalty (`beta`) to the
frozen SFT model.

- rlhf: the reward is a reward model (trained first in runs/<run>/reward, or `align.reward_model`),
  optionally plus rule rewards; the algorithm is `align.rl` (rloo or grpo). Folder runs/<run>/rlhf.
- grpo / rloo: the reward is the rule rewards of llmpipe/eval/rewards.py (`align.rewards`, default
  exact_match against each row's `answer`), optionally plus a reward model. Folder runs/<run>/<method>.

The policy generates with the chat template and stops at the end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from llmpipe.chat_format import fit_prompt, load_chat_tokenizer, reply_suffix_length, set_generation_stops, stop_token_ids
from llmpipe.core.console import fmt_number, say
from llmpipe.core.errors import UserError
from llmpipe.data.pipeline import heldout_texts, load_rows
from llmpipe.eval.rewards import reward_functions
from llmpipe.eval.rl import policy_metrics
from llmpipe.models import model_context
from llmpipe.registry import REWARD_MODEL, RL_ALGORITHMS, stage_spec
from llmpipe.runs import StageRef, manifest_sha
from llmpipe.runs.context import StageContext
from llmpipe.stages.reward import load_reward_model
from llmpipe.train.args import training_arguments
from llmpipe.train.fit import build_trainer, finish, fit
from llmpipe.train.lora import load_model, peft_config
from llmpipe.train.preference import HeldoutPreferences, heldout_pairs

# TRL's config and trainer of each RL algorithm (align.rl for rlhf; grpo and rloo name their own).
ALGORITHMS = dict(zip(RL_ALGORITHMS, ((RLOOConfig, RLOOTrainer), (GRPOConfig, GRPOTrainer)), strict=True))


def rule_names(cfg: Any) -> list[str]:
    """The rule rewards a method uses: the recipe's, else none for a method with a reward model (rlhf)
    and exact_match for the rule-reward methods (grpo, rloo)."""
    return list(cfg.rewards) or ([] if stage_spec(cfg.method).trains_first else ["exact_match"])


def _check_answers(rows: list[dict[str, Any]], rules: list[str], cfg: Any) -> None:
    missing = sum(1 for r in rows if not r.get("answer"))
    if "exact_match" in rules and missing:
        raise UserError(
            f"exact_match needs an 'answer' in every prompt row; {missing} of {len(rows)} have none",
            file=cfg.train_files[0], field="answer",
            hint="use rows like {\"prompt\": [...], \"answer\": \"7\"} (e.g. data/verifiable.train.jsonl), "
            "or choose other align.rewards",
        )


def fit_prompts(tokenizer: Any, rows: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows whose prompts fit `budget` tokens (the context less the reply), each with its oldest turns
    dropped as far as needed (llmpipe.chat_format.fit_prompt); rows whose last message alone is too long
    are left out. Returns the rows and {rows, shortened, dropped} for the manifest.

    TRL 1.16's RLOOTrainer and GRPOTrainer do not truncate prompts: a prompt of more tokens than the
    context fails in the model's forward pass (an index error past GPT-2's position table), and one that
    leaves no room for the reply generates nothing. Shortening keeps a multi-turn conversation's latest
    request, the one the reply answers (on hh-rlhf most over-long prompts are long histories)."""
    kept, shortened = [], 0
    for row in rows:
        prompt = fit_prompt(tokenizer, row["prompt"], budget)
        if prompt is None:
            continue
        shortened += len(prompt) < len(row["prompt"])
        kept.append({**row, "prompt": prompt})
    return kept, {"rows": len(rows), "shortened": shortened, "dropped": len(rows) - len(kept)}


def _fitted(ctx: StageContext, tokenizer: Any, policy: Any, data: Any,
            reward_model: Any = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The train and validation prompt rows fitted to the policy's context less align.max_new_tokens, the counts
    recorded in the manifest's data report (`prompts_fitted`); a UserError when no training prompt fits.

    With a reward model the budget also leaves room for the tokens the chat template adds after a reply, and
    is cut to the reward model's context if that is shorter: TRL scores each prompt + completion rendered
    whole and does not truncate it (on hh-helpful from the own-data run's SFT, a 232-token prompt with a
    24-token reply plus `<|end|>` and a newline came to 258 tokens and failed past GPT-2's 256 positions)."""
    cfg, context = ctx.cfg, model_context(policy.config)
    if reward_model is not None:
        context = min(context, model_context(reward_model.config)) - reply_suffix_length(tokenizer)
    budget = context - cfg.max_new_tokens
    if budget < 1:
        raise UserError(f"is {cfg.max_new_tokens}: no room is left for a prompt in the model's context of {context} tokens",
                        file=ctx.recipe.source, field="align.max_new_tokens", hint=f"set it below {context}")
    train_rows, train_counts = fit_prompts(tokenizer, data.train, budget)
    validation, validation_counts = fit_prompts(tokenizer, data.validation, budget)
    ctx.manifest.data["prompts_fitted"] = {"budget_tokens": budget, "train": train_counts, "validation": validation_counts}
    for name, counts in (("training", train_counts), ("validation", validation_counts)):
        if counts["shortened"] or counts["dropped"]:
            say(f"{ctx.spec.name}: {counts['shortened']} of {counts['rows']} {name} prompts lost their oldest turns and "
                f"{counts['dropped']} were left out, to fit {budget} tokens (the context less align.max_new_tokens"
                f"{' and the end of a reply, as the reward model scores it' if reward_model is not None else ''})")
    for rows, files in ((train_rows, cfg.train_files), (validation, cfg.validation_files or cfg.train_files)):
        if not rows:
            raise UserError(f"no prompt fits the model's context of {context} tokens less align.max_new_tokens "
                            f"({cfg.max_new_tokens}): the last message of each is longer", file=files[0], field="prompt",
                            hint="use shorter prompts or lower align.max_new_tokens")
    return train_rows, validation


def train(ctx: StageContext) -> Path:
    """Train the policy of method rlhf, grpo or rloo (`ctx.inputs["reward_model_dir"]`: the reward model, if any)."""
    recipe, writer, parent_dir = ctx.recipe, ctx.writer, ctx.parent_dir
    reward_dir: Path | None = ctx.inputs.get("reward_model_dir")
    cfg = recipe.align
    algorithm = cfg.rl if stage_spec(cfg.method).trains_first else cfg.method
    rules = rule_names(cfg)
    tokenizer = load_chat_tokenizer(parent_dir)
    data = load_rows(ctx.spec.data, cfg, heldout_texts(recipe) if cfg.cleaning.decontaminate else [])
    _check_answers(data.train, rules, cfg)
    ctx.manifest.data = data.report.to_manifest()
    # Loaded from its folder: TRL builds the frozen reference by re-loading the policy's name_or_path
    # (with LoRA there is no copy: the reference is the policy with its adapters disabled).
    policy = load_model(parent_dir, ctx)
    set_generation_stops(policy, tokenizer)  # else sampling runs to max_new_tokens every time
    reward_model = reward_tokenizer = None
    funcs: list[Any] = []
    if reward_dir is not None:
        reward_model, reward_tokenizer = load_reward_model(reward_dir)
        funcs.append(reward_model)
        ctx.manifest.reward_model = StageRef(path=str(reward_dir.resolve()), stage=REWARD_MODEL,
                                             manifest_sha256=manifest_sha(reward_dir))
    funcs += reward_functions(rules, stop_token_ids(policy))
    train_rows, validation = _fitted(ctx, tokenizer, policy, data, reward_model)

    config_class, trainer_class = ALGORITHMS[algorithm]
    args = training_arguments(
        config_class, cfg, recipe, writer,
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=0,
        disable_dropout=True,
        log_completions=False,
    )
    # Each prompt's completions form one group: the eval set is cut to whole batches of groups.
    eval_rows = validation[: cfg.eval_batches * (cfg.batch_size // cfg.num_generations)]
    columns = ["prompt", "answer"] if all("answer" in r for r in train_rows) else ["prompt"]
    trainer = build_trainer(
        trainer_class,
        "plain",
        model=policy,
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list([{k: r[k] for k in columns} for r in train_rows]),
        eval_dataset=Dataset.from_list([{k: r[k] for k in columns if k in r} for r in eval_rows]),
        processing_class=tokenizer,
        reward_processing_classes=[reward_tokenizer] * (reward_model is not None) + [None] * len(rules),
        peft_config=peft_config(cfg.lora, policy, ctx.spec.section),
    )
    # MFU, roughly: besides the trained forward+backward (6 FLOPs/param/token), every token is also
    # generated and scored by the policy, the reference and the reward model (2 each).
    flops_scale = (6 + 2 * (3 + (reward_model is not None))) / 6

    heldout = validation[: cfg.heldout_prompts]
    # With LoRA the trainer holds no reference copy (it disables the adapters); measuring needs one.
    reference = trainer.ref_model
    if reference is None:
        reference = AutoModelForCausalLM.from_pretrained(parent_dir).to(next(trainer.model.parameters()).device)

    # Against the parent as well (llmpipe.eval.pairs): held-out pairs where the validation files hold
    # pairs, and with a reward model the greedy replies' win rate over the parent's.
    pairs = heldout_pairs(cfg)
    notes = {} if pairs else {"implicit_reward_accuracy": "no held-out pairs: align.validation_files hold prompts"}
    if reward_model is None:
        notes["reward_model_win_rate"] = "no reward model (align.reward_model)"
    prefs = HeldoutPreferences(tokenizer, pairs, cfg.beta, [r["prompt"] for r in heldout], reward_model,
                               reward_tokenizer, cfg.max_new_tokens, notes)

    def measure(model: Any) -> dict[str, Any]:
        # Under the trainer's autocast, as training runs the policy, reference and reward model: a KL
        # between an fp32 and a bf16 forward of the same weights would not be 0.
        with trainer.accelerator.autocast():
            return {**policy_metrics(model, reference, tokenizer, heldout, cfg, rules, reward_model, reward_tokenizer, recipe.seed),
                    **prefs.raw(model)}

    # The policy-gradient loss sits near 0 and changes sign: only the NaN guard applies (spikes=False).
    fitted = fit(ctx, trainer, tokenizer, measure=measure, flops_scale=flops_scale, spikes=False)
    before, after, final_eval = fitted.before, fitted.after, fitted.final_eval

    metrics: dict[str, Any] = {"algorithm": algorithm, "rewards": (["reward_model"] if reward_model is not None else []) + rules,
                               "validation_loss": final_eval.get("eval_loss"), "heldout_prompts": len(heldout)}
    for key, value in after.items():
        if key not in ("samples", "pair_scores", "reply_rewards"):  # the raw lists go into prefs.metrics
            metrics[f"{key}_before"], metrics[key] = before.get(key), value
    metrics.update(max_kl=cfg.max_kl, kl_within_bound=after["kl"] <= cfg.max_kl, **prefs.metrics(before, after),
                   samples=after.get("samples", []))
    ctx.manifest.metrics = metrics

    metric = _headline(metrics, rules, reward_model is not None)
    name = metric["name"]
    say(f"{cfg.method}: {name} {fmt_number(metric['before'])} -> {fmt_number(metric['after'])}; "
        f"KL to the SFT model {fmt_number(after['kl'])} nats per reply "
        f"({'within' if after['kl'] <= cfg.max_kl else 'ABOVE'} align.max_kl={cfg.max_kl:g})")
    protected = [(f"{cfg.method}-prompts", ctx.spec.data, heldout)]
    return finish(ctx, fitted, tokenizer, metric, protected)


def _headline(metrics: dict[str, Any], rules: list[str], with_reward_model: bool) -> dict[str, Any]:
    """The summary's headline {name, before, after, why} of an RL policy: what it is trained for."""
    if "exact_match" in rules:
        name, key = "held-out exact-match accuracy", "exact_match_accuracy"
        why = "it is the rule the policy is rewarded by, judged on greedy replies to held-out questions."
    elif with_reward_model and not rules:
        name, key = "held-out reward-model win rate over the parent", "reward_model_win_rate"
        why = ("it is the share of held-out prompts whose greedy reply the reward model scores above the "
               "parent's: what the policy is trained for, against where it started (0.5 before by "
               "definition). reward_model_score is the mean score of sampled replies, in the reward model's "
               "own units.")
    else:
        name, key = "held-out mean reward", "mean_reward"
        why = "it is the sum of the rewards the policy is trained on, over sampled replies to held-out prompts."
    return {"name": name, "before": metrics.get(f"{key}_before"), "after": metrics.get(key), "why": why}
