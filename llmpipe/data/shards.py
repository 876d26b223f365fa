"""Pretraining text tokenized once into memory-mapped token shards, cached by content hash.

Layout of a cache folder: `shard-00000.bin`, `shard-00001.bin`, ... (flat arrays of token ids:
`<bos> doc <eos>` per document, concatenated; a document may straddle two shards) and `meta.json`,
written last. `meta.json` present == cache complete: a build works in a temporary sibling folder that
is renamed into place only when finished, so a killed build never looks like a cache.

Training reads fixed blocks straight from the memory maps, so peak memory does not grow with the
corpus: the page cache holds what was touched, and the process only owns one batch at a time.
"""

from __future__ import annotations

import bisect
import itertools
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

META = "meta.json"


@contextmanager
def _tokenizer_threads(num_workers: int) -> Iterator[None]:
    """Let the Rust tokenizer use its thread pool (num_workers >= 2) or one thread, then restore.

    tokenizers reads TOKENIZERS_PARALLELISM on every batch call, and libraries (datasets, generate)
    sometimes leave it "false" in the process. Measured on 2 cores, its threads tokenize as fast as a
    2-process pool, without pickling texts and ids between processes or forking a torch process, so
    threads it is. In a multiprocessing child we leave the variable alone: after a fork the Rust thread
    pool is gone, and tokenizers disables itself there to avoid a deadlock.
    """
    if multiprocessing.parent_process() is not None:
        yield
        return
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if num_workers >= 2 else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _remove_stale_builds(out_dir: Path) -> None:
    """Delete temporary folders left by killed builds of `out_dir` (their process is gone)."""
    for tmp in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, someone else's process
            pass


def bos_prefix(tokenizer: Any) -> list[int]:
    """What a document starts with: [bos], or nothing for tokenizers without one (Qwen, GPT-2 style), whose
    documents are delimited by eos alone."""
    return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def build_token_shards(
    texts: Iterable[str],
    tokenizer: Any,
    out_dir: Path,
    *,
    batch_docs: int = 1024,
    shard_tokens: int = 1 << 26,
    num_workers: int = 2,
) -> dict:
    """Tokenize `texts` (consumed lazily) into `out_dir`/shard-*.bin and write meta.json last.

    Each document becomes `<bos> ids <eos>` (no <bos> for a tokenizer without one); ids are uint16 when the vocabulary fits, else uint32.
    Every shard holds at most `shard_tokens` tokens. Only one batch of `batch_docs` documents and its
    ids are in memory at a time. `num_workers` >= 2 lets the Rust tokenizer use all cores.
    Returns the meta dict: dtype, shards [{file, tokens}], tokens, documents, bytes (UTF-8 of texts).
    """
    bos, eos = bos_prefix(tokenizer), tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer needs an eos token to delimit documents")
    if shard_tokens < 1 or batch_docs < 1:
        raise ValueError("shard_tokens and batch_docs must be positive")
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.uint32
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out_dir)
    # The pid in the name keeps concurrent builders (e.g. several ranks) out of each other's way.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shards: list[dict] = []
    documents = n_bytes = 0
    handle = None
    try:
        iterator = iter(texts)
        with _tokenizer_threads(num_workers):
            # islice pulls exactly one batch: a corpus larger than RAM is never read ahead.
            while batch := list(itertools.islice(iterator, batch_docs)):
                documents += len(batch)
                n_bytes += sum(len(t.encode("utf-8")) for t in batch)
                flat: list[int] = []
                encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False)
                for ids in encoded["input_ids"]:
                    flat.extend(bos)
                    flat.extend(ids)
                    flat.append(eos)
                array = np.asarray(flat, dtype=dtype)
                del batch, flat, encoded
                pos = 0
                while pos < len(array):
                    if handle is None or shards[-1]["tokens"] == shard_tokens:
                        handle = _next_shard(handle, tmp, shards)
                    take = min(len(array) - pos, shard_tokens - shards[-1]["tokens"])
                    handle.write(array[pos : pos + take])  # buffer protocol: no extra copy
                    shards[-1]["tokens"] += take
                    pos += take
        _close(handle)
        handle = None
        meta = {"dtype": np.dtype(dtype).name, "shards": shards, "tokens": sum(s["tokens"] for s in shards),
                "documents": documents, "bytes": n_bytes}
        _write_json_atomic(tmp / META, meta)
        _publish(tmp, out_dir)
        return json.loads((out_dir / META).read_text())
    except BaseException:
        if handle is not None:
            handle.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _next_shard(handle: Any, folder: Path, shards: list[dict]) -> Any:
    _close(handle)
    shards.append({"file": f"shard-{len(shards):05d}.bin", "tokens": 0})
    return open(folder / shards[-1]["file"], "wb")


def _close(handle: Any) -> None:
    # fsync before meta.json exists, so "meta present == complete" also holds after a power loss.
    if handle is not None:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished build into place; if another process finished first, keep theirs."""
    if (out_dir / META).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if out_dir.exists():  # a folder without meta.json is not a cache: replace it
        shutil.rmtree(out_dir)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / META).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def cached_token_shards(
    texts_factory: Callable[[], Iterable[str]], tokenizer: Any, cache_root: Path, key: str, **kw: Any
) -> tuple[Path, dict, bool]:
    """Token shards for `key` under `cache_root`: (folder, meta, hit). Builds them on a miss.

    `key` is the caller's content hash of everything that determines the tokens (data files,
    tokenizer, cleaning settings). On a hit `texts_factory` is not called, so no text is read.
    `kw` goes to build_token_shards.
    """
    if not re.fullmatch(r"[0-9A-Za-z_-]+", key):
        raise ValueError(f"cache key must be a plain hash, got {key!r}")
    path = Path(cache_root) / key
    if (path / META).exists():
        return path, json.loads((path / META).read_text()), True
    return path, build_token_shards(texts_factory(), tokenizer, path, **kw), False


class TokenBlockDataset:
    """Causal-LM examples: block i is tokens [i*block_size, (i+1)*block_size) of the shard stream.

    The shards are read as one concatenated token stream (a block may span two shards); the tail
    shorter than a block is dropped. Memory maps are opened lazily in each process, so pickling the
    dataset for DataLoader workers or other ranks sends only file names and counts.
    """

    def __init__(self, shard_dir: Path, block_size: int, *, max_blocks: int | None = None) -> None:
        """Read meta.json of `shard_dir`; no shard is opened until the first item is read."""
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.shard_dir = Path(shard_dir)
        self.meta = json.loads((self.shard_dir / META).read_text())
        self.block_size = block_size
        self.tokens: int = self.meta["tokens"]
        self._files = [s["file"] for s in self.meta["shards"]]
        # Start offset of each shard in the stream, for a bisect from token position to shard.
        self._starts = [0, *itertools.accumulate(s["tokens"] for s in self.meta["shards"])][:-1]
        n = self.tokens // block_size
        self._len = n if max_blocks is None else max(0, min(n, max_blocks))
        self._maps: list[np.memmap] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        """Number of full blocks (capped by max_blocks)."""
        return self._len

    def __getstate__(self) -> dict:
        """Pickle without the memory maps: each process maps the files itself."""
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = None, None
        return state

    def _mapped(self) -> list[np.memmap]:
        # Re-map after a fork too: sharing mmaps is fine, but a fresh map per process keeps it simple.
        if self._maps is None or self._pid != os.getpid():
            dtype = np.dtype(self.meta["dtype"])
            self._maps = [np.memmap(self.shard_dir / f, dtype=dtype, mode="r") for f in self._files]
            self._pid = os.getpid()
        return self._maps

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"input_ids": LongTensor[block_size], "labels": the same tensor} for block `index`."""
        import torch

        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"block {index} out of range for {self._len} blocks")
        maps = self._mapped()
        start, end = index * self.block_size, (index + 1) * self.block_size
        shard = bisect.bisect_right(self._starts, start) - 1
        parts = []
        while start < end:
            offset = start - self._starts[shard]
            piece = maps[shard][offset : offset + (end - start)]
            parts.append(piece)
            start += len(piece)
            shard += 1
        # One copy out of the map into int64: the tensor owns its memory, the map stays read-only.
        block = torch.from_numpy(np.concatenate(parts, dtype=np.int64))
        return {"input_ids": block, "labels": block}
