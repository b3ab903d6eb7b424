"""Build the shipped IFEval-format prompt sets, deterministically.

    python tools/data/build_ifeval.py [--out-dir DIR]

writes ``ifeval_train.jsonl`` and ``ifeval_heldout.jsonl`` (default: src/sparring/data/, where the
package ships them) and prints how many times each instruction id occurs in each set. This script is
part of the source tree, not of the installed package: nothing runs it at run time.

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

Every *training* record also carries ``reference_response`` (see `reference_response`): a short,
template-built answer on the prompt's topic that follows all of its instructions under strict
IFEval scoring, for SPIN-style methods (the ground-truth response preferred over the policy's own
sample). Held-out records get none: that set stays a pure evaluation set.

The only randomness is ``random.Random(SEED)`` (training) and ``random.Random(SEED + 1)``
(held-out), used to shuffle the combinations and the base requests. Kwargs values are handed out
round-robin per instruction id, so each value occurs equally often. Output is byte-identical on
every run (the test checks the shipped files against a fresh build).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

SEED = 1729

# the shipped sets are package data of sparring.data; this script lives in tools/data/ of the same tree
DATA_DIR = Path(__file__).resolve().parents[2] / "src" / "sparring" / "data"
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
        "length_constraints:number_words": [{"num_words": n, "relation": "less than"} for n in WORD_LIMITS],
        "length_constraints:number_sentences": [{"num_sentences": n, "relation": rel} for rel, n in SENTENCE_LIMITS],
        "length_constraints:number_paragraphs": [{"num_paragraphs": 2}],
        "keywords:existence": [{"keywords": list(kws)} for kws in EXISTENCE_KEYWORDS],
        "keywords:forbidden_words": [{"forbidden_words": list(ws)} for ws in FORBIDDEN_WORDS],
        "keywords:frequency": [{"keyword": kw, "frequency": n, "relation": "at least"} for kw, n in FREQUENCY_KEYWORDS],
        "keywords:letter_frequency": [
            {"letter": letter, "let_frequency": n, "let_relation": "at least"} for letter, n in LETTER_FREQUENCIES
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
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."
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
        return f"In your response, the word {kw['keyword']} should appear {kw['relation']} {kw['frequency']} times."
    if instruction_id == "keywords:letter_frequency":
        return (
            f"In your response, the letter {kw['letter']} should appear "
            f"{kw['let_relation']} {kw['let_frequency']} times."
        )
    if instruction_id == "startend:end_checker":
        # Every end phrase ends with "." or "?", so no extra full stop after it.
        return (
            f"Finish your response with this exact phrase: {kw['end_phrase']} No other words should follow this phrase."
        )
    if instruction_id == "startend:quotation":
        return "Wrap your entire response with double quotation marks."
    if instruction_id == "detectable_format:title":
        return "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."
    if instruction_id == "detectable_format:number_bullet_lists":
        return (
            f"Your answer must contain exactly {kw['num_bullets']} bullet points. "
            "Use the markdown bullet points such as:\n* This is point 1.\n* This is point 2"
        )
    if instruction_id == "detectable_format:number_highlighted_sections":
        n = kw["num_highlights"]
        noun = "section" if n == 1 else "sections"
        return f"Highlight at least {n} {noun} in your answer with markdown, i.e. *highlighted section*."
    if instruction_id == "detectable_format:json_format":
        return "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```."
    if instruction_id == "detectable_format:constrained_response":
        options = ", ".join(repr(o) for o in CONSTRAINED_OPTIONS)
        return f"Answer with one of the following options: ({options})"
    if instruction_id == "detectable_format:multiple_sections":
        s, n = kw["section_spliter"], kw["num_sections"]
        return f"Your response must have {n} sections. Mark the beginning of each section with {s} X, such as: {s} 1"
    if instruction_id == "detectable_content:postscript":
        return (
            f"At the end of your response, please explicitly add a postscript starting with {kw['postscript_marker']}"
        )
    if instruction_id == "detectable_content:number_placeholders":
        n = kw["num_placeholders"]
        noun = "placeholder" if n == 1 else "placeholders"
        return f"The response must contain at least {n} {noun} represented by square brackets, such as [address]."
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
CONFLICTS: frozenset[frozenset[str]] = frozenset(frozenset({a, b}) for a, others in _CONFLICT_LIST for b in others)


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
# Reference responses (training records only): a short answer on the prompt's topic, written
# from the request template, that follows every instruction of the prompt under the judge's
# strict check. SPIN-style methods use it as the preferred response; the test suite uses it to
# show that every prompt (held-out included) is satisfiable.
#
# Every sentence below is written so that it fits any topic (the topic is never the subject of
# a present-tense verb, so "coffee" and "penguins" both read right), and contains no comma, no
# forbidden keyword (very, really, good, nice, always, never), no all-capital word, no quote,
# no '*' and no '['. Instruction-specific sentences are added on top.
# --------------------------------------------------------------------------------------------

# request template -> (title, variant A sentences, variant B sentences). Poems are written one
# sentence per line. Each variant has exactly 3 sentences (the sentence limits rely on it).
_ANSWERS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "Write a short poem about {topic}.": (
        "ode to {topic}",
        ("Soft light falls on {topic}.", "We stop to watch in quiet wonder.", "Each small detail has a story to tell."),
        ("Think of {topic} at dawn.", "The air is cool and full of song.", "Our hearts feel light and free."),
    ),
    "Explain {topic} to a ten-year-old.": (
        "{topic} made easy",
        (
            "{Topic} can look tricky at first.",
            "Think of it like a puzzle where each piece has a job.",
            "Once the pieces fit you can explain it to a friend.",
        ),
        (
            "Here is an easy way to think about {topic}.",
            "Picture yourself looking closer and asking how each part works.",
            "Every question you ask helps the picture make sense.",
        ),
    ),
    "Describe {topic} in a few sentences.": (
        "getting to know {topic}",
        (
            "{Topic} can catch the eye of anyone who stops to look.",
            "There is color and detail in every part of the picture.",
            "The more you notice the more there is to enjoy.",
        ),
        (
            "People notice {topic} in many different ways.",
            "Some focus on the shapes and others on the sounds.",
            "Each view adds something new to the whole picture.",
        ),
    ),
    "Write a short story about {topic}.": (
        "an afternoon with {topic}",
        (
            "One morning Maya set out to learn about {topic}.",
            "She asked questions and took notes everywhere she went.",
            "By sunset she had a story to share with her class.",
        ),
        (
            "Leo found an old notebook full of drawings of {topic}.",
            "Each page showed something he had missed before.",
            "He closed the book with a smile and decided to see for himself.",
        ),
    ),
    "Share a fun fact about {topic}.": (
        "fun fact: {topic}",
        (
            "Here is a fun fact about {topic}.",
            "Experts and hobbyists keep finding new surprises in this subject.",
            "Even a quick look can teach you something new.",
        ),
        (
            "Did you know that {topic} can tell us a lot about the world?",
            "Looking closely can reveal patterns that are easy to miss.",
            "That is what makes the subject so fun to explore.",
        ),
    ),
    "Write a short note to a friend about {topic}.": (
        "quick note about {topic}",
        (
            "Hey there!",
            "Today reminded me of you because we talked about {topic}.",
            "We should find time soon to learn more about it.",
        ),
        ("Hello friend!", "Guess what we discussed today: {topic}!", "Write back soon and tell me what you think."),
    ),
    "Write a short product description for a book about {topic}.": (
        "the little book of {topic}",
        (
            "This little book about {topic} is a friendly guide for curious readers.",
            "Short chapters and clear pictures make each idea easy to follow.",
            "It makes the perfect gift for anyone who loves to learn.",
        ),
        (
            "Discover {topic} in a whole new way.",
            "This book mixes clear writing with colorful pictures on every page.",
            "Readers of all ages will find something to enjoy.",
        ),
    ),
    "Give a few quick tips for learning about {topic}.": (
        "tips for exploring {topic}",
        (
            "Start with a short book or video about {topic}.",
            "Write down one new thing you learn each day.",
            "Share what you find with a friend to help it stick.",
        ),
        (
            "Visit a local library to read more about {topic}.",
            "Ask an expert or a teacher your questions.",
            "Keep a small journal of everything you discover.",
        ),
    ),
    "Write a short social media post about {topic}.": (
        "all about {topic}",
        (
            "Spent the whole afternoon thinking about {topic} today!",
            "There is so much more to it than meets the eye.",
            "Share your favorite thing about {topic} below!",
        ),
        (
            "Who else loves {topic}?",
            "Every time we look closer we find something new.",
            "Tell us your best story in the replies!",
        ),
    ),
    "Summarize why people find {topic} interesting.": (
        "the charm of {topic}",
        (
            "People find {topic} interesting because there is something new to learn.",
            "The subject connects to history and everyday life.",
            "It also sparks curiosity in young and old alike.",
        ),
        (
            "Curiosity is the main reason.",
            "{Topic} can surprise us and make us ask new questions.",
            "That sense of discovery keeps people coming back.",
        ),
    ),
    "Is {topic} worth learning about?": (
        "thoughts on {topic}",
        ("My answer is yes.", "Learning about {topic} can open up new ideas.", "It is also fun to share with others."),
        (
            "My answer is yes.",
            "Even a little time spent on {topic} pays off.",
            "Each new fact leads to another question.",
        ),
    ),
    "Would a child enjoy learning about {topic}?": (
        "kids and {topic}",
        (
            "My answer is yes.",
            "Children love to ask questions about {topic}.",
            "Hands-on activities make the subject come alive.",
        ),
        (
            "My answer is yes.",
            "Young minds enjoy exploring {topic} with a grown-up.",
            "Pictures and games keep the fun going.",
        ),
    ),
    "Is {topic} important in everyday life?": (
        "{topic} in daily life",
        (
            "My answer is maybe.",
            "For some people {topic} matters every single day.",
            "For others the link is harder to see.",
        ),
        (
            "My answer is maybe.",
            "It depends on where you live and what you do.",
            "Still {topic} can shape our lives in quiet ways.",
        ),
    ),
}
# The option a `detectable_format:constrained_response` prompt is answered with, per question.
_CONSTRAINED_ANSWER: dict[str, str] = {
    "Is {topic} worth learning about?": "My answer is yes.",
    "Would a child enjoy learning about {topic}?": "My answer is yes.",
    "Is {topic} important in everyday life?": "My answer is maybe.",
}

# keywords:existence: one short sentence per keyword.
_KEYWORD_SENTENCES: dict[str, str] = {
    "simple": "The main idea is simple.",
    "bright": "It can make any day feel bright.",
    "calm": "It can also leave you calm.",
    "together": "Exploring {topic} is more fun together.",
    "careful": "Be careful to take your time.",
    "friendly": "The people you meet are friendly.",
}
# keywords:frequency: a sentence with the keyword at least that many times.
_FREQUENCY_SENTENCES: dict[str, str] = {
    "simple": "Keep it simple and the rest stays simple too.",
    "bright": "Bright days and bright ideas go hand in hand.",
    "together": "Friends can learn together and explore together and laugh together.",
}
# keywords:letter_frequency: a sentence rich in the letter.
_LETTER_SENTENCES: dict[str, str] = {
    "b": "Borrow a big book about {topic} to begin.",  # b x4
    "k": "Keep a notebook about {topic} and keep looking.",  # k x4
    "w": "We will want to know more with every new walk.",  # w x7
}
# change_case:capital_word_frequency ("at least n"): all-capital words to name.
_CAPITAL_WORDS: tuple[str, ...] = ("LOOK", "LISTEN", "LEARN", "SHARE", "SMILE")
_PLACEHOLDER_NAMES: tuple[str, ...] = ("[name]", "[date]", "[place]", "[time]")
_TITLE_SMALL_WORDS = frozenset({"a", "an", "and", "the", "of", "to", "in", "on", "for", "with"})


def _title_case(text: str) -> str:
    words = text.split()
    return " ".join(w if i and w in _TITLE_SMALL_WORDS else w[:1].upper() + w[1:] for i, w in enumerate(words))


def parse_base_request(base: str) -> tuple[str, str]:
    """(request template, topic) of a base request this module writes; ValueError otherwise."""
    for template in REQUEST_TEMPLATES + QUESTION_TEMPLATES:
        pre, post = template.split("{topic}")
        if base.startswith(pre) and base.endswith(post) and len(base) > len(pre) + len(post):
            return template, base[len(pre) : len(base) - len(post)]
    raise ValueError(f"not a base request of this builder: {base!r}")


def _fill(sentence: str, topic: str) -> str:
    return sentence.format(topic=topic, Topic=topic[:1].upper() + topic[1:])


def _chunks(sentences: Sequence[str], extra: Sequence[str], n: int) -> list[list[str]]:
    """`sentences` in `n` non-empty consecutive groups (padded from `extra` if too few)."""
    items = list(sentences) + list(extra)[: max(0, n - len(sentences))]
    if len(items) < n:
        raise ValueError(f"cannot fill {n} groups from {len(items)} sentences")
    size, rest = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < rest else 0)
        out.append(items[start:end])
        start = end
    return out


def _compose(sentences: Sequence[str], extra: Sequence[str], kw: dict[str, dict], topic: str, poem: bool) -> str:
    """One answer: the variant's sentences plus the instruction-specific sentences, highlighted
    and laid out (bullets, paragraphs or sections) as the instructions ask."""
    sents = list(sentences)
    if EXISTENCE in kw:
        for word in kw[EXISTENCE]["keywords"]:
            if word in _KEYWORD_SENTENCES:
                sents.append(_fill(_KEYWORD_SENTENCES[word], topic))
            else:
                sents.append(f"It brings the word {word} to mind.")
    if FREQUENCY in kw:
        k = kw[FREQUENCY]
        sentence = _fill(_FREQUENCY_SENTENCES.get(k["keyword"], ""), topic)
        if sentence.lower().count(k["keyword"].lower()) < k["frequency"]:
            sentence = f"Key word: {' '.join([k['keyword']] * k['frequency'])}."
        sents.append(sentence)
    if LETTERS in kw:
        k = kw[LETTERS]
        sentence = _fill(_LETTER_SENTENCES.get(k["letter"], ""), topic)
        if sentence.lower().count(k["letter"].lower()) < k["let_frequency"]:
            sentence = f"Letters: {' '.join([k['letter']] * k['let_frequency'])}."
        sents.append(sentence)
    if CAP_WORDS in kw and kw[CAP_WORDS]["capital_relation"] == "at least":
        n = kw[CAP_WORDS]["capital_frequency"]
        words = [_CAPITAL_WORDS[i % len(_CAPITAL_WORDS)] for i in range(n)]
        sents.append(f"Remember to {' and '.join(words)}.")
    if PLACEHOLDER in kw:
        n = kw[PLACEHOLDER]["num_placeholders"]
        names = [_PLACEHOLDER_NAMES[i] if i < len(_PLACEHOLDER_NAMES) else f"[detail {i + 1}]" for i in range(n)]
        sents.append(f"Feel free to share this with {names[0]}" + "".join(
            f" on {p}" if i == 0 else f" at {p}" for i, p in enumerate(names[1:])
        ) + ".")  # fmt: skip
    if HIGHLIGHT in kw:
        # Highlight whole sentences, from the second on (the lead sentence stays plain).
        n = kw[HIGHLIGHT]["num_highlights"]
        order = list(range(1, len(sents))) + [0]
        for i in order[:n]:
            sents[i] = f"*{sents[i].rstrip('.!?')}*{sents[i][len(sents[i].rstrip('.!?')) :]}"
    joiner = "\n" if poem else " "
    if BULLET_LIST in kw:
        n = kw[BULLET_LIST]["num_bullets"]
        items = (sents[1:] + list(extra))[:n]
        return sents[0] + "\n\n" + "\n".join(f"* {item}" for item in items)
    if N_PARAGRAPHS in kw:
        groups = _chunks(sents, extra, kw[N_PARAGRAPHS]["num_paragraphs"])
        return "\n\n***\n\n".join(joiner.join(g) for g in groups)
    if SECTIONS in kw:
        k = kw[SECTIONS]
        groups = _chunks(sents, extra, k["num_sections"])
        return "\n\n".join(f"{k['section_spliter']} {i + 1}\n{joiner.join(g)}" for i, g in enumerate(groups))
    return joiner.join(sents)


def reference_response(record: dict) -> str:
    """A short answer to `record`'s request, on its topic, that follows every one of its
    instructions exactly (IFEval strict scoring). Deterministic: a function of the prompt's base
    request and its instructions only."""
    kw = dict(zip(record["instruction_id_list"], record["kwargs"]))
    base = re.match(r"[^.?!]*[.?!]", record["prompt"])
    if not base:
        raise ValueError(f"prompt has no base request: {record['prompt']!r}")
    base_request = base.group(0)
    template, topic = parse_base_request(base_request)
    title, variant_a, variant_b = _ANSWERS[template]
    # Which variant leads is fixed by the request's text (not by Python's salted hash).
    if zlib.crc32(base_request.encode("utf-8")) % 2:
        variant_a, variant_b = variant_b, variant_a
    first = [_fill(s, topic) for s in variant_a]
    second = [_fill(s, topic) for s in variant_b]
    poem = template == REQUEST_TEMPLATES[0]

    if CONSTRAINED in kw:
        body = _CONSTRAINED_ANSWER.get(template, "My answer is maybe.")
    elif TWO in kw:
        body = _compose(first, second, kw, topic, poem)
        body += "\n\n******\n\n" + _compose(second, first, kw, topic, poem)
    else:
        body = _compose(first, second, kw, topic, poem)
    if TITLE in kw:
        body = f"<<{_title_case(_fill(title, topic))}>>\n\n{body}"
    if JSON in kw:
        body = json.dumps({"topic": topic, "answer": body}, indent=2)
    if REPEAT in kw:
        body = kw[REPEAT]["prompt_to_repeat"] + "\n\n" + body
    if POSTSCRIPT in kw:
        body += f"\n\n{kw[POSTSCRIPT]['postscript_marker']} Thanks for reading about {topic}!"
    if END in kw:
        body += "\n\n" + kw[END]["end_phrase"]
    if LOWER in kw:
        body = body.lower()
    if CAPITAL in kw:
        body = body.upper()
    if QUOTATION in kw:
        body = f'"{body}"'
    return body


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def base_requests(topics: Sequence[str], templates: Sequence[str]) -> list[str]:
    return [t.format(topic=topic) for topic in topics for t in templates]


def build_set(topics: Sequence[str], units: int, seed: int, key_start: int, references: bool = False) -> list[dict]:
    """`units` copies of the mix unit, each combination on its own (topic, request) pair; with
    `references`, each record also gets its `reference_response`."""
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
        record = {
            "key": key_start + i,
            "prompt": " ".join([base, *texts]),
            "instruction_id_list": list(combo),
            "kwargs": kwargs,
        }
        if references:
            record["reference_response"] = reference_response(record)
        records.append(record)
    return records


def build_sets() -> tuple[list[dict], list[dict]]:
    """(training records, held-out records). Only training records carry a reference response:
    the held-out set is a pure evaluation set."""
    if set(TRAIN_TOPICS) & set(HELDOUT_TOPICS):
        raise AssertionError("training and held-out topics overlap")
    train = build_set(TRAIN_TOPICS, TRAIN_UNITS, SEED, TRAIN_KEY_START, references=True)
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
        prog="python tools/data/build_ifeval.py",
        description="Write the IFEval-format training and held-out prompt sets (deterministic).",
    )
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help=f"output directory (default: {DATA_DIR})")
    args = parser.parse_args(argv)
    train_path, heldout_path = write_sets(args.out_dir)
    train, heldout = build_sets()
    print(f"wrote {train_path} ({len(train)} prompts)")
    print(f"wrote {heldout_path} ({len(heldout)} prompts)")
    print(counts_table(train, heldout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
