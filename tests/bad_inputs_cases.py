"""The catalogue of bad inputs: one row per mistake a user can make, run by tests/test_bad_inputs.py
and rendered into docs/bad-inputs.md by tests/make_catalogue.py.

Each case has an id, a one-phrase description of the input (the docs table's first column), a setup
that writes the bad files, the CLI arguments and a substring the one-line error must contain.
Arguments and expectations may name `{tmp}` (the test's temporary folder) and `{run}` (a private copy
of the finished micro run, `{tmp}/run`, for cases with `run=True`).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MICRO = "recipes/micro.yaml"  # relative: the tests run from the repository root
SUITE_ROW = '{"prompt": "Write two words.", "check": "constraints", "constraints": [{"kind": "max_words", "value": 2}]}\n'
CHAT_ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@dataclass
class Ctx:
    """What a case's setup may use: its temporary folder, the micro run copy, pytest's monkeypatch."""

    tmp: Path
    run: Path | None
    monkeypatch: Any


@dataclass(frozen=True)
class Case:
    """One bad input and what the CLI must say about it."""

    id: str
    input: str
    args: tuple[str, ...]
    expect: str
    setup: Callable[[Ctx], None] | None = None
    run: bool = False
    code: int = 2


def write(name: str, content: str | bytes) -> Callable[[Ctx], None]:
    """A setup that writes `content` to `{tmp}/name`."""

    def setup(ctx: Ctx) -> None:
        path = ctx.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))

    return setup


def copy_stage(ctx: Ctx, stage: str, name: str) -> Path:
    """Copy a finished stage of the micro run to `{tmp}/name` (to be damaged by the case)."""
    target = ctx.tmp / name
    shutil.copytree(ctx.run / stage, target)
    return target


def _edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _running_parent(ctx: Ctx) -> None:
    _edit_manifest(copy_stage(ctx, "pretrain", "parent"), status="running")


def _running_sft(ctx: Ctx) -> None:
    _edit_manifest(ctx.run / "sft", status="running")


def _no_template_parent(ctx: Ctx) -> None:
    parent = copy_stage(ctx, "pretrain", "parent")
    (parent / "chat_template.jinja").unlink()
    config_path = parent / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config), encoding="utf-8")


def _other_vocab_parent(ctx: Ctx) -> None:
    # A tokenizer.json of another vocabulary size, as when a tokenizer from another run is copied in.
    from llmpipe.stages.tokenizer import train_tokenizer

    parent = copy_stage(ctx, "pretrain", "parent")
    other = train_tokenizer(["the kettle is blue and the lamp is red"] * 50, vocab_size=300, min_frequency=1)
    other.save_pretrained(ctx.tmp / "other_tokenizer")
    shutil.copy(ctx.tmp / "other_tokenizer" / "tokenizer.json", parent / "tokenizer.json")


def _truncated_parent(ctx: Ctx) -> None:
    weights = copy_stage(ctx, "pretrain", "parent") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _flipped_weights(ctx: Ctx) -> None:
    weights = ctx.run / "sft" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the recorded sha256 can tell
    weights.write_bytes(bytes(data))


def _edited_template(ctx: Ctx) -> None:
    template = ctx.run / "sft" / "chat_template.jinja"
    template.write_text(template.read_text(encoding="utf-8").replace("<|assistant|>", "<|bot|>"), encoding="utf-8")


def _not_a_stage_output(ctx: Ctx) -> None:
    (ctx.tmp / "out" / "sft").mkdir(parents=True)
    (ctx.tmp / "out" / "sft" / "notes.txt").write_text("mine", encoding="utf-8")


def _other_stage_output(ctx: Ctx) -> None:
    (ctx.tmp / "out").mkdir()
    shutil.copytree(ctx.run / "pretrain", ctx.tmp / "out" / "sft")


def _no_gpu(ctx: Ctx) -> None:
    import torch

    # Deterministic on any machine: the case is "no GPU visible", whatever this one has.
    ctx.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _disk_full_on_manifest(ctx: Ctx) -> None:
    ctx.monkeypatch.setattr("llmpipe.runs.manifest.write_json_atomic", _disk_full)


def _disk_full_on_save(ctx: Ctx) -> None:
    ctx.monkeypatch.setattr("transformers.Trainer.save_model", _disk_full)


def _hf_model(name: str, family: str = "llama", template: str = "chatml", edit: Callable[[Path], None] | None = None,
              **config: Any) -> Callable[[Ctx], None]:
    """A setup that writes a tiny Hugging Face model folder to `{tmp}/name`, then damages it."""

    def setup(ctx: Ctx) -> None:
        from hf_models import edit_config, make_model_folder

        folder = make_model_folder(ctx.tmp / name, family, template)
        if config:
            edit_config(folder, **config)
        if edit is not None:
            edit(folder)

    return setup


def _other_tokenizer(folder: Path) -> None:
    from hf_models import make_tokenizer

    make_tokenizer("llama3", vocab_size=600).save_pretrained(folder)


def _gguf_of(architecture: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        import gguf
        import numpy as np

        writer = gguf.GGUFWriter(str(ctx.tmp / "model.gguf"), architecture)
        writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return setup


def _phi3_base(ctx: Ctx) -> None:
    """A Phi-3 model imported as {tmp}/phi/base (a family GGUF export does not map)."""
    from conftest import invoke
    from hf_models import make_model_folder

    folder = make_model_folder(ctx.tmp / "phi3", "phi3", "phi3")
    assert invoke("base", "--from", str(folder), "--out", str(ctx.tmp / "phi")).exit_code == 0


def _reward_stage_parent(ctx: Ctx) -> None:
    parent = copy_stage(ctx, "sft", "parent")
    _edit_manifest(parent, stage="reward")


def _deepspeed_launch(train_batch_size: int | None, processes: int = 8) -> Callable[[Ctx], None]:
    """What `accelerate launch` with a ZeRO config puts in each process's environment, with {tmp}/zero2.json
    (llmpipe's own, its global batch set to `train_batch_size`; None: the file is not there)."""

    def setup(ctx: Ctx) -> None:
        path = ctx.tmp / "zero2.json"
        if train_batch_size is not None:
            text = (Path(__file__).resolve().parent.parent / "recipes" / "accelerate" / "zero2.json").read_text(encoding="utf-8")
            path.write_text(text.replace('"train_batch_size": "auto"', f'"train_batch_size": {train_batch_size}'), encoding="utf-8")
        for name, value in (("ACCELERATE_USE_DEEPSPEED", "true"), ("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path)),
                            ("WORLD_SIZE", str(processes))):
            ctx.monkeypatch.setenv(name, value)

    return setup


def _fsdp_wrapping(ctx: Ctx) -> None:
    # An FSDP launch whose config names Llama's block class, on the micro run's GPT-2.
    ctx.monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    ctx.monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer")


def _sharded_checkpoint(ctx: Ctx) -> None:
    # The pretrain stage interrupted after an FSDP launch saved its step-4 checkpoint (sharded, sealed).
    from llmpipe.runs.seals import seal

    work = ctx.run / ".pretrain.partial"
    shutil.move(ctx.run / "pretrain", work)
    _edit_manifest(work, status="running")
    checkpoint = work / "checkpoints" / "checkpoint-4"
    (checkpoint / "pytorch_model_fsdp_0").mkdir(parents=True)
    (checkpoint / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"shard")
    seal(checkpoint)


# Retrain a stage of the run copy: the failure must leave the finished one intact.
INTO_RUN = ("--restart", "--out", "{run}")
# A new run folder whose parent is the damaged copy in {tmp}/parent.
FROM_PARENT = ("--out", "{tmp}/out", "--from", "{tmp}/parent")

CASES: list[Case] = [
    # --- recipes and overrides ------------------------------------------------------------------
    Case("yaml_syntax", "recipe YAML with a syntax error (a tab on line 2)", ("pretrain", "{tmp}/r.yaml"),
         "{tmp}/r.yaml:2: invalid YAML", write("r.yaml", "pretrain:\n\tmax_steps: 3\n")),
    Case("yaml_not_mapping", "recipe that is a YAML list, not a mapping", ("pretrain", "{tmp}/r.yaml"),
         "must be a YAML mapping", write("r.yaml", "- pretrain\n- sft\n")),
    Case("recipe_missing", "recipe file that does not exist", ("pretrain", "{tmp}/nope.yaml"), "{tmp}/nope.yaml: recipe file not found"),
    Case("recipe_folder", "a folder given as the recipe", ("pretrain", "{tmp}"), "{tmp}: is a folder, not a recipe file"),
    Case("recipe_unknown_name", "unknown built-in recipe name (run tinny)", ("run", "tinny"),
         "unknown recipe 'tinny' — did you mean 'tiny'? built-in recipes: gpt2-124m, grpo, micro, rlhf, tiny"),
    Case("recipe_name_as_path", "a built-in recipe's repository path, from another folder", ("run", "{tmp}/recipes/tiny.yaml"),
         "recipe file not found — the built-in recipe of that name runs from anywhere: give its name, tiny"),
    Case("recipe_not_utf8", "recipe file that is not UTF-8", ("pretrain", "{tmp}/r.yaml"), "recipe is not UTF-8 text",
         write("r.yaml", b"name: caf\xe9\n")),
    Case("key_typo_override", "mistyped key in an override (pretrain.max_step=3)", ("pretrain", MICRO, "pretrain.max_step=3"),
         "did you mean 'pretrain.max_steps'?"),
    Case("section_typo_yaml", "mistyped section in the recipe (pretrian:)", ("pretrain", "{tmp}/r.yaml"),
         '"pretrian" unknown key — did you mean \'pretrain\'?', write("r.yaml", "pretrian:\n  max_steps: 3\n")),
    Case("key_of_other_stage", "a bare key of another stage (pretrain beta=0.2)", ("pretrain", MICRO, "beta=0.2"),
         "did you mean 'align.beta'?"),
    Case("wrong_type_int", "text where an integer belongs (max_steps=abc)", ("pretrain", MICRO, "max_steps=abc"),
         '"pretrain.max_steps" expected an integer'),
    Case("wrong_type_bool", "a word where true/false belongs (packing=maybe)", ("sft", MICRO, "packing=maybe"),
         '"sft.packing" expected true or false'),
    Case("two_budgets", "two pretraining budgets (time_budget=60 tokens=1000)", ("pretrain", MICRO, "time_budget=60", "tokens=1000"),
         '"pretrain.tokens" give one budget, not pretrain.time_budget and pretrain.tokens'),
    Case("auto_without_budget", "model: auto with no time or token budget", ("pretrain", MICRO, "model=auto"),
         '"model.preset" auto sizes the model to a budget: set pretrain.time_budget (seconds) or pretrain.tokens'),
    Case("auto_with_layers", "model: auto with a layer count", ("pretrain", MICRO, "model=auto", "tokens=1000", "model.layers=4"),
         '"model.layers" is chosen by model: auto'),
    Case("wrong_type_section", "a number where a section belongs (sft: 5)", ("pretrain", "{tmp}/r.yaml"),
         '"sft" must be a section of keys', write("r.yaml", "sft: 5\n")),
    Case("wrong_type_list", "a mapping where a list belongs (train_files)", ("sft", MICRO, "train_files={a: b}"),
         '"sft.train_files" expected a list'),
    Case("out_of_range_lr", "learning rate out of range (learning_rate=2)", ("pretrain", MICRO, "learning_rate=2"),
         '"pretrain.learning_rate" must be in (0, 1)'),
    Case("negative_warmup", "negative warmup steps (warmup_steps=-1)", ("pretrain", MICRO, "warmup_steps=-1"),
         '"pretrain.warmup_steps" must be >= 0'),
    Case("negative_seed", "negative seed", ("pretrain", MICRO, "seed=-1"), '"seed" must be >= 0'),
    Case("mixture_weights", "mixture weights that do not match the train files", ("pretrain", MICRO, "mixture_weights=[1,2]"),
         '"pretrain.mixture_weights" needs one weight per train file'),
    Case("override_not_key_value", "an override without '=' (max_steps)", ("pretrain", MICRO, "max_steps"), "'max_steps' is not key=value"),
    Case("override_empty_key", "an override with an empty key (=3)", ("pretrain", MICRO, "=3"), "has an empty key"),
    Case("unknown_preset", "unknown model preset (model=huge)", ("pretrain", MICRO, "model=huge"), '"model.preset" unknown model preset'),
    Case("unknown_family", "unknown model family (model.family=mamba)", ("pretrain", MICRO, "model.family=mamba"),
         '"model.family" unknown model family'),
    Case("kv_heads_not_dividing", "model.kv_heads that does not divide model.heads",
         ("pretrain", MICRO, "model=tiny-llama", "model.kv_heads=3"), '"model.kv_heads" must divide model.heads (8)'),
    Case("qk_norm_on_llama", "QK-norm asked of the llama family (model.qk_norm=true)",
         ("pretrain", MICRO, "model=micro-llama", "model.qk_norm=true"), '"model.qk_norm" family llama has no QK-norm'),
    Case("qlora_on_cpu", "QLoRA (lora.quantize=4bit) where there is no CUDA GPU",
         ("sft", MICRO, "lora.enabled=true", "lora.quantize=4bit", "--device", "cpu"), '"sft.lora.quantize" 4-bit',
         _no_gpu),
    Case("unknown_device", "unknown device (device=tpu)", ("pretrain", MICRO, "device=tpu"), '"device" must be one of auto, cpu'),
    Case("unknown_method", "unknown align method (--method ppo)", ("align", MICRO, "--method", "ppo"), '"align.method" must be one of'),
    Case("rpo_alpha_sft_loss", "align.rpo_alpha with DPO's loss_type sft (no DPO loss to add it to)",
         ("align", MICRO, "--method", "dpo", "loss_type=sft", "rpo_alpha=1"),
         '"align.rpo_alpha" adds TRL\'s sft loss beside the DPO loss, and loss_type sft leaves no DPO loss'),
    Case("name_outside_runs", "recipe name that would write outside runs/ (name: ../../x)", ("pretrain", "{tmp}/r.yaml"),
         '"name" must be a plain folder name', write("r.yaml", "name: ../../x\n")),
    Case("no_gpu", "--device cuda with no GPU visible", ("pretrain", MICRO, "--device", "cuda"), "CUDA was asked for but no GPU is visible",
         _no_gpu),
    Case("data_check_stage", "data check of an unknown stage", ("data", "check", MICRO, "--stage", "bogus"), "unknown stage 'bogus'"),
    # --- data files -----------------------------------------------------------------------------
    Case("data_missing", "train file that does not exist", ("sft", MICRO, "train_files={tmp}/nope.jsonl", *INTO_RUN),
         "{tmp}/nope.jsonl: data file not found", run=True),
    Case("data_glob_empty", "glob that matches no file", ("sft", MICRO, "train_files={tmp}/*.nothing", *INTO_RUN),
         "no data files", run=True),
    Case("data_not_utf8", "data file that is not UTF-8", ("sft", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         "{tmp}/d.jsonl: file is not UTF-8 text", write("d.jsonl", b'{"text": "caf\xe9"}\n'), run=True),
    Case("data_bad_json", "invalid JSON on line 3 of a JSONL file", ("sft", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         "{tmp}/d.jsonl:3: invalid JSON", write("d.jsonl", CHAT_ROW * 2 + '{"messages": [}\n'), run=True),
    Case("data_not_object", "JSONL line that is a list, not an object", ("sft", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         "{tmp}/d.jsonl:2: expected a JSON object per line, got list", write("d.jsonl", CHAT_ROW + "[1, 2]\n"), run=True),
    Case("data_not_parquet", "a .parquet file that is not Parquet", ("sft", MICRO, "train_files={tmp}/d.parquet", *INTO_RUN),
         "{tmp}/d.parquet: not a readable Parquet file", write("d.parquet", "hello, not parquet\n"), run=True),
    Case("data_not_gzip", "a .jsonl.gz file that is not gzip", ("sft", MICRO, "train_files={tmp}/d.jsonl.gz", *INTO_RUN),
         "{tmp}/d.jsonl.gz: cannot read file", write("d.jsonl.gz", "plain text\n"), run=True),
    Case("data_json_not_list", "a .json file holding an object, not a list", ("sft", MICRO, "train_files={tmp}/d.json", *INTO_RUN),
         "must hold a list of objects", write("d.json", '{"a": 1, "b": 2}'), run=True),
    Case("data_unsupported", "data file of a type llmpipe does not read (.xml)", ("sft", MICRO, "train_files={tmp}/d.xml", *INTO_RUN),
         "{tmp}/d.xml: unsupported file type", write("d.xml", "<rows/>"), run=True),
    Case("data_empty", "empty train file", ("sft", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         "{tmp}/d.jsonl: holds no usable rows", write("d.jsonl", ""), run=True),
    Case("text_rows_are_chat", "chat rows given to pretraining", ("pretrain", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         '{tmp}/d.jsonl:1: "text" missing', write("d.jsonl", CHAT_ROW), run=True),
    Case("text_not_string", "text row whose text is a number", ("pretrain", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         '{tmp}/d.jsonl:1: "text" must be a string', write("d.jsonl", '{"text": 5}\n'), run=True),
    Case("chat_rows_are_text", "text rows given to SFT", ("sft", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         '{tmp}/d.jsonl:1: "messages" missing', write("d.jsonl", '{"text": "hello"}\n'), run=True),
    Case("chat_bad_role", "chat message with an unknown role", ("sft", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         '{tmp}/d.jsonl:2: "messages[1].role"',
         write("d.jsonl", CHAT_ROW + '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}\n'), run=True),
    Case("chat_all_skipped", "every row bad with bad_rows=skip", ("sft", MICRO, "train_files={tmp}/d.jsonl", "bad_rows=skip", *INTO_RUN),
         "holds no usable rows; the first (line 1) fails with", write("d.jsonl", '{"text": "a"}\n{"text": "b"}\n'), run=True),
    Case("preference_no_rejected", "preference row without 'rejected'", ("align", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         '{tmp}/d.jsonl:1: "rejected" missing', write("d.jsonl", '{"prompt": "q", "chosen": "a"}\n'), run=True),
    Case("preference_identical", "preference pair whose chosen equals rejected", ("align", MICRO, "train_files={tmp}/d.jsonl", *INTO_RUN),
         '"rejected" is identical to chosen', write("d.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "a"}\n'), run=True),
    # --- parents and output folders --------------------------------------------------------------
    Case("parent_wrong_stage", "--from a tokenizer folder at SFT", ("sft", MICRO, "--out", "{tmp}/out", "--from", "{run}/tokenizer"),
         "parent is a 'tokenizer' checkpoint; sft starts from pretrain or sft", run=True),
    Case("parent_running", "--from a parent whose manifest says status: running", ("sft", MICRO, *FROM_PARENT),
         "parent stage is 'running', not complete", _running_parent, run=True),
    Case("parent_no_manifest", "--from a folder without manifest.json", ("sft", MICRO, *FROM_PARENT),
         "{tmp}/parent: no readable manifest.json", write("parent/config.json", "{}"), run=True),
    Case("parent_missing", "--from a folder that does not exist", ("sft", MICRO, "--out", "{tmp}/out", "--from", "{tmp}/nowhere"),
         "{tmp}/nowhere: parent checkpoint folder not found"),
    Case("parent_is_file", "--from a file", ("sft", MICRO, "--out", "{tmp}/out", "--from", "{run}/pretrain/config.json"),
         '{run}/pretrain/config.json: "--from" is a file', run=True),
    Case("output_other_settings", "output run folder with a finished SFT of other settings, no --restart",
         ("sft", MICRO, "learning_rate=1e-4", "--out", "{run}"), "already holds a finished sft trained with other settings", run=True),
    Case("output_not_a_stage", "output stage folder that is not an llmpipe stage",
         ("sft", MICRO, "--out", "{tmp}/out", "--from", "{run}/pretrain"),
         "{tmp}/out/sft: output folder exists but is not an llmpipe stage", _not_a_stage_output, run=True),
    Case("output_other_stage", "output stage folder holding another stage's checkpoint",
         ("sft", MICRO, "--out", "{tmp}/out", "--from", "{run}/pretrain"), "output folder holds a 'pretrain' stage, not sft",
         _other_stage_output, run=True),
    Case("output_is_file", "--out a file", ("sft", MICRO, "--out", "{run}/pretrain/config.json"), '"--out" is a file', run=True),
    Case("parent_no_chat_template", "parent tokenizer without a chat template at SFT",
         ("sft", MICRO, *FROM_PARENT), '"chat_template" tokenizer has no chat template',
         _no_template_parent, run=True),
    Case("parent_vocab_mismatch", "parent whose tokenizer.json has another vocabulary size than its model",
         ("sft", MICRO, *FROM_PARENT), '{tmp}/parent/config.json: "vocab_size" is 512',
         _other_vocab_parent, run=True),
    Case("parent_truncated_weights", "parent whose model.safetensors is truncated",
         ("sft", MICRO, *FROM_PARENT), "{tmp}/parent/model.safetensors: not a readable safetensors file",
         _truncated_parent, run=True),
    Case("sft_max_length", "sft.max_length above the parent model's context",
         ("sft", MICRO, "max_length=1024", "--out", "{tmp}/out", "--from", "{run}/pretrain"),
         '"sft.max_length" is 1024 but the parent model', run=True),
    Case("pretrain_max_length", "pretrain.max_length above the preset's context",
         ("pretrain", MICRO, "max_length=1024", "--out", "{tmp}/out", "--from", "{run}/tokenizer"),
         '"pretrain.max_length" is 1024 but the \'micro\' model has a context of 256', run=True),
    # --- Constitutional AI (align --method cai) ---------------------------------------------------
    Case("cai_constitution_malformed", "cai constitution whose second principle has no revision request",
         ("align", MICRO, "--method", "cai", "align.cai.constitution={tmp}/c.yaml", *INTO_RUN),
         '{tmp}/c.yaml:5: "principles[1].revision" missing',
         write("c.yaml", "principles:\n  - name: a\n    critique: x\n    revision: y\n  - name: b\n    critique: x\n"), run=True),
    Case("cai_constitution_empty", "cai constitution without principles",
         ("align", MICRO, "--method", "cai", "align.cai.constitution={tmp}/c.yaml", *INTO_RUN),
         '{tmp}/c.yaml: "align.cai.constitution" holds no principles', write("c.yaml", "name: nothing yet\nprinciples: []\n"),
         run=True),
    Case("cai_judge_not_a_model", "cai judge path that is a folder of notes, not a model",
         ("align", MICRO, "--method", "cai", "align.cai.judge={tmp}/judge", *INTO_RUN),
         '{tmp}/judge: "align.cai.judge" not a model folder', write("judge/notes.txt", "not a model\n"), run=True),
    Case("cai_prompt_no_user_turn", "cai prompt row with no user turn (a system turn only)",
         ("align", MICRO, "--method", "cai", "train_files={tmp}/p.jsonl", *INTO_RUN),
         '{tmp}/p.jsonl:2: "prompt" has no user turn',
         write("p.jsonl", '{"prompt": "hi"}\n{"prompt": [{"role": "system", "content": "Be brief."}]}\n'), run=True),
    Case("rl_max_new_tokens_context", "online RL with align.max_new_tokens as long as the model's context",
         ("align", MICRO, "--method", "rloo", "rewards=[length]", "max_new_tokens=256", "--out", "{tmp}/out", "--from", "{run}/sft"),
         '"align.max_new_tokens" is 256: no room is left for a prompt in the model\'s context of 256 tokens', run=True),
    Case("rl_prompts_too_long", "online RL prompts whose last message alone is longer than the model's context",
         ("align", MICRO, "--method", "rloo", "rewards=[length]", "train_files=[{tmp}/p.jsonl]", "--out", "{tmp}/out",
          "--from", "{run}/sft"),
         "{tmp}/p.jsonl: \"prompt\" no prompt fits the model's context of 256 tokens less align.max_new_tokens (8)",
         write("p.jsonl", json.dumps({"prompt": "the kettle is blue " * 200}) + "\n"), run=True),
    # --- probe suites ---------------------------------------------------------------------------
    Case("probes_missing", "probe suite that does not exist", ("sft", MICRO, "probes=[{tmp}/nope.jsonl]", "--out", "{tmp}/out"),
         '"sft.probes" probe suite {tmp}/nope.jsonl not found'),
    Case("probes_bad_line", "probe suite with a bad check on line 2", ("sft", MICRO, "probes=[{tmp}/p.jsonl]", "--out", "{tmp}/out"),
         '{tmp}/p.jsonl:2: "check" must be one of',
         write("p.jsonl", '{"prompt": "x", "check": "contains", "answer": "a"}\n{"prompt": "x", "check": "maybe", "answer": "a"}\n')),
    # --- instruction-following and safety suites, judge, verdict ----------------------------------
    Case("suite_bad_constraint", "instruction suite with an unknown constraint kind on line 2",
         ("sft", MICRO, "suites.instructions={tmp}/s.jsonl", "--out", "{tmp}/out"),
         '{tmp}/s.jsonl:2: "constraints" constraint 1: unknown kind \'max_wrds\'',
         write("s.jsonl", SUITE_ROW + '{"prompt": "Be brief.", "check": "constraints", '
               '"constraints": [{"kind": "max_wrds", "value": 3}]}\n')),
    Case("suite_not_json", "safety suite whose line 2 is not JSON", ("sft", MICRO, "suites.safety={tmp}/s.jsonl", "--out", "{tmp}/out"),
         "{tmp}/s.jsonl:2: not valid JSON", write("s.jsonl", '{"prompt": "hi", "check": "comply"}\n{"prompt": "x", "check"\n')),
    Case("suite_no_user_turn", "suite prompt with no user turn (a system message only)",
         ("sft", MICRO, "suites.safety={tmp}/s.jsonl", "--out", "{tmp}/out"), '{tmp}/s.jsonl:1: "prompt" has no user turn',
         write("s.jsonl", '{"prompt": [{"role": "system", "content": "Be safe."}], "check": "refuse"}\n')),
    Case("suite_wrong_checks", "instruction suite holding a probe of another check",
         ("sft", MICRO, "suites.instructions={tmp}/s.jsonl", "--out", "{tmp}/out"),
         "{tmp}/s.jsonl:1: \"check\" is 'contains', but the instructions suite holds constraints probes only",
         write("s.jsonl", '{"prompt": "What colour is the kettle?", "check": "contains", "answer": "blue"}\n')),
    Case("suite_missing", "safety suite that does not exist", ("sft", MICRO, "suites.safety={tmp}/nope.jsonl", "--out", "{tmp}/out"),
         '"suites.safety" safety suite {tmp}/nope.jsonl not found'),
    Case("judge_not_a_model", "a judge folder that holds no model", ("sft", MICRO, "suites.judge={tmp}/j", "--out", "{tmp}/out"),
         '{tmp}/j: "suites.judge" not a model: no readable config.json', write("j/notes.txt", "not a model\n")),
    Case("judge_is_a_chat_model", "a chat model (an sft stage) given as the judge",
         ("sft", MICRO, "suites.judge={run}/sft", "--out", "{tmp}/out"),
         "{run}/sft: \"suites.judge\" holds a 'sft' stage, not a reward model", run=True),
    Case("verdict_missing", "verdict of a run folder that does not exist", ("verdict", "{tmp}/nowhere"),
         "{tmp}/nowhere: run folder not found"),
    Case("verdict_tokenizer", "verdict of the tokenizer stage", ("verdict", "{run}", "--stage", "tokenizer"),
         "{run}/tokenizer: a tokenizer folder holds no model to release", run=True),
    Case("verdict_unknown_stage", "verdict of a stage the run does not hold", ("verdict", "{run}", "--stage", "kto"),
         "{run}: \"--stage\" no finished stage 'kto' in the run", run=True),
    # --- eval, chat and generate on checkpoints ------------------------------------------------------
    Case("eval_missing", "eval of a checkpoint that does not exist", ("eval", "{tmp}/nowhere"),
         "{tmp}/nowhere: checkpoint folder not found"),
    Case("eval_tampered_weights", "eval of a checkpoint whose weights changed after training", ("eval", "{run}/sft"),
         "{run}/sft/model.safetensors: differs from the file the stage wrote", _flipped_weights, run=True),
    Case("eval_bad_data", "eval --data with rows of no known shape", ("eval", "{run}/sft", "--data", "{tmp}/d.jsonl"),
         '{tmp}/d.jsonl:1: "text" missing', write("d.jsonl", '{"foo": 1}\n'), run=True),
    Case("chat_tampered_template", "chat with a checkpoint whose chat template was edited", ("chat", "{run}/sft"),
         "chat template differs from the one the model was trained with", _edited_template, run=True),
    Case("chat_incomplete", "chat with a checkpoint that is not complete", ("chat", "{run}/sft"), "checkpoint is 'running', not complete",
         _running_sft, run=True),
    Case("generate_tokenizer", "generate with a tokenizer folder", ("generate", "{run}/tokenizer", "--prompts", "{tmp}/p.txt"),
         "a tokenizer folder holds no model", write("p.txt", "hello\n"), run=True),
    Case("generate_no_prompts", "generate with a prompts file that does not exist", ("generate", "{run}/sft", "--prompts", "{tmp}/p.jsonl"),
         "{tmp}/p.jsonl: \"--prompts\" prompts file not found", run=True),
    Case("generate_bad_prompt", "prompts file with a number as prompt on line 2", ("generate", "{run}/sft", "--prompts", "{tmp}/p.jsonl"),
         '{tmp}/p.jsonl:2: "prompt" must be', write("p.jsonl", '{"prompt": "hi"}\n{"prompt": 5}\n'), run=True),
    Case("summary_missing", "summary of a run folder that does not exist", ("summary", "{tmp}/nowhere"),
         "{tmp}/nowhere: run folder not found"),
    # --- models from elsewhere (the base stage) -------------------------------------------------------
    Case("base_no_weights", "base model folder without weights", ("sft", MICRO, "--out", "{tmp}/out", "--from", "{tmp}/m"),
         '{tmp}/m: "base.source" no weights (*.safetensors or *.bin) in the model folder',
         _hf_model("m", edit=lambda f: (f / "model.safetensors").unlink())),
    Case("base_no_config", "base model folder without config.json", ("base", "--out", "{tmp}/out", "--from", "{tmp}/m"),
         '{tmp}/m: "base.source" no config.json: not a Hugging Face model folder',
         _hf_model("m", edit=lambda f: (f / "config.json").unlink())),
    Case("base_unknown_model_type", "base model of a model_type transformers does not know",
         ("sft", MICRO, "--out", "{tmp}/out", "--from", "{tmp}/m"), '"model_type" unknown model_type \'blorp\'',
         _hf_model("m", model_type="blorp")),
    Case("base_remote_code", "base model that needs its own code, without --trust-remote-code",
         ("sft", MICRO, "--out", "{tmp}/out", "--from", "{tmp}/m"), '"auto_map" this model needs its own Python code',
         _hf_model("m", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})),
    Case("base_vocab_mismatch", "base model whose tokenizer has more tokens than the model has embeddings",
         ("sft", MICRO, "--out", "{tmp}/out", "--from", "{tmp}/m"), '"vocab_size" the tokenizer has',
         _hf_model("m", edit=_other_tokenizer)),
    Case("base_classifier", "a reward model (sequence classifier) given as the base of SFT",
         ("sft", MICRO, "--out", "{tmp}/out", "--from", "{tmp}/m"), '"architectures" is a LlamaForSequenceClassification',
         _hf_model("m", architectures=["LlamaForSequenceClassification"])),
    Case("sft_from_reward_stage", "a reward stage folder given as the parent of SFT",
         ("sft", MICRO, *FROM_PARENT), "parent is a 'reward' checkpoint; sft starts from pretrain or sft or base",
         _reward_stage_parent, run=True),
    Case("base_hub_unreachable", "hf: model id that cannot be reached (offline, not in the cache)",
         ("base", "--out", "{tmp}/out", "--from", "hf:acme/not-downloaded"),
         '"base.source" cannot reach the Hugging Face hub for acme/not-downloaded'),
    Case("base_hub_bad_id", "hf: model id that is not ORG/NAME", ("base", "--out", "{tmp}/out", "--from", "hf:not an id"),
         "'hf:not an id' is not a hub model id"),
    Case("base_gguf_architecture", "GGUF file of an architecture transformers cannot read",
         ("sft", MICRO, "--out", "{tmp}/out", "--from", "{tmp}/model.gguf"),
         "transformers cannot read GGUF architecture 'rwkv6'", _gguf_of("rwkv6")),
    Case("base_gguf_garbage", "a .gguf file that is not GGUF", ("base", "--out", "{tmp}/out", "--from", "{tmp}/model.gguf"),
         "{tmp}/model.gguf: \"base.source\" not a readable GGUF file", write("model.gguf", "not gguf\n")),
    Case("base_nothing_given", "base stage without --from or base.source", ("base", "--out", "{tmp}/out"),
         '"base.source" no model to import'),
    # --- distributed launches (accelerate) ----------------------------------------------------
    Case("deepspeed_batch_not_divisible", "DeepSpeed config whose global batch the launch's process count does not divide",
         ("run", MICRO, "--out", "{tmp}/out"), '{tmp}/zero2.json:3: "train_batch_size" is 12, which the 8 processes',
         _deepspeed_launch(12)),
    Case("deepspeed_config_missing", "DeepSpeed config file not there (launched from another folder)",
         ("run", MICRO, "--out", "{tmp}/out"),
         '{tmp}/zero2.json: "deepspeed_config.deepspeed_config_file" DeepSpeed config file not found', _deepspeed_launch(None)),
    Case("fsdp_wrap_class_missing", "FSDP config naming a block class the model does not have (LlamaDecoderLayer on GPT-2)",
         ("pretrain", MICRO, "--out", "{tmp}/out", "--from", "{run}/tokenizer"),
         "FSDP is asked to wrap LlamaDecoderLayer, which this gpt2 model does not contain (its blocks are GPT2Block)",
         _fsdp_wrapping, run=True),
    Case("fsdp_checkpoint_without_fsdp", "resuming an FSDP-sharded checkpoint without an FSDP launch",
         ("pretrain", MICRO, "--out", "{run}"),
         "{run}/.pretrain.partial/checkpoints/checkpoint-4: was saved sharded by FSDP, so only an FSDP launch can resume it",
         _sharded_checkpoint, run=True),
    # --- export ----------------------------------------------------------------------------------
    Case("export_format_unknown", "export --format that does not exist", ("export", "{tmp}/nowhere", "--format", "onnx",
         "--out", "{tmp}/o"), "\"--format\" unknown export format 'onnx' — use one of: hf, gguf"),
    Case("export_gguf_quant_unknown", "export --format gguf with a quant type that does not exist",
         ("export", "{tmp}/nowhere", "--format", "gguf", "--quant", "q4_k_m", "--out", "{tmp}/o"),
         "\"--quant\" unknown GGUF quant type 'q4_k_m' — use one of: f16, q8_0"),
    Case("export_hf_quant", "export --quant without --format gguf", ("export", "{tmp}/nowhere", "--quant", "q8_0", "--out", "{tmp}/o"),
         '"--quant" --quant applies to --format gguf only'),
    Case("export_gguf_out_exists", "export --format gguf into a folder that is not empty",
         ("export", "{tmp}/nowhere", "--format", "gguf", "--out", "{tmp}/o"), "{tmp}/o: output folder exists and is not empty",
         write("o/model.gguf", "x")),
    Case("export_gguf_architecture", "export --format gguf of a model family the GGUF export does not map (Phi-3)",
         ("export", "{tmp}/phi/base", "--format", "gguf", "--out", "{tmp}/o"),
         "\"model_type\" GGUF export maps gpt2, llama, qwen3 models; this one is 'phi3'", _phi3_base),
    # --- the machine ----------------------------------------------------------------------------
    Case("disk_full_manifest", "disk full while writing a stage manifest", ("sft", MICRO, "learning_rate=1e-4", *INTO_RUN),
         "{run}/.sft.partial/manifest.json: No space left on device", _disk_full_on_manifest, run=True),
    Case("disk_full_save", "disk full while saving the trained model", ("sft", MICRO, "max_steps=1", *INTO_RUN),
         "{run}/.sft.partial: No space left on device", _disk_full_on_save, run=True),
]


# --- docs/bad-inputs.md ---------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
REGENERATE = "make catalogue  (or: .venv/bin/python tests/make_catalogue.py)"
DOC_HEAD = f"""# Bad inputs and what llmpipe says

Every mistake below is reported as one line on stderr, starting with `error:`, naming the file (and
line, and field) at fault and how to fix it, with exit code 2 and no traceback; a stage that fails
leaves the finished checkpoints as they were. `<tmp>/` stands for a temporary folder and
`<tmp>/run/` for a finished micro run in it.

Generated from the cases in `tests/bad_inputs_cases.py` by running them
(`{REGENERATE.split("  ")[0]}`); `tests/test_bad_inputs.py` fails when this file is stale.

| input | message |
|---|---|
"""


def normalise(message: str, tmp: Path) -> str:
    """A message with the test's temporary folder written as `<tmp>`, the same on every machine."""
    for path in sorted({str(tmp.resolve()), str(tmp)}, key=len, reverse=True):
        message = message.replace(path, "<tmp>")
    return message


def render_row(case_input: str, message: str) -> str:
    """One markdown table row; `|` is escaped so that a message never splits into two cells."""
    fence = "``" if "`" in message else "`"
    return f"| {case_input} | {fence}{message.replace('|', chr(92) + '|')}{fence} |"


def render_doc(messages: dict[str, str]) -> str:
    """The whole docs file from `{case id: normalised message}`, in catalogue order."""
    return DOC_HEAD + "".join(render_row(case.input, messages[case.id]) + "\n" for case in CASES)


def doc_rows(text: str) -> dict[str, str]:
    """`{input: row}` of the table in a docs file."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and line != "| input | message |"]
    return {row[2:].split(" | ", 1)[0]: row for row in rows}
