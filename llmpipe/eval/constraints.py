"""Verifiable instructions: constraints on a reply that a rule can check, without a judge model.

A probe with `"check": "constraints"` carries a list of them, e.g.

    {"kind": "max_words", "value": 40}
    {"kind": "include_words", "words": ["river", "bridge"]}
    {"kind": "json", "keys": ["name", "age"]}
    {"kind": "sections", "value": 2, "marker": "Part"}
    {"kind": "bullets", "value": 3, "in_part": 1}

`in_part: k` checks the constraint on the text of part k only (the prompt must also hold a `sections`
constraint): that is how a multi-step instruction ("Part 1: three bullet points; Part 2: one sentence")
is scored step by step. KINDS below says what each kind checks; data/suites/README.md is generated
from it. A reply with no words fails every constraint: an empty answer follows no instruction.

Written here rather than taken from IFEval's code because the checks must run inside a stage every
few hundred steps and on any chat template, and their definitions are short enough to state and test
one by one (tests/test_suites.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llmpipe.eval.metrics import answer_matches

# kind: (its parameter, what the check does). The parameter is `value` (a count), `words`, `text`,
# `keys` or none.
KINDS: dict[str, tuple[str | None, str]] = {
    "max_words": ("value", "at most `value` words (a word: letters or digits, with inner ' or -)"),
    "min_words": ("value", "at least `value` words"),
    "max_sentences": ("value", "at most `value` sentences (ended by . ! or ? before a space or the end)"),
    "min_sentences": ("value", "at least `value` sentences"),
    "paragraphs": ("value", "exactly `value` paragraphs, separated by blank lines"),
    "bullets": ("value", "exactly `value` bullet points: lines starting with -, * or •"),
    "numbered": ("value", "exactly `value` numbered items: lines starting with 1. or 1)"),
    "lowercase": (None, "no uppercase letter anywhere"),
    "uppercase": (None, "no lowercase letter anywhere"),
    "include_words": ("words", "every one of `words` appears as whole words (case and punctuation ignored)"),
    "exclude_words": ("words", "none of `words` appears as whole words (case and punctuation ignored)"),
    "json": ("keys", "the reply (or a ``` fenced block in it) parses as one JSON object holding every key of `keys`"),
    "starts_with": ("text", "the reply starts with `text` (leading spaces and case ignored)"),
    "ends_with": ("text", "the reply ends with `text` (trailing spaces and case ignored)"),
    "sections": ("value", "exactly `value` parts, each opened by a line starting with `marker` and its number "
                 "(Part 1, Part 2, ...; `marker` defaults to Part), numbered in order"),
    "no_commas": (None, "no comma anywhere"),
    "wrap_quotes": (None, "the whole reply is wrapped in double quotes"),
}
COUNT_LIMIT = 10_000

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Constraint:
    """One checkable instruction: its kind, its parameter and (optionally) the part it applies to."""

    kind: str
    value: int = 0
    words: tuple[str, ...] = ()
    text: str = ""
    keys: tuple[str, ...] = ()
    marker: str = "Part"
    in_part: int | None = None


def words(text: str) -> list[str]:
    """The words of a text: runs of letters or digits, with inner apostrophes or hyphens."""
    return _WORD.findall(text)


def sentences(text: str) -> int:
    """Number of sentences: pieces ended by . ! or ? (or the end of the text) that hold a word."""
    return sum(1 for piece in _SENTENCE_END.split(text) if words(piece))


def paragraphs(text: str) -> int:
    """Number of paragraphs: blocks separated by blank lines that hold a word."""
    return sum(1 for block in re.split(r"\n\s*\n", text) if words(block))


def json_object(text: str) -> dict[str, Any] | None:
    """The reply as a JSON object: the whole reply, else the first ``` fenced block; None if neither parses."""
    candidates = [text.strip()] + [m.strip() for m in _FENCE.findall(text)]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def parts(text: str, marker: str) -> list[tuple[int, str]] | None:
    """(number, text) of each part opened by a line `<marker> <n>` (a Markdown heading's #s, bold ** and a
    trailing : or . allowed); None when there is no such line."""
    header = re.compile(rf"^[ \t]*(?:#+[ \t]*)?(?:\*\*)?{re.escape(marker)}[ \t]+(\d+)\b[^\n]*$", re.MULTILINE | re.IGNORECASE)
    found = list(header.finditer(text))
    if not found:
        return None
    ends = [m.start() for m in found[1:]] + [len(text)]
    return [(int(m.group(1)), text[m.end():end]) for m, end in zip(found, ends)]


def _check_whole(c: Constraint, text: str) -> bool:
    n = c.value
    if c.kind == "max_words":
        return len(words(text)) <= n
    if c.kind == "min_words":
        return len(words(text)) >= n
    if c.kind == "max_sentences":
        return sentences(text) <= n
    if c.kind == "min_sentences":
        return sentences(text) >= n
    if c.kind == "paragraphs":
        return paragraphs(text) == n
    if c.kind == "bullets":
        return len(_BULLET.findall(text)) == n
    if c.kind == "numbered":
        return len(_NUMBERED.findall(text)) == n
    if c.kind == "lowercase":
        return text == text.lower()
    if c.kind == "uppercase":
        return text == text.upper()
    if c.kind == "include_words":
        return all(answer_matches(text, w) for w in c.words)
    if c.kind == "exclude_words":
        return not any(answer_matches(text, w) for w in c.words)
    if c.kind == "json":
        found = json_object(text)
        return found is not None and all(k in found for k in c.keys)
    if c.kind == "starts_with":
        return text.lstrip().lower().startswith(c.text.lower())
    if c.kind == "ends_with":
        return text.rstrip().lower().endswith(c.text.lower())
    if c.kind == "sections":
        found = parts(text, c.marker)
        return found is not None and [number for number, _ in found] == list(range(1, n + 1))
    if c.kind == "no_commas":
        return "," not in text
    if c.kind == "wrap_quotes":
        stripped = text.strip()
        return len(stripped) >= 2 and stripped[0] == stripped[-1] == '"'
    raise ValueError(f"unknown constraint kind {c.kind!r}")  # parse_constraints admits only KINDS


def check(constraint: Constraint, reply: str, marker: str = "Part") -> bool:
    """Whether `reply` satisfies `constraint` (on its part `in_part`, split by `marker`, when set)."""
    text = reply
    if constraint.in_part is not None:
        found = parts(reply, marker) or []
        texts = [t for number, t in found if number == constraint.in_part]
        if len(texts) != 1:
            return False  # the part is missing or numbered twice: its step was not done as asked
        text = texts[0]
    if not words(text):
        return False
    return _check_whole(constraint, text)


def check_all(constraints: list[Constraint], reply: str) -> list[bool]:
    """One pass / fail per constraint of a prompt (parts split by the prompt's `sections` marker)."""
    marker = next((c.marker for c in constraints if c.kind == "sections"), "Part")
    return [check(c, reply, marker) for c in constraints]


def parse_constraints(raw: Any, bad: Any) -> list[Constraint]:
    """The `constraints` of a probe line, checked; `bad(field, what, hint)` builds the UserError to raise."""
    names = ", ".join(KINDS)
    if not isinstance(raw, list) or not raw:
        raise bad("constraints", "must be a non-empty list of {kind, ...} objects", f"kinds: {names}")
    out = []
    for number, item in enumerate(raw, 1):
        where = f"constraint {number}"
        if not isinstance(item, dict):
            raise bad("constraints", f"{where} must be an object like {{\"kind\": \"max_words\", \"value\": 40}}")
        kind = item.get("kind")
        if kind not in KINDS:
            raise bad("constraints", f"{where}: unknown kind {kind!r}", f"choose one of {names}")
        param = KINDS[kind][0]
        values: dict[str, Any] = {"kind": kind}
        if param == "value":
            value = item.get("value")
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= COUNT_LIMIT:
                raise bad("constraints", f"{where} ({kind}): \"value\" must be an integer in [1, {COUNT_LIMIT}]")
            values["value"] = value
        elif param in ("words", "keys"):
            listed = item.get(param, [] if param == "keys" else None)
            if not isinstance(listed, list) or not all(isinstance(w, str) and w.strip() for w in listed) or (
                    param == "words" and not listed):
                raise bad("constraints", f"{where} ({kind}): \"{param}\" must be a list of non-empty strings")
            values[param] = tuple(listed)
        elif param == "text":
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                raise bad("constraints", f"{where} ({kind}): \"text\" must be a non-empty string")
            values["text"] = text.strip()
        if kind == "sections":
            marker = item.get("marker", "Part")
            if not isinstance(marker, str) or not re.fullmatch(r"[A-Za-z][A-Za-z ]{0,30}", marker):
                raise bad("constraints", f"{where} (sections): \"marker\" must be a word such as Part or Section")
            values["marker"] = marker
        in_part = item.get("in_part")
        if in_part is not None:
            if not isinstance(in_part, int) or isinstance(in_part, bool) or in_part < 1:
                raise bad("constraints", f"{where}: \"in_part\" must be a part number >= 1")
            values["in_part"] = in_part
        unknown = set(item) - {"kind", "in_part", "marker", *(p for p in [param] if p)}
        if unknown:
            raise bad("constraints", f"{where} ({kind}): unknown key {sorted(unknown)[0]!r}",
                      f"{kind} takes {param or 'no parameter'}" + (" and in_part" if kind != "sections" else ", marker and in_part"))
        out.append(Constraint(**values))
    parts_asked = [c.value for c in out if c.kind == "sections"]
    for c in out:
        if c.in_part is not None and (not parts_asked or c.in_part > parts_asked[0]):
            raise bad("constraints", f"{c.kind} has in_part {c.in_part} but the prompt asks for "
                      + (f"{parts_asked[0]} parts" if parts_asked else "no parts"),
                      "add a {\"kind\": \"sections\", \"value\": N} constraint with N >= in_part")
    return out


def describe(constraint: Constraint) -> str:
    """A constraint in a few words, for reports (`max_words 40`, `bullets 3 in part 1`)."""
    param = KINDS[constraint.kind][0]
    shown = {"value": constraint.value, "words": "/".join(constraint.words), "text": repr(constraint.text),
             "keys": "/".join(constraint.keys) or "any"}.get(param or "", "")
    where = f" in part {constraint.in_part}" if constraint.in_part is not None else ""
    return f"{constraint.kind} {shown}".rstrip() + where
