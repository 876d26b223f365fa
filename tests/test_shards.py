"""Token shards: exact round trip, blocks across shard boundaries, caching, interrupted builds, laziness."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest

from llmpipe.chat_format import BOS, EOS
from llmpipe.data.shards import TokenBlockDataset, build_token_shards, cached_token_shards
from llmpipe.stages.tokenizer import train_tokenizer

WORDS = "the cat sat on a mat while dogs ran past old red barns near cold rivers and quiet hills".split()


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))) for _ in range(n)]
    docs[3] = ""  # an empty document still gets its <bos><eos>
    docs[5] = "café ☕ naïve — ünïcode"  # multi-byte characters: bytes != characters
    return docs


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(_docs(300, seed=1), vocab_size=400, min_frequency=2)


def _reference(tokenizer, docs: list[str]) -> list[int]:
    """The packed stream built the slow, obvious way, one document at a time."""
    ids: list[int] = []
    for doc in docs:
        ids += [tokenizer.bos_token_id, *tokenizer(doc, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return ids


def _stream(out_dir) -> list[int]:
    meta = json.loads((out_dir / "meta.json").read_text())
    return np.concatenate([np.fromfile(out_dir / s["file"], dtype=meta["dtype"]) for s in meta["shards"]]).tolist()


def test_round_trip_across_shards(tokenizer, tmp_path):
    docs = _docs(60)
    meta = build_token_shards(iter(docs), tokenizer, tmp_path / "c", batch_docs=7, shard_tokens=37)
    ref = _reference(tokenizer, docs)
    assert _stream(tmp_path / "c") == ref
    decoded = tokenizer.decode(_stream(tmp_path / "c"), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert decoded == "".join(f"{BOS}{d}{EOS}" for d in docs)
    sizes = [s["tokens"] for s in meta["shards"]]
    assert len(sizes) == -(-len(ref) // 37) and all(n == 37 for n in sizes[:-1]) and 0 < sizes[-1] <= 37
    assert [s["file"] for s in meta["shards"]][:2] == ["shard-00000.bin", "shard-00001.bin"]
    for s in meta["shards"]:
        assert (tmp_path / "c" / s["file"]).stat().st_size == 2 * s["tokens"]


def test_meta_counts_and_dtype(tokenizer, tmp_path):
    docs = _docs(40)
    meta = build_token_shards(docs, tokenizer, tmp_path / "c", shard_tokens=1000)
    assert meta["dtype"] == "uint16"
    assert meta["tokens"] == len(_reference(tokenizer, docs))
    assert meta["documents"] == 40
    assert meta["bytes"] == sum(len(d.encode("utf-8")) for d in docs) > sum(len(d) for d in docs)
    assert json.loads((tmp_path / "c" / "meta.json").read_text()) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary folder left behind


class CharTokenizer:
    """A stand-in tokenizer: one id per character, with a settable vocabulary size."""

    bos_token_id, eos_token_id = 1, 2

    def __init__(self, vocab: int = 300) -> None:
        self.vocab, self.calls = vocab, []

    def __len__(self) -> int:
        return self.vocab

    def __call__(self, batch, add_special_tokens=False, **kw):
        self.calls.append(list(batch))
        return {"input_ids": [[1000 + ord(c) for c in t] for t in batch]}


def test_large_vocabulary_uses_uint32(tmp_path):
    meta = build_token_shards(["ab", "c"], CharTokenizer(vocab=70_000), tmp_path / "c")
    assert meta["dtype"] == "uint32"
    assert _stream(tmp_path / "c") == [1, 1097, 1098, 2, 1, 1099, 2]


@pytest.mark.parametrize("block_size, shard_tokens", [(10, 37), (40, 16), (7, 10_000)])
def test_blocks_equal_reference_slices(tokenizer, tmp_path, block_size, shard_tokens):
    import torch

    docs = _docs(50)
    build_token_shards(docs, tokenizer, tmp_path / "c", batch_docs=9, shard_tokens=shard_tokens)
    ref = _reference(tokenizer, docs)
    ds = TokenBlockDataset(tmp_path / "c", block_size)
    assert ds.tokens == len(ref) and len(ds) == len(ref) // block_size
    for i in range(len(ds)):
        item = ds[i]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (block_size,)
        assert item["input_ids"].tolist() == ref[i * block_size : (i + 1) * block_size]
        assert item["labels"] is item["input_ids"]
    assert ds[-1]["input_ids"].tolist() == ds[len(ds) - 1]["input_ids"].tolist()
    with pytest.raises(IndexError):
        ds[len(ds)]
    capped = TokenBlockDataset(tmp_path / "c", block_size, max_blocks=3)
    assert len(capped) == 3 and capped[2]["input_ids"].tolist() == ref[2 * block_size : 3 * block_size]


def test_cache_hit_does_not_read_texts(tokenizer, tmp_path):
    docs = _docs(30)
    path, meta, hit = cached_token_shards(lambda: iter(docs), tokenizer, tmp_path / "cache", "abc123", shard_tokens=50)
    assert not hit and path == tmp_path / "cache" / "abc123" and len(meta["shards"]) > 1

    def must_not_run():
        raise AssertionError("texts were read on a cache hit")

    path2, meta2, hit2 = cached_token_shards(must_not_run, tokenizer, tmp_path / "cache", "abc123")
    assert hit2 and path2 == path and meta2 == meta
    with pytest.raises(ValueError):
        cached_token_shards(must_not_run, tokenizer, tmp_path / "cache", "../escape")


def test_interrupted_build_leaves_no_cache_and_rerun_is_clean(tokenizer, tmp_path):
    docs = _docs(40)

    def failing():
        yield from docs[:30]
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        cached_token_shards(failing, tokenizer, tmp_path / "cache", "k1", batch_docs=8, shard_tokens=40)
    assert not (tmp_path / "cache" / "k1" / "meta.json").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary build folder is gone too
    _, meta, hit = cached_token_shards(lambda: iter(docs), tokenizer, tmp_path / "cache", "k1", shard_tokens=40)
    assert not hit and meta["documents"] == 40
    assert _stream(tmp_path / "cache" / "k1") == _reference(tokenizer, docs)


def test_stale_build_folder_of_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".c.tmp-999999999"  # no such pid
    stale.mkdir()
    (stale / "shard-00000.bin").write_bytes(b"\0\0")
    build_token_shards(["x"], CharTokenizer(), tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_texts_are_consumed_lazily(tmp_path):
    pulled = 0

    def texts():
        nonlocal pulled
        for i in range(25):
            pulled += 1
            yield f"doc {i}"

    seen = []

    class Recording(CharTokenizer):
        def __call__(self, batch, add_special_tokens=False, **kw):
            seen.append(pulled)  # how far the generator was pulled when this batch is tokenized
            return super().__call__(batch, add_special_tokens, **kw)

    meta = build_token_shards(texts(), Recording(), tmp_path / "c", batch_docs=10)
    # Batch k is tokenized after exactly k*10 (or all 25) documents were read, never more.
    assert seen == [10, 20, 25] and meta["documents"] == 25

    # An endless source is never read ahead: when the second batch fails, exactly 2 batches were read.
    def endless():
        nonlocal pulled
        pulled = 0
        while True:
            pulled += 1
            if pulled > 20:
                raise AssertionError("read past the batch being tokenized")
            yield "x"

    class FailSecond(CharTokenizer):
        def __call__(self, batch, add_special_tokens=False, **kw):
            if self.calls:
                raise KeyboardInterrupt
            return super().__call__(batch, add_special_tokens, **kw)

    with pytest.raises(KeyboardInterrupt):
        build_token_shards(endless(), FailSecond(), tmp_path / "d", batch_docs=10)
    assert pulled == 20 and not (tmp_path / "d").exists()


def test_empty_corpus(tmp_path):
    meta = build_token_shards(iter([]), CharTokenizer(), tmp_path / "c")
    assert meta["tokens"] == 0 and meta["shards"] == [] and meta["documents"] == 0
    assert len(TokenBlockDataset(tmp_path / "c", 8)) == 0


def test_dataset_pickles_small_and_works_in_workers(tmp_path):
    import torch

    # A "big" shard written directly: 8M tokens (16 MB) must not travel with the dataset.
    folder = tmp_path / "big"
    folder.mkdir()
    tokens = np.arange(8_000_000, dtype=np.uint32) % 60_000
    tokens.astype(np.uint16).tofile(folder / "shard-00000.bin")
    (folder / "meta.json").write_text(json.dumps({
        "dtype": "uint16", "shards": [{"file": "shard-00000.bin", "tokens": len(tokens)}],
        "tokens": len(tokens), "documents": 1, "bytes": 0,
    }))
    ds = TokenBlockDataset(folder, 256)
    first = ds[5]["input_ids"].tolist()  # maps the file in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000
    again = pickle.loads(blob)
    assert again[5]["input_ids"].tolist() == first == tokens[5 * 256 : 6 * 256].tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, sampler=[7, 3, 9, 1])
    batch = next(iter(loader))["input_ids"]
    assert batch.shape == (4, 256) and batch[1].tolist() == tokens[3 * 256 : 4 * 256].tolist()


def test_parallelism_setting_is_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    seen = []

    class Spy(CharTokenizer):
        def __call__(self, batch, add_special_tokens=False, **kw):
            seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
            return super().__call__(batch, add_special_tokens, **kw)

    build_token_shards(["a"], Spy(), tmp_path / "a", num_workers=2)
    build_token_shards(["a"], Spy(), tmp_path / "b", num_workers=1)
    assert seen == ["true", "false"] and os.environ["TOKENIZERS_PARALLELISM"] == "false"
