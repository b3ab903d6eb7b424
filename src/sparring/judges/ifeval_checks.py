"""The IFEval verifiable instructions: one checker per instruction id, and the registry that validates
their kwargs.

Semantics follow Google's IFEval (`instruction_following_eval`, Zhou et al. 2023): the same instruction
ids, the same kwargs names, the same "less than" / "at least" relations, the same counting rules for
bullets, highlights, sections, paragraphs and placeholders. Two things differ on purpose, both
documented in docs/judge.md:

* no nltk: words are counted with the regex `\\w+` (IFEval's own word counter is exactly this regex
  through nltk's RegexpTokenizer, so counts agree); sentences are counted by a small rule-based
  splitter that approximates nltk's Punkt model (see `split_sentences`); capitalised words are
  tokenised by whitespace + punctuation stripping + contraction splitting, approximating nltk's
  Treebank `word_tokenize`.
* no langdetect: the two change_case checkers test the casing only (IFEval also asks langdetect that
  the text is English), and `language:response_language` is not supported.

Keywords, markers and section splitters are matched literally (IFEval pastes them into a regex
unescaped; for the plain words IFEval uses the result is the same).
"""

from __future__ import annotations

import collections
import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

RELATIONS = ("less than", "at least")

# ----------------------------------------------------------------------------------------------
# Text utilities
# ----------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Number of `\\w+` runs: identical to IFEval's count_words (nltk RegexpTokenizer(r"\\w+"))."""
    return len(_WORD.findall(text))


# Tokens that end in "." without ending a sentence. Punkt learns such a list from a corpus; this is
# a hand-written stand-in with the common English titles, Latin abbreviations and month names.
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e eg ie cf al inc ltd co corp dept est approx
    fig figs vol vols ed eds rev gen col lt sgt capt cpt gov sen rep jan feb mar apr jun jul aug sep
    sept oct nov dec mon tue tues wed thu thur thurs fri sat sun a.m p.m u.s u.k u.n u.s.a ph.d
    b.a m.a b.sc m.sc no nos pp""".split()
)
# Capitalised words that start a sentence after an abbreviation or an initial.
_COMMON_STARTERS = frozenset(
    """a an the this that these those it its he she they we you i my our your their his her there
    here then so but and or if when while as in on at for from with after before however also
    what how why where who let let's now next finally first second third today some many most
    all each every no not yes please note""".split()
)
_NEXT_WORD = re.compile(r"\s+[\"'(\u201c\u2018\[]*([\w']+)")
# A candidate sentence end: a run of terminal punctuation, optional closing quotes/brackets, then
# whitespace and the next token (or the end of the text, which ends the last sentence anyway).
_CANDIDATE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s+(\S))")
_LAST_TOKEN = re.compile(r"(\S*?)[.!?\u2026]+[\"'\u201d\u2019)\]]*$")


def _is_break(text: str, match: re.Match[str]) -> bool:
    punct = match.group(0).rstrip("\"'\u201d\u2019)]")
    next_char = match.group(1)
    if "!" in punct or "?" in punct:
        return True
    if len(punct) > 1 or punct == "\u2026":
        # An ellipsis ends a sentence only when a capitalised word follows (Punkt's orthographic
        # heuristic reduced to its main case).
        return next_char.isupper()
    # A single period: look at the token it closes.
    before = _LAST_TOKEN.search(text, 0, match.end())
    token = before.group(1) if before else ""
    token = token.lstrip("\"'(\u201c\u2018[").lower()
    if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
        # An abbreviation or an initial ("J. R. R. Tolkien") ends a sentence only when a common
        # word follows capitalised ("... etc. The next"): Punkt's orthographic heuristic says yes
        # for words it has seen in lowercase, and a name like "Tolkien" is not one of them.
        nxt = _NEXT_WORD.match(text, match.end())
        word = nxt.group(1) if nxt else ""
        return word[:1].isupper() and word.lower() in _COMMON_STARTERS
    if token.isdigit():
        # "1. First item" breaks (as Punkt does for list numbers followed by a capital), while
        # "page 3. then" does not.
        return not next_char.islower()
    return True


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences, approximating nltk's Punkt English model (what IFEval uses).

    A sentence ends at `.`, `!`, `?` (or a run of them, plus closing quotes/brackets) followed by
    whitespace, except: after a known abbreviation ("Dr.", "e.g.") or a single-letter initial unless
    a common capitalised word follows ("etc. The"); after an ellipsis unless a capitalised word
    follows; after a number ("1.") when a lowercase word follows. Newlines alone do not end a
    sentence (as in Punkt), so a heading without final punctuation joins the sentence after it.
    """
    sentences = []
    start = 0
    for match in _CANDIDATE_END.finditer(text):
        if _is_break(text, match):
            sentences.append(text[start : match.end()].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


_EDGE_PUNCT = "\"'`.,;:!?()[]{}<>\u201c\u201d\u2018\u2019\u2026*_#"
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$", re.IGNORECASE)


def word_tokens(text: str) -> list[str]:
    """Approximates nltk.word_tokenize for the capital-word count: split on whitespace, strip
    punctuation at both ends of each chunk (hyphens and inner periods stay: "STATE-OF-THE-ART" and
    "U.S" are one token), and split English contractions ("DON'T" -> "DO", "N'T") as Treebank does.
    """
    tokens = []
    for chunk in text.split():
        chunk = chunk.strip(_EDGE_PUNCT)
        if not chunk:
            continue
        m = _CONTRACTION.match(chunk)
        if m:
            tokens.extend([m.group(1), m.group(2)])
        else:
            tokens.append(chunk)
    return tokens


def _compare(actual: int, relation: str, threshold: int) -> bool:
    return actual < threshold if relation == "less than" else actual >= threshold


# ----------------------------------------------------------------------------------------------
# Checkers: check(response, **kwargs) -> bool, kwargs already validated and normalised.
# ----------------------------------------------------------------------------------------------


def _english_lowercase(response: str) -> bool:
    return response.islower()


def _english_capital(response: str) -> bool:
    return response.isupper()


def _capital_word_frequency(response: str, capital_frequency: int, capital_relation: str) -> bool:
    n = sum(1 for tok in word_tokens(response) if tok.isupper())
    return _compare(n, capital_relation, capital_frequency)


def _no_comma(response: str) -> bool:
    return "," not in response


def _number_words(response: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(response), relation, num_words)


def _number_sentences(response: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(response), relation, num_sentences)


_PARAGRAPH_DIVIDER = re.compile(r"\s?\*\*\*\s?")


def _number_paragraphs(response: str, num_paragraphs: int) -> bool:
    parts = _PARAGRAPH_DIVIDER.split(response)
    # An empty piece before the first or after the last divider is allowed; an empty one in the
    # middle (two dividers in a row) fails the instruction.
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def _nth_paragraph_first_word(
    response: str, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    parts = response.split("\n\n")
    count = sum(1 for p in parts if p.strip())
    # As in IFEval, the n-th piece is taken from the raw split (empty pieces included).
    if nth_paragraph > count:
        return False
    paragraph = parts[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    head = []
    for ch in word:
        if ch in ".,?!'\"":
            break
        head.append(ch.lower())
    return count == num_paragraphs and "".join(head) == first_word.lower()


def _existence(response: str, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in keywords)


def _forbidden_words(response: str, forbidden_words: list[str]) -> bool:
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, re.IGNORECASE) for w in forbidden_words
    )


def _keyword_frequency(response: str, keyword: str, frequency: int, relation: str) -> bool:
    n = len(re.findall(re.escape(keyword), response, re.IGNORECASE))
    return _compare(n, relation, frequency)


def _letter_frequency(response: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    n = collections.Counter(response.lower())[letter.lower()]
    return _compare(n, let_relation, let_frequency)


def _end_checker(response: str, end_phrase: str) -> bool:
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


_TITLE = re.compile(r"<<[^\n]+>>")


def _title(response: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in _TITLE.findall(response))


_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)


def _number_bullet_lists(response: str, num_bullets: int) -> bool:
    n = len(_STAR_BULLET.findall(response)) + len(_DASH_BULLET.findall(response))
    return n == num_bullets


_SINGLE_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n\*]*\*\*")


def _number_highlighted_sections(response: str, num_highlights: int) -> bool:
    n = sum(1 for h in _SINGLE_HIGHLIGHT.findall(response) if h.strip("*").strip())
    n += sum(1 for h in _DOUBLE_HIGHLIGHT.findall(response) if h[2:-2].strip())
    return n >= num_highlights


def _json_format(response: str) -> bool:
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence) :]
            break
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained_response(response: str) -> bool:
    text = response.strip()
    return any(option in text for option in _CONSTRAINED_OPTIONS)


def _multiple_sections(response: str, section_spliter: str, num_sections: int) -> bool:
    pattern = r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?"
    return len(re.findall(pattern, response)) >= num_sections


def _postscript(response: str, postscript_marker: str) -> bool:
    text = response.lower()
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(postscript_marker.lower())
    return re.search(pattern, text) is not None


_PLACEHOLDER = re.compile(r"\[.*?\]")


def _number_placeholders(response: str, num_placeholders: int) -> bool:
    return len(_PLACEHOLDER.findall(response)) >= num_placeholders


def _repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _two_responses(response: str) -> bool:
    parts = response.split("******")
    answers = []
    for i, part in enumerate(parts):
        if part.strip():
            answers.append(part.strip())
        elif i not in (0, len(parts) - 1):
            return False
    return len(answers) == 2 and answers[0] != answers[1]


# ----------------------------------------------------------------------------------------------
# kwargs validation
# ----------------------------------------------------------------------------------------------


def _as_count(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"must be >= {minimum}, got {value}")
    return value


def _as_positive(value: Any) -> int:
    return _as_count(value, minimum=1)


def _as_relation(value: Any) -> str:
    if value not in RELATIONS:
        raise ValueError(f"must be one of {', '.join(map(repr, RELATIONS))}, got {value!r}")
    return value


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _as_raw_text(value: Any) -> str:
    # prompt_to_repeat is compared after stripping; keep the user's text as written.
    _as_text(value)
    return value


def _as_letter(value: Any) -> str:
    # Any single character: IFEval's own data asks for "#" and "!" as well as letters.
    text = _as_text(value)
    if len(text) != 1:
        raise ValueError(f"must be a single character, got {value!r}")
    return text.lower()


def _as_word_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of strings, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"must be a list of non-empty strings, got item {item!r}")
    return list(value)


# kwarg name -> validator/normaliser. IFEval uses one name space for all instructions.
_KWARG_KINDS: dict[str, Callable[[Any], Any]] = {
    "num_words": _as_count,
    "num_sentences": _as_count,
    "num_paragraphs": _as_count,
    "nth_paragraph": _as_positive,
    "first_word": _as_text,
    "relation": _as_relation,
    "capital_frequency": _as_count,
    "capital_relation": _as_relation,
    "keywords": _as_word_list,
    "forbidden_words": _as_word_list,
    "keyword": _as_text,
    "frequency": _as_count,
    "letter": _as_letter,
    "let_frequency": _as_count,
    "let_relation": _as_relation,
    "end_phrase": _as_text,
    "num_bullets": _as_count,
    "num_highlights": _as_count,
    "section_spliter": _as_text,
    "num_sections": _as_count,
    "postscript_marker": _as_text,
    "num_placeholders": _as_count,
    "prompt_to_repeat": _as_raw_text,
}


@dataclass(frozen=True)
class Instruction:
    """One verifiable instruction: its checker and the kwargs it takes."""

    id: str
    check: Callable[..., bool]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    description: str = ""

    @property
    def accepted(self) -> tuple[str, ...]:
        return self.required + self.optional


def _spec(id_, check, required=(), description=""):
    return id_, Instruction(id_, check, tuple(required), (), description)


INSTRUCTIONS: dict[str, Instruction] = dict(
    [
        _spec("change_case:english_lowercase", _english_lowercase,
              description="the whole response is lowercase (str.islower)"),
        _spec("change_case:english_capital", _english_capital,
              description="the whole response is uppercase (str.isupper)"),
        _spec("change_case:capital_word_frequency", _capital_word_frequency,
              ("capital_frequency", "capital_relation"),
              "number of all-capital words compared with capital_frequency"),
        _spec("punctuation:no_comma", _no_comma, description="no ',' anywhere"),
        _spec("length_constraints:number_words", _number_words, ("num_words", "relation"),
              "number of \\w+ words compared with num_words"),
        _spec("length_constraints:number_sentences", _number_sentences,
              ("num_sentences", "relation"), "number of sentences compared with num_sentences"),
        _spec("length_constraints:number_paragraphs", _number_paragraphs, ("num_paragraphs",),
              "exactly num_paragraphs paragraphs separated by the markdown divider ***"),
        _spec("length_constraints:nth_paragraph_first_word", _nth_paragraph_first_word,
              ("num_paragraphs", "nth_paragraph", "first_word"),
              "exactly num_paragraphs paragraphs separated by a blank line; paragraph "
              "nth_paragraph (from 1) starts with first_word"),
        _spec("keywords:existence", _existence, ("keywords",),
              "every keyword appears (case-insensitive substring)"),
        _spec("keywords:forbidden_words", _forbidden_words, ("forbidden_words",),
              "no forbidden word appears as a whole word (case-insensitive)"),
        _spec("keywords:frequency", _keyword_frequency, ("keyword", "frequency", "relation"),
              "occurrences of keyword (case-insensitive substring) compared with frequency"),
        _spec("keywords:letter_frequency", _letter_frequency,
              ("letter", "let_frequency", "let_relation"),
              "occurrences of the letter (case-insensitive) compared with let_frequency"),
        _spec("startend:end_checker", _end_checker, ("end_phrase",),
              "ends with end_phrase (case-insensitive, ignoring surrounding whitespace and quotes)"),
        _spec("startend:quotation", _quotation, description="wrapped in double quotes"),
        _spec("detectable_format:title", _title, description="contains a <<title>>"),
        _spec("detectable_format:number_bullet_lists", _number_bullet_lists, ("num_bullets",),
              "exactly num_bullets markdown bullet lines ('* ' or '-')"),
        _spec("detectable_format:number_highlighted_sections", _number_highlighted_sections,
              ("num_highlights",), "at least num_highlights *highlighted* or **bold** sections"),
        _spec("detectable_format:json_format", _json_format,
              description="the whole response is JSON (a ``` fence is allowed)"),
        _spec("detectable_format:constrained_response", _constrained_response,
              description="contains 'My answer is yes.', 'My answer is no.' or 'My answer is maybe.'"),
        _spec("detectable_format:multiple_sections", _multiple_sections,
              ("section_spliter", "num_sections"),
              "at least num_sections section headers '<section_spliter> <number>'"),
        _spec("detectable_content:postscript", _postscript, ("postscript_marker",),
              "contains the postscript marker (case-insensitive)"),
        _spec("detectable_content:number_placeholders", _number_placeholders,
              ("num_placeholders",), "at least num_placeholders [placeholders]"),
        _spec("combination:repeat_prompt", _repeat_prompt, ("prompt_to_repeat",),
              "starts with prompt_to_repeat (case-insensitive)"),
        _spec("combination:two_responses", _two_responses,
              description="two different answers separated by ******"),
    ]
)

# Ids IFEval defines that this module deliberately does not implement, with the reason.
UNSUPPORTED: dict[str, str] = {
    "language:response_language": "it needs a language identifier (IFEval uses langdetect), "
    "which sparring does not depend on",
}


def closest_instruction_id(name: str) -> str:
    """The registered id nearest to `name` (also matching on the part after the ':')."""
    ids = list(INSTRUCTIONS)
    suffix = name.rsplit(":", 1)[-1]
    same_suffix = [i for i in ids if i.rsplit(":", 1)[-1] == suffix]
    if len(same_suffix) == 1:
        return same_suffix[0]
    by_full = difflib.get_close_matches(name, ids, n=1, cutoff=0.0)
    by_suffix = difflib.get_close_matches(
        suffix, [i.rsplit(":", 1)[-1] for i in ids], n=1, cutoff=0.0
    )
    full_ratio = difflib.SequenceMatcher(None, name, by_full[0]).ratio()
    suffix_ratio = difflib.SequenceMatcher(None, suffix, by_suffix[0]).ratio() if by_suffix else 0
    if suffix_ratio > full_ratio:
        return next(i for i in ids if i.rsplit(":", 1)[-1] == by_suffix[0])
    return by_full[0]


def normalize_kwargs(instruction_id: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate `kwargs` for `instruction_id` and return them cleaned: null values dropped, strings
    stripped where IFEval strips them. Raises ValueError naming the instruction and the kwarg."""
    if not isinstance(instruction_id, str):
        raise ValueError(f"instruction id must be a string, got {instruction_id!r}")
    if instruction_id not in INSTRUCTIONS:
        if instruction_id in UNSUPPORTED:
            raise ValueError(
                f"instruction {instruction_id!r} is not supported: {UNSUPPORTED[instruction_id]}"
            )
        raise ValueError(
            f"unknown instruction id {instruction_id!r}; did you mean "
            f"{closest_instruction_id(instruction_id)!r}?"
        )
    spec = INSTRUCTIONS[instruction_id]
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{instruction_id}: kwargs must be an object/dict, got {kwargs!r}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    accepted = spec.accepted
    for name in given:
        if name not in accepted:
            hint = difflib.get_close_matches(str(name), accepted, n=1)
            allowed = ", ".join(accepted) if accepted else "none"
            raise ValueError(
                f"{instruction_id}: unexpected kwarg {name!r} (accepted: {allowed}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + ")"
            )
    for name in spec.required:
        if name not in given:
            raise ValueError(
                f"{instruction_id}: missing required kwarg {name!r} "
                f"(required: {', '.join(spec.required)})"
            )
    clean = {}
    for name, value in given.items():
        try:
            clean[name] = _KWARG_KINDS[name](value)
        except ValueError as exc:
            raise ValueError(f"{instruction_id}: kwarg {name!r} {exc}") from None
    if "nth_paragraph" in clean and clean["nth_paragraph"] > clean["num_paragraphs"]:
        raise ValueError(
            f"{instruction_id}: kwarg 'nth_paragraph' must be <= num_paragraphs "
            f"({clean['num_paragraphs']}), got {clean['nth_paragraph']}"
        )
    return clean


def validate_instruction(instruction_id: str, kwargs: Mapping[str, Any] | None) -> None:
    """Raise ValueError with a precise message if `instruction_id` / `kwargs` are not usable."""
    normalize_kwargs(instruction_id, kwargs)


def check_instruction(instruction_id: str, kwargs: Mapping[str, Any] | None, response: str) -> bool:
    """Strict check of one instruction on one text. As in IFEval, an empty (or all-whitespace)
    response follows no instruction."""
    clean = normalize_kwargs(instruction_id, kwargs)
    return _check_clean(instruction_id, clean, response)


def _check_clean(instruction_id: str, clean: dict[str, Any], response: str) -> bool:
    if not response.strip():
        return False
    return bool(INSTRUCTIONS[instruction_id].check(response, **clean))
