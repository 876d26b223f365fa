"""Where a base model comes from: a local Hugging Face folder, `hf:ORG/NAME[@REVISION]`, or a `.gguf` file.

`locate(value)` turns what the user wrote (`--from`, the recipe's `base`) into a local folder (and GGUF
file) and checks it before anything loads it, each problem one line naming the file and the fix:
no config or weights, a `model_type` transformers does not know, a model that needs remote code, a
sequence classifier where a causal LM is wanted, a tokenizer whose vocabulary the model cannot hold,
a hub id that cannot be reached, a GGUF whose architecture transformers cannot read.

`fingerprint(located)` hashes the files that decide the model (weights, config, tokenizer, chat
template): it is part of the base stage's identity, so a changed source is noticed by the next run.
Hub downloads go through huggingface_hub's `snapshot_download` (what `from_pretrained` itself calls),
so a model already in the Hugging Face cache is found offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_file
from llmpipe.registry import STAGES
from llmpipe.runs.manifest import MANIFEST

HUB_PREFIX = "hf:"
GGUF_SUFFIX = ".gguf"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Files that decide what a model computes or how text becomes tokens; hashed into the base's identity.
DECIDING = re.compile(r".*\.(safetensors|bin|gguf)$|config\.json$|generation_config\.json$|tokenizer.*|.*\.model$"
                      r"|chat_template\.(jinja|json)$|special_tokens_map\.json$|vocab\.json$|merges\.txt$|.*\.index\.json$")
# Heads that make a model something other than a language model: it cannot be an SFT or align parent.
NOT_CAUSAL = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM")
# Keys of transformers' GGUF mapping that are metadata sections, not architectures.
GGUF_SECTIONS = ("general", "tokenizer")
SOURCE_HINT = "pass a Hugging Face model folder (config.json, weights, tokenizer), hf:ORG/NAME[@REVISION] or a .gguf file"


@dataclass
class Located:
    """A base model found on disk: its folder, its GGUF file if it is one, and where it came from."""

    folder: Path
    kind: str  # folder, hf or gguf
    origin: dict[str, Any] = field(default_factory=dict)
    gguf_file: str | None = None


def is_model_source(value: str | Path | None) -> bool:
    """Whether `value` names a model llmpipe did not train (a `--from` that imports a base, not a stage folder)."""
    if value is None:
        return False
    text = str(value)
    if text.startswith(HUB_PREFIX) or text.endswith(GGUF_SUFFIX):
        return True
    path = Path(text)
    if not path.is_dir() or (path / MANIFEST).exists() or not (path / "config.json").is_file():
        return False
    if path.name in STAGES and any((sibling / MANIFEST).is_file() for sibling in path.resolve().parent.iterdir()
                                   if sibling.is_dir()):
        return False  # a stage of an llmpipe run that lost its manifest: unverified, refused as such, not imported
    # A config.json that names a model type, or weights beside it: a model folder (checked in full by
    # `locate`); anything else is reported as what it is not, an llmpipe stage folder.
    try:
        named = "model_type" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        named = False
    return named or bool(weight_files(path))


def parse_hub_id(value: str) -> tuple[str, str | None]:
    """`hf:ORG/NAME[@REVISION]` as (repo id, revision or None), or a one-line error."""
    body = value[len(HUB_PREFIX):]
    repo, _, revision = body.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise UserError(f"'{value}' is not a hub model id", field="base.source",
                        hint="write hf:ORG/NAME or hf:ORG/NAME@REVISION, e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    return repo, revision or None


def locate(value: str | Path, trust_remote_code: bool = False) -> Located:
    """The model `value` names, downloaded if it is a hub id, checked; raises a one-line UserError."""
    text = str(value)
    if text.startswith(HUB_PREFIX):
        located = _download(text)
    elif text.endswith(GGUF_SUFFIX):
        located = _gguf(Path(text))
    else:
        folder = Path(text)
        if not folder.is_dir():
            raise UserError("base model not found", file=text, field="base.source", hint=SOURCE_HINT)
        located = Located(folder.resolve(), "folder", {"path": str(folder.resolve())})
    if located.kind != "gguf":
        check_folder(located.folder, trust_remote_code)
    located.origin.update(read_licence(located.folder))
    return located


def _download(value: str) -> Located:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = parse_hub_id(value)
    try:
        folder = Path(snapshot_download(repo, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise UserError(f"{type(e).__name__.removesuffix('Error').lower()}: {repo}" + (f"@{revision}" if revision else ""),
                        field="base.source", hint="check the id and revision on huggingface.co") from None
    except LocalEntryNotFoundError:
        raise UserError(f"cannot reach the Hugging Face hub for {repo} and it is not in the local cache", field="base.source",
                        hint="connect to the internet (unset HF_HUB_OFFLINE), or download the model and pass its folder") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"cannot download {repo}: {str(e).splitlines()[0][:160]}", field="base.source",
                        hint="check the connection, or download the model and pass its folder") from None
    # The snapshot folder is named by the commit it holds: the exact revision, whatever name was asked for.
    return Located(folder, "hf", {"hub_id": repo, "revision": revision or "main", "commit": folder.name})


def _gguf(path: Path) -> Located:
    if not path.is_file():
        raise UserError("GGUF file not found", file=str(path), field="base.source", hint=SOURCE_HINT)
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError("reading a .gguf needs the gguf package", file=str(path), field="base.source",
                        hint="pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
        arch_field = reader.fields["general.architecture"]
        architecture = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8")
    except Exception as e:  # GGUFReader raises ValueError/KeyError/struct errors on a foreign or damaged file
        raise UserError(f"not a readable GGUF file ({str(e).splitlines()[0][:120]})", file=str(path), field="base.source",
                        hint="pass a GGUF file written by llama.cpp's converter") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES and architecture.replace("moe", "_moe") not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(f"transformers cannot read GGUF architecture '{architecture}'", file=str(path), field="base.source",
                        hint="use a Hugging Face folder of the model instead (transformers reads GGUF of "
                        f"{', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES[:10] if a not in GGUF_SECTIONS)}, ...)")
    resolved = path.resolve()
    return Located(resolved.parent, "gguf", {"path": str(resolved), "gguf_architecture": architecture}, gguf_file=resolved.name)


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's config.json as a dict, or a one-line error."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError("no config.json: not a Hugging Face model folder", file=str(folder), field="base.source", hint=SOURCE_HINT)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable ({type(e).__name__})", file=str(path), hint="restore the file") from None
    if not isinstance(config, dict):
        raise UserError("must hold a JSON object", file=str(path), hint="restore the file")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (one safetensors, shards, or PyTorch .bin files)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                  and not p.name.startswith(("training_args", "optimizer", "scheduler", "rng_state")))


def check_folder(folder: Path, trust_remote_code: bool) -> dict[str, Any]:
    """Check a Hugging Face model folder before it is loaded; returns its config."""
    from transformers import CONFIG_MAPPING

    config = read_config(folder)
    path = str(Path(folder) / "config.json")
    if config.get("auto_map") and not trust_remote_code:
        raise UserError("this model needs its own Python code (config.json has auto_map) to load", file=path,
                        field="auto_map", hint="read that code, then pass --trust-remote-code (or trust_remote_code=true)")
    model_type = config.get("model_type")
    if config.get("auto_map") and model_type not in CONFIG_MAPPING:
        # Every stage loads and saves through transformers' own classes (what vLLM, llama.cpp's converter and
        # lm-evaluation-harness read too); a model that exists only as its own code cannot be trained that way.
        raise UserError(f"model_type '{model_type}' exists only as the model's own code, which llmpipe does not train",
                        file=path, field="model_type", hint="pass a model of a family transformers implements "
                        "(llama, qwen2, qwen3, mistral, gemma, phi3, gpt2, ...)")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"unknown model_type '{model_type}': this transformers cannot build it", file=path, field="model_type",
                        hint="upgrade transformers, or pass a model of a family it knows "
                        "(llama, qwen2, qwen3, mistral, gemma, phi3, gpt2, ...)")
    heads = [a for a in config.get("architectures") or [] if a.endswith(NOT_CAUSAL) and not a.endswith("ForCausalLM")]
    if heads:
        raise UserError(f"is a {heads[0]}, not a causal language model (a reward model or classifier cannot be a base)",
                        file=path, field="architectures", hint="pass a *ForCausalLM model; a reward model goes in align.reward_model")
    if not weight_files(folder):
        raise UserError("no weights (*.safetensors or *.bin) in the model folder", file=str(folder), field="base.source",
                        hint="download the whole model, not only its config")
    if not (Path(folder) / "tokenizer.json").is_file() and not (Path(folder) / "tokenizer_config.json").is_file():
        raise UserError("no tokenizer (tokenizer.json / tokenizer_config.json) in the model folder", file=str(folder),
                        field="base.source", hint="download the model's tokenizer files too")
    return config


def check_vocabulary(folder: Path, tokenizer: Any, config: dict[str, Any] | Any) -> None:
    """Refuse a tokenizer with ids the model has no embedding for (models may pad their embedding past it)."""
    vocab = config.get("vocab_size") if isinstance(config, dict) else getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab} embeddings",
                        file=str(Path(folder) / "config.json"), field="vocab_size",
                        hint="the tokenizer is not this model's: put back the model's own tokenizer files")


def read_licence(folder: Path) -> dict[str, Any]:
    """The licence a model folder states: README front matter `license:`, else the name of a LICENSE file."""
    readme = Path(folder) / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"---\n(.*?)\n---", text, re.S)
        found = front and re.search(r"^licen[cs]e:\s*(\S.*)$", front.group(1), re.M)
        if found:
            return {"licence": found.group(1).strip().strip("'\"")}
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE"):
        if (Path(folder) / name).is_file():
            return {"licence": f"see {name}"}
    return {}


def fingerprint(located: Located) -> dict[str, str]:
    """sha256 of every file that decides the model (for a GGUF: the file), by name."""
    if located.gguf_file:
        return {located.gguf_file: sha256_file(located.folder / located.gguf_file)}
    return {p.name: sha256_file(p) for p in sorted(Path(located.folder).iterdir())
            if p.is_file() and DECIDING.fullmatch(p.name)}
