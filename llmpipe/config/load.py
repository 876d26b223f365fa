"""Reading a recipe: YAML file or built-in name, dotted `key=value` overrides, type coercion, paths,
unknown-key suggestions.

Values are coerced to the declared type and the recipe is checked (llmpipe/config/checks.py) before
any heavy import, so a typo costs a second, not a training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from llmpipe.config.checks import validate
from llmpipe.config.fields import leaves, value_at
from llmpipe.config.keys import all_keys
from llmpipe.config.paths import map_paths, resolve, resolve_default
from llmpipe.config.presets import AUTO
from llmpipe.config.recipes import find_recipe
from llmpipe.config.schema import SHORTHANDS, Recipe
from llmpipe.core.errors import UserError
from llmpipe.registry import STAGES, TOKENIZER


def load_recipe(path: str | Path | None, overrides: list[str] = (), stage: str | None = None) -> Recipe:
    """Read a recipe (a YAML file, a built-in recipe's name, or the defaults when `path` is None), apply
    `key=value` overrides, resolve its relative paths, validate.

    In a stage command, a bare key (`max_steps=10`, `lora.r=4`) means that stage's key (`pretrain.max_steps`);
    dotted keys (`sft.learning_rate=1e-4`) and top-level keys (`seed=1`) work everywhere. Relative paths
    follow the rule of llmpipe/config/paths.py: the recipe file's folder, the current folder for overrides.
    """
    source = "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        p = find_recipe(str(path))
        source = str(p)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"invalid YAML: {problem}", file=source, line=line, hint="fix the YAML syntax") from None
        except UnicodeDecodeError:
            raise UserError("recipe is not UTF-8 text", file=source, hint="re-encode it as UTF-8") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError("a recipe must be a YAML mapping of keys to values", file=source)
        raw = loaded
    for section, key in SHORTHANDS.items():
        if isinstance(raw.get(section), str):
            raw[section] = {key: raw[section]}
    in_file = _dotted_keys(raw)
    overridden: set[str] = set()
    for item in overrides:
        key, value = _parse_override(item, stage)
        _set_dotted(raw, key, value)
        overridden |= {key} | _dotted_keys(value, f"{key}.")
    recipe = _build(Recipe, raw, prefix="", source=source)
    recipe.source = source
    recipe.given = tuple(sorted(in_file | overridden))
    # A time or token budget with no model named sizes the model too (pretraining's model: auto): a budget
    # is the question "what is best in this much?", and a preset fixed for another budget is rarely the answer.
    names_model = any(key == "model" or key.startswith("model.") for key in recipe.given)
    if (recipe.pretrain.time_budget or recipe.pretrain.tokens) and not names_model and not recipe.base.source:
        recipe.model = dataclasses.replace(recipe.model, preset=AUTO)
    _resolve_paths(recipe, in_file, overridden, str(Path(source).parent) if path is not None else None)
    _tokenizer_follows_pretraining(recipe)
    validate(recipe)
    return recipe


def _tokenizer_follows_pretraining(recipe: Recipe) -> None:
    """A recipe that names its pretraining text but not the tokenizer's: the tokenizer learns from that text
    too, not from the embedded world's (a tokenizer of other text splits the user's words into bytes)."""
    # The section of the stage that builds a model from the tokenizer (pretrain), without naming it here.
    source = next(spec.section for spec in STAGES.values() if spec.builds_model and TOKENIZER in spec.parents)
    for key in ("train_files", "validation_files"):
        if f"{source}.{key}" in recipe.given and f"{TOKENIZER}.{key}" not in recipe.given:
            setattr(recipe.tokenizer, key, list(getattr(getattr(recipe, source), key)))


def _dotted_keys(raw: Any, prefix: str = "") -> set[str]:
    """Every dotted key given in nested YAML mappings (sections and leaves)."""
    if not isinstance(raw, dict):
        return set()
    keys = set()
    for key, value in raw.items():
        keys |= {f"{prefix}{key}"} | _dotted_keys(value, f"{prefix}{key}.")
    return keys


def _resolve_paths(recipe: Recipe, in_file: set[str], overridden: set[str], folder: str | None) -> None:
    """Each path setting by where its value came from: an override (the current folder), the recipe
    file (its folder), or the defaults (the embedded data)."""
    for leaf in leaves(Recipe):
        if not leaf.field.metadata.get("path"):
            continue
        section, _, name = leaf.key.rpartition(".")
        if leaf.key in overridden:
            convert = partial(resolve, base=None)
        elif leaf.key in in_file:
            convert = partial(resolve, base=folder)
        else:
            convert = resolve_default
        owner = value_at(recipe, section) if section else recipe
        setattr(owner, name, map_paths(getattr(owner, name), convert))


def _parse_override(item: str, stage: str | None) -> tuple[str, Any]:
    """`key=value` as (dotted key, YAML-parsed value); a bare key in a stage command is that stage's."""
    if "=" not in item:
        raise UserError(f"override '{item}' is not key=value", hint="write it like pretrain.max_steps=10")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{item}' has an empty key", hint="write it like pretrain.max_steps=10")
    top_level = {f.name for f in dataclasses.fields(Recipe)}
    if stage and key.split(".")[0] not in top_level:  # max_steps, lora.r: the stage's own keys
        key = f"{stage}.{key}"
    # YAML syntax for the value: numbers, booleans and [lists] work as in a recipe file.
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if key in SHORTHANDS and not isinstance(parsed, dict):
        # `model=tiny-llama` sets the preset and keeps the recipe's other model keys.
        key = f"{key}.{SHORTHANDS[key]}"
    return key, parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, making (or replacing non-dict) sections on the way."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _unknown_key(key: str, source: str) -> UserError:
    """The error for a key the schema lacks, with the likeliest intended key as its hint."""
    keys = all_keys()
    # Sections too ("pretrian" → "pretrain"), at the key's own depth, not only leaf keys.
    sections = sorted({k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)} - set(keys))
    sections = [s for s in sections if s.count(".") == key.count(".")]
    # A key of another section (pretrain.beta → align.beta) first: the same name elsewhere beats
    # a merely similar one here.
    tail = key.split(".")[-1]
    close = [k for k in keys if k.split(".")[-1] == tail and k != key][:1] if "." in key else []
    close = close or difflib.get_close_matches(key, keys + sections, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "run 'llmpipe keys' to list the valid keys"
    return UserError("unknown key", file=source, field=key, hint=hint)


def _build(cls: type, raw: dict[str, Any], prefix: str, source: str) -> Any:
    """An instance of dataclass `cls` from raw YAML values, coerced to the declared types; keys not
    given keep their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(dotted, source)
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise UserError("must be a section of keys", file=source, field=dotted)
            kwargs[key] = _build(kind, value, prefix=f"{dotted}.", source=source)
        else:
            kwargs[key] = _coerce(value, kind, dotted, source)
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, dotted: str, source: str) -> Any:
    """`value` as the declared type `kind`, or a UserError naming the key and what was expected."""
    def bad(expected: str) -> UserError:
        return UserError(f"expected {expected}, got {value!r}", file=source, field=dotted)

    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if kind is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                raise bad("an integer") from None
            if number.is_integer():
                return int(number)
        raise bad("an integer")
    if kind is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            # PyYAML reads `1e-3` (no dot) as a string; float() takes it.
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if kind is str:
        if isinstance(value, bool):
            # YAML 1.1 reads a bare off/on/no/yes as a boolean; in a text setting it meant the word.
            return "on" if value else "off"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise bad("a string")
    if typing.get_origin(kind) is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad("a list")
        item = typing.get_args(kind)[0]
        return [_coerce(v, item, dotted, source) for v in value]
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise bad("a mapping of names to names, e.g. {question: prompt}")
        return dict(value)
    raise bad(str(kind))  # pragma: no cover - every declared type is handled above
