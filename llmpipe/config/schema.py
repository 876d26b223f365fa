"""The recipe's settings as dataclasses, each leaf declared with its help text and limits.

A recipe is one YAML file with a few top-level keys (seed, model, device, precision) and one section
per stage. Every key has a default that works, so an empty recipe trains the `tiny` model on the
embedded `data/` (wherever llmpipe runs: llmpipe/config/paths.py). A stage section that only changes a
default of TrainConfig writes it plainly (`max_steps: int = 300`): `documented` gives it TrainConfig's
help and limits.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from llmpipe.config.constants import (
    ALIGN_METHODS,
    BAD_ROW_POLICIES,
    CAI_TRAINING,
    DATA,
    DEFAULT_METHOD,
    DEVICES,
    DPO_LOSS_TYPES,
    OPTIMIZERS,
    PRECISIONS,
    QUANTIZE,
    REWARD_RULES,
    RL_ALGORITHMS,
    SCHEDULES,
)
from llmpipe.config.fields import documented, setting
from llmpipe.config.measures import GateConfig, MonitorConfig, SuitesConfig, VerdictConfig
from llmpipe.config.paths import map_paths, portable
from llmpipe.config.presets import AUTO, FAMILIES, PRESETS, resolve_model
from llmpipe.registry import stage_for

CHAT_SAMPLES = ["What colour is the kettle?", "What is 2 plus 3?"]


@documented
@dataclass
class BaseConfig:
    """An existing model to start from instead of a tokenizer and pretraining from scratch.

    In a recipe, `base: PATH` is short for `base.source: PATH`. The model becomes the run's `base` stage:
    a folder that refers to the source's weights (verified by sha256, not copied) with the source's
    tokenizer and chat template, which every later stage starts from."""

    source: str = setting("", "A local Hugging Face model folder, hf:ORG/NAME[@REVISION] (downloaded through the hub "
                          "cache) or a .gguf file; empty: train from scratch (tokenizer, then pretrain).", path=True)
    trust_remote_code: bool = setting(False, "Import a model whose config.json maps its classes to its own Python code "
                                      "(auto_map; the tokenizer's code may run): read that code first. Its family must be "
                                      "one transformers implements, whose own classes then train it.")


@documented
@dataclass
class TokenizerConfig:
    """Byte-level BPE trained on the pretraining text."""

    train_files: list[str] = setting([f"{DATA}/pretrain.train.jsonl"],
                                     "Text the tokenizer learns its merges from (files, folders, globs or hf: sources); "
                                     "not given while pretrain.train_files is: the pretraining text.",
                                     path=True)
    validation_files: list[str] = setting([f"{DATA}/pretrain.validation.jsonl"],
                                          "Held-out text on which the tokenizer's bytes per token is measured; not given "
                                          "while pretrain.validation_files is: that text.", path=True)
    vocab_size: int = setting(4096, "Vocabulary size, the 256 byte tokens and the special tokens included.",
                              ge=260, le=1_000_000, why="256 bytes + special tokens")
    min_frequency: int = setting(2, "A pair of tokens must occur this often to become a merge.", ge=1)
    max_train_bytes: int = setting(100_000_000, "Bytes of text read at most: tokenizer training needs a sample, "
                                   "not the whole corpus.", gt=0)


@documented
@dataclass
class CleaningConfig:
    """What happens to training rows before training: normalisation, filters, dedup, decontamination."""

    normalize_unicode: bool = setting(True, "Normalise text to Unicode NFC and line ends to LF before the filters.")
    min_chars: int = setting(1, "Drop rows shorter than this many characters.", ge=0)
    max_chars: int = setting(0, "Drop rows longer than this many characters; 0: no limit.", ge=0)
    max_repeated_line_share: float = setting(
        0.5, "Drop rows whose duplicated lines make up more than this share of their characters (1: off).", gt=0, le=1)
    exact_dedup: bool = setting(True, "Drop rows identical to an earlier row.")
    near_dedup: bool = setting(False, "Drop rows nearly identical to an earlier row (MinHash LSH over word n-grams).")
    near_dedup_threshold: float = setting(
        0.8, "Word n-gram Jaccard similarity around which near_dedup counts rows as duplicates (an S-curve, not "
        "a cut-off).", gt=0, lt=1)
    near_dedup_ngram: int = setting(5, "Words per shingle of near_dedup.", ge=1)
    near_dedup_permutations: int = setting(128, "MinHash permutations of near_dedup: more is sharper and slower.",
                                           ge=16, le=1024)
    decontaminate: bool = setting(True, "Drop training rows sharing a word n-gram with the run's held-out "
                                  "chat/preference rows.")
    decontaminate_ngram: int = setting(13, "Words per n-gram of decontaminate; shorter held-out rows match nothing.", ge=1)


@documented
@dataclass
class LoRAConfig:
    """LoRA adapters instead of full fine-tuning; the stage still leaves a merged model (llmpipe/train/lora.py)."""

    enabled: bool = setting(False, "Train LoRA adapters instead of all weights (then ~10x the learning rate); "
                            "the stage still leaves a full merged checkpoint, the adapter in <stage>/adapter/.")
    r: int = setting(8, "Rank of the adapters.", ge=1, why="the adapters' rank")
    alpha: float = setting(16.0, "Scale of the adapters' update (alpha / r multiplies it).", gt=0)
    dropout: float = setting(0.0, "Dropout on the adapters' input.", ge=0, lt=1)
    target_modules: list[str] = setting([], "Module names to adapt; empty: every linear layer but the output "
                                        "layer (llmpipe.models.lora_targets). Never lm_head.")
    # bitsandbytes' 4-bit kernels are CUDA-only; on CPU the check in llmpipe/train/args.py refuses it.
    quantize: str = setting("none", "QLoRA: 4bit loads the frozen base in 4-bit NF4 (bitsandbytes, CUDA only; "
                            "bf16 compute) to cut its memory ~4x; none: the base's own precision.", choices=QUANTIZE)


@documented
@dataclass
class TrainConfig:
    """Data and optimisation settings every training stage shares."""

    train_files: list[str] = setting([], "Training data: files, folders, globs or "
                                     "hf:NAME[:CONFIG][@SPLIT][#REVISION] sources.", path=True)
    validation_files: list[str] = setting([], "Held-out data, in the same forms; empty: validation_fraction of "
                                          "the train rows is held out.", path=True)
    mixture_weights: list[float] = setting([], "Share of the training mix drawn from each train file (same "
                                           "order); empty: every row once.", gt=0)
    columns: dict[str, str] = setting({}, "Rename the data's own columns to llmpipe's, e.g. "
                                      "{question: prompt, response: completion}.")
    bad_rows: str = setting("fail", "A row that fails its format check: fail stops with file:line, skip drops "
                            "and counts it.", choices=BAD_ROW_POLICIES)
    validation_fraction: float = setting(0.05, "Share of training rows held out when no validation file is "
                                         "given (deterministic by row hash).", gt=0, lt=1)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    max_steps: int = setting(100, "Optimiser steps to train.", ge=1)
    batch_size: int = setting(16, "Rows per device and forward pass (text blocks, conversations, pairs; "
                              "completions in online RL).", ge=1)
    grad_accum: int = setting(1, "Forward passes accumulated into one optimiser step.", ge=1)
    learning_rate: float = setting(1e-3, "Peak learning rate, reached after warmup, then decayed by the schedule.",
                                   gt=0, lt=1)
    optimizer: str = setting("adamw", "adamw, or muon: Muon for the hidden 2-D weights (attention, MLP) and AdamW for "
                             "embeddings, head, norms and biases, at the same learning rate (Muon's step is scaled "
                             "to AdamW's RMS).", choices=OPTIMIZERS, noun="optimizer")
    schedule: str = setting("cosine", "Learning-rate schedule after warmup: cosine (down to min_lr_ratio of the peak) "
                            "or wsd (warmup-stable-decay: constant, then linear to zero over the last "
                            "decay_fraction of the steps).", choices=SCHEDULES, noun="schedule")
    min_lr_ratio: float = setting(0.1, "Learning rate at the end of the cosine decay, as a share of the peak.",
                                  ge=0, le=1)
    decay_fraction: float = setting(0.2, "Share of the steps over which the wsd schedule decays to zero.", gt=0, le=1)
    # More warmup than steps is not an error: a short trial run (max_steps=5) keeps the recipe's warmup
    # and the training arguments cap it (llmpipe/train/args.py).
    warmup_steps: int = setting(10, "Steps of linear warmup to the peak learning rate; a run of fewer steps "
                                "warms up for all of them.", ge=0)
    weight_decay: float = setting(0.1, "AdamW weight decay.", ge=0)
    max_grad_norm: float = setting(1.0, "Gradients are clipped to this global norm.", gt=0)
    max_length: int = setting(256, "Tokens per row: the block length in pretraining; longer conversations "
                              "or pairs are cut.", ge=8)
    eval_every: int = setting(50, "Steps between evaluations on the validation set.", ge=1)
    eval_batches: int = setting(20, "Validation batches per evaluation (the same held-out sample each time).", ge=1)
    save_every: int = setting(100, "Steps between the checkpoints an interrupted stage resumes from.", ge=1)
    log_every: int = setting(10, "Steps between logged training metrics.", ge=1)
    probes: list[str] = setting([], "Probe suites (JSONL, see llmpipe/eval/probes.py) scored during training "
                                "and protected for the next stage's regression gate.", path=True)
    probe_every: int = setting(0, "Steps between probe scorings; 0: at every evaluation.", ge=0,
                               why="0: at every evaluation")
    sample_prompts: list[str] = setting([], "Prompts whose greedy continuations are logged with the probes "
                                        "(user turns in chat stages).")
    gate: GateConfig = field(default_factory=GateConfig)


@documented
@dataclass
class PretrainConfig(TrainConfig):
    """Next-token prediction on packed text blocks, from random initialisation."""

    train_files: list[str] = setting([f"{DATA}/pretrain.train.jsonl"])
    validation_files: list[str] = setting([f"{DATA}/pretrain.validation.jsonl"])
    max_steps: int = 300
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    # Measured at equal wall time (bench/budget.py --optimizers, tinyshakespeare, 120 s): see the README's table.
    optimizer: str = "muon"
    schedule: str = "wsd"
    # A budget instead of max_steps (llmpipe/train/budget.py): steps, warmup, evaluation and checkpoint cadence
    # follow from it, and a resumed stage keeps the plan its first run made.
    time_budget: float = setting(0.0, "Seconds of training on this machine (evaluations during training included): "
                                 "the steps that fit are measured before training starts; 0: no time budget.", ge=0,
                                 why="0: none")
    tokens: int = setting(0, "Training tokens (steps x batch x grad_accum x max_length); 0: no token budget.", ge=0,
                          why="0: none")
    tokens_per_param: float = setting(0.0, "Training tokens as a multiple of the model's parameters (Chinchilla's "
                                      "compute-optimal ratio is about 20); 0: not this budget.", ge=0, why="0: none")
    scaling_fit: str = setting("", "A scale.json from `llmpipe scale` on this data and tokenizer: model: auto then "
                               "picks the size its law predicts best, instead of Chinchilla's 20 tokens per "
                               "parameter.", path=True)
    # Web-style corpora repeat themselves; chat and preference rows are short and near-dedup
    # would merge rows that differ in the one word that matters.
    cleaning: CleaningConfig = field(default_factory=lambda: CleaningConfig(near_dedup=True))
    probes: list[str] = setting([f"{DATA}/probes.text.jsonl"])
    sample_prompts: list[str] = setting(["The kettle is", "Question: What is 2 plus 3? Answer:"])


@documented
@dataclass
class SFTConfig(TrainConfig):
    """Chat tuning with loss on assistant tokens only."""

    train_files: list[str] = setting([f"{DATA}/sft.train.jsonl"])
    validation_files: list[str] = setting([f"{DATA}/sft.validation.jsonl"])
    max_steps: int = 100
    learning_rate: float = 5e-4
    packing: bool = setting(True, "Pack several whole conversations into each row of max_length: fewer pad "
                            "tokens, faster steps.")
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    accuracy_rows: int = setting(100, "Held-out rows with an `answer` field scored by greedy generation, "
                                 "before and after training.", ge=0)
    max_new_tokens: int = setting(24, "Tokens generated at most per reply (accuracy rows, logged samples).", ge=1)
    replay_fraction: float = setting(
        0.1, "Share of the training tokens that are the lineage's pretraining text (blocks of max_length, loss on "
        "every token), against forgetting it (llmpipe/train/replay.py); 0: chat rows only. 0.1, because on the "
        "demo and on alpaca it cut the rise of the pretraining text's loss from +152% / +234% to +10% / +7% with "
        "SFT's own measures unchanged (demo answer accuracy 0.35 -> 0.36 over two seeds, held-out losses "
        "lower); 0.25 cut it to +3% / +2% for a quarter of SFT's tokens.", ge=0, lt=1)
    gate: GateConfig = field(default_factory=lambda: GateConfig(max_loss_increase=0.5))
    probes: list[str] = setting([f"{DATA}/probes.chat.jsonl"])
    sample_prompts: list[str] = setting(CHAT_SAMPLES)


@documented
@dataclass
class CAIConfig:
    """Constitutional AI (align method cai, llmpipe/stages/cai.py): for each prompt the policy drafts a reply,
    then the policy (or the judge) critiques it against one principle of the constitution, drawn by seed,
    and revises it; the stage saves the rows as revisions.jsonl and trains on them (align.cai.train) with
    the align section's optimisation settings."""

    constitution: str = setting(f"{DATA}/constitution.yaml", "Principles, each a critique request and a revision request: "
                                "YAML or Markdown (llmpipe/data/constitution.py); the default is written for llmpipe.",
                                path=True)
    judge: str = setting("", "A model that critiques and revises the policy's drafts: a finished llmpipe stage folder or a "
                         "Hugging Face model folder with a chat template; empty: the policy (the parent) itself.", path=True)
    # sft by default: it is the supervised stage of the method as published (Bai et al. 2022, SL-CAI), it
    # learns from every revision, and it does not rest on a revision being better than its draft, which a
    # small model's often is not; dpo and kto learn from the revised pairs only.
    train: str = setting(CAI_TRAINING[0], "How the stage trains on what it generated: sft (supervised on the revisions, loss on the "
                         "reply), dpo (revision chosen, draft rejected) or kto (revisions desirable, drafts undesirable); "
                         "dpo and kto use the align section's beta, loss_type and weights.", choices=CAI_TRAINING)
    prompts: int = setting(256, "Training prompts at most: a seeded sample of align.train_files' prompts (prompt rows, "
                           "preference rows' prompts, or chat rows without their last reply).", ge=1)
    heldout_prompts: int = setting(32, "Held-out prompts (align.validation_files) that go through the same draft, "
                                   "critique and revision: the validation set, and the pairs the headline is measured on.",
                                   ge=1)
    reply_tokens: int = setting(64, "Tokens generated at most per draft and per revision.", ge=1)
    critique_tokens: int = setting(64, "Tokens generated at most per critique.", ge=1)
    temperature: float = setting(0.0, "0: greedy drafts, critiques and revisions; above 0: sampled at this temperature, "
                                 "seeded per batch.", ge=0, why="0: greedy")
    generation_batch: int = setting(16, "Prompts generated together per batch (left-padded).", ge=1)


@documented
@dataclass
class AlignConfig(TrainConfig):
    """Preference tuning of the SFT model (DPO, KTO; frozen SFT model as reference), or online RL.

    Online RL (methods rlhf, grpo, rloo; see llmpipe/stages/rl.py) takes its prompts from the train
    files: preference rows' prompt, chat rows without their last reply, or prompt rows ({prompt, answer}).
    """

    method: str = setting(DEFAULT_METHOD, "dpo or kto on preference data; rlhf, grpo or rloo train online (generate, "
                          "score, update); cai generates critiques and revisions of its own replies, then trains on "
                          "them (align.cai).", choices=ALIGN_METHODS)
    train_files: list[str] = setting([f"{DATA}/prefs.train.jsonl"])
    validation_files: list[str] = setting([f"{DATA}/prefs.validation.jsonl"])
    max_steps: int = 60
    batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 5
    eval_every: int = 30
    beta: float = setting(0.1, "Pull towards the frozen SFT reference: DPO/KTO's beta, the KL penalty's "
                          "weight in online RL.", gt=0)
    loss_type: str = setting("sigmoid", "DPO loss (TRL's loss_type); robust and exo_pair need "
                             "label_smoothing > 0.", choices=DPO_LOSS_TYPES)
    label_smoothing: float = setting(0.0, "DPO's robust / exo_pair: the assumed share of flipped preference "
                                     "labels.", ge=0, lt=0.5)
    rpo_alpha: float = setting(
        0.0, "DPO: weight of a negative log-likelihood loss on the chosen replies added to the DPO loss (RPO, Pang et al. "
        "2024: TRL's loss_type [<loss_type>, sft] with loss_weights [1, rpo_alpha]). DPO lowers the likelihood of the "
        "chosen replies along with the rejected ones; this holds the chosen ones up, the align stages' counterpart of "
        "sft.replay_fraction. Measured on the demo (README, Forgetting and replay): 0.3 halved the rise of SFT's chat "
        "loss (+109% -> +51%) at the same implicit-reward accuracy (0.82); 3 cut it to +39% but the accuracy fell to "
        "0.71. 0: off (the default, so that finished DPO stages stand). Other methods do not use it.", ge=0)
    desirable_weight: float = setting(1.0, "KTO: loss weight of desirable rows, to balance unequal counts "
                                      "(KTO paper, eq. 8).", gt=0)
    undesirable_weight: float = setting(1.0, "KTO: loss weight of undesirable rows, to balance unequal "
                                        "counts (KTO paper, eq. 8).", gt=0)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    preference_rows: int = setting(200, "Held-out pairs scored before and after (every align method, RL where "
                                   "the validation files hold pairs): implicit-reward accuracy against the "
                                   "parent, per-token and summed log-likelihood accuracy.", ge=0)
    probes: list[str] = setting([f"{DATA}/probes.chat.jsonl"])
    sample_prompts: list[str] = setting(CHAT_SAMPLES)
    rl: str = setting(RL_ALGORITHMS[0], "The RL algorithm of method rlhf (grpo and rloo name their own).",
                      choices=RL_ALGORITHMS)
    reward_model: str = setting("", "A finished reward stage folder: rlhf uses it instead of training one; "
                                "grpo/rloo add it to their rules.", path=True)
    rewards: list[str] = setting([], "Rule rewards (llmpipe/eval/rewards.py); empty: [exact_match] for grpo and "
                                 "rloo, none for rlhf (the reward model alone).", choices=REWARD_RULES, noun="reward")
    num_generations: int = setting(4, "Completions sampled per prompt; batch_size counts completions, so it "
                                   "must be a multiple of this.", ge=2,
                                   why="each completion is compared with its siblings")
    max_new_tokens: int = setting(24, "Tokens generated at most per completion (online RL, logged samples).", ge=1)
    temperature: float = setting(1.0, "Sampling temperature of the completions.", gt=0,
                                 why="sampling is what RL learns from")
    max_kl: float = setting(2.0, "Bound on the policy's mean KL to the SFT reference per reply (nats) on "
                            "held-out prompts; reported, not enforced.", gt=0)
    heldout_prompts: int = setting(64, "Held-out prompts measured before and after (reward, KL, exact-match "
                                   "accuracy).", ge=1)
    cai: CAIConfig = field(default_factory=CAIConfig)


@documented
@dataclass
class RewardModelConfig(TrainConfig):
    """The reward model of method rlhf: the SFT model with a scalar head, trained on preference pairs.

    Its own section (not align's) because it wants other steps and learning rate than the policy, and
    a finished reward model must not go stale when only the policy's settings change."""

    train_files: list[str] = setting([f"{DATA}/prefs.train.jsonl"])
    validation_files: list[str] = setting([f"{DATA}/prefs.validation.jsonl"])
    max_steps: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    eval_every: int = 30
    max_length: int = 128
    preference_rows: int = setting(200, "Held-out pairs scored by whether the chosen reply gets the higher "
                                   "reward, before and after.", ge=0)


@documented
@dataclass
class ModelConfig:
    """The network pretraining builds (later stages take their parent's). A preset names a family and a
    shape; each key left at 0 / empty takes the preset's value (llmpipe/config/presets.py). A plain
    string, `model: tiny`, is shorthand for `model: {preset: tiny}`."""

    # GPT-2's tiny, for now: at equal wall time tiny-llama pretrains better (bench/architectures.py, quiet 2-core
    # machine: 0.346 bits/byte against 0.496 on the embedded text, 2.430 against 2.498 on tinyshakespeare), but
    # with SFT settings tuned for GPT-2 the demo's held-out answer accuracy fell from 0.33 to 0.17 (DPO rose,
    # 0.81 -> 0.85). The switch waits for SFT settings that suit it.
    preset: str = setting("tiny", "Model preset, a family and a shape (llmpipe/config/presets.py); the *-llama and "
                          "*-qwen3 ones match the GPT-2 presets' sizes; auto: pretraining chooses layers and width to suit "
                          "pretrain.time_budget or pretrain.tokens and the data (and records why).",
                          choices=(*PRESETS, AUTO), noun="model preset")
    family: str = setting("", "Architecture: gpt2 (learned positions, LayerNorm, GELU MLP), llama (RoPE, RMSNorm, "
                          "SwiGLU, grouped-query attention) or qwen3 (llama's plus QK-norm); empty: the preset's.",
                          choices=FAMILIES, noun="model family", empty=True)
    layers: int = setting(0, "Transformer blocks; 0: the preset's.", ge=0, why="0: the preset's")
    width: int = setting(0, "Hidden size (d_model), a multiple of heads; 0: the preset's.", ge=0, why="0: the preset's")
    heads: int = setting(0, "Attention (query) heads; 0: the preset's.", ge=0, why="0: the preset's")
    kv_heads: int = setting(0, "Key/value heads (grouped-query attention; llama, qwen3), a divisor of heads; 0: the "
                            "preset's, else as many as heads.", ge=0, why="0: the preset's")
    context: int = setting(0, "Most tokens the model reads at once (its positions); 0: the preset's.", ge=0,
                           why="0: the preset's")
    mlp_ratio: float = setting(0.0, "MLP hidden size as a multiple of width; 0: the preset's (gpt2 4; llama and "
                               "qwen3 8/3, as SwiGLU has 3 matrices).", ge=0, why="0: the preset's")
    intermediate: int = setting(0, "MLP hidden size (transformers' intermediate_size), instead of mlp_ratio; 0: from "
                                "mlp_ratio.", ge=0, why="0: from mlp_ratio")
    qk_norm: bool = setting(False, "RMSNorm of each head's queries and keys before attention: qwen3 always has it, "
                            "gpt2 and llama cannot, so true needs family qwen3.")
    tie_embeddings: bool = setting(True, "One matrix for the input embedding and the output layer (tiny: saves "
                                   "the 4096 x 256 = 1M of a second one).")
    rope_theta: float = setting(0.0, "Base of the rotary positions (llama, qwen3); 0: the preset's, else 10000.", ge=0,
                                why="0: the preset's")
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass instead of keeping "
                                           "them, in every training stage: less memory for ~1/3 more compute.")

    def resolved(self) -> dict[str, Any]:
        """Every shape key with the preset's values filled in (llmpipe/config/presets.py)."""
        return resolve_model(self)


@documented
@dataclass
class Recipe:
    """A whole pipeline: shared settings plus one section per stage."""

    name: str = setting("tiny", "Run name: the run folder is runs/<name> unless --out says otherwise.")
    seed: int = setting(0, "Seed of initialisation, data order and sampling.", ge=0)
    model: ModelConfig = field(default_factory=ModelConfig)
    device: str = setting("auto", "Where to train; auto: cuda, else mps, else cpu.", choices=DEVICES)
    precision: str = setting("auto", "auto: bf16 autocast where the hardware runs it natively, else fp32.",
                             choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile: ~1.2x faster steps after a first step that compiles.")
    base: BaseConfig = field(default_factory=BaseConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    reward: RewardModelConfig = field(default_factory=RewardModelConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    suites: SuitesConfig = field(default_factory=SuitesConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    # Where the recipe came from, for error messages; not a setting.
    source: str = field(default="<defaults>", metadata={"internal": True})
    # The dotted keys the recipe file and overrides gave (a run from a base model continues pretraining only
    # when `pretrain.train_files` is one of them); not a setting.
    given: tuple[str, ...] = field(default=(), metadata={"internal": True})

    def stage_config(self, stage: str) -> dict[str, Any]:
        """The settings that define a stage's result: its section plus the shared keys it uses.

        Two runs of a stage with equal stage_config produce the same checkpoint, so this is what a
        finished stage is compared against before it is skipped or refused.
        """
        shared: dict[str, Any] = {}
        spec = stage_for(stage)
        if spec.imports:  # an imported model is decided by its source alone (and the files' sha256, added by the pipeline)
            return {stage: _recorded(getattr(self, stage))}
        if spec.language_model:  # tokenizer training depends on its data and sizes alone
            shared = {"seed": self.seed, "precision": self.precision, "compile": self.compile,
                      "gradient_checkpointing": self.model.gradient_checkpointing,
                      "monitor": dataclasses.asdict(self.monitor)}
        if spec.builds_model:  # later stages take their architecture from the parent
            shared["model"] = self.model.resolved()
        return {**shared, stage: _recorded(getattr(self, stage))}


# Sections a plain value may stand for, and the key it is: `model: tiny` means `model: {preset: tiny}`
# (the recipes and overrides written before `model` became a section keep working).
SHORTHANDS = {"model": "preset", "base": "source"}


def _recorded(section: Any) -> dict[str, Any]:
    """A section's settings as a stage records them: embedded data as `data/NAME`, not as the folder
    llmpipe happens to be installed in (llmpipe/config/paths.py)."""
    values = dataclasses.asdict(section)
    for f in dataclasses.fields(section):
        if f.metadata.get("path"):
            values[f.name] = map_paths(values[f.name], portable)
    return values


def _trains_from(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, (BaseConfig, TokenizerConfig, TrainConfig))


# The sections a stage trains from (what `stage_config` takes): every section of a tokenizer or
# training type, so that a section added later counts without being listed here.
STAGE_SECTIONS = tuple(name for name, kind in typing.get_type_hints(Recipe).items() if _trains_from(kind))
