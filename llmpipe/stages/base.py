"""Base stage: an existing model (Hugging Face folder, hub id or GGUF file) imported as the start of a run.

The stage trains nothing. It checks the source (llmpipe/sources.py), then leaves a folder every later
stage reads like one llmpipe trained: config, weights, tokenizer, chat template, generation config.

- A local folder or hub snapshot whose tokenizer has a chat template: the weight files are symbolic
  links to the source (a 7B model is not copied), everything else is copied. Their sha256 is recorded;
  a later stage that finds a weight file changed refuses it (llmpipe/runs/integrity.py), and a rerun
  of the run notices the changed source (its hashes are the stage's identity) and asks for --restart.
- A tokenizer without a chat template gets llmpipe's, and the special tokens it needs; the embedding
  matrix grows to hold them, so the model is written out in full (recorded in the manifest).
- A GGUF file is dequantized by transformers (through the `gguf` package) and written as safetensors:
  transformers will not save a GGUF-loaded model, so the weights go into a model built from the same
  config without its quantization settings.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from llmpipe.chat_format import ensure_chat_template, resize_for_tokenizer, set_generation_stops
from llmpipe.core.console import is_main_process, say
from llmpipe.core.errors import UserError
from llmpipe.runs.context import StageContext
from llmpipe.sources import Located, check_vocabulary, read_config, weight_files

# Files of a model folder that are large and never edited: referred to by a link instead of copied.
LINKED_SUFFIXES = (".safetensors", ".bin")


def train(ctx: StageContext) -> Path:
    """Import the source the pipeline located (ctx.inputs["located"]) into the work folder; returns the stage folder."""
    located: Located = ctx.inputs["located"]
    work = ctx.writer.work_dir
    trust = ctx.cfg.trust_remote_code
    record: dict[str, Any] = {"kind": located.kind, **located.origin}
    if located.gguf_file:
        model, tokenizer = _load_gguf(located)
        record.update(_add_template(tokenizer, model))
        _save(model, tokenizer, work)
    else:
        from transformers import AutoTokenizer

        config = read_config(located.folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(located.folder, trust_remote_code=trust)
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot load the tokenizer: {str(e).splitlines()[0][:160]}", file=str(located.folder),
                            field="base.source", hint="the model's tokenizer files are damaged or incomplete") from None
        check_vocabulary(located.folder, tokenizer, config)
        if tokenizer.chat_template:
            record.update({"chat_template": "own"})
            record["linked"] = _link_folder(located.folder, work)
            if config.get("auto_map") and is_main_process():
                # Allowed by --trust-remote-code and implemented by transformers itself (checked by the source
                # checks): from here on the model loads with transformers' own classes, never its code.
                config.pop("auto_map")
                (work / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
                record["remote_code"] = f"replaced by transformers' own {config.get('model_type')} classes"
        else:  # llmpipe's template and its tokens: the embeddings grow, so the weights are written out
            model = _load_folder(located.folder, trust)
            record.update(_add_template(tokenizer, model))
            _save(model, tokenizer, work)
    config = read_config(work)
    parameters, dtype = _weights_summary(work)
    record.update({"model_type": config.get("model_type"), "architectures": config.get("architectures"),
                   "parameters": parameters, "dtype": dtype, "vocab_size": config.get("vocab_size")})
    ctx.manifest.source = record
    where = record.get("hub_id") or record.get("path")
    say(f"base: {config.get('model_type')} model, {parameters:,} parameters ({dtype}) from {where}"
        + (f", {len(record['linked'])} weight file(s) linked, not copied" if record.get("linked") else ""))
    summary = {"steps": None, "tokens": None, "parameters": parameters, "metric": None}
    return ctx.writer.finish(summary)


def _link_folder(source: Path, work: Path) -> list[str]:
    """Copy a model folder's small files into `work` and link its weight files; returns the linked names."""
    linked = []
    if not is_main_process():
        return linked
    for path in sorted(Path(source).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        target = work / path.name
        if path.name.endswith(LINKED_SUFFIXES):
            # The resolved file: a hub snapshot's files are themselves links into its blob store.
            os.symlink(path.resolve(), target)
            linked.append(path.name)
        else:
            shutil.copy2(path, target)
    return linked


def _load_folder(folder: Path, trust: bool) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load the model: {str(e).splitlines()[0][:160]}", file=str(folder), field="base.source",
                        hint="the weights are damaged or do not match config.json") from None


def _load_gguf(located: Located) -> tuple[Any, Any]:
    """A GGUF file's model (dequantized, rebuilt without its quantization config so it saves) and tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = located.folder / located.gguf_file
    try:
        loaded = AutoModelForCausalLM.from_pretrained(located.folder, gguf_file=located.gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(located.folder, gguf_file=located.gguf_file)
    except Exception as e:  # the GGUF reader raises plain exceptions of several kinds for unsupported contents
        raise UserError(f"transformers cannot load this GGUF ({str(e).splitlines()[0][:160]})", file=str(path), field="base.source",
                        hint="use a Hugging Face folder of the model instead") from None
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = AutoConfig.for_model(**settings)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    return model, tokenizer


def _add_template(tokenizer: Any, model: Any) -> dict[str, Any]:
    """llmpipe's chat template and tokens for a tokenizer without one (embeddings resized); what changed."""
    if tokenizer.chat_template:
        set_generation_stops(model, tokenizer)
        return {"chat_template": "own"}
    before = model.get_input_embeddings().weight.shape[0]
    added = ensure_chat_template(tokenizer)
    resize_for_tokenizer(model, tokenizer)
    return {"chat_template": "llmpipe (added)", "added_tokens": added["added_tokens"], "pad_token": added["pad_token"],
            "embeddings": {"from": before, "to": model.get_input_embeddings().weight.shape[0]}}


def _save(model: Any, tokenizer: Any, work: Path) -> None:
    if is_main_process():
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)


def _weights_summary(folder: Path) -> tuple[int, str]:
    """Parameter count and storage dtype from the weight files' headers, without loading the weights."""
    from safetensors import safe_open

    total, dtypes = 0, set()
    files = [p for p in weight_files(folder) if p.name.endswith(".safetensors")]
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                shape = piece.get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
                dtypes.add(str(piece.get_dtype()).lower())
    if not files:  # PyTorch .bin weights: the config's dtype is all there is without loading them
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return 0, str(config.get("torch_dtype") or config.get("dtype") or "unknown")
    return total, "/".join(sorted(dtypes))
