"""What both sampling backends take: one typed `SamplingParams`, and how a response is cut at a stop string.

The options follow transformers' logits processors (and vLLM's `SamplingParams` of the same names):
- `repetition_penalty` (RepetitionPenaltyLogitsProcessor): every token already in the prompt or the
  response so far has its logit divided by the penalty when positive, multiplied when negative;
  applied to greedy decoding too;
- `temperature`, then `top_k` (keep the k highest logits, ties with the k-th included), then `top_p`
  (the smallest set of most likely tokens holding at least `top_p` of the mass, measured after
  top-k), then `min_p` (drop tokens less likely than `min_p` × the most likely one): the order of
  transformers' warpers. vLLM applies min-p before top-k/top-p; the kept sets agree unless `top_p`
  and `min_p` are both set (docs/generation.md);
- `stop`: strings that end a response. Decoding of a row stops at the token that completes the first
  occurrence of any of them; the response text is cut right after that occurrence (the stop string
  is kept), its token ids end with that token.
None of them changes the recorded log-probability: `Sample.logp` is always log π of the raw logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sparring.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0  # 0: no top-k cut
    min_p: float = 0.0  # 0: no min-p cut
    repetition_penalty: float = 1.0  # 1: none
    stop: tuple[str, ...] = field(default_factory=tuple)
    greedy: bool = False  # argmax of the (penalised) logits; temperature, top-k/p and min-p do not apply

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        self.check()

    def check(self, prefix: str = "sampling.") -> None:
        """UserError naming the first bad field (`prefix` + name)."""

        def bad(key, why):
            raise UserError(f"{prefix}{key} = {getattr(self, key)!r} {why}")

        def number(key):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(key, "must be a finite number")
            return v

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            bad("max_new_tokens", "must be an integer >= 1")
        if number("temperature") <= 0:
            bad("temperature", "must be > 0 (use greedy for argmax decoding)")
        if not 0 < number("top_p") <= 1:
            bad("top_p", "must be > 0 and <= 1")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "must be an integer >= 0 (0: off)")
        if not 0 <= number("min_p") <= 1:
            bad("min_p", "must be >= 0 and <= 1 (0: off)")
        if number("repetition_penalty") <= 0:
            bad("repetition_penalty", "must be > 0 (1: off)")
        if not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "must be a list of non-empty strings")
        if not isinstance(self.greedy, bool):
            bad("greedy", "must be true or false")

    @classmethod
    def from_generation(cls, g, *, greedy: bool = False, max_new_tokens: int | None = None) -> "SamplingParams":
        """From a `GenerationConfig` (the loop's `cfg.generation`)."""
        return cls(
            max_new_tokens=max_new_tokens or g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            min_p=g.min_p,
            repetition_penalty=g.repetition_penalty,
            stop=tuple(g.stop),
            greedy=greedy,
        )

    @classmethod
    def for_eval(cls, g, e) -> "SamplingParams":
        """Evaluation's settings: `eval.max_new_tokens` and `eval.greedy`, with the generation options
        (temperature, top-k/p and min-p only matter when eval.greedy is false; repetition penalty and stop
        strings shape greedy responses too)."""
        return cls.from_generation(g, greedy=e.greedy, max_new_tokens=e.max_new_tokens)

    @property
    def filters(self) -> bool:
        """Whether a cut other than top-p applies (top-k or min-p)."""
        return self.top_k > 0 or self.min_p > 0


def resolve(params, *, max_new_tokens=None, temperature=0.7, top_p=0.9, greedy=False) -> SamplingParams:
    """`params` (a SamplingParams, or a `GenerationConfig` to build one from), or one built from the
    older keyword arguments the samplers still take."""
    if isinstance(params, SamplingParams):
        return params
    if params is not None:
        return SamplingParams.from_generation(params)
    if max_new_tokens is None:
        raise TypeError("give params= or max_new_tokens=")
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy)


def stop_end(text: str, stop: Sequence[str]) -> int | None:
    """End (exclusive) of the first occurrence of any stop string in `text`, or None."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return min(ends) if ends else None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to and including the first occurrence of a stop string (unchanged if none occurs)."""
    end = stop_end(text, stop) if stop else None
    return text if end is None else text[:end]
