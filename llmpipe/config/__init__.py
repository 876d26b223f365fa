"""Layer 1, config: typed recipes (YAML plus `key=value` overrides), their checks and documentation.

Imports llmpipe.core, the standard library and yaml only, so that reading and checking a recipe never
imports torch. Modules:

- constants: the names a recipe may choose from (stages, methods, loss types, reward rules, ...)
- presets: the model presets and families, as plain dicts, and how a `model` section resolves
- fields: `setting(default, help, ge=..., choices=...)`, the metadata every leaf setting carries
- schema: the dataclasses (Recipe and its sections)
- keys: every key with its default, limits and help (`llmpipe keys`, suggestions)
- checks: declared range/choice checks plus the hand-written cross-field rules
- load: `load_recipe` (YAML, overrides, coercion, unknown-key suggestions)
- identity: whether a finished stage was trained with the same settings
"""

from llmpipe.config.checks import validate
from llmpipe.config.constants import (
    ALIGN_METHODS,
    ANOMALY_POLICIES,
    BAD_ROW_POLICIES,
    DATA,
    DEVICES,
    DPO_LOSS_TYPES,
    GATE_ACTIONS,
    NEEDS_LABEL_SMOOTHING,
    NOT_IDENTITY,
    PRECISIONS,
    REPORT_TO,
    REWARD_RULES,
    RL_ALGORITHMS,
    RL_METHODS,
    STAGES,
)
from llmpipe.config.fields import setting
from llmpipe.config.identity import same_settings, stage_identity
from llmpipe.config.keys import KeyDoc, all_keys, key_docs
from llmpipe.config.load import load_recipe
from llmpipe.config.presets import PRESETS
from llmpipe.config.schema import (
    STAGE_SECTIONS,
    AlignConfig,
    CleaningConfig,
    GateConfig,
    LoRAConfig,
    ModelConfig,
    MonitorConfig,
    PretrainConfig,
    Recipe,
    RewardModelConfig,
    SFTConfig,
    SuitesConfig,
    TokenizerConfig,
    TrainConfig,
    VerdictConfig,
)

__all__ = [
    "ALIGN_METHODS", "ANOMALY_POLICIES", "BAD_ROW_POLICIES", "DATA", "DEVICES", "DPO_LOSS_TYPES", "GATE_ACTIONS",
    "NEEDS_LABEL_SMOOTHING", "NOT_IDENTITY", "PRECISIONS", "PRESETS", "REPORT_TO", "REWARD_RULES",
    "RL_ALGORITHMS", "RL_METHODS", "STAGES", "STAGE_SECTIONS", "AlignConfig", "CleaningConfig", "GateConfig",
    "KeyDoc", "LoRAConfig", "ModelConfig", "MonitorConfig", "PretrainConfig", "Recipe", "RewardModelConfig", "SFTConfig",
    "SuitesConfig", "TokenizerConfig", "TrainConfig", "VerdictConfig", "all_keys", "key_docs", "load_recipe", "same_settings", "setting",
    "stage_identity", "validate",
]
