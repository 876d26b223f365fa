"""Loading a finished checkpoint for use (chat, generate, eval): checked before anything loads it.

Only a complete stage folder whose files match the sha256 its manifest recorded, and whose chat
template is the one it was trained with, is loaded: a model answers sensibly only in the format it
was trained on, and a silently edited template would look like a broken model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpipe.chat_format import set_generation_stops
from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_file
from llmpipe.registry import STAGES, stage_spec
from llmpipe.runs.integrity import check_model_folder, verify_files
from llmpipe.runs.manifest import MANIFEST, Manifest, read_manifest

TEMPLATE_FILE = "chat_template.jinja"


def check_checkpoint(folder: Path, need_template: bool) -> Manifest:
    """The manifest of a complete model checkpoint whose chat template is the one it was trained with."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("checkpoint folder not found", file=str(folder), hint="pass a stage folder such as runs/tiny/sft")
    manifest = read_manifest(folder)
    if manifest is None:
        raise UserError("no readable manifest.json: not an llmpipe stage folder", file=str(folder))
    if manifest.status != "complete":
        raise UserError(f"checkpoint is '{manifest.status}', not complete", file=str(folder / MANIFEST), field="status",
                        hint="finish the stage first: rerunning its command resumes it")
    if manifest.stage in STAGES and not stage_spec(manifest.stage).language_model:
        raise UserError("a tokenizer folder holds no model", file=str(folder), hint="pass a pretrain, sft or dpo folder")
    template = folder / TEMPLATE_FILE
    recorded = manifest.chat_template_sha256
    if template.is_file():
        if recorded and sha256_file(template) != recorded:
            raise UserError(
                "chat template differs from the one the model was trained with (sha256 does not match manifest.json)",
                file=str(template),
                hint="restore the original file",
            )
    elif need_template:
        raise UserError(f"checkpoint has no chat template ({TEMPLATE_FILE})", file=str(folder),
                        hint="use a folder written by llmpipe, or `generate --raw` for plain text")
    # The template was checked above (and is not needed with --raw); every other file must be as written.
    verify_files(folder, manifest, skip=(TEMPLATE_FILE,))
    check_model_folder(folder)
    return manifest


def pick_device(device: str) -> str:
    """Resolve auto|cpu|cuda to a torch device name, checked against the hardware."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device '{device}'", field="--device", hint="use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for but no GPU is visible", field="--device", hint="use auto or cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_checkpoint(folder: Path, device: str = "auto", need_template: bool = True) -> tuple[Any, Any]:
    """Model (in eval mode, stopping at end-of-turn) and tokenizer of a checked local checkpoint."""
    check_checkpoint(folder, need_template)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the model or tokenizer: {str(e).splitlines()[0]}", file=str(folder),
                        hint="restore the checkpoint's files or retrain the stage") from e
    if need_template and not tokenizer.chat_template:
        raise UserError("tokenizer has no chat template", file=str(folder))
    if tokenizer.pad_token is None:  # many hub tokenizers have none, and batched generation pads
        tokenizer.pad_token = tokenizer.eos_token
    set_generation_stops(model, tokenizer)
    model.to(pick_device(device)).eval()
    return model, tokenizer
