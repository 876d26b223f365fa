"""Fully sharded training (FSDP2) under `accelerate launch`, on GPUs and on CPU.

`accelerate launch --config_file recipes/accelerate/fsdp.yaml` (GPUs) or `fsdp-cpu.yaml` (CPU, gloo)
sets ACCELERATE_USE_FSDP and the FSDP_* settings in each process's environment; the HF Trainer then
builds accelerate's FSDP plugin from them and shards the model with torch's `fully_shard`, one unit
per transformer block. Three things are llmpipe's own:

- **CPU.** accelerate 1.16 takes a CPU process group (gloo) as MULTI_CPU and never as FSDP: its
  AcceleratorState switches to FSDP only for GPU-like devices, so on CPU the FSDP plugin is dropped
  and the run silently trains as plain DDP (measured: the DDP reducer's warnings, no DTensor
  parameters). torch's `fully_shard` itself runs on CPU with gloo (docs/STACK-NOTES.md, 19), so while
  a trainer is built under an FSDP launch on CPU, `fsdp_on_cpu` lets AcceleratorState keep the
  plugin and report FSDP, as it does on GPUs; everything after that is accelerate's own FSDP2 path
  (`fsdp2_prepare_model`, sharded checkpoints, `get_state_dict`). This is the shim the README names.
- **The finished stage.** With `fsdp_state_dict_type: SHARDED_STATE_DICT` the Trainer's checkpoints
  hold one shard per process (torch.distributed.checkpoint), and `Trainer.save_model` writes no
  weights at all; `full_state_dict` gathers the whole model on the first process, which writes a
  plain `save_pretrained` folder like any other stage's.
- **The wrap class.** The configs leave `fsdp_transformer_layer_cls_to_wrap` unset, so accelerate
  wraps the classes the model itself declares unsplittable (`model._no_split_modules`: GPT2Block,
  LlamaDecoderLayer, Qwen3DecoderLayer): one config for every family. `check_fsdp` refuses,
  before accelerate sees the model, a named class the model does not contain and a model that
  declares none (accelerate would fail at the first step, or shard the model as one unit).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmpipe.core.dist import distributed
from llmpipe.core.errors import UserError

WRAP_FIELD = "fsdp_config.fsdp_transformer_layer_cls_to_wrap"


def fsdp_requested() -> bool:
    """Whether this process was started by `accelerate launch` with an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def configured_wrap_classes() -> list[str]:
    """The transformer-layer classes the launch config names (FSDP_TRANSFORMER_CLS_TO_WRAP), [] when unset."""
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    return [name.strip() for name in names.split(",") if name.strip()]


def check_fsdp(model: Any, adapters: bool = False) -> None:
    """Under an FSDP launch, before accelerate sees the model: no LoRA (`adapters`: the trainer will add
    them), and with transformer-based wrapping every class the config names is a module of `model`, or,
    when it names none, the model declares its blocks (`_no_split_modules`) and contains them."""
    if not fsdp_requested():
        return
    if adapters:
        # The adapter is saved through Trainer.save_model, which writes nothing under sharded state dicts.
        raise UserError("LoRA is not supported under an FSDP launch (its adapter would not be saved)", field="lora.enabled",
                        hint="launch LoRA stages with recipes/accelerate/ddp.yaml (adapters are small, sharding buys little), "
                        "or set lora.enabled=false for that stage")
    if os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP") != "TRANSFORMER_BASED_WRAP":
        return
    present = {type(module).__name__ for module in model.modules()}
    declared = [name for name in (getattr(model, "_no_split_modules", None) or []) if name in present]
    family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    named = configured_wrap_classes()
    if named:
        missing = [name for name in named if name not in present]
        if missing:
            blocks = f"its blocks are {', '.join(declared)}" if declared else "it declares no block class"
            keep = f" ({', '.join(declared)})" if declared else ""
            raise UserError(
                f"FSDP is asked to wrap {', '.join(missing)}, which this {family} model does not contain ({blocks})",
                field=WRAP_FIELD, hint=f"remove that key from the accelerate config to wrap the model's own blocks{keep}, "
                "or name a class of this model")
    elif not declared:
        raise UserError(
            f"this {family} model declares no transformer block class to shard by (_no_split_modules is empty)",
            field=WRAP_FIELD, hint="name its block class there in the accelerate config, or set fsdp_auto_wrap_policy: SIZE_BASED_WRAP")


@contextmanager
def fsdp_on_cpu() -> Iterator[None]:
    """While a trainer is built: under an FSDP launch whose processes accelerate takes as MULTI_CPU (no GPU,
    or `use_cpu: true`), AcceleratorState keeps the FSDP plugin and reports FSDP, as it does on GPUs (the
    module docstring says why). No-op elsewhere."""
    if not (fsdp_requested() and distributed()):
        yield
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # What AcceleratorState does for a GPU launch with an FSDP plugin.
            self.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original


def sharded_checkpoint(checkpoint: Path) -> bool:
    """Whether a Trainer checkpoint folder holds FSDP-saved weights (accelerate's `pytorch_model_fsdp*`)."""
    return any(path.name.startswith("pytorch_model_fsdp") for path in Path(checkpoint).iterdir())


def check_resumable(checkpoint: Path | None) -> None:
    """A checkpoint is resumed under the engine that wrote it: FSDP's shards only under an FSDP launch, a
    whole-model checkpoint only without one (the Trainer fails either way, with a traceback, after the
    model and the data are loaded)."""
    if checkpoint is None or sharded_checkpoint(checkpoint) == fsdp_requested():
        return
    if fsdp_requested():
        raise UserError("was saved without FSDP, and this launch shards the model with FSDP", file=str(checkpoint),
                        hint="resume it the way it was started (without the FSDP config), or pass --restart to train the stage again")
    raise UserError("was saved sharded by FSDP, so only an FSDP launch can resume it", file=str(checkpoint),
                    hint="rerun under `accelerate launch --config_file recipes/accelerate/fsdp.yaml` (or fsdp-cpu.yaml) as it was "
                    "started, or pass --restart to train the stage again")


def engine(trainer: Any) -> str:
    """How `trainer` spreads its work, for the manifest's training segments: single (one process), ddp,
    fsdp2 (or fsdp1), deepspeed-zero<stage>."""
    accelerator = trainer.accelerator
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind == "FSDP":
        return f"fsdp{accelerator.state.fsdp_plugin.fsdp_version}"
    if kind == "DEEPSPEED":
        return f"deepspeed-zero{accelerator.state.deepspeed_plugin.zero_stage}"
    return "single" if accelerator.num_processes == 1 else "ddp"


def is_sharded(trainer: Any) -> bool:
    """Whether `trainer` trains a model sharded by FSDP."""
    return bool(getattr(trainer, "is_fsdp_enabled", False))


def full_state_dict(trainer: Any) -> dict[str, Any]:
    """The whole model's weights gathered from every process's shards, on CPU (every process must call it;
    the first one gets the tensors, as accelerate's `get_state_dict` for FSDP2 does)."""
    return trainer.accelerator.get_state_dict(trainer.model)
