"""Constitutional AI, `llmpipe align --method cai` (Bai et al. 2022): the model critiques and revises its own
replies against written principles, and the revisions become its training data.

For every prompt (align.train_files' prompts, a seeded sample of `align.cai.prompts`, and the first
`align.cai.heldout_prompts` held-out ones) the stage
1. drafts a reply with the policy (the parent checkpoint);
2. draws one principle of the constitution (seeded per prompt) and asks for a critique of the draft:
   the conversation continues with the principle's critique request as the next user turn;
3. asks for a revision: the conversation continues with the critique and the revision request.
Critique and revision come from the judge (`align.cai.judge`) when one is given, else from the policy.
The drafts are always the policy's own: they are what training moves away from.

Each finished prompt is one line of `revisions.jsonl` in the stage folder (prompt, principle, draft,
critique, revision), appended and flushed as its batch finishes, so a run killed during generation
resumes with the prompts it finished (`revisions.key.json` says what the lines were generated from: a
changed constitution, judge or prompt set starts the file again). Batches keep fixed boundaries, so a
resumed generation runs the same batches as an uninterrupted one and, greedy or seeded, writes the
same lines.

Then it trains on them like the stage `align.cai.train` names: supervised on the revisions (the SFT
stage's trainer and packing; loss on the reply), or revision-chosen / draft-rejected pairs through DPO,
or revisions desirable / drafts undesirable through KTO (llmpipe/train/preference.py), with the align
section's optimisation settings. A revision equal to its draft, or an empty one, is kept in the file
and left out of training (pairs would teach nothing).
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTTrainer

from llmpipe.chat_format import set_generation_stops
from llmpipe.core.console import fmt_number, is_main_process, say
from llmpipe.core.dist import main_process_first
from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_text
from llmpipe.data.constitution import Constitution, Principle, load_constitution
from llmpipe.data.formats import unpair
from llmpipe.eval.metrics import chat_ids, generate_from_ids
from llmpipe.eval.rl import sample_replies
from llmpipe.loading import check_checkpoint
from llmpipe.registry import stage_spec
from llmpipe.runs import MANIFEST, manifest_sha
from llmpipe.runs.context import StageContext
from llmpipe.sources import check_folder, fingerprint, is_model_source, locate
from llmpipe.stages.sft import chat_dataset, sft_arguments
from llmpipe.train.args import device_of, limit_rows, placement
from llmpipe.train.fit import build_trainer, finish, fit
from llmpipe.train.lora import load_model, peft_config
from llmpipe.train.preference import HeldoutPreferences, implicit_reward_headline, load_data, preference_trainer

DATASET = "revisions.jsonl"
KEY_FILE = "revisions.key.json"
EXAMPLES = 3
JUDGE_FIELD = "align.cai.judge"
JUDGE_HINT = "pass a finished llmpipe stage folder (runs/<run>/<stage>) or a Hugging Face model folder with a chat template"


@dataclass(frozen=True)
class Job:
    """One prompt to draft, critique and revise: its split, its place there and its principle."""

    split: str  # train or validation
    index: int
    prompt: list[dict[str, str]]
    principle: Principle


def train(ctx: StageContext) -> Path:
    """Generate the revisions (resuming those already written), then train on them; returns the stage folder."""
    cfg, cai, seed = ctx.cfg, ctx.cfg.cai, ctx.recipe.seed
    constitution = load_constitution(cai.constitution)  # both checked before anything loads
    judge = check_judge(cai.judge) if cai.judge else None
    tokenizer, data = load_data(ctx)
    jobs = _jobs(data.train, data.validation, cai, constitution, seed)
    key = {"constitution_sha256": constitution.sha256, "judge": judge,
           "prompts_sha256": sha256_text(json.dumps([[j.split, j.index, j.prompt, j.principle.name] for j in jobs])),
           "seed": seed, "temperature": cai.temperature, "reply_tokens": cai.reply_tokens,
           "critique_tokens": cai.critique_tokens, "generation_batch": cai.generation_batch}
    started = time.time()
    with main_process_first():  # the first process generates; the others then find every line written
        rows, reused = generate(ctx, jobs, key, tokenizer)
    if is_main_process():  # the constitution beside the data it made
        shutil.copyfile(constitution.path, ctx.writer.work_dir / f"constitution{Path(constitution.path).suffix}")

    mode = stage_spec(cai.train).data  # chat (sft), preference (dpo) or unpaired (kto)
    train_rows, val_rows = ([r for r in rows if r["split"] == split] for split in ("train", "validation"))
    usable = [r for r in rows if r["draft"] and r["revision"]]
    revised = [r for r in usable if r["revision"] != r["draft"]]
    differs = {(r["split"], r["index"]) for r in revised}
    ctx.manifest.generation = {
        "file": DATASET, "constitution": constitution.record(), "judge": judge,
        "settings": {k: key[k] for k in ("temperature", "reply_tokens", "critique_tokens", "generation_batch")},
        "prompts": {"train": len(train_rows), "validation": len(val_rows)},
        "revised": len(revised), "revised_share": round(len(revised) / len(rows), 4) if rows else None,
        "empty": len(rows) - len(usable),
        "principle_counts": dict(sorted(Counter(r["principle"] for r in rows).items())),
        "reused_prompts": reused, "generated_prompts": len(rows) - reused, "seconds": round(time.time() - started, 2),
        "examples": [{k: r[k] for k in ("prompt", "principle", "draft", "critique", "revision")}
                     for r in (revised or rows)[:EXAMPLES]],
    }
    say(f"cai: {len(rows)} prompts drafted, critiqued and revised ({reused} from an earlier run); {len(revised)} revisions "
        f"differ from their drafts; training {cai.train} on them")
    splits = {"train": train_rows, "validation": val_rows}
    if mode == "chat":  # every non-empty revision, as the reply to its prompt
        trainable = {split: [{"messages": r["prompt"] + [_reply(r["revision"])]} for r in part if r["revision"]]
                     for split, part in splits.items()}
    else:  # the revisions that differ from their drafts, as pairs (kto splits each in two)
        trainable = {split: [_pair(r) for r in part if (r["split"], r["index"]) in differs] for split, part in splits.items()}
    _check_trainable(ctx, trainable)
    ctx.manifest.generation["trained_rows"] = len(trainable["train"])
    val_pairs = [_pair(r) for r in val_rows if (r["split"], r["index"]) in differs][: cfg.preference_rows]
    notes = {"reward_model_win_rate": "no reward model: cai trains without one"}
    if not val_pairs:
        notes["implicit_reward_accuracy"] = "no held-out revision differs from its draft"
    prefs = HeldoutPreferences(tokenizer, val_pairs, cfg.beta, notes=notes)
    fitted, heldout = _fit(ctx, tokenizer, mode, trainable, prefs)
    before, after, final_eval = fitted.before, fitted.after, fitted.final_eval
    metrics: dict[str, Any] = {"trained_as": cai.train}
    if mode == "chat":
        metrics.update(validation_loss_before=before.get("eval_loss"))
    metrics.update(validation_loss=final_eval.get("eval_loss"), **prefs.metrics(before, after))
    ctx.manifest.metrics = metrics
    if val_pairs:
        metric = implicit_reward_headline(metrics)
        metric["why"] = ("it says whether training raised the model's own revisions above its drafts on held-out prompts, "
                         "relative to the parent (beta x log pi/pi_ref; 0.5 before by definition), which is what Constitutional "
                         "AI trains for, whichever of sft, dpo or kto trained it.")
    else:
        metric = {"name": "held-out loss on revisions", "before": metrics.get("validation_loss_before"),
                  "after": metrics.get("validation_loss"), "why": "no held-out revision differs from its draft, so there is no "
                  "pair to compare; the loss on the held-out revisions says how far the model moved towards them."}
    say(f"cai ({cai.train}): {metric['name']} {fmt_number(metric['before'])} -> {fmt_number(metric['after'])}; "
        f"per-token log-likelihood accuracy {fmt_number(metrics.get('per_token_logp_accuracy_before'))} -> "
        f"{fmt_number(metrics.get('per_token_logp_accuracy'))} on {len(val_pairs)} held-out revision/draft pairs")
    if is_main_process():  # kept until now for a run killed while training; the manifest's `generation` says the same
        (ctx.writer.work_dir / KEY_FILE).unlink(missing_ok=True)
    return finish(ctx, fitted, tokenizer, metric, heldout)


# ---- prompts, principles, the judge ------------------------------------------------------------

def _jobs(train: list[dict[str, Any]], validation: list[dict[str, Any]], cai: Any, constitution: Constitution,
          seed: int) -> list[Job]:
    """The prompts to generate for, each with its principle: a seeded sample of the training prompts (kept
    in data order) and the first held-out ones. A principle is drawn per prompt from (seed, split, index),
    so it does not depend on which other prompts are generated with it or whether a run was resumed."""
    if len(train) > cai.prompts:
        keep = sorted(random.Random(seed).sample(range(len(train)), cai.prompts))
        train = [train[i] for i in keep]
    jobs = []
    for split, rows in (("train", train), ("validation", validation[: cai.heldout_prompts])):
        for index, row in enumerate(rows):
            draw = random.Random(f"{seed}:{split}:{index}").randrange(len(constitution.principles))
            jobs.append(Job(split, index, row["prompt"], constitution.principles[draw]))
    return jobs


def check_judge(value: str) -> dict[str, Any]:
    """What the judge model is, checked without loading it: a finished llmpipe stage ({path, stage,
    manifest_sha256}) or a Hugging Face model folder ({path, sha256} of the files that decide it)."""
    folder = Path(value)
    if not folder.exists():
        raise UserError("judge model not found", file=value, field=JUDGE_FIELD, hint=JUDGE_HINT)
    if not folder.is_dir():
        raise UserError("is a file, not a model folder", file=value, field=JUDGE_FIELD, hint=JUDGE_HINT)
    if (folder / MANIFEST).is_file():
        manifest = check_checkpoint(folder, need_template=True)  # complete, files as written, a language model
        return {"path": str(folder.resolve()), "stage": manifest.stage, "manifest_sha256": manifest_sha(folder)}
    if not is_model_source(folder):
        raise UserError("not a model folder: no manifest.json (an llmpipe stage) and no config.json with weights (a Hugging "
                        "Face model)", file=value, field=JUDGE_FIELD, hint=JUDGE_HINT)
    try:
        check_folder(folder, trust_remote_code=False)
    except UserError as e:  # the source checks name the base stage's key; here the folder is the judge
        raise UserError(e.what, file=e.file, line=e.line, field=JUDGE_FIELD if e.field == "base.source" else e.field,
                        hint=e.hint) from None
    files = fingerprint(locate(folder))
    return {"path": str(folder.resolve()), "sha256": sha256_text(json.dumps(files, sort_keys=True))}


def _load(folder: Path, device: str, role: str) -> tuple[Any, Any]:
    """A model and tokenizer for generation (eval mode, stopping at the end of a turn, pad id set)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise UserError(f"the {role}'s tokenizer has no chat template", file=str(folder), field=JUDGE_FIELD,
                        hint="a judge reads the conversation in its own chat format: give a chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder)
    set_generation_stops(model, tokenizer)
    return model.to(device).eval(), tokenizer


# ---- generation, resumable -------------------------------------------------------------------

def generate(ctx: StageContext, jobs: list[Job], key: dict[str, Any], tokenizer: Any) -> tuple[list[dict[str, Any]], int]:
    """Every job's row (in job order) and how many were read back from an earlier run's lines. The lines
    still missing are generated in batches of `align.cai.generation_batch` jobs of one split, at fixed
    boundaries, each batch's lines appended to revisions.jsonl and flushed as soon as it finishes."""
    cai, work = ctx.cfg.cai, ctx.writer.work_dir
    done = _finished_rows(work, key)
    pending = [j for j in jobs if (j.split, j.index) not in done]
    if pending and not is_main_process():
        raise RuntimeError(f"{len(pending)} prompts have no line in {work / DATASET} after the first process generated them")
    if pending:
        say(f"cai: generating for {len(pending)} prompts" + (f" ({len(done)} already in {DATASET})" if done else ""))
        device = device_of(ctx.recipe)
        policy = _load(ctx.parent_dir, device, "policy")
        critic = _load(Path(cai.judge), device, "judge") if cai.judge else policy
        bf16 = placement(ctx.recipe)["bf16"]
        batches: dict[tuple[str, int], list[Job]] = {}
        for job in pending:
            batches.setdefault((job.split, job.index // cai.generation_batch), []).append(job)
        with open(work / DATASET, "a", encoding="utf-8") as out:
            for (split, number), batch in batches.items():
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                    made = _revise(batch, policy, critic, cai, zlib.crc32(f"{ctx.recipe.seed}:{split}:{number}".encode()))
                for row in made:
                    _write_row(out, row)
                    done[(row["split"], row["index"])] = row
        del policy, critic
        gc.collect()
    reused = len(jobs) - len(pending)
    return [done[(j.split, j.index)] for j in jobs], reused


def _write_row(out: Any, row: dict[str, Any]) -> None:
    """Append one finished prompt's line and flush it: once written, a kill cannot take it back."""
    out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()


def _finished_rows(work: Path, key: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The lines an earlier run of this stage wrote, by (split, index), when they were generated from the
    same constitution, judge, prompts and settings (else the file starts again). A last line cut short by
    a kill is dropped from the file."""
    path, key_path = work / DATASET, work / KEY_FILE
    if not is_main_process():
        key_path = None  # only the first process writes; the others read what it wrote
    elif not key_path.is_file() or _read_json(key_path) != key:
        if path.exists():
            say(f"cai: {path} was generated from another constitution, judge, prompt set or settings: generating again")
            path.unlink()
        key_path.write_text(json.dumps(key, indent=2), encoding="utf-8")
    if not path.is_file():
        return {}
    rows, good = {}, 0
    data = path.read_bytes()
    for line in data.splitlines(keepends=True):
        try:
            row = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            row = None
        if not isinstance(row, dict):
            break
        rows[(row["split"], row["index"])] = row
        good += len(line)
    if good < len(data) and key_path is not None:
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _revise(batch: list[Job], policy: tuple[Any, Any], critic: tuple[Any, Any], cai: Any, seed: int) -> list[dict[str, Any]]:
    """Draft (policy), critique and revision (critic) of one batch of prompts: each step one batched
    generation over the conversations so far."""
    prompts = [job.prompt for job in batch]
    drafts = _complete(*policy, prompts, cai.reply_tokens, cai.temperature, seed)
    asked = [p + [_reply(d), {"role": "user", "content": job.principle.critique}] for p, d, job in zip(prompts, drafts, batch)]
    critiques = _complete(*critic, asked, cai.critique_tokens, cai.temperature, seed + 1)
    told = [a + [_reply(c), {"role": "user", "content": job.principle.revision}] for a, c, job in zip(asked, critiques, batch)]
    revisions = _complete(*critic, told, cai.reply_tokens, cai.temperature, seed + 2)
    return [{"split": job.split, "index": job.index, "prompt": job.prompt, "principle": job.principle.name,
             "critique_request": job.principle.critique, "revision_request": job.principle.revision,
             "draft": d, "critique": c, "revision": r}
            for job, d, c, r in zip(batch, drafts, critiques, revisions)]


def _complete(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int,
              temperature: float, seed: int) -> list[str]:
    """One reply per conversation, rendered with the model's own chat template: greedy at temperature
    0 (as the stages' answer-accuracy metric generates), else sampled with `seed`."""
    ids = [chat_ids(tokenizer, c) for c in conversations]
    if temperature == 0:
        texts = generate_from_ids(model, tokenizer, ids, max_new_tokens, batch_size=len(ids))
    else:
        sampled = sample_replies(model, tokenizer, ids, max_new_tokens, temperature, seed, batch_size=len(ids))
        texts = tokenizer.batch_decode(sampled, skip_special_tokens=True)
    return [t.strip() for t in texts]


def _reply(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _pair(row: dict[str, Any]) -> dict[str, Any]:
    """A generated row as a preference pair: the revision chosen, the draft rejected."""
    return {"prompt": row["prompt"], "chosen": [_reply(row["revision"])], "rejected": [_reply(row["draft"])]}


# ---- training --------------------------------------------------------------------------------

def _check_trainable(ctx: StageContext, trainable: dict[str, list[dict[str, Any]]]) -> None:
    """Something to train on and to validate with, or a one-line error saying how to get it."""
    cai = ctx.cfg.cai
    for split, key in (("train", "align.cai.prompts"), ("validation", "align.cai.heldout_prompts")):
        if not trainable[split]:
            what = "non-empty revision" if stage_spec(cai.train).data == "chat" else "non-empty revision that differs from its draft"
            raise UserError(f"no {split} prompt got a {what} to train {cai.train} on", file=str(ctx.writer.work_dir / DATASET),
                            field=key, hint="raise align.cai.reply_tokens or the prompts, sample (align.cai.temperature > 0), "
                            "use a judge (align.cai.judge), or train sft on the revisions")


def _fit(ctx: StageContext, tokenizer: Any, mode: str, trainable: dict[str, list[dict[str, Any]]],
         prefs: HeldoutPreferences) -> tuple[Any, list[tuple[str, str, list[dict[str, Any]]]]]:
    """Train on the generated rows as `mode` says (chat: sft; preference: dpo; unpaired: kto), measuring the
    held-out revision/draft pairs before and after; the fit and the held-out set children are gated on."""
    cfg = ctx.cfg
    name = f"{ctx.spec.name}-validation"
    if mode == "chat":
        trainer = _sft_trainer(ctx, tokenizer, trainable)
        fitted = fit(ctx, trainer, tokenizer, measure=prefs.raw, evaluate_before=True)
        return fitted, [(name, "chat", limit_rows(trainable["validation"], cfg))]
    train_set, eval_set = trainable["train"], limit_rows(trainable["validation"], cfg)
    if mode == "unpaired":
        train_set, eval_set = _shuffled(unpair(train_set), ctx.recipe.seed), _shuffled(unpair(eval_set), ctx.recipe.seed)
        trainer = preference_trainer(ctx, KTOTrainer, KTOConfig, tokenizer, train_set, eval_set,
                                     desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    else:
        trainer = preference_trainer(ctx, DPOTrainer, DPOConfig, tokenizer, train_set, eval_set, layout="pairs",
                                     loss_type=[cfg.loss_type], label_smoothing=cfg.label_smoothing)
    # As in the dpo and kto stages: KTO runs one more gradient-free forward (its KL term); robust and hinge
    # losses sit at or below 0, where "3x the recent median" flags ordinary steps.
    fitted = fit(ctx, trainer, tokenizer, measure=prefs.raw, flops_scale=8 / 6 if mode == "unpaired" else 1.0,
                 spikes=mode == "unpaired" or cfg.loss_type not in ("robust", "hinge"))
    return fitted, [(name, "preference", limit_rows(trainable["validation"], cfg))]


def _sft_trainer(ctx: StageContext, tokenizer: Any, chats: dict[str, list[dict[str, Any]]]) -> Any:
    """The SFT stage's trainer (packed conversations, loss on the reply) on the revisions, with the align
    section's optimisation settings."""
    cfg = ctx.cfg
    model = load_model(ctx.parent_dir, ctx)
    set_generation_stops(model, tokenizer)
    train_set, cut = chat_dataset(tokenizer, chats["train"], cfg.max_length)
    eval_set, _ = chat_dataset(tokenizer, limit_rows(chats["validation"], cfg), cfg.max_length)
    if cut:
        ctx.manifest.data["no_reply_within_max_length"] = cut
    if len(train_set) == 0 or len(eval_set) == 0:
        raise UserError(f"is {cfg.max_length}: no {'training' if len(train_set) == 0 else 'validation'} revision starts within "
                        "it under this chat template", file=ctx.recipe.source, field="align.max_length", hint="raise align.max_length")
    return build_trainer(SFTTrainer, "packed_chat", tokenizer, cfg.max_length, model=model,
                         args=sft_arguments(ctx.recipe, ctx.writer, marked="messages" in train_set.column_names, cfg=cfg),
                         train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
                         peft_config=peft_config(cfg.lora, model, ctx.spec.section))


def _shuffled(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    # As the kto stage does: KTO pairs each row with a batch neighbour's completion for its KL term, so an
    # unpaired pair's halves must not sit side by side.
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows
