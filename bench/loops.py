"""Minimal hand-written PyTorch loops, the baselines of bench/stages.py: one per training stage.

Each does the maths of its stage (same model, same tokens, optimiser, schedule, clipping and
precision) with nothing else: no trainer, callbacks, metrics or checkpoints. The data preparation is
borrowed from the stage (token blocks, TRL's tokenized datasets), since what is timed is the steps.
Every loop returns {tokens, wall_seconds, tokens_per_second, mean_loss}: `tokens` counts non-padding
tokens, as the stages do; the wall clock covers the steps only. The loops run the model as
transformers loads it (sdpa attention) on the layout a straightforward implementation would use
(TRL's rows for SFT, padded pairs for DPO): the stages' narrow blocks and length-dispatched
attention on CPU (llmpipe.speed.packing, llmpipe.speed.attention) are what they are measured
against, not part of the baseline.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any


def _setup(recipe: Any, cfg: Any, model: Any, steps: int) -> tuple[Any, Any, bool, Any]:
    """(device, AdamW with decay groups, bf16?, lr(step)) like the stages' HF Trainer settings."""
    import torch

    from llmpipe.train.args import placement

    device = torch.device("cpu" if placement(recipe)["use_cpu"] else "cuda")
    model.to(device).train()
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.learning_rate * step / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        floor = cfg.learning_rate * cfg.min_lr_ratio
        return floor + (cfg.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return device, optimizer, placement(recipe)["bf16"], lr_at


def _train(model: Any, cfg: Any, recipe: Any, steps: int, batches: Any, loss_of: Any) -> dict[str, Any]:
    """The loop itself: `batches(step)` -> (batch on device, non-padding tokens); `loss_of(batch)`."""
    import torch

    device, optimizer, bf16, lr_at = _setup(recipe, cfg, model, steps)
    losses, tokens, first_step = [], 0, 0.0
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(steps):
        if step == 1:
            first_step = time.perf_counter() - started
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batch, count = batches(step, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += count
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    # With torch.compile the first step compiles: what it took beyond an ordinary step.
    compiling = max(0.0, first_step - (wall - first_step) / max(1, steps - 1)) if recipe.compile else None
    return {"tokens": tokens, "wall_seconds": wall, "tokens_per_second": tokens / wall, "mean_loss": sum(losses) / len(losses),
            "compile_seconds": compiling}


def _order(n: int, seed: int) -> Any:
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def pretrain(recipe: Any, tokenizer_dir: Path, steps: int) -> dict[str, Any]:
    """nanoGPT-style: dense blocks of the stage's token cache, the model's own next-token loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from llmpipe.data.blocks import token_blocks
    from llmpipe.data.pipeline import stream_text
    from llmpipe.models import build_config

    cfg = recipe.pretrain
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dataset, _ = token_blocks(cfg, tokenizer, tokenizer_dir, stream_text(cfg), [])
    blocks = torch.stack([dataset[i]["input_ids"] for i in range(len(dataset))])
    set_seed(recipe.seed)
    model = AutoModelForCausalLM.from_config(build_config(recipe.model, tokenizer))
    if recipe.compile:  # the --compile rows: the loop compiled as the stage is
        model = torch.compile(model)
    order = _order(len(blocks), recipe.seed)

    def batches(step: int, device: Any) -> tuple[Any, int]:
        rows = blocks[order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(blocks)]]
        return rows.to(device), rows.numel()

    return _train(model, cfg, recipe, steps, batches, lambda batch: model(input_ids=batch, labels=batch).loss)


def sft(recipe: Any, parent_dir: Path, steps: int, work_dir: Path) -> dict[str, Any]:
    """TRL's bfd-packed conversations (labels -100 off the assistant turns), each bfd row one row of
    a dense block with per-document attention, the model's own loss over the labelled tokens."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from llmpipe.chat_format import load_chat_tokenizer
    from llmpipe.data.pipeline import load_rows
    from llmpipe.speed.packing import PackedBlockCollator
    from llmpipe.stages.sft import sft_arguments

    cfg = recipe.sft
    tokenizer = load_chat_tokenizer(parent_dir)
    rows = load_rows("chat", cfg).train
    model = AutoModelForCausalLM.from_pretrained(parent_dir)
    # Only for its prepared (tokenized, labelled, packed) dataset.
    conversations = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    packed = SFTTrainer(model=model, args=sft_arguments(recipe, _Writer(work_dir)), processing_class=tokenizer,
                        train_dataset=conversations, eval_dataset=conversations.select(range(1))).train_dataset
    collate = PackedBlockCollator(tokenizer.pad_token_id, cfg.max_length)
    examples = [packed[i] for i in range(len(packed))]
    order = _order(len(examples), recipe.seed)

    def batches(step: int, device: Any) -> tuple[Any, int]:
        picked = [examples[int(order[(step * cfg.batch_size + i) % len(examples)])] for i in range(cfg.batch_size)]
        batch = collate(picked)
        count = sum(len(e["input_ids"][: cfg.max_length]) for e in picked)
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}, count

    return _train(model, cfg, recipe, steps, batches, lambda batch: model(**batch).loss)


def _completion_logps(model: Any, batch: dict[str, Any]) -> Any:
    """Summed log-probabilities of each row's completion tokens (completion_mask == 1)."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    per_token = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (per_token * batch["completion_mask"][:, 1:]).sum(-1)


def dpo(recipe: Any, parent_dir: Path, steps: int, work_dir: Path) -> dict[str, Any]:
    """Sigmoid DPO: chosen and rejected in one padded batch, reference log-probs computed once
    before the loop (the reference is frozen), -logsigmoid(beta * margin)."""
    import torch
    import torch.nn.functional as F
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from llmpipe.chat_format import load_chat_tokenizer
    from llmpipe.data.pipeline import load_rows
    from llmpipe.train.args import placement

    cfg = recipe.align
    tokenizer = load_chat_tokenizer(parent_dir)
    rows = load_rows("preference", cfg).train
    model = AutoModelForCausalLM.from_pretrained(parent_dir)
    reference = AutoModelForCausalLM.from_pretrained(parent_dir).eval()
    # Only for its tokenized pairs and its collator (chosen rows, then rejected rows, completion masks).
    trainer = DPOTrainer(model=model, ref_model=reference, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         args=DPOConfig(output_dir=str(work_dir), max_length=cfg.max_length, report_to="none",
                                        gradient_checkpointing=False, **placement(recipe)))
    pairs, collate = trainer.train_dataset, trainer.data_collator
    examples = [pairs[i] for i in range(len(pairs))]
    order = _order(len(examples), recipe.seed)
    device = torch.device("cpu" if placement(recipe)["use_cpu"] else "cuda")
    reference.to(device)
    bf16 = placement(recipe)["bf16"]
    batches_by_step, ref_logps = [], []
    for step in range(steps):
        picked = [examples[int(order[(step * cfg.batch_size + i) % len(examples)])] for i in range(cfg.batch_size)]
        batch = {k: v.to(device) for k, v in collate(picked).items() if hasattr(v, "to")}
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            ref_logps.append(_completion_logps(reference, batch))
        batches_by_step.append((batch, int(batch["attention_mask"].sum())))

    def loss_of(step_and_batch: tuple[int, dict[str, Any]]) -> Any:
        step, batch = step_and_batch
        chosen, rejected = (_completion_logps(model, batch) - ref_logps[step]).chunk(2)
        return -F.logsigmoid(cfg.beta * (chosen - rejected)).mean()

    return _train(model, cfg, recipe, steps, lambda step, device: ((step, batches_by_step[step][0]), batches_by_step[step][1]), loss_of)


def rl(recipe: Any, parent_dir: Path, reward_dir: Path, steps: int) -> dict[str, Any]:
    """RLOO against a reward model: sample `num_generations` replies per prompt, score them with the
    reward model, subtract beta * KL(policy || reference) from each reward, use the mean of the other
    replies as the baseline, and take one policy-gradient step on the replies' log-probabilities."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmpipe.chat_format import load_chat_tokenizer, set_generation_stops
    from llmpipe.data.pipeline import load_rows
    from llmpipe.eval.metrics import chat_ids, padded
    from llmpipe.stages.reward import load_reward_model
    from llmpipe.train.args import placement

    cfg = recipe.align
    tokenizer = load_chat_tokenizer(parent_dir)
    prompts = [chat_ids(tokenizer, r["prompt"]) for r in load_rows("prompt", cfg).train]
    model = AutoModelForCausalLM.from_pretrained(parent_dir)
    set_generation_stops(model, tokenizer)
    reference = AutoModelForCausalLM.from_pretrained(parent_dir).eval()
    scorer, _ = load_reward_model(reward_dir)
    device = torch.device("cpu" if placement(recipe)["use_cpu"] else "cuda")
    reference.to(device), scorer.to(device)
    group, per_step = cfg.num_generations, cfg.batch_size // cfg.num_generations
    order = _order(len(prompts), recipe.seed)
    pad, bf16 = tokenizer.pad_token_id, placement(recipe)["bf16"]

    def token_logps(net: Any, ids: Any, mask: Any, start: int) -> Any:
        logits = net(input_ids=ids, attention_mask=mask).logits[:, start - 1:-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, start:].unsqueeze(-1)).squeeze(-1)

    def batches(step: int, device: Any) -> tuple[Any, int]:
        chosen = [prompts[int(order[(step * per_step + i) % len(prompts)])] for i in range(per_step)]
        ids, mask = padded([p for p in chosen for _ in range(group)], pad, left=True)
        ids, mask = ids.to(device), mask.to(device)
        model.eval()
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=cfg.temperature, top_k=0,
                                 max_new_tokens=cfg.max_new_tokens)
        model.train()
        start = ids.shape[1]
        reply = out[:, start:]
        stops = torch.tensor(model.generation_config.eos_token_id, device=device)
        ended = torch.isin(reply, stops).cumsum(1)
        reply_mask = ((ended == 0) | ((ended == 1) & torch.isin(reply, stops))).long()
        full_mask = torch.cat([mask, reply_mask], 1)
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            ref = token_logps(reference, out, full_mask, start)
            # Right-aligned rows: the reward model reads the last non-pad token.
            score_ids, score_mask = padded([row[m.bool()].tolist() for row, m in zip(out, full_mask)], pad)
            scores = scorer(input_ids=score_ids.to(device), attention_mask=score_mask.to(device)).logits[:, 0].float()
        batch = {"ids": out, "mask": full_mask, "reply_mask": reply_mask.float(), "ref": ref, "scores": scores, "start": start}
        return batch, int(full_mask.sum())

    def loss_of(batch: dict[str, Any]) -> Any:
        logps = token_logps(model, batch["ids"], batch["mask"], batch["start"])
        kl = ((logps.detach() - batch["ref"]) * batch["reply_mask"]).sum(-1)
        rewards = (batch["scores"] - cfg.beta * kl).view(-1, group)
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (group - 1)
        advantages = (rewards - baseline).view(-1)
        per_reply = (logps * batch["reply_mask"]).sum(-1) / batch["reply_mask"].sum(-1).clamp(min=1)
        return -(advantages * per_reply).mean()

    return _train(model, cfg, recipe, steps, batches, loss_of)


class _Writer:
    """Just enough of a StageWriter for common.training_arguments: where checkpoints would go."""

    def __init__(self, work_dir: Path) -> None:
        self.checkpoints_dir = work_dir
