"""Tests for row cleaning (llmpipe.data.clean): filters, dedup, decontamination, streaming."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from itertools import islice

import pytest

from llmpipe.config import CleaningConfig
from llmpipe.data.clean import REASONS, RowCleaner, normalize_row, repeated_line_share, row_text

# The real settings object; Cfg(...) reads as "cleaning with these settings".
Cfg = CleaningConfig


VOCAB = [f"w{i}" for i in range(2000)]


def words(n: int, seed: int) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=n)


def chat(*contents: str) -> dict:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]}


def pref(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def test_row_text_of_each_shape():
    assert row_text({"text": "a b"}) == "a b"
    assert row_text(chat("q?", "a.")) == "q?\na."
    assert row_text(pref("q?", "good", "bad")) == "q?\ngood\nbad"


def test_normalize_row_nfc_crlf_recursive_and_copy():
    row = {"messages": [{"role": "user", "content": "caf" + "e\u0301\r\nok"}], "n": 3, "flag": None}
    out = normalize_row(row)
    assert out["messages"][0]["content"] == "caf\u00e9\nok"
    assert out["n"] == 3 and out["flag"] is None
    assert row["messages"][0]["content"] == "cafe\u0301\r\nok"  # input untouched


def test_check_returns_normalised_row_only_when_enabled():
    raw = {"text": "e\u0301t\u00e9\r\n"}
    kept, reason = RowCleaner(Cfg()).check(raw)
    assert reason is None and kept == {"text": "\u00e9t\u00e9\n"}
    kept, reason = RowCleaner(Cfg(normalize_unicode=False)).check(raw)
    assert reason is None and kept is raw


def test_too_short_and_too_long():
    cleaner = RowCleaner(Cfg(min_chars=5, max_chars=20))
    assert cleaner.check({"text": "  hi   "}) == (None, "too_short")  # length counted after strip
    assert cleaner.check({"text": "x" * 21}) == (None, "too_long")
    assert cleaner.check({"text": "just right"})[1] is None
    assert cleaner.check({"text": "x" * 20})[1] is None  # the limits are inclusive
    assert RowCleaner(Cfg(max_chars=0)).check({"text": "x" * 100_000})[1] is None  # 0 = no limit


def test_repetitive_line_share():
    same = "buy cheap watches now"
    others = ["first distinct line!!", "second different line"]  # same length as `same`
    spam = "\n".join([same] * 8 + others)  # 80% the same line: 7/10 of the chars repeat an earlier line
    assert repeated_line_share(spam) == pytest.approx(0.7)
    assert RowCleaner(Cfg()).check({"text": spam}) == (None, "repetitive")
    assert RowCleaner(Cfg(max_repeated_line_share=1.0)).check({"text": spam})[1] is None  # 1.0 disables
    prose = "\n".join(f"line number {i} says something" for i in range(10)) + "\n\n\n"
    assert repeated_line_share(prose) == 0.0
    assert RowCleaner(Cfg()).check({"text": prose})[1] is None


def test_preference_replies_sharing_lines_are_not_repetitive():
    # Replies that share most lines push the joined text towards a 0.5 share; a stricter limit
    # (or one legitimately repeated line) would then drop ordinary pairs.
    body = "\n".join(f"step {i}: do thing {i}" for i in range(6))
    row = pref("How do I do it?", body + "\nDone.", body + "\nNot done.")
    strict = Cfg(max_repeated_line_share=0.3)
    assert repeated_line_share(row_text(row)) > 0.3  # the joined text would look repetitive
    assert RowCleaner(strict).check(row)[1] is None
    spam = pref("q", "same line\n" * 5, "fine answer")
    assert RowCleaner(strict).check(spam) == (None, "repetitive")


@pytest.mark.parametrize("row", [
    {"text": "a plain document"},
    {**chat("what is 2+2?", "4"), "answer": "4"},
    pref("pick one", "the good one", "the bad one"),
], ids=["text", "chat", "preference"])
def test_exact_duplicates_of_each_shape(row):
    cleaner = RowCleaner(Cfg())
    assert cleaner.check(row)[1] is None
    assert cleaner.check(dict(row)) == (None, "exact_duplicate")


def test_exact_dedup_after_normalisation_and_on_the_whole_row():
    cleaner = RowCleaner(Cfg())
    assert cleaner.check({"text": "caf\u00e9"})[1] is None
    assert cleaner.check({"text": "cafe\u0301"}) == (None, "exact_duplicate")  # same after NFC
    assert cleaner.check({**chat("q", "a"), "answer": "a"})[1] is None
    assert cleaner.check({**chat("q", "a"), "answer": "b"})[1] is None  # extra fields are content too
    assert RowCleaner(Cfg(exact_dedup=False)).clean([{"text": "x"}] * 3).__next__() == {"text": "x"}
    assert len(list(RowCleaner(Cfg(exact_dedup=False)).clean([{"text": "x"}] * 3))) == 3


def test_near_duplicates():
    original = words(200, seed=1)
    copy = list(original)
    copy[50], copy[150] = "changed", "altered"  # Jaccard of 5-gram shingles ~ 0.90
    unrelated = words(200, seed=2)
    cleaner = RowCleaner(Cfg(near_dedup=True))
    assert cleaner.check({"text": " ".join(original)})[1] is None
    assert cleaner.check({"text": " ".join(copy)}) == (None, "near_duplicate")
    assert cleaner.check({"text": " ".join(unrelated)})[1] is None
    # Shingles are lowercased words, so case and punctuation changes are near-duplicates too.
    assert cleaner.check({"text": ", ".join(unrelated).upper()}) == (None, "near_duplicate")
    # Control: without near-dedup the changed copy is a distinct row.
    plain = RowCleaner(Cfg())
    assert [plain.check({"text": " ".join(t)})[1] for t in (original, copy)] == [None, None]


def test_near_dedup_short_texts_and_wordless_rows():
    cleaner = RowCleaner(Cfg(near_dedup=True))
    assert cleaner.check({"text": "short one"})[1] is None  # fewer words than n: one shingle
    assert cleaner.check({"text": "Short one!"}) == (None, "near_duplicate")
    assert cleaner.check({"text": "short two"})[1] is None
    assert cleaner.check({"text": "!!!"})[1] is None  # no words: nothing to compare
    assert cleaner.check({"text": "???"})[1] is None


def test_decontamination_13_grams():
    reference = " ".join(words(40, seed=3))
    ref_words = reference.split()
    cleaner = RowCleaner(Cfg(), reference_texts=[reference, "too short to count"])
    pad_a, pad_b = " ".join(words(20, seed=4)), " ".join(words(20, seed=5))
    span13 = " ".join(ref_words[10:23])
    span12 = " ".join(ref_words[10:22])
    assert cleaner.check({"text": f"{pad_a} {span13} {pad_b}"}) == (None, "contaminated")
    assert cleaner.check({"text": f"{pad_a} {span12} {pad_b}"})[1] is None
    # Lowercased words: case and punctuation do not hide a match; chat rows are checked too.
    assert cleaner.check(chat("Q?", f"{pad_b}, " + ", ".join(ref_words[20:33]).upper())) == (None, "contaminated")
    # A reference shorter than n words contributes nothing.
    assert cleaner.check({"text": "too short to count"})[1] is None
    # Off, or no references: nothing is contaminated.
    assert RowCleaner(Cfg(decontaminate=False), [reference]).check({"text": span13})[1] is None
    assert RowCleaner(Cfg()).check({"text": reference})[1] is None


def test_contaminated_rows_never_enter_the_dedup_index():
    reference = " ".join(words(20, seed=6))
    cleaner = RowCleaner(Cfg(near_dedup=True), [reference])
    assert cleaner.check({"text": reference}) == (None, "contaminated")
    assert cleaner.check({"text": reference}) == (None, "contaminated")  # not exact_duplicate
    assert cleaner.counts["exact_duplicate"] == cleaner.counts["near_duplicate"] == 0


def test_counts_add_up_and_decisions_are_deterministic():
    base = " ".join(words(100, seed=7))
    rows = [
        {"text": base}, {"text": base}, {"text": ""}, {"text": "x" * 2500}, {"text": "spam\n" * 10},
        {"text": base.replace("w", "W", 1) + " extra"}, chat("hello", "world"), chat("hello", "world"),
        {"text": " ".join(words(30, seed=8))},
    ]

    def decide():
        cleaner = RowCleaner(Cfg(max_chars=2000, near_dedup=True), [" ".join(words(30, seed=8))])
        return [cleaner.check(r)[1] for r in rows], cleaner.counts

    decisions, counts = decide()
    assert set(counts) == set(REASONS) | {"kept"}
    assert sum(counts.values()) == len(rows)
    assert counts["kept"] == decisions.count(None) == 2
    assert decisions == [None, "exact_duplicate", "too_short", "too_long", "repetitive",
                         "near_duplicate", None, "exact_duplicate", "contaminated"]
    assert decide() == (decisions, counts)


def test_clean_is_lazy():
    pulled = 0

    def rows():
        nonlocal pulled
        for i in range(5):
            pulled += 1
            yield {"text": f"document number {i}"}
        raise AssertionError("clean() read past what was asked for")

    out = list(islice(RowCleaner(Cfg()).clean(rows()), 5))
    assert [r["text"] for r in out] == [f"document number {i}" for i in range(5)]
    assert pulled == 5


def test_bad_ngram_config_is_rejected():
    with pytest.raises(ValueError, match="decontaminate_ngram"):
        RowCleaner(replace(Cfg(), decontaminate_ngram=0))


def test_import_is_cheap():
    code = "import sys, llmpipe.data.clean; print(sorted({'datasketch', 'numpy', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
