"""Row formats of each stage (TRL's conventions), converters from common foreign shapes, checks.

- text:       {"text": "..."}
- chat:       {"messages": [{"role": "user"|"assistant"|"system", "content": "..."}], ...extra fields}
- preference: {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
- prompt:     {"prompt": [messages], "answer"?: "..."} for online RL (also read from preference and chat rows)
- unpaired:   {"prompt": [messages], "completion": [messages], "label": true|false} for KTO (preference
              pairs are read too, and `unpair` turns each into a desirable and an undesirable row)

Foreign shapes converted on the fly: alpaca (instruction/input/output), sharegpt (conversations with
from/value), prompt/completion, hh-rlhf transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ..."), and
preferences with an implicit prompt (chosen/rejected as whole conversations sharing a prefix).
"""

from __future__ import annotations

import re
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.data.io import SourceRow

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _err(row: SourceRow, field_name: str | None, what: str, hint: str | None = None) -> UserError:
    return UserError(what, file=row.file, line=row.line, field=field_name, hint=hint)


def to_text(row: SourceRow) -> dict[str, Any]:
    """A pretraining row: {"text"} as is; chat rows are not text (say so)."""
    data = row.data
    if "text" in data:
        if not isinstance(data["text"], str):
            raise _err(row, "text", f"must be a string, got {type(data['text']).__name__}")
        if not data["text"].strip():
            raise _err(row, "text", "is empty")
        return {"text": data["text"]}
    raise _err(row, "text", f"missing (row has {_keys(data)})", hint="pretraining rows look like {\"text\": \"...\"}")


def to_chat(row: SourceRow) -> dict[str, Any]:
    """A chat row in `messages` form, converting alpaca, sharegpt and prompt/completion rows."""
    data = dict(row.data)
    if "messages" in data:
        messages = data.pop("messages")
    elif "conversations" in data:  # sharegpt
        turns = data.pop("conversations")
        if not isinstance(turns, list):
            raise _err(row, "conversations", "must be a list of {from, value} turns")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise _err(row, f"conversations[{i}]", "must be an object with 'from' and 'value'")
            role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
            if role is None:
                raise _err(row, f"conversations[{i}].from", f"unknown speaker {turn['from']!r}",
                           hint=f"use one of {', '.join(SHAREGPT_ROLES)}")
            messages.append({"role": role, "content": turn["value"]})
    elif "instruction" in data and "output" in data:  # alpaca
        user = str(data.pop("instruction")).strip()
        extra = str(data.pop("input", "") or "").strip()
        if extra:
            user += "\n\n" + extra
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": str(data.pop("output"))}]
    elif "prompt" in data and "completion" in data and isinstance(data["prompt"], str):
        messages = [{"role": "user", "content": data.pop("prompt")}, {"role": "assistant", "content": data.pop("completion")}]
    else:
        raise _err(row, "messages", f"missing (row has {_keys(row.data)})",
                   hint='chat rows look like {"messages": [{"role": "user", "content": "..."}, ...]}')
    check_messages(row, "messages", messages, need_assistant=True)
    return {"messages": messages, **{k: v for k, v in data.items() if k in ("answer",)}}


def check_messages(row: SourceRow, name: str, messages: Any, need_assistant: bool) -> None:
    """Raise a located error unless `messages` is a non-empty list of valid role/content turns."""
    if not isinstance(messages, list) or not messages:
        raise _err(row, name, "must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _err(row, f"{name}[{i}]", "must be an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise _err(row, f"{name}[{i}].role", f"is {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise _err(row, f"{name}[{i}].content", "must be a string")
        if m["role"] == "assistant" and not m["content"].strip():
            raise _err(row, f"{name}[{i}].content", "assistant turn is empty")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise _err(row, name, "has no assistant turn, so there is nothing to learn")


def _parse_hh(row: SourceRow, name: str, text: str) -> list[dict[str, str]]:
    parts = HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if not messages:
        raise _err(row, name, "is not an hh-rlhf transcript ('\\n\\nHuman: ... \\n\\nAssistant: ...')")
    return messages


def to_preference(row: SourceRow) -> dict[str, Any]:
    """A preference row with an explicit prompt, converting hh transcripts and implicit prompts."""
    data = row.data
    for key in ("chosen", "rejected"):
        if key not in data:
            raise _err(row, key, f"missing (row has {_keys(data)})",
                       hint='preference rows look like {"prompt": [...], "chosen": [...], "rejected": [...]}')
    chosen, rejected, prompt = data["chosen"], data["rejected"], data.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str) and prompt is None:
        chosen, rejected = _parse_hh(row, "chosen", chosen), _parse_hh(row, "rejected", rejected)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(chosen, str):
        chosen = [{"role": "assistant", "content": chosen}]
    if isinstance(rejected, str):
        rejected = [{"role": "assistant", "content": rejected}]
    if prompt is None:  # implicit prompt: the shared prefix of both conversations
        if not isinstance(chosen, list) or not isinstance(rejected, list):
            raise _err(row, "chosen", "must be a list of messages or a string")
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    _check_prompt_replies(row, prompt, {"chosen": chosen, "rejected": rejected})
    if chosen == rejected:
        raise _err(row, "rejected", "is identical to chosen, so the pair teaches nothing",
                   hint="give a worse reply as rejected, or drop the pair")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def to_prompt(row: SourceRow) -> dict[str, Any]:
    """A prompt for online RL, {"prompt": [messages ending with a user turn]} plus `answer` when the row
    has one: a `prompt` (messages or a string) as is, a preference row's prompt, or a chat row's
    messages before its last assistant turn."""
    data = row.data
    if "chosen" in data:
        prompt = to_preference(row)["prompt"]
    elif "prompt" in data and "completion" not in data:
        prompt = [{"role": "user", "content": data["prompt"]}] if isinstance(data["prompt"], str) else data["prompt"]
        check_messages(row, "prompt", prompt, need_assistant=False)
    else:
        messages = to_chat(row)["messages"]
        prompt = messages[: max(i for i, m in enumerate(messages) if m["role"] == "assistant")]
        if not prompt:
            raise _err(row, "messages", "has no turn before the assistant's reply to use as a prompt")
    if not any(m["role"] == "user" for m in prompt):
        raise _err(row, "prompt", "has no user turn: there is nothing to reply to",
                   hint='prompt rows look like {"prompt": [{"role": "user", "content": "..."}]} or {"prompt": "..."}')
    if prompt[-1]["role"] != "user":
        raise _err(row, "prompt", "must end with a user turn")
    answer = data.get("answer")
    if answer is not None and not isinstance(answer, str | int | float):
        raise _err(row, "answer", f"must be a string or a number, got {type(answer).__name__}")
    return {"prompt": prompt, **({"answer": str(answer)} if answer is not None else {})}


def _check_prompt_replies(row: SourceRow, prompt: Any, replies: dict[str, Any]) -> None:
    check_messages(row, "prompt", prompt, need_assistant=False)
    if prompt[-1]["role"] != "user":
        raise _err(row, "prompt", "must end with a user turn")
    for key, value in replies.items():
        check_messages(row, key, value, need_assistant=True)
        if any(m["role"] != "assistant" for m in value):
            raise _err(row, key, "must hold assistant turns only (the prompt holds the rest)")


def to_unpaired(row: SourceRow) -> dict[str, Any]:
    """A KTO row {"prompt", "completion", "label"} (TRL's unpaired preference format; strings become
    one user / assistant turn), or a preference pair kept whole, so that a validation split never
    separates its two halves; `unpair` expands pairs for training."""
    data = row.data
    if "chosen" in data or "rejected" in data:
        return to_preference(row)
    for key in ("prompt", "completion", "label"):
        if key not in data:
            raise _err(row, key, f"missing (row has {_keys(data)})",
                       hint='KTO rows look like {"prompt": [...], "completion": [...], "label": true}, or preference pairs')
    prompt, completion, label = data["prompt"], data["completion"], data["label"]
    if not isinstance(label, bool):
        raise _err(row, "label", f"must be true or false, got {label!r}", hint="true: a desirable completion, false: an undesirable one")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    _check_prompt_replies(row, prompt, {"completion": completion})
    return {"prompt": prompt, "completion": completion, "label": label}


def unpair(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO rows from unpaired rows and preference pairs: each pair becomes a desirable (chosen) and an
    undesirable (rejected) row with the same prompt."""
    out = []
    for row in rows:
        if "chosen" in row:
            out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
            out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
        else:
            out.append(row)
    return out


CONVERTERS = {"text": to_text, "chat": to_chat, "preference": to_preference, "prompt": to_prompt, "unpaired": to_unpaired}


def _keys(data: dict[str, Any]) -> str:
    return ", ".join(sorted(data)) or "no fields"
