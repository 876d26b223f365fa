"""Checks that a checkpoint folder is whole and self-consistent before anything loads it.

A stage folder can be damaged or edited after it was written: a truncated `model.safetensors`, a
`tokenizer.json` copied in from another run, a parent whose context is shorter than the child's
`max_length`. Loading such a folder fails deep inside transformers (or worse, trains on token ids
the embedding does not have), so these checks run first and fail as one line naming the file and
field. They read only small JSON files, the safetensors header and (for `verify_files`) the hashes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_file
from llmpipe.registry import STAGES, stage_spec
from llmpipe.runs.manifest import Manifest, read_manifest

WEIGHTS = "model.safetensors"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("missing", file=str(path), hint="the checkpoint folder is incomplete: retrain it or restore the file") from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
        raise UserError(f"unreadable ({type(e).__name__})", file=str(path), hint="restore the file or retrain the stage") from None
    if not isinstance(data, dict):
        raise UserError("must hold a JSON object", file=str(path), hint="restore the file or retrain the stage")
    return data


def tokenizer_vocab_size(folder: Path) -> int:
    """Number of token ids the folder's tokenizer can produce (its `tokenizer.json`, added tokens included)."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise UserError("missing", file=str(path), hint="the checkpoint folder is incomplete: retrain it or restore the file")
    try:
        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # tokenizers raises plain Exception for a file it cannot parse
        raise UserError(f"not a readable tokenizer ({str(e).splitlines()[0][:120]})", file=str(path),
                        hint="restore the file or retrain the stage") from None


def _check_weights(folder: Path) -> None:
    from safetensors import safe_open

    weights = folder / WEIGHTS
    shards = sorted(folder.glob("model-*-of-*.safetensors"))  # a large model's weights in parts
    if not weights.is_file() and not shards:
        raise UserError(f"no {WEIGHTS} in the checkpoint folder", file=str(folder),
                        hint="llmpipe checkpoints keep their weights in safetensors; retrain the stage or restore the file")
    for path in [weights] if weights.is_file() else shards:
        try:
            with safe_open(str(path), framework="pt"):
                pass  # the header (names, shapes, offsets) parses: the file is not truncated or foreign
        except Exception as e:  # SafetensorError, and OSError for unreadable files
            raise UserError(f"not a readable safetensors file ({str(e).splitlines()[0][:120]})", file=str(path),
                            hint="the file is damaged: restore it or retrain the stage") from None


def check_model_folder(folder: Path, max_length: int | None = None, max_length_key: str | None = None,
                       source: str | None = None) -> dict[str, Any]:
    """Check a model checkpoint before it is loaded: readable config, weights whose header parses, a
    tokenizer whose vocabulary is the model's, and (if given) a `max_length` within the model's
    context. Returns the model config."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    _check_weights(folder)
    model_vocab = config.get("vocab_size")
    tokens = tokenizer_vocab_size(folder)
    manifest = read_manifest(folder)
    # Released models often pad their embedding matrix past the tokenizer (Qwen: 151,936 rows for 151,665
    # tokens) for faster matmuls; llmpipe's own models have exactly one row per token.
    padded = manifest is not None and (manifest.base is not None or (manifest.stage in STAGES and stage_spec(manifest.stage).imports))
    if isinstance(model_vocab, int) and (tokens > model_vocab or (tokens < model_vocab and not padded)):
        # More tokens than embeddings crashes on the first new id; fewer means the ids mean other
        # tokens than the model learned. Either way the tokenizer is not the model's own.
        raise UserError(
            f"is {model_vocab} but the tokenizer (tokenizer.json) has {tokens} tokens",
            file=str(folder / "config.json"),
            field="vocab_size",
            hint="the tokenizer and the model come from different runs: put back the tokenizer the model was trained with",
        )
    context = config.get("n_positions") or config.get("max_position_embeddings")
    if max_length is not None and isinstance(context, int) and max_length > context:
        raise UserError(
            f"is {max_length} but the parent model {folder} has a context of {context} tokens",
            file=source,
            field=max_length_key,
            hint=f"set {max_length_key} <= {context}",
        )
    return config


def verify_files(folder: Path, manifest: Manifest, skip: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint whose files differ from the sha256 its manifest recorded when it finished
    (a damaged download, a file edited or copied in from elsewhere); `skip`: names checked elsewhere."""
    folder = Path(folder)
    for name, recorded in manifest.files.items():
        if name in skip:
            continue
        path = folder / name
        if not path.is_file():
            raise UserError("missing from the checkpoint (listed in its manifest.json)", file=str(path),
                            hint="restore the file or retrain the stage")
        if sha256_file(path) != recorded:
            if path.is_symlink():  # an imported base model's weights, linked to where they came from
                raise UserError(f"changed at its source {path.resolve()} since the base model was imported "
                                "(sha256 does not match manifest.json)", file=str(path),
                                hint="put the original back, or re-import it: rerun with --restart (its children retrain)")
            raise UserError("differs from the file the stage wrote (sha256 does not match manifest.json)", file=str(path),
                            hint="the file was edited or damaged after training: restore it or retrain the stage")
