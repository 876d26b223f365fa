"""Row cleaning before training: normalisation, quality filters, deduplication, decontamination.

Works on rows already in TRL's shapes (text / chat / preference, see `llmpipe.data.formats`) and
streams: `RowCleaner.check` decides one row at a time, so a corpus never has to fit in memory. What
is kept per accepted row is fixed: a 16-byte digest for exact dedup (~80 bytes in the set) and, with
near-dedup on, one entry in datasketch's in-memory LSH index (~3 KB at 128 permutations, so ~3 GB
per million kept rows).

Checks run in this order, and the first that fails names the reason:
normalise -> too_short / too_long -> repetitive -> contaminated -> exact_duplicate -> near_duplicate.
Contamination is tested before dedup so a contaminated row never enters the dedup indexes (it could
otherwise mask a later clean near-copy's reason). Only kept rows are added to the dedup indexes.

Every decision is deterministic: all hashes are stable across processes (blake2b for rows, crc32
plus a fixed mixer for words and n-grams; never the salted `hash()`), and MinHash permutations come
from a fixed seed. `datasketch` and `numpy` are imported lazily so that
importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

REASONS = ("too_short", "too_long", "repetitive", "exact_duplicate", "near_duplicate", "contaminated")

_WORD = re.compile(r"\w+")


def _contents(messages: Any) -> list[str]:
    """The `content` strings of a message list (tolerates a bare string, as some prompts are)."""
    if isinstance(messages, str):
        return [messages]
    return [m.get("content", "") for m in messages or () if isinstance(m, dict) and isinstance(m.get("content"), str)]


def row_text(row: dict) -> str:
    """The text the filters look at.

    text rows: `row["text"]`; chat rows: the message contents joined by "\\n"; preference rows:
    prompt, chosen and rejected contents joined by "\\n" (in that order); unpaired (KTO) rows: prompt
    and completion.
    """
    if "text" in row:
        return row["text"]
    if "messages" in row:
        return "\n".join(_contents(row["messages"]))
    if "chosen" in row or "prompt" in row:
        return "\n".join(_contents(row.get("prompt")) + _contents(row.get("chosen")) + _contents(row.get("rejected"))
                         + _contents(row.get("completion")))
    raise ValueError(f"row has no text, messages or prompt/chosen/rejected: keys {sorted(row)}")


def _normalize(value: Any) -> Any:
    if isinstance(value, str):
        # CRLF first: NFC never creates or removes "\r", so the order does not matter for
        # correctness, but it keeps the string NFC after the (cheaper) replace.
        return unicodedata.normalize("NFC", value.replace("\r\n", "\n"))
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        # Keys are field names chosen by the format, not content: leave them alone.
        return {k: _normalize(v) for k, v in value.items()}
    return value


def normalize_row(row: dict) -> dict:
    """A copy of `row` with every string (recursively in lists/dicts) NFC-normalised and CRLF -> LF.

    Dict keys and non-string values are unchanged. NFC makes "e" + combining acute and the
    precomposed "é" the same string, so they tokenise and deduplicate alike.
    """
    return _normalize(row)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


# Odd multiplier of the polynomial rolling hash (splitmix64's golden-ratio constant).
_BASE = 0x9E3779B97F4A7C15


def ngram_hashes(words: list[str], n: int):
    """Stable 64-bit hashes (numpy uint64 array) of every run of `n` consecutive words.

    Empty when there are fewer than `n` words. Each word is hashed once (crc32, stable across
    processes unlike `hash()`), then n-grams are combined with a vectorised polynomial hash and a
    splitmix64 finaliser: about 10x faster than hashing each n-gram's string, which dominated the
    cost of near-dedup and decontamination. An int per n-gram also costs far less memory than the
    n-gram's strings; 64 bits make collisions among millions of n-grams negligible.
    """
    import numpy as np

    m = len(words) - n + 1
    if n < 1 or m < 1:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
    h = np.zeros(m, dtype=np.uint64)
    base = np.uint64(_BASE)
    for k in range(n):
        h = h * base + ids[k : k + m]  # uint64 arrays wrap mod 2^64, as intended
    # The finaliser spreads every input bit over the output (the polynomial's low bits alone only
    # depend on the words' low bits), so any slice of the hash is usable, e.g. 32 bits for MinHash.
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def repeated_line_share(text: str) -> float:
    """Share of characters in lines that repeat an earlier line (non-empty lines, after strip).

    The first occurrence of a line does not count as duplicated, so a text of ten distinct lines
    scores 0 and a text of one line repeated ten times scores 0.9. The denominator is the
    characters of the non-empty stripped lines, so blank lines and indentation neither dilute nor
    inflate the share.
    """
    seen: set[str] = set()
    total = duplicated = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            duplicated += len(line)
        else:
            seen.add(line)
    return duplicated / total if total else 0.0


def _repetition_texts(row: dict) -> list[str]:
    """The texts the repetition filter scores, one per completion.

    A preference pair's chosen and rejected replies often share whole lines (a corrected answer is
    mostly the same code or prose), which reads as repetition in the joined row_text: overlap alone
    approaches a 0.5 share, so any stricter limit, or one legitimately repeated line, would drop
    ordinary pairs. Each reply is therefore scored with the prompt on its own; the row is
    repetitive if either is.
    """
    if "chosen" in row and "rejected" in row and "text" not in row and "messages" not in row:
        prompt = _contents(row.get("prompt"))
        return ["\n".join(prompt + _contents(row[side])) for side in ("chosen", "rejected")]
    return [row_text(row)]


class RowCleaner:
    """Stateful row filter: quality checks, exact/near dedup and n-gram decontamination.

    `config` is duck-typed (llmpipe.config.CleaningConfig or anything with the same attributes).
    `reference_texts` are the held-out (validation/eval) rows' texts, already passed through
    `row_text`; each contributes its lowercased word `decontaminate_ngram`-grams as 64-bit hashes.
    A reference with fewer words than n contributes nothing: a short span such as "What is the
    capital of France" is common phrasing, and matching it would drop innocent training rows.
    Likewise a training row shorter than n words can never be flagged contaminated.

    `counts` holds dropped rows per reason (every reason present, 0 by default) plus "kept".
    """

    def __init__(self, config: Any, reference_texts: Iterable[str] = ()) -> None:
        """Read the config and hash the reference n-grams (consumes `reference_texts` once)."""
        self.config = config
        for name in ("near_dedup_ngram", "decontaminate_ngram", "near_dedup_permutations"):
            if getattr(config, name) < 1:
                raise ValueError(f"cleaning.{name} must be >= 1, got {getattr(config, name)}")
        self.counts: dict[str, int] = {reason: 0 for reason in REASONS}
        self.counts["kept"] = 0
        # Digests of kept rows, not the rows: ~100 bytes each with the set's overhead.
        self._exact: set[bytes] = set()

        self._reference: set[int] = set()
        if config.decontaminate:
            n = config.decontaminate_ngram
            for text in reference_texts:
                self._reference.update(ngram_hashes(_words(text), n).tolist())

        self._lsh = None
        if config.near_dedup:
            from datasketch import MinHash, MinHashLSH

            # One template's permutations are shared by every row's MinHash: generating them per
            # row would cost more than hashing the row. The seed fixes them across runs.
            self._template = MinHash(num_perm=config.near_dedup_permutations, seed=1, hashfunc=int)
            # datasketch picks bands x rows to balance false positives and negatives around the
            # threshold; it is an S-curve, not a cut-off (at 0.8/128: ~40% of pairs at exactly
            # J=0.8 are caught, ~93% at 0.9, ~1% at 0.6).
            self._lsh = MinHashLSH(threshold=config.near_dedup_threshold, num_perm=config.near_dedup_permutations)
            self._next_key = 0

    @property
    def seen(self) -> int:
        """Rows checked so far (kept + dropped)."""
        return sum(self.counts.values())

    def _minhash(self, words: list[str]):
        if not words:
            return None  # nothing to compare: an empty shingle set would "match" every other one
        # A text shorter than one shingle is a single shingle of all its words.
        shingles = ngram_hashes(words, min(self.config.near_dedup_ngram, len(words)))
        # copy() of the untouched template: a fresh MinHash sharing its permutations (public API in
        # datasketch 1.x and 2.x alike). The template's hashfunc is int: the shingles are already
        # hashed, and datasketch's default (sha1 per shingle) was half the cost of near-dedup.
        m = self._template.copy()
        # The top 32 bits: datasketch's default scheme (affine32) takes 32-bit input hashes.
        m.update_batch((shingles >> shingles.dtype.type(32)).tolist())
        return m

    def check(self, row: dict) -> tuple[dict | None, str | None]:
        """Decide one row: `(cleaned_row, None)` to keep it, `(None, reason)` to drop it.

        The cleaned row is the NFC/LF-normalised copy when `normalize_unicode` is on, else `row`
        itself. Kept rows enter the dedup indexes, so the first of a set of duplicates wins.
        """
        if self.config.normalize_unicode:
            row = normalize_row(row)
        reason = self._reason(row)
        if reason is not None:
            self.counts[reason] += 1
            return None, reason
        self.counts["kept"] += 1
        return row, None

    def _reason(self, row: dict) -> str | None:
        cfg = self.config
        text = row_text(row)
        length = len(text.strip())
        if length < cfg.min_chars:
            return "too_short"
        if cfg.max_chars and length > cfg.max_chars:
            return "too_long"
        if cfg.max_repeated_line_share < 1.0 and any(
            repeated_line_share(t) > cfg.max_repeated_line_share for t in _repetition_texts(row)
        ):
            return "repetitive"
        words = _words(text) if self._reference or self._lsh is not None else []
        if self._reference and not self._reference.isdisjoint(ngram_hashes(words, cfg.decontaminate_ngram).tolist()):
            return "contaminated"
        digest = None
        if cfg.exact_dedup:
            canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
            digest = hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()
            if digest in self._exact:
                return "exact_duplicate"
        minhash = None
        if self._lsh is not None:
            minhash = self._minhash(words)
            if minhash is not None and self._lsh.query(minhash):
                return "near_duplicate"
        # Index only once the row is known to be kept, so dropped rows never shadow later ones.
        if digest is not None:
            self._exact.add(digest)
        if minhash is not None:
            self._lsh.insert(self._next_key, minhash, check_duplication=False)
            self._next_key += 1
        return None

    def clean(self, rows: Iterable[dict]) -> Iterator[dict]:
        """Yield the kept (cleaned) rows of `rows`, lazily: one input row is read per decision."""
        for row in rows:
            kept, _ = self.check(row)
            if kept is not None:
                yield kept
