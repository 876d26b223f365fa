"""Talk to a finished checkpoint: `llmpipe chat` (a REPL) and `llmpipe generate` (a prompts file).

Prompts are rendered with the checkpoint's own chat template, and only after checking that the
template is the one recorded in the manifest at training time: a model answers sensibly only in the
format it was trained on, and a silently edited template would look like a broken model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.data.shards import bos_prefix
from llmpipe.models import model_context

ROLES = ("system", "user", "assistant")


@dataclass
class Sampling:
    """How replies are drawn; temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0

    def check(self) -> None:
        """Refuse values generate() would reject or silently misuse."""
        if self.max_new_tokens < 1:
            raise UserError("must be at least 1", field="--max-new-tokens")
        if self.temperature < 0:
            raise UserError("must be 0 (greedy) or more", field="--temperature")
        if not 0 < self.top_p <= 1:
            raise UserError("must be in (0, 1]", field="--top-p")


def context_budget(model: Any, max_new_tokens: int) -> int:
    """How many prompt tokens fit before the reply: the model's context less the reply length."""
    context = model_context(model.config)
    if max_new_tokens >= context:
        raise UserError(f"must be below the model's context of {context} tokens", field="--max-new-tokens")
    return context - max_new_tokens


def generation_config(model: Any, sampling: Sampling) -> Any:
    """The checkpoint's generation config (its stop tokens) with the requested sampling."""
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = sampling.max_new_tokens
    config.do_sample = sampling.temperature > 0
    if config.do_sample:
        config.temperature, config.top_p = sampling.temperature, sampling.top_p
    return config


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], raw: bool) -> list[int]:
    """Token ids of a prompt: chat messages through the chat template, or `<bos> text` when raw."""
    if raw:
        return [*bos_prefix(tokenizer), *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def complete(model: Any, tokenizer: Any, prompts: list[list[int]], config: Any) -> list[str]:
    """Replies to a batch of token-id prompts, left-padded so every row continues from its right edge."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(model.device)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(**batch, generation_config=config)
    new = out[:, batch["input_ids"].shape[1] :]
    return [reply.strip() for reply in tokenizer.batch_decode(new, skip_special_tokens=True)]


class ChatSession:
    """One conversation with a model: the history, the system prompt, and the context budget."""

    def __init__(self, model: Any, tokenizer: Any, sampling: Sampling, system: str | None = None) -> None:
        import transformers

        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.config = generation_config(model, sampling)
        self.budget = context_budget(model, sampling.max_new_tokens)
        self.history: list[dict[str, str]] = []
        self.last_dropped = 0
        transformers.set_seed(sampling.seed)

    def _messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def fit_history(self) -> int:
        """Drop the oldest turns until the conversation fits the context; returns how many messages went."""
        dropped = 0
        while len(self.history) > 1 and len(encode_prompt(self.tokenizer, self._messages(), raw=False)) > self.budget:
            # A turn is a user message and the reply to it; dropping them together keeps roles alternating.
            cut = 2 if len(self.history) > 2 and self.history[1]["role"] == "assistant" else 1
            del self.history[:cut]
            dropped += cut
        return dropped

    def ask(self, text: str) -> str:
        """Add a user message, generate the reply, and keep both in the history."""
        self.history.append({"role": "user", "content": text})
        self.last_dropped = self.fit_history()
        # A single message longer than the context keeps only its end, the part nearest the reply.
        ids = encode_prompt(self.tokenizer, self._messages(), raw=False)[-self.budget :]
        reply = complete(self.model, self.tokenizer, [ids], self.config)[0]
        self.history.append({"role": "assistant", "content": reply})
        return reply

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()


def chat_loop(session: ChatSession, read_line: Callable[[], str], say: Callable[[str], None], note: Callable[[str], None]) -> None:
    """Read user lines until /exit or end of input; print a reply to each; `/reset` clears the history."""
    while True:
        line = read_line()
        if not line:  # end of input
            return
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            session.reset()
            note("(history cleared)")
            continue
        if text.startswith("/") and " " not in text:
            note(f"unknown command {text}: use /reset or /exit")
            continue
        reply = session.ask(text)
        if session.last_dropped:
            note(f"(dropped the {session.last_dropped} oldest messages to fit the model's context)")
        say(reply)


def _check_messages(messages: Any, where: dict[str, Any], field: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        kind = "a string or " if field == "prompt" else ""
        raise UserError(f"must be {kind}a non-empty list of {{role, content}} messages", field=field, **where)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise UserError(f"must have a role ({', '.join(ROLES)}) and string content", field=f"{field}[{i}]", **where)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_prompt_row(row: Any, raw: bool, where: dict[str, Any]) -> str | list[dict[str, str]]:
    """The prompt of one JSONL row: `prompt` (text or messages) or `messages` less a final assistant turn."""
    if not isinstance(row, dict):
        raise UserError("each line must be a JSON object with 'prompt' or 'messages'", **where)
    if "prompt" in row:
        prompt, field = row["prompt"], "prompt"
        if isinstance(prompt, str):
            if not prompt.strip():
                raise UserError("is empty", field=field, **where)
            return prompt
    elif "messages" in row:
        prompt, field = row["messages"], "messages"
        if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict) and prompt[-1].get("role") == "assistant":
            prompt = prompt[:-1]
    else:
        raise UserError("missing: each row needs 'prompt' or 'messages'", field="prompt", **where)
    if raw:
        raise UserError("must be a plain string with --raw (no chat template is applied)", field=field, **where)
    return _check_messages(prompt, where, field)


def read_prompts(path: Path, raw: bool) -> list[str | list[dict[str, str]]]:
    """Prompts from a .txt file (one per line) or a JSONL file (`prompt` or `messages` per row)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("prompts file not found", file=str(path), field="--prompts",
                        hint="give a JSONL file of {prompt} rows or a .txt file, one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts file: {type(e).__name__}", file=str(path), field="--prompts",
                        hint="give a UTF-8 text file") from e
    prompts: list[str | list[dict[str, str]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            prompts.append(line)
            continue
        where = {"file": str(path), "line": number}
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"not valid JSON ({getattr(e, 'msg', e)})", **where) from None
        prompts.append(parse_prompt_row(row, raw, where))
    if not prompts:
        raise UserError("no prompts in file", file=str(path))
    return prompts


def generate_rows(model: Any, tokenizer: Any, prompts: list[str | list[dict[str, str]]], sampling: Sampling,
                  batch_size: int = 16, raw: bool = False) -> Iterable[dict[str, Any]]:
    """Yield `{prompt, reply}` for every prompt, generated `batch_size` at a time."""
    import transformers

    if batch_size < 1:
        raise UserError("must be at least 1", field="--batch-size")
    config = generation_config(model, sampling)
    budget = context_budget(model, sampling.max_new_tokens)
    transformers.set_seed(sampling.seed)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = [encode_prompt(tokenizer, p, raw)[-budget:] for p in chunk]
        for prompt, reply in zip(chunk, complete(model, tokenizer, ids, config)):
            yield {"prompt": prompt, "reply": reply}
