"""Settings documented at the field: help text, range and choices in dataclass field metadata.

`setting(default, help, ge=..., choices=...)` declares one leaf setting of a recipe. The range and
choice checks (llmpipe/config/checks.py) and `llmpipe keys` both read this metadata, so a limit is
written once, next to the setting it limits, and its error message and documentation cannot drift
apart. A stage section that only changes a default (`max_steps: int = 300`) inherits the help and
limits of the base class's field through `documented`.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def setting(
    default: Any,
    help: str | None = None,  # noqa: A002 - the word the CLI and the docs use
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[str] | None = None,
    noun: str | None = None,
    why: str | None = None,
    path: bool = False,
    empty: bool = False,
) -> Any:
    """A dataclass field for one recipe setting, with its help text and limits as metadata.

    `ge`/`gt`/`le`/`lt` bound a number (for a list: each item); `choices` lists the allowed values
    (for a list: of each item). `noun` names what a choice is ("model preset") for the error
    message, `why` explains the bound in it ("the adapters' rank"). `empty` lets "" pass besides the
    choices (a key whose empty default means "decided elsewhere", e.g. the preset's). `path` marks a file or folder setting
    (or a list of them), read by the path rule of llmpipe/config/paths.py. A list or dict default is copied
    per instance. Without `help` the field only changes a default: `documented` then takes the help
    and limits of the same field in a base class.
    """
    if (ge is not None and gt is not None) or (le is not None and lt is not None):
        raise TypeError("give at most one lower bound (ge or gt) and one upper bound (le or lt)")
    limits = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices is not None else None,
              "noun": noun, "why": why}
    meta = {key: value for key, value in limits.items() if value is not None}
    if path:
        meta["path"] = True
    if empty:
        meta["empty"] = True
    if help is None and meta:
        raise TypeError("a setting that only changes a default takes its limits from the base class")
    if help is not None:
        meta["help"] = help
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _is_section(kind: Any) -> bool:
    return dataclasses.is_dataclass(kind)


def documented(cls: type) -> type:
    """Class decorator (above @dataclass): give each leaf field declared without help the metadata
    of the same field in a base class, and refuse a leaf that has no help anywhere.

    The refusal happens at import, so a setting cannot be added to llmpipe without its help text."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal") or _is_section(hints[f.name]) or "help" in f.metadata:
            continue
        inherited = next((base.__dataclass_fields__[f.name].metadata for base in cls.__mro__[1:]
                          if f.name in getattr(base, "__dataclass_fields__", {})
                          and "help" in base.__dataclass_fields__[f.name].metadata), None)
        if inherited is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text: declare it with setting(default, help, ...)")
        f.metadata = inherited  # a field that changes a default only: same meaning, same limits
    return cls


@dataclass(frozen=True)
class Leaf:
    """One leaf setting of a dataclass tree: its dotted key, dataclass field and declared type."""

    key: str
    field: dataclasses.Field
    kind: Any

    @property
    def is_list(self) -> bool:
        """Whether the setting holds a list (its limits then apply to each item)."""
        return typing.get_origin(self.kind) is list


def leaves(cls: type, prefix: str = "") -> list[Leaf]:
    """Every leaf setting under `cls`, depth first in declaration order (internal fields left out)."""
    hints = typing.get_type_hints(cls)
    found: list[Leaf] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if _is_section(hints[f.name]):
            found += leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            found.append(Leaf(f"{prefix}{f.name}", f, hints[f.name]))
    return found


def value_at(obj: Any, key: str) -> Any:
    """The value of dotted `key` in a dataclass instance (`pretrain.cleaning.min_chars`)."""
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def range_rule(meta: typing.Mapping[str, Any]) -> str | None:
    """The bounds as an error message states them: `>= 1`, `> 0`, `in (0, 1)`, `in [0, 0.5)`; None if unbounded."""
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return (">= " if low[0] == "[" else "> ") + str(low[1])
    if high:
        return ("<= " if high[0] == "]" else "< ") + str(high[1])
    return None


def limits_text(meta: typing.Mapping[str, Any], is_list: bool = False) -> str:
    """The limits as `llmpipe keys` shows them: `0 < x < 1`, `x >= 1`, `one of a, b`; '' if none."""
    each = "each " if is_list else ""
    if "choices" in meta:
        return f"{each}one of {', '.join(meta['choices'])}" + (" or empty" if meta.get("empty") else "")
    low = f"{meta['ge']} <= " if "ge" in meta else f"{meta['gt']} < " if "gt" in meta else ""
    high = f" <= {meta['le']}" if "le" in meta else f" < {meta['lt']}" if "lt" in meta else ""
    if low and not high:  # a lower bound alone reads better as `x >= 1` than as `1 <= x`
        return f"{each}x {'>=' if 'ge' in meta else '>'} {meta['ge'] if 'ge' in meta else meta['gt']}"
    return f"{each}{low}x{high}" if low or high else ""


def _within(meta: typing.Mapping[str, Any], x: Any) -> bool:
    return (("ge" not in meta or x >= meta["ge"]) and ("gt" not in meta or x > meta["gt"])
            and ("le" not in meta or x <= meta["le"]) and ("lt" not in meta or x < meta["lt"]))


def problem(leaf: Leaf, value: Any) -> str | None:
    """What is wrong with `value` for this setting by its declared range and choices, or None.

    The message states the rule (`must be in (0, 1)`, `must be one of a, b`), as every config error
    does; the caller adds the file and the key."""
    meta = leaf.field.metadata
    why = f" ({meta['why']})" if "why" in meta else ""
    for item in value if leaf.is_list else [value]:
        if "choices" in meta and item not in meta["choices"] and not (meta.get("empty") and item == ""):
            names = ", ".join(meta["choices"])
            if leaf.is_list:
                return f"unknown {meta.get('noun', 'value')} {item!r}; choose from {names}"
            return f"unknown {meta['noun']}; choose one of {names}" if "noun" in meta else f"must be one of {names}"
        if not _within(meta, item):
            rule = range_rule(meta)
            return (f"each value must be {rule}, got {item!r}" if leaf.is_list else f"must be {rule}") + why
    return None
