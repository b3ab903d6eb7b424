"""What the two LLM judges (`llm`, local; `openai`, over an endpoint) share: the pairwise templates, the
labels, the judging protocols (`judge.protocol`), and how an answer about one ordered pair becomes a value
the judge cache stores and, over both orders, P(a ≻ b).

Protocol `logprob` (the default): the judge is shown the conversation and two responses, labelled A
(shown first) and B, and asked for one label token. From the label's log-probs,
P_A = exp(lp_A − logsumexp(lp_A, lp_B)) = σ(lp_A − lp_B), the judge's probability that A is better.
Each pair is asked in both orders; with q(a, b) = P_A when a is shown first,
P(a ≻ b) = ½[q(a, b) + 1 − q(b, a)] (`sparring.judges.base.both_orders`), so P(a ≻ b) + P(b ≻ a) = 1
exactly and a judge that prefers whatever it reads first (or second) cancels out.

The template is Jinja2 text rendered with `messages` (the prompt's turns, each with .role and .content),
`response_a` and `response_b`; it becomes the judge's one user turn. The built-in one is
templates/pairwise.jinja (arena_hard: templates/arena_hard.jinja); `judge.template: FILE` replaces it.
The judge's id carries a hash of the template text, so editing it starts from an empty cache.

Protocol `arena_hard` (the judging scheme of Arena-Hard-Auto, Li et al. 2024, "From Crowdsourced Data to
High-Quality Benchmarks: Arena-Hard and BenchBuilder Pipeline"): the judge first writes its own answer to
the conversation, then compares both responses with it and ends with one verdict among [[A>>B]],
[[A>B]], [[A=B]], [[B>A]], [[B>>A]] (`parse_verdict`). Each pair is judged in both orders. As
Arena-Hard does when it turns verdicts into battles, a verdict is a number of battles: a strong one
(>>) is three battles won, a slight one (>) one battle won, A=B one tied battle (half a win each), and a
verdict that cannot be read (none, or several different ones) is no battle at all: an abstention,
counted, never a tie. Over the two orders of a pair {a, b},

    P(a ≻ b) = (wins of a + ½ ties) / battles,       ½ when both orders abstained,

e.g. [[A>>B]] with a shown first and [[A=B]] with b shown first: (3 + ½) / 4 = 7/8 (`arena_hard_matrix`).
The cache stores each ordered query's verdict as its code (`VERDICT_CODES`: 1, ¾, ½, ¼, 0 from [[A>>B]]
to [[B>>A]], and ABSTAINED = ⅜ for no verdict), not a probability: the combination needs each order's
weight, which one number in [0, 1] can carry only as a code.

A judgment with no verdict at all is asked again (`judge.reask` times at most, default 1), as Arena-Hard-Auto
v0.1's judging script does with its two judgment attempts: the judgment stays in the conversation as the judge's
turn, a user turn (`REASK`) asks it to go on and end with a verdict, and the verdict is read from the
judgments together (`next_reask`). Only the final verdict is stored, so a resumed run never asks again.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import both_orders, complementary

LABELS = ("A", "B")


def load_template(path: str | None, protocol: str = "logprob") -> str:
    if path is None:
        name = PROTOCOLS[protocol].template
        return resources.files("sparring.judges").joinpath(f"templates/{name}").read_text(encoding="utf-8")
    p = Path(path).expanduser()
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"judge.template = {path!r}: cannot read it ({exc})") from None


def compile_template(text: str, where: str = "judge.template"):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    try:
        template = env.from_string(text)
        probe = template.render(messages=[{"role": "user", "content": "Q"}], response_a="RA", response_b="RB")
    except jinja2.TemplateError as exc:
        raise UserError(
            f"{where}: not a usable Jinja2 template ({type(exc).__name__}: {exc}); it is rendered with "
            "messages, response_a and response_b"
        ) from None
    if "RA" not in probe or "RB" not in probe:
        raise UserError(f"{where}: the template must show both {{{{ response_a }}}} and {{{{ response_b }}}}")
    return template


def template_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def render(template, prompt, first: str, second: str) -> str:
    """The judging request for one ordered pair: `first` is shown as A, `second` as B."""
    return template.render(messages=[dict(m) for m in prompt.messages], response_a=first, response_b=second)


def soft_label(lp_a: float, lp_b: float) -> float:
    """P_A = exp(lp_A − logsumexp(lp_A, lp_B)) = σ(lp_A − lp_B)."""
    d = lp_a - lp_b
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


def parsed_label(text: str) -> float | None:
    """A verdict read from generated text (for servers that return no log-probs): 1 for "A", 0 for "B",
    None when the text starts with neither."""
    head = text.strip().lstrip("*\"'([ ").upper()
    if head.startswith("A") and not head.startswith(("AND", "AS ")):
        return 1.0
    if head.startswith("B") and not head.startswith(("BOTH", "BUT")):
        return 0.0
    return None


# -- arena_hard -----------------------------------------------------------------------------------------

# verdict -> (battles won by the response shown first, battles it took part in); Arena-Hard's weight 3
# for a strong verdict, a tie as one battle split in half
VERDICTS: dict[str, tuple[float, int]] = {
    "A>>B": (3.0, 3),
    "A>B": (1.0, 1),
    "A=B": (0.5, 1),
    "B>A": (0.0, 1),
    "B>>A": (0.0, 3),
}
# what the judge cache stores for an ordered query (a code, see the module docstring)
VERDICT_CODES: dict[str, float] = {"A>>B": 1.0, "A>B": 0.75, "A=B": 0.5, "B>A": 0.25, "B>>A": 0.0}
ABSTAINED = 0.375
_BY_CODE = {code: verdict for verdict, code in VERDICT_CODES.items()}
# anything written in double square brackets that is made of the verdict alphabet is an attempt at a
# verdict (Arena-Hard's own pattern, with spaces allowed); spaces and case are not significant
_BRACKETED = re.compile(r"\[\[([ABab<>=\s]+)\]\]")


@dataclass(frozen=True)
class Verdict:
    """One judgment read: `verdict` (one of VERDICTS) or None; `why` says what went wrong when None:
    "missing" (no verdict written), "conflicting" (different verdicts) or "malformed" (one bracketed
    verdict that is not among the five forms)."""

    verdict: str | None
    why: str | None = None

    @property
    def code(self) -> float:
        return ABSTAINED if self.verdict is None else VERDICT_CODES[self.verdict]


def parse_verdict(text: str) -> Verdict:
    """The final verdict of an arena_hard judgment. Every `[[...]]` made of A, B, <, >, = and spaces
    counts, normalised (spaces removed, upper case: "[[ a >> b ]]" is [[A>>B]]). One distinct verdict,
    however often repeated, is the verdict; none is an abstention ("missing"); two different ones are
    an abstention ("conflicting"), as in Arena-Hard, which keeps a judgment only when all its bracketed
    verdicts agree; one that is not among the five forms ("[[A<B]]", "[[A]]") is an abstention too
    ("malformed")."""
    found = {re.sub(r"\s+", "", m).upper() for m in _BRACKETED.findall(text)}
    if not found:
        return Verdict(None, "missing")
    if len(found) > 1:
        return Verdict(None, "conflicting")
    if next(iter(found)) not in VERDICTS:
        return Verdict(None, "malformed")
    return Verdict(found.pop())


def read_judgment(stats, judgments: str | Sequence[str], *, cut: bool) -> float:
    """The verdict code of one written arena_hard judgment, counted in `stats`: `verdicts` read, or an
    abstention (`abstentions`, and `verdicts_<why>`; `verdicts_cut` when the last answer ran out of tokens).
    `judgments`: the text, or the answers to one query and its re-asks, first to last (`next_reask`), read
    together; each re-ask is counted (`reasks`), and a verdict found after one is `reasks_recovered`."""
    texts = [judgments] if isinstance(judgments, str) else list(judgments)
    found = parse_verdict(_joined(texts))
    if found.verdict is None:
        stats.add(abstentions=1, **{f"verdicts_{found.why}": 1})
        if cut:
            stats.add(verdicts_cut=1)
    else:
        stats.add(verdicts=1, strong_verdicts=">>" in found.verdict)
    if len(texts) > 1:  # added only when asked again, so a judge that never re-asks keeps its old counts
        stats.add(reasks=len(texts) - 1, reasks_recovered=found.verdict is not None)
    return found.code


# The follow-up turn after a judgment without a verdict (sparring's own words). Arena-Hard-Auto's v0.1
# judging script (gen_judgment.py, with number_of_judgment_attempts: 2 in config/judge_config.yaml) sends
# such a turn once, in the same conversation after the judge's judgment, when the judgment holds no
# bracketed verdict, and reads the verdict from both judgments joined; its v2.0 script (2025) no longer does.
REASK = (
    "Your evaluation ended without a verdict. Please carry on from where you stopped and finish with your "
    "final verdict: exactly one of the five labels, written with its double square brackets."
)


def _joined(texts: Sequence[str]) -> str:
    return "\n".join(texts)


def next_reask(conversation: list[dict], judgments: Sequence[str], reask: int) -> list[dict] | None:
    """The conversation to send next for one arena_hard query, or None when its verdict is final.

    `conversation`: the one just answered; `judgments`: its answers so far, first to last; `reask`: how many
    follow-ups a query may get (`judge.reask`). As in Arena-Hard-Auto, only a judgment with no verdict
    attempt at all (`parse_verdict`'s "missing", over the answers read together) is asked again: one that
    wrote a verdict, even several different ones or a malformed one, has given its answer. The follow-up keeps
    the conversation, adds the last answer as the judge's turn and `REASK` as the user's, so the judge sees
    what it wrote and is asked only for the verdict (at temperature 0 the same request would bring back the
    same text; this one is a different request)."""
    if len(judgments) > reask or parse_verdict(_joined(judgments)).why != "missing":
        return None
    return [*conversation, {"role": "assistant", "content": judgments[-1]}, {"role": "user", "content": REASK}]


def reask_id(reask: int) -> str:
    """What an arena_hard judge's id says about its re-asks: it changes which queries end as abstentions, so
    it is part of the id; nothing for 0, so caches made before the re-ask existed (never re-asked) stay valid."""
    return f":reask={reask}" if reask else ""


def battles(code: float) -> tuple[float, int]:
    """(battles won by the response shown first, battles) of one stored ordered query; (0, 0) for an
    abstention. ValueError for a value that is not a code (a foreign cache entry)."""
    if code == ABSTAINED:
        return 0.0, 0
    verdict = _BY_CODE.get(float(code))
    if verdict is None:
        raise ValueError(f"{code!r} is not an arena_hard verdict code ({sorted(_BY_CODE)} or {ABSTAINED})")
    return VERDICTS[verdict]


def arena_hard_pair(code_ab: float, code_ba: float) -> float:
    """P(a ≻ b) from the verdict with a shown first (`code_ab`) and the one with b shown first (`code_ba`):
    (wins of a + ½ ties) / battles over both orders; ½ when neither order gave a verdict."""
    won_ab, n_ab = battles(code_ab)  # a shown first
    won_ba, n_ba = battles(code_ba)  # b shown first: a won what b did not
    n = n_ab + n_ba
    return 0.5 if n == 0 else (won_ab + (n_ba - won_ba)) / n


def arena_hard_matrix(Q: np.ndarray) -> np.ndarray:
    """P from a prompt's matrix of stored verdict codes Q[i, j] (y_i shown first); NaN marks identical
    responses, never asked: P = ½. P + Pᵀ = 1 exactly."""
    k = Q.shape[0]
    P = np.full((k, k), 0.5, dtype=np.float64)
    for i in range(k):
        for j in range(i + 1, k):
            if not (np.isnan(Q[i, j]) or np.isnan(Q[j, i])):
                P[i, j], P[j, i] = complementary(arena_hard_pair(float(Q[i, j]), float(Q[j, i])))
    return P


def arena_hard_orders(Q: np.ndarray) -> np.ndarray:
    """The codes as ordered queries for the diagnostics: a code above ½ favours the response shown first
    (as a q does), ½ is a tie, and an abstention is NaN (no preference expressed, not a tie)."""
    out = np.array(Q, dtype=np.float64, copy=True)
    out[out == ABSTAINED] = np.nan
    return out


# -- the protocols -------------------------------------------------------------------------------------


def _same(Q: np.ndarray) -> np.ndarray:
    return Q


@dataclass(frozen=True)
class Protocol:
    """How an LLM judge is asked about one ordered pair (`judge.protocol`). `generates`: the judge writes
    a judgment (text, parsed by `parse_verdict`) instead of one label token; `template`: the built-in
    template file; `combine`: a prompt's stored ordered values -> P; `orders`: those values as q for the
    diagnostics."""

    name: str
    template: str
    generates: bool
    combine: Callable[[np.ndarray], np.ndarray]
    orders: Callable[[np.ndarray], np.ndarray]


PROTOCOLS: dict[str, Protocol] = {
    "logprob": Protocol("logprob", "pairwise.jinja", False, both_orders, _same),
    "arena_hard": Protocol("arena_hard", "arena_hard.jinja", True, arena_hard_matrix, arena_hard_orders),
}
