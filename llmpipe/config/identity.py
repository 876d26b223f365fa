"""Whether a finished stage and a new run of it train the same checkpoint (skip, resume or refuse)."""

from __future__ import annotations

from typing import Any

from llmpipe.config.constants import NOT_IDENTITY
from llmpipe.config.presets import PRESETS
from llmpipe.config.schema import STAGE_SECTIONS, ModelConfig, Recipe


def stage_identity(config: dict[str, Any]) -> dict[str, Any]:
    """A stage config without the NOT_IDENTITY settings: what decides whether two runs are the same."""
    return {
        key: stage_identity(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in NOT_IDENTITY
    }


def _with_defaults(old: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`old` with every key it lacks (at any depth) taken from `defaults`."""
    filled = dict(old)
    for key, value in defaults.items():
        if key not in filled:
            filled[key] = value
        elif isinstance(value, dict) and isinstance(filled[key], dict):
            filled[key] = _with_defaults(filled[key], value)
    return filled


def same_settings(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a finished stage's recorded config and a new one train the same checkpoint.

    Settings added to llmpipe after the old stage was trained count as their defaults there (new
    settings default to the old behaviour), so an upgrade does not make finished stages stale."""
    if old is None:
        return False
    if isinstance(old.get("model"), str) and old["model"] in PRESETS:
        # Before `model` was a section a stage recorded the preset's name: that preset, every key its own.
        old = {**old, "model": ModelConfig(preset=old["model"]).resolved()}
    # Every section a stage trains from, `reward` included: STAGES names the chain's stages, not the
    # recipe sections, and a section missing here made an upgrade refuse its finished stages.
    section = next((key for key in new if key in STAGE_SECTIONS), None)
    if section is not None:
        old = _with_defaults(old, Recipe().stage_config(section))
    return stage_identity(old) == stage_identity(new)
