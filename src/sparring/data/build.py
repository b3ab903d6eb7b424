"""Build the shipped IFEval-format prompt sets, deterministically.

    python -m sparring.data.build [--out-dir DIR]

writes ``ifeval_train.jsonl`` and ``ifeval_heldout.jsonl`` (default: this package's directory)
and prints how many times each instruction id occurs in each set.

Every prompt is ``<base request> <instruction text> [<instruction text>]``:

* a *base request* is one short sentence, a request template filled with a topic
  ("Write a short poem about penguins."). Training and held-out use disjoint topic lists, so no
  held-out base request occurs in training;
* the instructions come from a fixed *mix unit* of 40 instruction combinations (one or two
  verifiable instructions each, never two that contradict each other). The training set is that
  unit 8 times (320 prompts), the held-out set 3 times (120 prompts), so every instruction id has
  exactly the same relative frequency in both sets. Both sets use the same instruction templates
  and the same small pools of kwargs values (end phrases, postscript markers, keywords, ...);
  what changes between them is the topic and therefore the request.

The only randomness is ``random.Random(SEED)`` (training) and ``random.Random(SEED + 1)``
(held-out), used to shuffle the combinations and the base requests. Kwargs values are handed out
round-robin per instruction id, so each value occurs equally often. Output is byte-identical on
every run (the test checks the shipped files against a fresh build).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

SEED = 1729

DATA_DIR = Path(__file__).resolve().parent
TRAIN_FILE = "ifeval_train.jsonl"
HELDOUT_FILE = "ifeval_heldout.jsonl"

TRAIN_UNITS = 8  # 8 x 40 = 320 prompts
HELDOUT_UNITS = 3  # 3 x 40 = 120 prompts
TRAIN_KEY_START = 1000
HELDOUT_KEY_START = 5000

# --------------------------------------------------------------------------------------------
# Base requests: one sentence each, no commas (so `punctuation:no_comma` and
# `combination:repeat_prompt` can share a prompt), short answers (a few sentences).
# --------------------------------------------------------------------------------------------

REQUEST_TEMPLATES: tuple[str, ...] = (
    "Write a short poem about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Describe {topic} in a few sentences.",
    "Write a short story about {topic}.",
    "Share a fun fact about {topic}.",
    "Write a short note to a friend about {topic}.",
    "Write a short product description for a book about {topic}.",
    "Give a few quick tips for learning about {topic}.",
    "Write a short social media post about {topic}.",
    "Summarize why people find {topic} interesting.",
)

# Yes/no questions: the only requests `detectable_format:constrained_response` is put on
# ("Answer with one of: My answer is yes./no./maybe.") and the only thing they are used for.
QUESTION_TEMPLATES: tuple[str, ...] = (
    "Is {topic} worth learning about?",
    "Would a child enjoy learning about {topic}?",
    "Is {topic} important in everyday life?",
)

TRAIN_TOPICS: tuple[str, ...] = (
    "the ocean", "honeybees", "volcanoes", "the moon", "bicycles", "rainforests", "chess",
    "bread baking", "recycling", "penguins", "thunderstorms", "coffee", "public libraries",
    "gardening", "the solar system", "city parks", "kites", "deserts", "trains", "owls",
    "snowflakes", "photography", "music lessons", "dinosaurs", "rainbows", "lighthouses",
    "board games", "tea", "mountains", "butterflies", "camping", "the human heart", "windmills",
    "maps", "origami", "dolphins", "autumn leaves", "bridges", "comets", "farmers markets",
)  # fmt: skip

HELDOUT_TOPICS: tuple[str, ...] = (
    "octopuses", "glaciers", "hot air balloons", "coral reefs", "sunflowers",
    "the printing press", "submarines", "wolves", "waterfalls", "jazz music", "telescopes",
    "caves", "sailing", "fireflies", "pottery", "the water cycle",
)  # fmt: skip

# --------------------------------------------------------------------------------------------
# Instruction templates and their (small, fixed) kwargs pools.
# --------------------------------------------------------------------------------------------

END_PHRASES = (
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Any other questions?",
)
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
EXISTENCE_KEYWORDS = (("simple",), ("bright", "calm"), ("together",), ("careful", "friendly"))
FORBIDDEN_WORDS = (("very", "really"), ("good", "nice"), ("always", "never"))
FREQUENCY_KEYWORDS = (("simple", 2), ("bright", 2), ("together", 3))
LETTER_FREQUENCIES = (("b", 3), ("k", 2), ("w", 3))
WORD_LIMITS = (50, 60, 80, 100)  # always "less than": generous for a few-sentence answer
SENTENCE_LIMITS = (("less than", 4), ("less than", 5), ("at least", 3))
CAPITAL_WORDS = (("at least", 2), ("at least", 3), ("less than", 4))
HIGHLIGHTS = (1, 2)
BULLETS = (2, 3)
PLACEHOLDERS = (1, 2)
CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _words(words: Sequence[str]) -> str:
    return ", ".join(words)


def _kwargs_pool(instruction_id: str, base: str) -> list[dict]:
    """The kwargs values an instruction id cycles through (IFEval's exact kwargs names)."""
    pools: dict[str, list[dict]] = {
        "change_case:english_lowercase": [{}],
        "change_case:english_capital": [{}],
        "change_case:capital_word_frequency": [
            {"capital_frequency": n, "capital_relation": rel} for rel, n in CAPITAL_WORDS
        ],
        "punctuation:no_comma": [{}],
        "length_constraints:number_words": [
            {"num_words": n, "relation": "less than"} for n in WORD_LIMITS
        ],
        "length_constraints:number_sentences": [
            {"num_sentences": n, "relation": rel} for rel, n in SENTENCE_LIMITS
        ],
        "length_constraints:number_paragraphs": [{"num_paragraphs": 2}],
        "keywords:existence": [{"keywords": list(kws)} for kws in EXISTENCE_KEYWORDS],
        "keywords:forbidden_words": [{"forbidden_words": list(ws)} for ws in FORBIDDEN_WORDS],
        "keywords:frequency": [
            {"keyword": kw, "frequency": n, "relation": "at least"} for kw, n in FREQUENCY_KEYWORDS
        ],
        "keywords:letter_frequency": [
            {"letter": letter, "let_frequency": n, "let_relation": "at least"}
            for letter, n in LETTER_FREQUENCIES
        ],
        "startend:end_checker": [{"end_phrase": p} for p in END_PHRASES],
        "startend:quotation": [{}],
        "detectable_format:title": [{}],
        "detectable_format:number_bullet_lists": [{"num_bullets": n} for n in BULLETS],
        "detectable_format:number_highlighted_sections": [{"num_highlights": n} for n in HIGHLIGHTS],
        "detectable_format:json_format": [{}],
        "detectable_format:constrained_response": [{}],
        "detectable_format:multiple_sections": [{"section_spliter": "SECTION", "num_sections": 2}],
        "detectable_content:postscript": [{"postscript_marker": m} for m in POSTSCRIPT_MARKERS],
        "detectable_content:number_placeholders": [{"num_placeholders": n} for n in PLACEHOLDERS],
        "combination:repeat_prompt": [{"prompt_to_repeat": base}],
        "combination:two_responses": [{}],
    }
    return pools[instruction_id]


def instruction_text(instruction_id: str, kw: dict) -> str:
    """The sentence(s) appended to the base request, stating the constraint the way IFEval does."""
    if instruction_id == "change_case:english_lowercase":
        return (
            "Your entire response should be in English, and in all lowercase letters. "
            "No capital letters are allowed."
        )
    if instruction_id == "change_case:english_capital":
        return "Your entire response should be in English, and in all capital letters."
    if instruction_id == "change_case:capital_word_frequency":
        return (
            "In your response, words with all capital letters should appear "
            f"{kw['capital_relation']} {kw['capital_frequency']} times."
        )
    if instruction_id == "punctuation:no_comma":
        return "In your entire response, refrain from the use of any commas."
    if instruction_id == "length_constraints:number_words":
        return f"Answer with {kw['relation']} {kw['num_words']} words."
    if instruction_id == "length_constraints:number_sentences":
        return f"Your response should contain {kw['relation']} {kw['num_sentences']} sentences."
    if instruction_id == "length_constraints:number_paragraphs":
        return (
            f"There should be {kw['num_paragraphs']} paragraphs. "
            "Paragraphs are separated with the markdown divider: ***"
        )
    if instruction_id == "keywords:existence":
        kws = kw["keywords"]
        if len(kws) == 1:
            return f"Include the keyword {kws[0]} in the response."
        return f"Include keywords {_words(kws)} in the response."
    if instruction_id == "keywords:forbidden_words":
        return f"Do not include keywords {_words(kw['forbidden_words'])} in the response."
    if instruction_id == "keywords:frequency":
        return (
            f"In your response, the word {kw['keyword']} should appear "
            f"{kw['relation']} {kw['frequency']} times."
        )
    if instruction_id == "keywords:letter_frequency":
        return (
            f"In your response, the letter {kw['letter']} should appear "
            f"{kw['let_relation']} {kw['let_frequency']} times."
        )
    if instruction_id == "startend:end_checker":
        # Every end phrase ends with "." or "?", so no extra full stop after it.
        return (
            f"Finish your response with this exact phrase: {kw['end_phrase']} "
            "No other words should follow this phrase."
        )
    if instruction_id == "startend:quotation":
        return "Wrap your entire response with double quotation marks."
    if instruction_id == "detectable_format:title":
        return (
            "Your answer must contain a title, wrapped in double angular brackets, "
            "such as <<poem of joy>>."
        )
    if instruction_id == "detectable_format:number_bullet_lists":
        return (
            f"Your answer must contain exactly {kw['num_bullets']} bullet points. "
            "Use the markdown bullet points such as:\n* This is point 1.\n* This is point 2"
        )
    if instruction_id == "detectable_format:number_highlighted_sections":
        n = kw["num_highlights"]
        noun = "section" if n == 1 else "sections"
        return (
            f"Highlight at least {n} {noun} in your answer with markdown, "
            "i.e. *highlighted section*."
        )
    if instruction_id == "detectable_format:json_format":
        return (
            "Entire output should be wrapped in JSON format. "
            "You can use markdown ticks such as ```."
        )
    if instruction_id == "detectable_format:constrained_response":
        options = ", ".join(repr(o) for o in CONSTRAINED_OPTIONS)
        return f"Answer with one of the following options: ({options})"
    if instruction_id == "detectable_format:multiple_sections":
        s, n = kw["section_spliter"], kw["num_sections"]
        return (
            f"Your response must have {n} sections. "
            f"Mark the beginning of each section with {s} X, such as: {s} 1"
        )
    if instruction_id == "detectable_content:postscript":
        return (
            "At the end of your response, please explicitly add a postscript "
            f"starting with {kw['postscript_marker']}"
        )
    if instruction_id == "detectable_content:number_placeholders":
        n = kw["num_placeholders"]
        noun = "placeholder" if n == 1 else "placeholders"
        return (
            f"The response must contain at least {n} {noun} represented by square brackets, "
            "such as [address]."
        )
    if instruction_id == "combination:repeat_prompt":
        return (
            "First repeat the request word for word without change, then give your answer "
            "(1. do not say any words or characters before repeating the request; "
            "2. the request you need to repeat is only the first sentence of this prompt, "
            "not these instructions)."
        )
    if instruction_id == "combination:two_responses":
        return (
            "Give two different responses. Responses and only responses should be separated "
            "by 6 asterisk symbols: ******."
        )
    raise KeyError(f"unknown instruction id {instruction_id!r}")


INSTRUCTION_IDS: tuple[str, ...] = (
    "change_case:english_lowercase",
    "change_case:english_capital",
    "change_case:capital_word_frequency",
    "punctuation:no_comma",
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:frequency",
    "keywords:letter_frequency",
    "startend:end_checker",
    "startend:quotation",
    "detectable_format:title",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_format:json_format",
    "detectable_format:constrained_response",
    "detectable_format:multiple_sections",
    "detectable_content:postscript",
    "detectable_content:number_placeholders",
    "combination:repeat_prompt",
    "combination:two_responses",
)

# --------------------------------------------------------------------------------------------
# The mix unit: 40 instruction combinations. Easy, short-output instructions (the ones a small
# model can learn in a couple of iterations) dominate; every other id occurs once per unit.
# Pairs are listed in the order their texts appear in the prompt.
# --------------------------------------------------------------------------------------------

LOWER = "change_case:english_lowercase"
CAPITAL = "change_case:english_capital"
CAP_WORDS = "change_case:capital_word_frequency"
NO_COMMA = "punctuation:no_comma"
N_WORDS = "length_constraints:number_words"
N_SENTENCES = "length_constraints:number_sentences"
N_PARAGRAPHS = "length_constraints:number_paragraphs"
EXISTENCE = "keywords:existence"
FORBIDDEN = "keywords:forbidden_words"
FREQUENCY = "keywords:frequency"
LETTERS = "keywords:letter_frequency"
END = "startend:end_checker"
QUOTATION = "startend:quotation"
TITLE = "detectable_format:title"
BULLET_LIST = "detectable_format:number_bullet_lists"
HIGHLIGHT = "detectable_format:number_highlighted_sections"
JSON = "detectable_format:json_format"
CONSTRAINED = "detectable_format:constrained_response"
SECTIONS = "detectable_format:multiple_sections"
POSTSCRIPT = "detectable_content:postscript"
PLACEHOLDER = "detectable_content:number_placeholders"
REPEAT = "combination:repeat_prompt"
TWO = "combination:two_responses"

MIX_UNIT: tuple[tuple[str, ...], ...] = (
    # 28 single instructions
    (LOWER,), (LOWER,), (NO_COMMA,), (NO_COMMA,), (END,), (END,), (POSTSCRIPT,), (POSTSCRIPT,),
    (TITLE,), (TITLE,), (N_WORDS,), (N_WORDS,), (CONSTRAINED,), (CONSTRAINED,),
    (QUOTATION,), (EXISTENCE,), (FORBIDDEN,), (HIGHLIGHT,), (CAPITAL,), (BULLET_LIST,),
    (JSON,), (TWO,), (N_PARAGRAPHS,), (SECTIONS,), (LETTERS,), (FREQUENCY,), (N_SENTENCES,),
    (CAP_WORDS,),
    # 12 compatible pairs
    (LOWER, NO_COMMA), (LOWER, TITLE), (NO_COMMA, END), (N_WORDS, POSTSCRIPT),
    (FORBIDDEN, POSTSCRIPT), (QUOTATION, NO_COMMA), (TITLE, BULLET_LIST), (HIGHLIGHT, EXISTENCE),
    (CAPITAL, FORBIDDEN), (N_WORDS, EXISTENCE), (REPEAT, END), (PLACEHOLDER, NO_COMMA),
)  # fmt: skip

# Pairs that contradict each other (or whose checkers fight over the same part of the response).
# The mix never uses them; the builder refuses to run if it would.
_CONFLICT_LIST: tuple[tuple[str, frozenset[str]], ...] = (
    (LOWER, frozenset({CAPITAL, CAP_WORDS, CONSTRAINED, SECTIONS, END, POSTSCRIPT, REPEAT, JSON})),
    (CAPITAL, frozenset({CAP_WORDS, CONSTRAINED, END, REPEAT, JSON})),
    (JSON, frozenset(INSTRUCTION_IDS) - {JSON}),
    (CONSTRAINED, frozenset(INSTRUCTION_IDS) - {CONSTRAINED, NO_COMMA}),
    (QUOTATION, frozenset({END, REPEAT, TWO, BULLET_LIST, POSTSCRIPT, SECTIONS, N_PARAGRAPHS})),
    (REPEAT, frozenset({TWO, N_WORDS, N_SENTENCES, N_PARAGRAPHS})),
    (TWO, frozenset({END, POSTSCRIPT, N_PARAGRAPHS, SECTIONS, TITLE})),
    (END, frozenset({POSTSCRIPT})),
    (N_PARAGRAPHS, frozenset({SECTIONS})),
)
CONFLICTS: frozenset[frozenset[str]] = frozenset(
    frozenset({a, b}) for a, others in _CONFLICT_LIST for b in others
)


def _check_mix() -> None:
    unit_ids = Counter(i for combo in MIX_UNIT for i in combo)
    missing = set(INSTRUCTION_IDS) - set(unit_ids)
    if missing:
        raise AssertionError(f"mix unit lacks {sorted(missing)}")
    for combo in MIX_UNIT:
        if not 1 <= len(combo) <= 2 or len(set(combo)) != len(combo):
            raise AssertionError(f"bad combination {combo}")
        if len(combo) == 2 and frozenset(combo) in CONFLICTS:
            raise AssertionError(f"contradictory combination {combo}")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def base_requests(topics: Sequence[str], templates: Sequence[str]) -> list[str]:
    return [t.format(topic=topic) for topic in topics for t in templates]


def build_set(topics: Sequence[str], units: int, seed: int, key_start: int) -> list[dict]:
    """`units` copies of the mix unit, each combination on its own (topic, request) pair."""
    _check_mix()
    rng = random.Random(seed)
    combos = [combo for _ in range(units) for combo in MIX_UNIT]
    rng.shuffle(combos)
    general = base_requests(topics, REQUEST_TEMPLATES)
    questions = base_requests(topics, QUESTION_TEMPLATES)
    rng.shuffle(general)
    rng.shuffle(questions)
    need_q = sum(CONSTRAINED in c for c in combos)
    if need_q > len(questions) or len(combos) - need_q > len(general):
        raise AssertionError("not enough distinct base requests for this many prompts")

    turn: Counter[str] = Counter()  # round-robin position per instruction id
    records = []
    for i, combo in enumerate(combos):
        base = questions.pop() if CONSTRAINED in combo else general.pop()
        kwargs = []
        for iid in combo:
            pool = _kwargs_pool(iid, base)
            kwargs.append(dict(pool[turn[iid] % len(pool)]))
            turn[iid] += 1
        texts = [instruction_text(iid, kw) for iid, kw in zip(combo, kwargs)]
        records.append(
            {
                "key": key_start + i,
                "prompt": " ".join([base, *texts]),
                "instruction_id_list": list(combo),
                "kwargs": kwargs,
            }
        )
    return records


def build_sets() -> tuple[list[dict], list[dict]]:
    """(training records, held-out records)."""
    if set(TRAIN_TOPICS) & set(HELDOUT_TOPICS):
        raise AssertionError("training and held-out topics overlap")
    train = build_set(TRAIN_TOPICS, TRAIN_UNITS, SEED, TRAIN_KEY_START)
    heldout = build_set(HELDOUT_TOPICS, HELDOUT_UNITS, SEED + 1, HELDOUT_KEY_START)
    return train, heldout


def to_jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def instruction_counts(records: Sequence[dict]) -> Counter[str]:
    return Counter(i for r in records for i in r["instruction_id_list"])


def write_sets(out_dir: Path | str = DATA_DIR) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = build_sets()
    paths = (out / TRAIN_FILE, out / HELDOUT_FILE)
    for path, records in zip(paths, (train, heldout)):
        path.write_bytes(to_jsonl(records).encode("utf-8"))
    return paths


def counts_table(train: Sequence[dict], heldout: Sequence[dict]) -> str:
    tc, hc = instruction_counts(train), instruction_counts(heldout)
    width = max(map(len, INSTRUCTION_IDS))
    lines = [f"{'instruction id':<{width}}  train  held-out"]
    for iid in INSTRUCTION_IDS:
        lines.append(f"{iid:<{width}}  {tc[iid]:>5}  {hc[iid]:>8}")
    lines.append(f"{'instructions':<{width}}  {sum(tc.values()):>5}  {sum(hc.values()):>8}")
    lines.append(f"{'prompts':<{width}}  {len(train):>5}  {len(heldout):>8}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparring.data.build",
        description="Write the IFEval-format training and held-out prompt sets (deterministic).",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=DATA_DIR, help=f"output directory (default: {DATA_DIR})"
    )
    args = parser.parse_args(argv)
    train_path, heldout_path = write_sets(args.out_dir)
    train, heldout = build_sets()
    print(f"wrote {train_path} ({len(train)} prompts)")
    print(f"wrote {heldout_path} ({len(heldout)} prompts)")
    print(counts_table(train, heldout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
