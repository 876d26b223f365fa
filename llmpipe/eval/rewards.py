"""Rule ("verifiable") rewards for online RL: plain functions of a reply, no model involved.

- exact_match: the reply's final answer equals the row's `answer`. Numbers are compared as numbers
  (GSM8K's `#### 72`, `72.0`, `1,000`, `seven`, a trailing period all read as what they say); words
  as whole words, case and punctuation ignored (llmpipe.eval.metrics.answer_matches).
- format: the reply ends on its own (end-of-turn token) as one short sentence (not a bare word).
- length: 0 up to LENGTH_LIMIT words, then falling linearly to -1 at twice that.

`reward_functions` wraps them in TRL's reward-function shape: f(prompts, completions, completion_ids,
**dataset columns) -> one float per completion (None: this row cannot be scored).
The rule names are the config layer's REWARD_RULES (the recipe check offers them); SCORERS holds one
function per name, and the import below refuses a name without its function or the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from llmpipe.config import REWARD_RULES
from llmpipe.eval.metrics import answer_matches

# Replies longer than this many words start losing reward; the embedded data's answers take 2-8.
LENGTH_LIMIT = 12
# Fewer words than this is a bare answer ("Blue."), not a sentence.
SENTENCE_MIN_WORDS = 3
NUMBER_WORDS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?|\b(?:" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)
# A sentence ends at . ! or ? followed by a space or the end ("7.5" is not an end).
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def reply_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of its assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if isinstance(m, dict))


def as_number(text: str) -> str | None:
    """`text` as a canonical number string ("1,000" -> "1000", "72.0" -> "72", "seven" -> "7"), or None."""
    text = text.strip().rstrip(".").strip()
    if text.lower() in NUMBER_WORDS:
        return str(NUMBER_WORDS[text.lower()])
    if not re.fullmatch(r"-?\d[\d,]*(?:\.\d+)?", text):
        return None
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    # normalize() drops trailing zeros ("72.0" -> "72"); format "f" keeps it out of exponent form.
    return format(value.normalize() + 0, "f")


def final_answer(reply: str) -> str:
    """The part of a reply that states its answer: after the last GSM8K-style `####`, else all of it."""
    return reply.rsplit("####", 1)[1] if "####" in reply else reply


def exact_match(reply: str, answer: Any) -> float:
    """1.0 when the reply's final answer is `answer`, else 0.0 (numbers: the last number stated)."""
    answer, final = str(answer), final_answer(reply)
    want = as_number(answer)
    if want is not None:
        found = _NUMBER.findall(final)
        return 1.0 if found and as_number(found[-1]) == want else 0.0
    return 1.0 if answer_matches(final, answer) else 0.0


def _words(reply: str) -> int:
    return len(reply.split())


def format_score(reply: str, stopped: bool) -> float:
    """0.5 for ending on its own (not cut off at max_new_tokens), 0.5 for being one sentence of
    SENTENCE_MIN_WORDS to LENGTH_LIMIT words that ends in . ! or ?."""
    text = reply.strip()
    one_sentence = (bool(text) and text[-1] in ".!?" and len(_SENTENCE_END.findall(text)) == 1
                    and SENTENCE_MIN_WORDS <= _words(text) <= LENGTH_LIMIT)
    return 0.5 * stopped + 0.5 * one_sentence


def length_score(reply: str) -> float:
    """0 up to LENGTH_LIMIT words, then -1/LENGTH_LIMIT per extra word, down to -1."""
    return -min(1.0, max(0, _words(reply) - LENGTH_LIMIT) / LENGTH_LIMIT)


def _exact_match_score(reply: str, answer: Any, stopped: bool) -> float | None:
    return None if answer is None or str(answer) == "" else exact_match(reply, answer)


# Each rule as f(reply, answer, stopped): None when the rule needs an answer the row does not have.
SCORERS: dict[str, Callable[[str, Any, bool], float | None]] = {
    "exact_match": _exact_match_score,
    "format": lambda reply, answer, stopped: format_score(reply, stopped),
    "length": lambda reply, answer, stopped: length_score(reply),
}
# A recipe may name exactly the rules implemented here: a rule missing on either side would pass the
# recipe check and fail mid-training, or never be offered.
if set(SCORERS) != set(REWARD_RULES):
    raise RuntimeError(f"llmpipe.eval.rewards implements {sorted(SCORERS)} but the config offers {sorted(REWARD_RULES)}")


def score(name: str, reply: str, answer: Any = None, stopped: bool = True) -> float | None:
    """One rule's reward for one reply; None when the rule needs an answer the row does not have."""
    if name not in SCORERS:
        raise ValueError(f"unknown reward rule {name!r}")  # the recipe check names the choices
    return SCORERS[name](reply, answer, stopped)


def reward_functions(names: list[str], stop_ids: list[int]) -> list[Callable[..., list[float | None]]]:
    """TRL reward functions for the rule `names`; a completion 'stopped' when its last token is in `stop_ids`."""
    stops = set(stop_ids)

    def make(name: str) -> Callable[..., list[float | None]]:
        def reward(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
                   answer: list[Any] | None = None, **_: Any) -> list[float | None]:
            answers = answer if answer is not None else [None] * len(completions)
            ids = completion_ids if completion_ids is not None else [[] for _ in completions]
            return [score(name, reply_text(c), a, bool(i) and i[-1] in stops) for c, a, i in zip(completions, answers, ids)]

        reward.__name__ = reward.__qualname__ = name  # TRL logs rewards/<name>/mean
        return reward

    return [make(name) for name in names]
