"""`llmpipe export CKPT --out DIR [--merge]`: a plain Hugging Face model folder from a stage.

The folder holds the model (safetensors), its config and generation config, the tokenizer and the
chat template: nothing of llmpipe's (manifest, protected sets, TensorBoard logs, adapter). With
`--merge`, CKPT may be a LoRA adapter folder, or a stage with `adapter/`: the adapter is merged into
the base its adapter_config.json names (or `--base`). Either way the written folder is loaded back
and its logits compared with the source's before the command reports success.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.loading import check_checkpoint
from llmpipe.runs import manifest_sha, read_manifest
from llmpipe.train.lora import ADAPTER, ADAPTER_CONFIG, merge_adapter

# Largest logit difference accepted between the written model and its source (fp32 merges differ by ~1e-7).
TOLERANCE = 1e-3


def export(checkpoint: Path, out: Path, merge: bool = False, base: Path | None = None) -> dict[str, Any]:
    """Write the plain model folder `out` from `checkpoint`; returns what was written and checked."""
    from transformers import AutoModelForCausalLM

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("output folder exists and is not empty", file=str(out), hint="choose a new folder (or empty this one)")
    if not checkpoint.is_dir():
        raise UserError("checkpoint folder not found", file=str(checkpoint), hint="pass a stage folder such as runs/tiny/sft")
    bare_adapter = (checkpoint / ADAPTER_CONFIG).is_file()
    if not merge and bare_adapter:
        raise UserError("is a LoRA adapter, not a model", file=str(checkpoint), hint="pass --merge to merge it into its base")
    if not bare_adapter:
        check_checkpoint(checkpoint, need_template=False)
    if merge and not bare_adapter and not (checkpoint / ADAPTER / ADAPTER_CONFIG).is_file():
        raise UserError("has no LoRA adapter to merge (no adapter/ folder)", file=str(checkpoint),
                        hint="drop --merge: the folder is exported as it is")

    if merge:
        adapter_dir = checkpoint if bare_adapter else checkpoint / ADAPTER
        model, tokenizer, base_dir = merge_adapter(adapter_dir, base)
        if not bare_adapter:
            _check_base_unchanged(checkpoint, base_dir)
        # The source to compare with: the stage's own (merged at training time) checkpoint, or for a bare
        # adapter the unmerged base + adapter.
        reference = AutoModelForCausalLM.from_pretrained(checkpoint) if not bare_adapter else _unmerged(adapter_dir, base_dir)
    else:
        from transformers import AutoTokenizer

        model = reference = AutoModelForCausalLM.from_pretrained(checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        base_dir = None

    # Written next to `out` and renamed into place, so a failure never leaves half a model there.
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    diff = _max_logit_diff(AutoModelForCausalLM.from_pretrained(partial), reference, tokenizer)
    if diff > TOLERANCE:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"exported model differs from its source: max logit difference {diff:.3g} > {TOLERANCE}")
    os.replace(partial, out)  # onto a missing or empty folder
    return {"out": str(out), "source": str(checkpoint), "merged_into": None if base_dir is None else str(base_dir),
            "files": sorted(p.name for p in out.iterdir()), "max_logit_diff": diff}


def _check_base_unchanged(stage_dir: Path, base_dir: Path) -> None:
    # The adapter of a stage was trained on the parent recorded in its manifest; a parent retrained
    # since then would give a different (wrong) merged model.
    stage = read_manifest(stage_dir)
    recorded = stage.parent.manifest_sha256 if stage is not None and stage.parent is not None else None
    if recorded and read_manifest(base_dir) is not None and manifest_sha(base_dir) != recorded:
        raise UserError("the adapter's base was retrained after this stage (its manifest sha256 differs from the recorded parent's)",
                        file=str(base_dir), hint="export without --merge: the stage folder already holds the merged model")


def _unmerged(adapter_dir: Path, base_dir: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)


def _max_logit_diff(model: Any, reference: Any, tokenizer: Any) -> float:
    import torch

    ids = torch.tensor([tokenizer("The kettle is red. What is 2 plus 3?")["input_ids"][:32]])
    with torch.no_grad():
        a = model.eval()(input_ids=ids).logits.float()
        b = reference.eval()(input_ids=ids).logits.float()
    return (a - b).abs().max().item()
