"""The config layer: settings declared with their help and limits, the checks made from them, the
layer's imports, and the comparison of a finished stage's settings with a new run's."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
from pathlib import Path

import pytest
from conftest import MICRO, invoke

from llmpipe.config import REWARD_RULES, Recipe, load_recipe, same_settings, setting
from llmpipe.config.fields import documented, leaves
from llmpipe.core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "llmpipe" / "config"


def test_every_setting_has_help_text():
    for leaf in leaves(Recipe):
        assert len(leaf.field.metadata.get("help", "")) > 10, leaf.key


def test_a_setting_without_help_is_refused_at_import():
    with pytest.raises(TypeError, match="Broken.steps has no help text"):
        @documented
        @dataclasses.dataclass
        class Broken:
            steps: int = 3

    @documented
    @dataclasses.dataclass
    class Base:
        steps: int = setting(3, "Steps to take.", ge=1)

    @documented
    @dataclasses.dataclass
    class Child(Base):
        steps: int = 5  # a default alone: help and limits come from Base

    (child,) = dataclasses.fields(Child)
    assert child.default == 5 and child.metadata["help"] == "Steps to take." and child.metadata["ge"] == 1


def _outside(meta: dict, kind: type) -> list:
    """Values just outside each declared bound of a setting."""
    step = 1 if kind is int else 1e-3
    bad = []
    if "ge" in meta:
        bad.append(meta["ge"] - step)
    if "gt" in meta:
        bad.append(meta["gt"])
    if "le" in meta:
        bad.append(meta["le"] + step)
    if "lt" in meta:
        bad.append(meta["lt"])
    if "choices" in meta:
        bad.append("bogus")
    return bad


def _limited():
    for leaf in leaves(Recipe):
        item = leaf.kind.__args__[0] if leaf.is_list else leaf.kind
        for value in _outside(dict(leaf.field.metadata), item):
            yield pytest.param(leaf.key, [value] if leaf.is_list else value, id=f"{leaf.key}={value}")


@pytest.mark.parametrize(("key", "value"), list(_limited()))
def test_every_declared_limit_is_checked(key, value):
    """The generic checker enforces each bound and choice list declared at a field, naming the key."""
    with pytest.raises(UserError) as error:
        load_recipe(None, [f"{key}={value}"])
    assert error.value.field == key and error.value.file == "<defaults>"
    assert error.value.what.startswith(("must be", "unknown", "each value must be")), error.value.what


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tokenizer.vocab_size=100", '"tokenizer.vocab_size" must be in [260, 1000000] (256 bytes + special tokens)'),
        ("sft.lora.r=0", '"sft.lora.r" must be >= 1 (the adapters\' rank)'),
        ("sft.lora.dropout=1", '"sft.lora.dropout" must be in [0, 1)'),
        ("monitor.rollback_lr_factor=0", '"monitor.rollback_lr_factor" must be in (0, 1]'),
        ("align.rewards=[exact_match, bogus]", "\"align.rewards\" unknown reward 'bogus'; choose from exact_match, format, length"),
        ("monitor.report_to=[nope]", "\"monitor.report_to\" unknown target 'nope'; choose from tensorboard, wandb"),
        ("pretrain.mixture_weights=[-1]", '"pretrain.mixture_weights" each value must be > 0, got -1.0'),
        ("sft.bad_rows=drop", '"sft.bad_rows" must be one of fail, skip'),
    ],
)
def test_declared_limits_read_as_one_line_errors(override, message):
    with pytest.raises(UserError) as error:
        load_recipe(MICRO, [override])
    assert error.value.one_line() == f"{MICRO}: {message}"


def test_limits_render_for_errors_and_for_keys():
    from llmpipe.config.fields import limits_text, range_rule

    assert [range_rule(m) for m in ({"ge": 1}, {"gt": 0, "lt": 1}, {"ge": 0, "lt": 0.5}, {"le": 5}, {})] == \
        [">= 1", "in (0, 1)", "in [0, 0.5)", "<= 5", None]
    assert [limits_text(m) for m in ({"ge": 1}, {"gt": 0, "le": 1}, {"lt": 5}, {"choices": ("a", "b")}, {})] == \
        ["x >= 1", "0 < x <= 1", "x < 5", "one of a, b", ""]
    assert limits_text({"gt": 0}, is_list=True) == "each x > 0"


def test_rewards_implement_exactly_the_declared_rules():
    from llmpipe.eval.rewards import SCORERS

    assert sorted(SCORERS) == sorted(REWARD_RULES)


def _llmpipe_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, inside a function) for every llmpipe import of a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] \
            if isinstance(node, ast.Import) else []
        found += [(name, id(node) in nested) for name in names if name.split(".")[0] == "llmpipe"]
    return found


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.py")), ids=lambda p: p.name)
def test_config_layer_imports_only_core_and_itself_at_module_level(path):
    for module, in_function in _llmpipe_imports(path):
        assert module.startswith(("llmpipe.core", "llmpipe.config", "llmpipe.registry")), f"{path.name} imports {module}"
        assert not in_function, f"{path.name} imports {module} inside a function"


# Every recipe section a stage trains from, written out: a new one must be added here on purpose.
TRAINED_SECTIONS = ("base", "tokenizer", "pretrain", "sft", "align", "reward")


@pytest.mark.parametrize("section", TRAINED_SECTIONS)
def test_a_stage_trained_before_a_setting_existed_keeps_its_settings(section):
    """An older llmpipe wrote no key for a setting added since: the finished stage must still count
    as trained with the same settings (the new setting's default is the old behaviour)."""
    new = Recipe().stage_config(section)
    old = copy.deepcopy(new)
    del old[section][sorted(old[section])[-1]]  # a leaf setting
    if "cleaning" in old[section]:
        del old[section]["cleaning"]["decontaminate_ngram"]  # and one inside a sub-section
    assert same_settings(old, new)
    old[section]["max_steps" if section != "tokenizer" else "vocab_size"] = 9
    assert not same_settings(old, new)  # a real change still counts


def test_stage_sections_are_every_section_a_stage_trains_from():
    from llmpipe.config import STAGE_SECTIONS

    assert STAGE_SECTIONS == TRAINED_SECTIONS


def test_a_finished_reward_stage_of_an_older_llmpipe_is_skipped_not_refused(tmp_path):
    """The bug as a user met it: after an upgrade added a setting, rerunning the run refused the
    finished reward model as "trained with other settings"."""
    from llmpipe.runs import StageWriter

    new = load_recipe(None).stage_config("reward")
    old = json.loads(json.dumps(new))
    del old["reward"]["preference_rows"]  # as an llmpipe from before that setting wrote it
    (tmp_path / "reward").mkdir()
    (tmp_path / "reward" / "manifest.json").write_text(
        json.dumps({"stage": "reward", "status": "complete", "config": old, "parent": None}), encoding="utf-8")
    assert StageWriter(tmp_path, "reward", new).skip


def test_a_run_shorter_than_its_warmup_gets_past_the_recipe_check(tmp_path):
    """`llmpipe sft recipes/tiny.yaml sft.max_steps=5` (default warmup 10) was refused with
    "warmup_steps must be in [0, max_steps]"; a short trial run keeps the recipe's warmup now."""
    recipe = load_recipe("recipes/tiny.yaml", ["sft.max_steps=5"], stage="sft")
    assert recipe.sft.max_steps == 5 and recipe.sft.warmup_steps == 10
    result = invoke("data", "check", "recipes/tiny.yaml", "sft.max_steps=5", "--stage", "sft", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    with pytest.raises(UserError, match='"sft.warmup_steps" must be >= 0'):  # what is still an error
        load_recipe("recipes/tiny.yaml", ["warmup_steps=-1"], stage="sft")


def test_training_arguments_cap_the_warmup_at_the_run(tmp_path):
    from types import SimpleNamespace

    from llmpipe.train.args import training_arguments

    recipe = Recipe(device="cpu")  # built directly: this tests the cap, not the recipe check
    writer = SimpleNamespace(checkpoints_dir=tmp_path)
    capped = training_arguments(lambda **kw: kw, dataclasses.replace(recipe.sft, max_steps=5), recipe, writer)
    assert capped["max_steps"] == 5 and capped["warmup_steps"] == 5
    assert training_arguments(lambda **kw: kw, recipe.pretrain, recipe, writer)["warmup_steps"] == 20  # under the cap


RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def _set_keys(raw: dict, prefix: str, leaf_keys: set[str]) -> list[str]:
    """The dotted leaf keys a recipe file sets (a dict-valued setting such as `columns` is one key)."""
    keys = []
    for name, value in raw.items():
        key = f"{prefix}{name}"
        keys += [key] if key in leaf_keys or not isinstance(value, dict) else _set_keys(value, f"{key}.", leaf_keys)
    return keys


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_list_only_what_differs_from_the_defaults(path):
    """A recipe that repeats defaults hides what it changes, and pins values the defaults may improve."""
    import yaml

    from llmpipe.config import all_keys
    from llmpipe.config.fields import value_at

    recipe, defaults = load_recipe(path), Recipe()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    repeated = [key for key in _set_keys(raw, "", set(all_keys()))
                if key != "name" and value_at(recipe, key) == value_at(defaults, key)
                # Naming the model beside a time budget keeps it from being sized to the budget (model: auto).
                and not (key in ("model", "model.preset") and recipe.pretrain.time_budget)]
    assert not repeated, f"{path.name} sets keys to their defaults: {', '.join(repeated)}"
