"""Every recipe key with its default, limits and help: for unknown-key suggestions and `llmpipe keys`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmpipe.config.fields import leaves, limits_text, value_at
from llmpipe.config.paths import PATH_RULE
from llmpipe.config.schema import Recipe


def all_keys() -> list[str]:
    """Every valid dotted key of a recipe, for suggestions and documentation."""
    return [leaf.key for leaf in leaves(Recipe)]


@dataclass(frozen=True)
class KeyDoc:
    """What `llmpipe keys` shows of one setting."""

    key: str
    default: str  # as it would be written in a recipe or an override
    limits: str  # `0 < x < 1`, `one of a, b`, or ''
    help: str  # noqa: A003 - the field's own name

    def line(self) -> str:
        """`sft.learning_rate = 0.0005  (0 < x < 1)  Peak learning rate, ...` on one line."""
        limits = f"  ({self.limits})" if self.limits else ""
        return f"{self.key} = {self.default}{limits}  {self.help}"


def yaml_text(value: Any) -> str:
    """A default as one would write it in a recipe: `false`, `[a, b]`, `{}`, `""` for an empty string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_text(v)}" for k, v in value.items()) + "}"
    if value == "":
        return '""'
    return str(value)


def _help(meta: Any) -> str:
    # A path setting says how its relative paths are read: the rule is the same for all of them.
    return f"{meta['help']} {PATH_RULE}" if meta.get("path") else meta["help"]


def key_docs(grep: str | None = None) -> list[KeyDoc]:
    """Every key's documentation, in recipe order; with `grep`, only lines holding it (any case)."""
    defaults = Recipe()
    docs = [KeyDoc(leaf.key, yaml_text(value_at(defaults, leaf.key)), limits_text(leaf.field.metadata, leaf.is_list),
                   _help(leaf.field.metadata)) for leaf in leaves(Recipe)]
    if grep:
        docs = [doc for doc in docs if grep.lower() in doc.line().lower()]
    return docs
