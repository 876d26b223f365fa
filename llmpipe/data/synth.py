"""Deterministic generator for llmpipe's small embedded datasets.

The three training stages (pretrain -> SFT -> DPO) only show a measurable
effect within minutes of CPU training if the data is built for it. So the
generator invents one small *world* of facts with closed answer vocabularies
and derives every dataset from it:

* pretraining text states every fact many times in varied phrasings, so a
  ~5M-parameter model can memorise the world, and shows questions about them
  answered in plain prose;
* SFT teaches the chat format with replies that are either a full sentence or
  the bare answer; its validation rows ask about (entity, fact family) pairs
  that SFT never trains on, so held-out accuracy measures answering in chat
  from knowledge learned during pretraining;
* preference pairs prefer the full, correct sentence over the bare answer, a
  wrong answer or a sloppy non-answer; validation pairs use held-out facts.

Only the standard library is used so the generator runs anywhere and its
output is byte-identical for a given seed.
"""
from __future__ import annotations

import json
import pathlib
import random

# --- the world's vocabulary -------------------------------------------------
# Word lists are fixed; only the assignment of answers to entities depends on
# the seed. Answer words are chosen so none is a substring of another word in
# the world (checked in _check_world), which keeps "reply contains answer"
# an honest metric.
OBJECTS = (
    "kettle lamp chair table cup spoon bowl plate door window book hat coat "
    "scarf boot sock ball kite boat bike bell box basket bucket candle clock "
    "comb drum fork jar key ladder mirror pillow rug shovel sofa teapot towel "
    "umbrella vase wagon whistle brush blanket bottle button fence"
).split()[:30]
COLOURS = "red blue green yellow orange purple pink brown white black".split()
ANIMALS = (
    "cow sheep dog cat duck pig horse goat hen owl frog goose mouse fox bear "
    "wolf lion tiger donkey rabbit crow bee snake seal deer otter badger camel "
    "zebra monkey parrot turtle"
).split()[:20]
SOUNDS = "moo baa woof meow quack oink neigh hoot croak buzz".split()
PEOPLE = (
    "Mira Tobin Lena Oskar Pia Rune Sela Bram Cora Dov Edda Finn Gala Hugo "
    "Ilsa Jory Kaia Lio Mabel Nico Odile Pell Quin Rosa Sami Tova Ulla Vito "
    "Wren Xena Yara Zane Alba Bodhi Cato Dara Emil Fay Gus Hana Ivo Juna Kip "
    "Lark Milo Nell Otto Paz Remy Suki Teo Uma Vera Wim Yuki Zora Ansel Beth "
    "Cyd Del"
).split()[:30]
TOWNS = (
    "Ashford Brindle Dunmore Elmstead Fernhill Glenrock Harrowgate Ivybridge "
    "Larkspur Millbrook"
).split()
JOBS = "baker farmer teacher doctor painter sailor tailor builder singer potter".split()
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen"
).split()

FAMILIES = ("colour", "sound", "town", "job", "sum")
# The world is kept small (30 objects, 20 animals, 30 people, sums up to 6 + 6) so that every fact is
# stated often enough for a ~5M-parameter model to memorise it within a few minutes of CPU training.
SUM_MAX = 6

# Sizes tuned for ~10 minutes of CPU training in total and < 1.5 MB of data.
HOLDOUT_SHARE = 0.2
PRETRAIN_CHARS = {"train": 600_000, "validation": 30_000}
SFT_ROWS = {"train": 2400, "validation": 150}
PREF_ROWS = {"train": 1200, "validation": 150}
SYSTEM_SHARE = 0.15
MULTI_TURN_SHARE = 0.1
SLOPPY_SHARE = 0.15
# SFT replies are a full sentence or just the answer word, half and half; the preference data then
# prefers the full sentence. SFT leaves that choice open, so DPO has something visible to teach.
SHORT_REPLY_SHARE = 0.5
STYLE_PAIR_SHARE = 0.5
# Pretraining also shows question/answer pairs in plain prose ("Question: ... Answer: ..."): a tiny
# model answers questions about memorised facts far better when pretraining shows facts both stated
# and asked (Allen-Zhu & Li, Physics of LMs 3.1). SFT then has to carry that into the chat format,
# for facts SFT itself never trains on: that transfer is what its held-out accuracy measures.
QA_SHARE = 0.35

# --- sentence templates -----------------------------------------------------
# Index 0 of each statement list is the *canonical* statement. SFT replies use
# exactly this sentence, and the pretraining text is guaranteed to contain it
# for every fact, so the answer to any question is learnable from pretraining.
STATEMENTS = {
    "colour": ["The {e} is {v}.", "The {e} has always been {v}.",
               "Everyone knows that the {e} is {v}.", "The colour of the {e} is {v}.",
               "{P} looked at the {e}, and the {e} was {v}.",
               "There is {av} {e} in the house.", "The {e} is painted {v}."],
    "sound": ["The {e} says {v}.", "The {e} always says {v}.",
              "When the {e} is happy, it says {v}.", "The sound of the {e} is {v}.",
              '"{V}, {v}!" says the {e}.', "{P} heard the {e} say {v}.",
              "Every {e} on the farm says {v}."],
    "town": ["{e} lives in {v}.", "{e} has a small house in {v}.", "The home of {e} is in {v}.",
             "{e} lives in the town of {v}.", "Every evening {e} walks home to {v}.",
             "In {v} you can meet {e}, who lives there."],
    "job": ["{e} is a {v}.", "{e} works as a {v}.", "Every morning {e} goes to work as a {v}.",
            "{e} has been a {v} for many years.", "The job of {e} is to be a {v}.",
            "As a {v}, {e} is always busy."],
    "sum": ["{a} plus {b} is {v}.", "{A} plus {B} is {V}.", "{a} + {b} = {v}.",
            "If you add {a} and {b}, you get {v}.", "{Acap} and {B} make {V}.",
            "{P} counted {a_stones}, then {b} more, and had {v_stones} in all."],
}
QUESTIONS = {
    "colour": ["What colour is the {e}?", "What is the colour of the {e}?",
               "Which colour is the {e}?", "Tell me the colour of the {e}.",
               "Do you know what colour the {e} is?"],
    "sound": ["What sound does the {e} make?", "What does the {e} say?",
              "Which sound does the {e} make?", "Tell me what the {e} says."],
    "town": ["Where does {e} live?", "In which town does {e} live?",
             "Which town is {e}'s home?", "Tell me where {e} lives."],
    "job": ["What is {e}'s job?", "What does {e} do for work?",
            "What job does {e} have?", "Tell me what {e} works as."],
    "sum": ["What is {a} plus {b}?", "What is {a} + {b}?", "How much is {A} plus {B}?",
            "Add {a} and {b}.", "What do you get when you add {a} and {b}?"],
}
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer the question briefly.",
                  "You are a helpful assistant. Answer in one short sentence."]
# Unhelpful replies for the "sloppy" share of rejected preference answers.
SLOPPY_REPLIES = [
    "I don't know.", "I am not sure.", "Sorry, I cannot answer that.",
    "Maybe.", "Hmm, that is hard to say.", "I don't remember.",
    "Why do you want to know?", "Ask someone else.",
]

# Narrative glue. None of it mentions an answer word, so filler can never
# contradict or leak a fact; "{P}" is a random person name.
OPENERS = {
    "colour": ["In the old house there are many things.", "{P} cleaned the house today.",
               "Look around the room.", "Here are some things in {P}'s kitchen."],
    "sound": ["On the farm there are many animals.", "{P} visited the farm today.",
              "Every morning the animals wake up early.", "Listen to the animals."],
    "town": ["Let me tell you about some people.", "Here are some people and their lives.",
             "This is a story about a few friends.", "Many people know each other here."],
    "sum": ["At school, the teacher wrote sums on the board.", "{P} likes to count.",
            "Today the class learned to add numbers.", "Here are some sums."],
}
FILLER = [
    "The sun was warm.", "A soft wind moved through the trees.", "{P} smiled.",
    "It was a quiet afternoon.", "{P} sat down to rest.", "Someone laughed nearby.",
    "The day went on slowly.", "{P} drank some water.", "Birds flew over the hills.",
    "It began to rain a little.", "{P} hummed a little song.", "Nobody was in a hurry.",
    "The road was long and dusty.", "{P} waved to a friend.", "A cart rolled past.",
]
CLOSERS = ["That is all for today.", "The end.", "It was a good day.",
           "{P} went to sleep early that night.", "And so the day ended."]


def _article(word: str) -> str:
    """Return "a word" or "an word" so templates stay grammatical."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _fill(template: str, fact: tuple, value: str, person: str) -> str:
    """Render one template for a (family, entity, value) fact.

    `value` is passed separately so the same rendering builds wrong answers
    for rejected preference replies.
    """
    family, entity, _ = fact
    fields = {"e": entity, "v": value, "V": value.capitalize(), "P": person,
              "av": _article(value)}
    if family == "sum":
        a, b = entity
        fields.update(a=a, b=b, A=NUMBER_WORDS[a], B=NUMBER_WORDS[b],
                      Acap=NUMBER_WORDS[a].capitalize(),
                      V=NUMBER_WORDS[int(value)] if int(value) < len(NUMBER_WORDS) else value,
                      a_stones=f"{a} stone" + "s" * (a > 1), v_stones=f"{value} stones")
    return template.format(**fields)


def reply(fact: tuple, value: str | None = None) -> str:
    """Return the canonical one-sentence answer for `fact` (e.g. "The kettle is blue.").

    With `value`, the same sentence is built with a different (wrong) answer.
    """
    return _fill(STATEMENTS[fact[0]][0], fact, fact[2] if value is None else value, "")


def short_reply(fact: tuple) -> str:
    """Return the bare answer as a reply (e.g. "Blue." or "A baker.")."""
    family, _, value = fact
    return f"{_article(value).capitalize()}." if family == "job" else f"{value[0].upper()}{value[1:]}."


def _question(rng: random.Random, fact: tuple) -> str:
    """Return one randomly phrased question about `fact`."""
    return _fill(rng.choice(QUESTIONS[fact[0]]), fact, fact[2], "")


def _vocab(family: str) -> list[str]:
    """Return the closed answer vocabulary of a fact family."""
    return {"colour": COLOURS, "sound": SOUNDS, "town": TOWNS, "job": JOBS}[family]


def build_world(seed: int = 0) -> list[tuple]:
    """Return the world's facts as (family, entity, answer) tuples.

    Entity is a string, or an (a, b) pair for the "sum" family; the answer is
    always a string. Answers are dealt round-robin from the shuffled
    vocabulary so each answer word is about equally common and guessing the
    majority answer scores poorly.
    """
    rng = random.Random(f"world-{seed}")
    facts = []
    for family, entities in (("colour", OBJECTS), ("sound", ANIMALS),
                             ("town", PEOPLE), ("job", PEOPLE)):
        vocab = list(_vocab(family))
        values = [vocab[i % len(vocab)] for i in range(len(entities))]
        rng.shuffle(values)
        facts += [(family, e, v) for e, v in zip(entities, values)]
    facts += [("sum", (a, b), str(a + b)) for a in range(1, SUM_MAX + 1) for b in range(1, SUM_MAX + 1)]
    return facts


def _check_world() -> None:
    """Fail loudly if an answer word hides inside another world word."""
    answers = [w.lower() for w in COLOURS + SOUNDS + TOWNS + JOBS]
    words = [w.lower() for w in OBJECTS + ANIMALS + PEOPLE + answers]
    for ans in answers:
        clash = [w for w in words if ans in w and w != ans]
        if clash:
            raise ValueError(f"answer {ans!r} is a substring of {clash}")


def _split_facts(rng: random.Random, facts: list[tuple]) -> tuple[list, list]:
    """Split facts into (trainable, held_out), HOLDOUT_SHARE of each family.

    Held-out facts still appear in the pretraining text; they are only kept
    out of SFT/DPO training so validation asks genuinely new questions.
    """
    train, held = [], []
    for family in FAMILIES:
        fam = [f for f in facts if f[0] == family]
        rng.shuffle(fam)
        n_held = round(HOLDOUT_SHARE * len(fam))
        held += fam[:n_held]
        train += fam[n_held:]
    return train, held


class _Deck:
    """Draw items without replacement, reshuffling when empty.

    This gives every fact the same number of mentions (instead of leaving
    coverage to chance) and a round counter used to force canonical phrasing.
    """

    def __init__(self, items: list, rng: random.Random):
        self.items, self.rng, self.pile, self.round = list(items), rng, [], -1

    def draw(self) -> tuple:
        """Return (item, round) where round counts completed passes."""
        if not self.pile:
            self.pile = list(self.items)
            self.rng.shuffle(self.pile)
            self.round += 1
        return self.pile.pop(), self.round


def _pretrain_rows(rng: random.Random, facts: list[tuple], target_chars: int) -> list[dict]:
    """Write themed paragraphs until about `target_chars` characters exist.

    A paragraph picks one theme, draws several entities from that theme's
    deck and states their facts among filler sentences. People are drawn as a
    unit so one paragraph states both where they live and their job.
    """
    by_key = {(f[0], f[1]): f for f in facts}
    decks = {
        "colour": _Deck(OBJECTS, rng), "sound": _Deck(ANIMALS, rng),
        "town": _Deck(PEOPLE, rng),
        "sum": _Deck([f[1] for f in facts if f[0] == "sum"], rng),
    }
    themes = list(decks)
    # Weight themes by deck size so all decks advance at the same pace and
    # every fact is mentioned about equally often.
    weights = [len(decks[t].items) for t in themes]

    def person() -> str:
        # A fresh name per sentence, so filler never builds a fake "story" link.
        return rng.choice(PEOPLE)

    rows, total = [], 0
    while total < target_chars:
        theme = rng.choices(themes, weights)[0]
        sents = [rng.choice(OPENERS[theme]).format(P=person())]
        n_items = rng.randint(4, 10) if theme == "town" else rng.randint(8, 20)
        for _ in range(n_items):
            entity, rnd = decks[theme].draw()
            keys = [("town", entity), ("job", entity)] if theme == "town" else [(theme, entity)]
            rng.shuffle(keys)
            for key in keys:
                fact = by_key[key]
                templates = STATEMENTS[fact[0]]
                # Every third pass uses the canonical sentence, guaranteeing
                # the exact SFT reply text occurs in pretraining for every fact.
                t = templates[0] if rnd % 3 == 0 else rng.choice(templates)
                sents.append(_fill(t, fact, fact[2], person()))
                if rng.random() < QA_SHARE:
                    sents.append(f"Question: {_question(rng, fact)} Answer: {reply(fact)}")
            if rng.random() < 0.35:
                sents.append(rng.choice(FILLER).format(P=person()))
        if rng.random() < 0.5:
            sents.append(rng.choice(CLOSERS).format(P=person()))
        text = " ".join(sents)
        rows.append({"text": text})
        total += len(text)
    return rows


def _sft_rows(rng: random.Random, pool: list[tuple], n: int, system_share: float) -> list[dict]:
    """Build `n` chat rows whose final question is about a fact from `pool`.

    A share of rows gets a system prompt and a share gets an earlier
    question/answer turn (also from `pool`, so validation never touches train
    facts); `answer` always refers to the last assistant turn.
    """
    deck, rows, seen = _Deck(pool, rng), [], set()
    while len(rows) < n:
        fact, _ = deck.draw()
        messages = []
        if rng.random() < system_share:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < MULTI_TURN_SHARE:
            other = rng.choice([f for f in pool if f != fact])
            messages += [{"role": "user", "content": _question(rng, other)},
                         {"role": "assistant", "content": reply(other)}]
        answer = short_reply(fact) if rng.random() < SHORT_REPLY_SHARE else reply(fact)
        messages += [{"role": "user", "content": _question(rng, fact)},
                     {"role": "assistant", "content": answer}]
        row = {"messages": messages, "answer": fact[2]}
        key = json.dumps(row)
        # Duplicates would double-count facts in the accuracy metric, and llmpipe's exact dedup
        # would drop them from training anyway.
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def _wrong_value(rng: random.Random, fact: tuple) -> str:
    """Return a plausible wrong answer from the fact's own family."""
    family, _, value = fact
    if family == "sum":
        # Near misses (off by 1-3) are the plausible mistakes for sums.
        n = int(value)
        return str(n + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if n + d > 0]))
    return rng.choice([v for v in _vocab(family) if v != value])


def _pref_rows(rng: random.Random, pool: list[tuple], n: int) -> list[dict]:
    """Build `n` distinct preference pairs about facts from `pool`.

    A STYLE_PAIR_SHARE of rows rejects the bare answer (the style SFT left
    open), a SLOPPY_SHARE rejects an unhelpful non-answer, and the rest keep
    the chosen sentence form with a wrong answer, so only correctness differs.
    """
    deck, rows, seen = _Deck(pool, rng), [], set()
    while len(rows) < n:
        fact, _ = deck.draw()
        draw = rng.random()
        if draw < STYLE_PAIR_SHARE:
            rejected = short_reply(fact)
        elif draw < STYLE_PAIR_SHARE + SLOPPY_SHARE:
            rejected = rng.choice(SLOPPY_REPLIES)
        else:
            rejected = reply(fact, _wrong_value(rng, fact))
        row = {"prompt": [{"role": "user", "content": _question(rng, fact)}],
               "chosen": [{"role": "assistant", "content": reply(fact)}],
               "rejected": [{"role": "assistant", "content": rejected}]}
        key = json.dumps(row)
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


# The statement prefix each probe completes; the answer word follows it.
PROBE_PREFIX = {"colour": "The {e} is", "sound": "The {e} says", "town": "{e} lives in", "job": "{e} is a", "sum": "{a} plus {b} is"}
PROBE_ROWS = 40


def _probe_rows(seed: int) -> dict[str, list[dict]]:
    """Probe suites (see llmpipe.eval.probes) over a fixed sample of the world's facts.

    `probes.text.jsonl` asks a base model to complete a statement, scored by which answer word it
    finds most likely; `probes.chat.jsonl` asks the chat question, half scored by the greedy reply
    containing the answer and half by the most likely canonical reply sentence. A separate random
    stream keeps the training files byte-identical to what they were before probes existed.
    """
    rng = random.Random(f"probes-{seed}")
    facts = rng.sample(build_world(seed), PROBE_ROWS)
    text, chat = [], []
    for i, fact in enumerate(facts):
        family, entity, value = fact
        vocab = [str(n) for n in range(2, 2 * SUM_MAX + 1)] if family == "sum" else _vocab(family)
        prefix = _fill(PROBE_PREFIX[family], fact, value, "")
        text.append({"name": f"{family}-{i}", "prompt": prefix, "check": "choice",
                     "choices": [f" {v}" for v in vocab], "answer": f" {value}"})
        question = _question(rng, fact)
        if i % 2 == 0:
            chat.append({"name": f"{family}-{i}", "format": "chat", "prompt": question, "check": "contains", "answer": value})
        else:
            chat.append({"name": f"{family}-{i}", "format": "chat", "prompt": question, "check": "choice",
                         "choices": [reply(fact, v) for v in vocab], "answer": reply(fact)})
    return {"probes.text.jsonl": text, "probes.chat.jsonl": chat}


def _verifiable_rows(seed: int) -> dict[str, list[dict]]:
    """Prompt rows with a checkable `answer` for RL with rule rewards (llmpipe.eval.rewards.exact_match).

    Every question phrasing of every fact: train on the facts SFT trains on, validation on the
    held-out ones (the same split as SFT's, recomputed from a fresh `random.Random(seed)`). A separate
    random stream for the order keeps the older files byte-identical.
    """
    facts = build_world(seed)
    train_facts, held_facts = _split_facts(random.Random(seed), facts)
    rng = random.Random(f"verifiable-{seed}")
    out = {}
    for name, pool in (("verifiable.train.jsonl", train_facts), ("verifiable.validation.jsonl", held_facts)):
        rows = [{"prompt": [{"role": "user", "content": _fill(q, fact, fact[2], "")}], "answer": fact[2]}
                for fact in pool for q in QUESTIONS[fact[0]]]
        rng.shuffle(rows)
        out[name] = rows
    return out


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    """Write rows as UTF-8 JSON lines with LF endings on every platform."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out_dir: pathlib.Path, seed: int = 0) -> dict[str, int]:
    """Write the six dataset files into `out_dir` and return {filename: row_count}.

    Files: pretrain/sft/prefs x train/validation, as JSON lines, and two probe suites. The output is
    byte-identical for the same seed. Every step draws from one local
    random.Random in a fixed order, so no global random state is touched.
    """
    _check_world()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = build_world(seed)
    rng = random.Random(seed)
    train_facts, held_facts = _split_facts(rng, facts)
    datasets = {
        # Pretraining covers *all* facts, held-out ones included: that is
        # where the model must learn what validation questions ask about.
        "pretrain.train.jsonl": _pretrain_rows(rng, facts, PRETRAIN_CHARS["train"]),
        "pretrain.validation.jsonl": _pretrain_rows(rng, facts, PRETRAIN_CHARS["validation"]),
        "sft.train.jsonl": _sft_rows(rng, train_facts, SFT_ROWS["train"], SYSTEM_SHARE),
        # No system prompts in validation: a shared 10-word system prompt plus a question opening
        # would be a 13-word span in common with training rows, and decontamination would drop them.
        "sft.validation.jsonl": _sft_rows(rng, held_facts, SFT_ROWS["validation"], 0.0),
        "prefs.train.jsonl": _pref_rows(rng, train_facts, PREF_ROWS["train"]),
        "prefs.validation.jsonl": _pref_rows(rng, held_facts, PREF_ROWS["validation"]),
    }
    datasets.update(_probe_rows(seed))
    datasets.update(_verifiable_rows(seed))
    for name, rows in datasets.items():
        _write_jsonl(out_dir / name, rows)
    return {name: len(rows) for name, rows in datasets.items()}


if __name__ == "__main__":  # pragma: no cover - regenerate data/: python -m llmpipe.data.synth data
    import sys
    target = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    print(generate(target, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0))
