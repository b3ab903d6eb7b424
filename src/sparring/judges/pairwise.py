"""What the two LLM judges (`llm`, local; `openai`, over an endpoint) share: the pairwise template, the
labels, and how an answer about one ordered pair becomes q = P(first ≻ second).

The judge is shown the conversation and two responses, labelled A (shown first) and B, and asked for one
label token. From the label's log-probs, P_A = exp(lp_A − logsumexp(lp_A, lp_B)) = σ(lp_A − lp_B), the
judge's probability that A is better. Each pair is asked in both orders; with q(a, b) = P_A when a is
shown first, P(a ≻ b) = ½[q(a, b) + 1 − q(b, a)] (`sparring.judges.base.both_orders`), so
P(a ≻ b) + P(b ≻ a) = 1 exactly and a judge that prefers whatever it reads first (or second) cancels out.

The template is Jinja2 text rendered with `messages` (the prompt's turns, each with .role and .content),
`response_a` and `response_b`; it becomes the judge's one user turn. The built-in one is
templates/pairwise.jinja; `judge.template: FILE` replaces it. The judge's id carries a hash of the
template text, so editing it starts from an empty cache.
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path

from sparring.errors import UserError

LABELS = ("A", "B")


def load_template(path: str | None) -> str:
    if path is None:
        return resources.files("sparring.judges").joinpath("templates/pairwise.jinja").read_text(encoding="utf-8")
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
