"""The names a recipe may choose from: stages, align methods, loss types, devices, reward rules.

Plain tuples, so that the schema can declare them as a setting's choices and the modules that act on
them (the stages, llmpipe/eval/rewards.py) can check that they cover exactly these names.
"""

from __future__ import annotations

from llmpipe.registry import ALIGN_METHODS, CAI_TRAINING, DEFAULT_METHOD, RL_ALGORITHMS, RL_METHODS
from llmpipe.registry import RUN_ORDER as STAGES

# The stage and method names come from the stage registry (llmpipe/registry.py); re-exported here for the schema.
__all__ = ["ALIGN_METHODS", "CAI_TRAINING", "DEFAULT_METHOD", "RL_ALGORITHMS", "RL_METHODS", "STAGES"]
# TRL 1.16 DPOTrainer loss types, each checked to train on pairs alone; robust and exo_pair also need
# align.label_smoothing > 0 (TRL refuses exo_pair without it; robust without it is plain sigmoid).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
NEEDS_LABEL_SMOOTHING = ("robust", "exo_pair")
# The DPO loss type that is an NLL on the chosen replies: what align.rpo_alpha adds beside the DPO loss.
SFT_LOSS = "sft"
# Rule rewards of online RL; llmpipe/eval/rewards.py implements one function per name (tests check both ways).
REWARD_RULES = ("exact_match", "format", "length")
PRECISIONS = ("auto", "bf16", "fp32")
GATE_ACTIONS = ("stop", "warn", "off")
ANOMALY_POLICIES = ("rollback", "stop", "skip")
REPORT_TO = ("tensorboard", "wandb")
BAD_ROW_POLICIES = ("fail", "skip")
# How LoRA's frozen base is held: as trained, or 4-bit NF4 through bitsandbytes (QLoRA, CUDA only).
QUANTIZE = ("none", "4bit")
# Settings that leave a stage's weights as they are (observers, speed): no retraining when only these differ.
NOT_IDENTITY = ("gate", "monitor", "compile", "gradient_checkpointing")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Optimisers and learning-rate schedules (llmpipe/train/optim.py).
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
# The embedded datasets' folder as recipes and defaults name it; llmpipe/config/paths.py finds it wherever llmpipe runs.
DATA = "data"
