"""LoRA (peft) for any training stage: adapters from the recipe's `<stage>.lora` section, and a stage
checkpoint that stays a plain Hugging Face model.

A LoRA stage trains low-rank adapters on a frozen copy of its parent. When it ends, the adapter goes
to `<stage>/adapter/` (adapter_config.json + adapter_model.safetensors, with the tokenizer and the
generation config so that it merges on its own) and the merged full model becomes the stage
checkpoint: children, `llmpipe chat` and `AutoModelForCausalLM.from_pretrained(stage_dir)` read it
like any other stage, and nothing is merged by hand. The adapter names its base (the parent folder,
by absolute path) in adapter_config.json; `llmpipe export --merge` merges it again from there.

Every family llmpipe builds (gpt2, llama, qwen3) and any imported causal LM takes adapters on every
linear layer but the output layer by default (`llmpipe.models.lora_targets`, peft's "all-linear").

QLoRA (`lora.quantize: 4bit`, CUDA only): the frozen base loads in 4-bit NF4 through bitsandbytes
with bf16 compute (float16 on a GPU without bf16) and goes through peft's
`prepare_model_for_kbit_training`; the adapters train in fp32. The merged checkpoint is the adapter
merged into the full-precision parent (merging into 4-bit weights would round the update away): it
differs from the quantized model trained on by the 4-bit rounding of the base. Written without a GPU
at hand: the refusal on CPU is tested, the 4-bit path itself has not run yet.

Use: `model = load_model(parent_dir, ctx)`, `peft = peft_config(cfg.lora, model, "sft")`, pass
`peft_config=peft` to the TRL trainer; `llmpipe.train.fit.fit` saves through `save_trained`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_file
from llmpipe.models import lora_targets
from llmpipe.runs.context import StageContext
from llmpipe.train.args import bf16_supported, check_quantization
from llmpipe.train.sharding import full_state_dict, is_sharded

ADAPTER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"


def load_model(checkpoint: Path, ctx: StageContext | None = None) -> Any:
    """A stage checkpoint as a model to train, loaded by absolute path: a LoRA adapter records the path
    its base was loaded from, and a relative one would break as soon as the working folder changes.
    With the stage's `lora.quantize: 4bit`, the base loads in 4-bit on this process's GPU (QLoRA)."""
    from transformers import AutoModelForCausalLM

    path = Path(checkpoint).resolve()
    lora = getattr(ctx.cfg, "lora", None) if ctx is not None else None
    if lora is None or not lora.enabled or lora.quantize == "none":
        return AutoModelForCausalLM.from_pretrained(path)
    check_quantization(ctx.recipe, ctx.spec.section)
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if bf16_supported("cuda") else torch.float16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    # One whole copy per process of a distributed launch, on that process's GPU.
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=compute,
                                                 device_map={"": int(os.environ.get("LOCAL_RANK", "0"))})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=ctx.recipe.model.gradient_checkpointing)


def peft_config(cfg: Any, model: Any, section: str) -> Any | None:
    """peft's LoraConfig for a recipe `lora` section (None when LoRA is off). Target modules default to
    every linear layer but the output layer (llmpipe.models.lora_targets); names the model lacks are
    the user's mistake."""
    if not cfg.enabled:
        return None
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    model_type = model.config.model_type
    defaults = lora_targets(model)
    targets = list(cfg.target_modules or defaults)
    if not targets:
        raise UserError(f"a '{model_type}' model has no linear layer to adapt", field=f"{section}.lora.target_modules",
                        hint="name the layers to adapt, e.g. [q_proj, v_proj]")
    modules = {name.rsplit(".", 1)[-1]: module for name, module in model.named_modules()}
    missing = [t for t in targets if t not in modules]
    if missing:
        raise UserError(f"this {model_type} model has no module named {', '.join(missing)}", field=f"{section}.lora.target_modules",
                        hint=f"leave it empty for the defaults ({', '.join(defaults)})")
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        # GPT-2's Conv1D stores its weight transposed (in, out); peft needs to know, or warns and guesses.
        fan_in_fan_out=any(isinstance(modules[t], Conv1D) for t in targets),
    )


def is_lora(model: Any) -> bool:
    """Whether `model` is a peft model (cheap: peft is imported only if something else already did)."""
    if "peft" not in sys.modules:  # a PeftModel cannot exist before peft is imported (a 5 s import)
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def parameter_counts(model: Any) -> dict[str, Any]:
    """Trainable and total parameters of the model being trained (with LoRA: the adapters vs base + adapters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_share": round(trainable / total, 6) if total else None}


def save_trained(trainer: Any, writer: Any, tokenizer: Any) -> None:
    """Save the trained model into the stage's work folder. A LoRA model saves its adapter (plus
    tokenizer and generation config) in `adapter/`, then the adapter merged into its base as the
    stage checkpoint; the manifest's `lora` entry records the base and the adapter's file hashes."""
    work = Path(writer.work_dir)
    if not is_lora(trainer.model):
        if is_sharded(trainer):
            # Sharded checkpoints make save_model write no weights: gather the whole model on the
            # first process (every process takes part), which writes a plain save_pretrained folder.
            trainer._save(str(work), state_dict=full_state_dict(trainer))
        else:
            # Every process calls save_model (it gathers DDP shards); only the first one writes.
            trainer.save_model(str(work))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(work))
        return
    adapter_dir = work / ADAPTER
    trainer.save_model(str(adapter_dir))
    if not trainer.is_world_process_zero():
        return
    tokenizer.save_pretrained(str(adapter_dir))
    trainer.model.generation_config.save_pretrained(str(adapter_dir))
    merged, _, base = merge_adapter(adapter_dir)
    merged.save_pretrained(str(work))
    tokenizer.save_pretrained(str(work))
    writer.manifest.lora = {
        "base": str(base),
        "adapter": ADAPTER,
        "target_modules": sorted(trainer.model.peft_config["default"].target_modules),
        "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors"),
        "files": {p.name: sha256_file(p) for p in sorted(adapter_dir.iterdir()) if p.is_file()},
    }


def adapter_base(adapter_dir: Path) -> Path:
    """The base model folder an adapter was trained on, as recorded in its adapter_config.json."""
    config_file = Path(adapter_dir) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise UserError(f"no {ADAPTER_CONFIG}: not a LoRA adapter folder", file=str(adapter_dir))
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError as e:
        raise UserError(f"unreadable JSON ({e})", file=str(config_file)) from None
    if not base:
        raise UserError("names no base model (base_model_name_or_path)", file=str(config_file), hint="pass --base PATH")
    return Path(base)


def merge_adapter(adapter_dir: Path, base: Path | None = None) -> tuple[Any, Any, Path]:
    """Load an adapter's base model (`base`, else the one its adapter_config.json names), apply the
    adapter and merge it in: returns (plain transformers model, tokenizer, base folder). The
    generation config and tokenizer come from the adapter folder when it has them, else the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    adapter_dir = Path(adapter_dir)
    base = Path(base) if base is not None else adapter_base(adapter_dir)
    if not (base / "config.json").is_file():
        raise UserError("the adapter's base model is not there (no config.json)", file=str(base),
                        hint="pass --base PATH to the checkpoint the adapter was trained from")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir).merge_and_unload()
    if (adapter_dir / "generation_config.json").is_file():
        # The base's may lack what training set (a pretrain base has no end-of-turn stop).
        model.generation_config = GenerationConfig.from_pretrained(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base)
    return model, tokenizer, base
