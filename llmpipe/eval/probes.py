"""Probe suites: small capability checks a model must keep passing, scored in seconds.

A suite is a JSONL file, one probe per line:

    {"prompt": "The kettle is", "check": "choice", "choices": [" red", " blue"], "answer": " blue"}
    {"prompt": "What colour is the kettle?", "format": "chat", "check": "contains", "answer": "blue"}

- `prompt`: a string, or a list of chat messages;
- `format`: `text` (plain continuation after <bos>) or `chat` (the checkpoint's chat template);
  default: chat for a message list, text for a string;
- `check`: `exact` (the reply, trimmed, equals `answer`), `contains` (`answer` appears in the reply as
  whole words, case and punctuation ignored), `regex` (`answer` is a pattern searched in the reply),
  `choice` (of `choices`, `answer` must get the highest log-likelihood as a continuation),
  `constraints` (the reply meets every one of `constraints`, verifiable instructions such as
  `{"kind": "max_words", "value": 40}`: llmpipe/eval/constraints.py), `refuse` (the reply refuses or
  points to help) or `comply` (it answers), read by the rubric of llmpipe/eval/safety.py;
- optional `name`, `category` (a safety probe's), and `max_new_tokens` for generated checks (default 24).

A chat prompt must hold a user turn. data/suites/ holds the instruction-following and safety suites
(llmpipe/eval/suites.py scores them beyond pass / fail: per constraint kind, harmful compliance and
over-refusal).

Written here rather than taken from lm-evaluation-harness because a stage runs its suites every few
hundred steps on the model being trained, in-process; lm-eval is for evaluating finished checkpoints.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.eval.constraints import Constraint, check_all, parse_constraints
from llmpipe.eval.metrics import answer_matches, chat_ids, continuation_logps, generate_from_ids, text_ids
from llmpipe.eval.safety import refuses

CHECKS = ("exact", "contains", "regex", "choice", "constraints", "refuse", "comply")
# Checks that need no `answer`: the reply is judged by rules alone.
RULE_CHECKS = ("constraints", "refuse", "comply")
FORMATS = ("text", "chat")


@dataclass
class Probe:
    """One checked prompt of a suite."""

    name: str
    prompt: str | list[dict[str, str]]
    format: str
    check: str
    answer: str
    choices: list[str] = field(default_factory=list)
    max_new_tokens: int = 24
    constraints: list[Constraint] = field(default_factory=list)
    category: str = ""
    line: int = 0  # where it is in its file, for messages about it

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (a string becomes one user turn)."""
        return self.prompt if isinstance(self.prompt, list) else [{"role": "user", "content": self.prompt}]


def suite_name(path: str | Path) -> str:
    """A suite's display name: its file name without extensions (probes.text.jsonl → probes.text)."""
    return Path(path).name.removesuffix(".jsonl")


def load_suite(path: str | Path) -> list[Probe]:
    """Read and check a probe suite; a bad line is a UserError naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise UserError("probe suite not found", file=str(path), hint="give a JSONL file of probes (see llmpipe/eval/probes.py)")
    probes = []
    try:
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends, which splitlines
        # would break, and line numbers must match what an editor shows.
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError:
        raise UserError("probe suite is not UTF-8 text", file=str(path), hint="re-encode it as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if line.strip():
            probes.append(_parse(line, str(path), number))
    if not probes:
        raise UserError("probe suite has no probes", file=str(path))
    return probes


def _parse(line: str, file: str, number: int) -> Probe:
    def bad(field_name: str, what: str, hint: str | None = None) -> UserError:
        return UserError(what, file=file, line=number, field=field_name, hint=hint)

    try:
        row = json.loads(line)
    except ValueError as e:  # JSONDecodeError, or a plain ValueError for an integer of over 4300 digits
        raise bad(None, f"not valid JSON ({getattr(e, 'msg', e)})", hint="each line must be one complete JSON object") from None
    except RecursionError:
        raise bad(None, "JSON nested too deeply to read") from None
    if not isinstance(row, dict):
        raise bad(None, "a probe must be a JSON object")
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in prompt):
            raise bad("prompt", "must be a non-empty list of {role, content} messages")
        if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
            raise bad("prompt", "has no user turn", hint='add a {"role": "user", "content": ...} message to ask the model something')
    elif not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "missing or empty", hint="a string, or a list of chat messages")
    fmt = row.get("format", "chat" if isinstance(prompt, list) else "text")
    if fmt not in FORMATS:
        raise bad("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "text" and isinstance(prompt, list):
        raise bad("format", "a message-list prompt needs format chat")
    check = row.get("check")
    if check not in CHECKS:
        raise bad("check", f"must be one of {', '.join(CHECKS)}, got {check!r}")
    answer = row.get("answer")
    choices = row.get("choices", [])
    constraints = parse_constraints(row.get("constraints"), bad) if check == "constraints" else []
    if check in RULE_CHECKS:
        answer = "" if answer is None else answer
        if not isinstance(answer, str):
            raise bad("answer", f"a {check} probe takes no answer (its rules judge the reply)")
    elif check == "choice":
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise bad("choices", "a choice probe needs a list of at least 2 non-empty strings")
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
            answer = choices[answer]
        if answer not in choices:
            raise bad("answer", "must be one of the choices (or its index)")
    elif not isinstance(answer, str) or not answer.strip():
        raise bad("answer", "missing or empty")
    if check == "regex":
        try:
            re.compile(answer)
        except (re.error, OverflowError, RecursionError) as e:  # OverflowError: a repeat count like a{99999999999}
            raise bad("answer", f"is not a valid regular expression ({e})") from None
    max_new = row.get("max_new_tokens", 24)
    if not isinstance(max_new, int) or isinstance(max_new, bool) or not 1 <= max_new <= 4096:
        raise bad("max_new_tokens", "must be an integer in [1, 4096]")
    category = row.get("category", "")
    if not isinstance(category, str):
        raise bad("category", "must be a string (a safety category such as weapons)")
    return Probe(name=str(row.get("name") or f"line {number}"), prompt=prompt, format=fmt, check=check,
                 answer=answer, choices=list(choices), max_new_tokens=max_new, constraints=constraints, category=category,
                 line=number)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def passes(probe: Probe, reply: str) -> bool:
    """Whether a generated reply passes a generated (non-choice) probe."""
    if probe.check == "exact":
        return _normalise(reply) == _normalise(probe.answer)
    if probe.check == "contains":
        return answer_matches(reply, probe.answer)
    if probe.check == "constraints":
        return all(check_all(probe.constraints, reply))
    if probe.check in ("refuse", "comply"):
        return refuses(reply) == (probe.check == "refuse")
    return re.search(probe.answer, reply) is not None


def _prompt_ids(tokenizer: Any, probe: Probe) -> list[int]:
    return chat_ids(tokenizer, probe.messages()) if probe.format == "chat" else text_ids(tokenizer, probe.prompt)


def _choice_ids(tokenizer: Any, probe: Probe, choice: str) -> list[int]:
    if probe.format == "chat":
        return chat_ids(tokenizer, probe.messages(), [{"role": "assistant", "content": choice}])
    return text_ids(tokenizer, probe.prompt + choice)


def score_suite(model: Any, tokenizer: Any, probes: list[Probe], batch_size: int = 16, max_new_tokens: int | None = None) -> dict[str, Any]:
    """Score a suite: share of probes passed, with each probe's outcome (reply or chosen choice; a
    constraints probe's pass / fail per constraint). `max_new_tokens` caps every probe's own."""
    outcomes: dict[int, dict[str, Any]] = {}
    choice_probes = [(i, p) for i, p in enumerate(probes) if p.check == "choice"]
    pairs = [(_prompt_ids(tokenizer, p), _choice_ids(tokenizer, p, c)) for _, p in choice_probes for c in p.choices]
    logps = continuation_logps(model, tokenizer.pad_token_id, pairs, batch_size) if pairs else []
    at = 0
    for i, probe in choice_probes:
        scores = logps[at : at + len(probe.choices)]
        at += len(probe.choices)
        best = probe.choices[max(range(len(scores)), key=scores.__getitem__)]
        outcomes[i] = {"name": probe.name, "passed": best == probe.answer, "output": best}
    generated = [(i, p) for i, p in enumerate(probes) if p.check != "choice"]

    def budget(probe: Probe) -> int:
        return min(probe.max_new_tokens, max_new_tokens) if max_new_tokens else probe.max_new_tokens

    for max_new in sorted({budget(p) for _, p in generated}):
        group = [(i, p) for i, p in generated if budget(p) == max_new]
        replies = generate_from_ids(model, tokenizer, [_prompt_ids(tokenizer, p) for _, p in group], max_new, batch_size)
        for (i, probe), reply in zip(group, replies):
            outcomes[i] = {"name": probe.name, "passed": passes(probe, reply), "output": reply}
            if probe.check == "constraints":
                outcomes[i]["constraints"] = check_all(probe.constraints, reply)
    results = [outcomes[i] for i in range(len(probes))]
    return {"score": sum(r["passed"] for r in results) / len(results), "n": len(results), "results": results}


def check_suites(recipe: Any, sections: tuple[str, ...]) -> None:
    """Load every probe suite the given recipe sections name, so a missing or broken suite fails
    before any training; a missing file names the recipe key that points at it."""
    for section in sections:
        for path in getattr(getattr(recipe, section), "probes", []):
            if not Path(path).is_file():
                raise UserError(
                    f"probe suite {path} not found", file=recipe.source, field=f"{section}.probes",
                    hint=f"give existing JSONL suites, or {section}.probes=[] for none",
                )
            load_suite(path)
