"""The seam between the loop and its sampling backends (hf.py: sparring's decode loop; vllm.py).

Both backends take one typed `SamplingParams`, return `Sample`s, and share here everything that must
be the same bits on either side: the chat-prompt encoding (`chat_prompt_ids`), the seeds derived from
(run seed, prompt, sample) (`batch_seed`, `sample_seed`), and the stop-string cut of a response's text
and ids (`stop_end`, `cut_at_stop`, `cut_ids`, `response_text`). `Sampler` is the shape of their
`iter_samples`, the one function the loop's stages call (through `sparring.generation.load_sampler`).

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

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

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
        """Evaluation's settings: `e.max_new_tokens` and `e.greedy` (an `EvalConfig`) with every option
        of `g` (the run's `GenerationConfig`), so held-out responses are shaped as the training samples are.

        Greedy (the default) keeps all of them, and only two act on it: `stop` cuts the response and
        `repetition_penalty` changes the logits the argmax is taken on. Temperature, top-k, top-p and
        min-p cannot change a greedy token (a positive temperature keeps the order of the logits, and
        each cut keeps the most likely token), so every backend skips them when greedy; they apply when
        `eval.greedy` is false."""
        return cls.from_generation(g, greedy=e.greedy, max_new_tokens=e.max_new_tokens)

    @property
    def filters(self) -> bool:
        """Whether a cut other than top-p applies (top-k or min-p)."""
        return self.top_k > 0 or self.min_p > 0


def require_params(params: object) -> SamplingParams:
    """`params` itself when it is a `SamplingParams`: the samplers take no loose options (a config
    section or a dict is a caller's mistake, told at the call rather than deep inside decoding)."""
    if not isinstance(params, SamplingParams):
        raise TypeError(
            f"params must be a sparring.generation.base.SamplingParams, not {type(params).__name__} "
            "(build one with SamplingParams(...) or SamplingParams.from_generation(cfg.generation))"
        )
    return params


@dataclass(frozen=True)
class Sample:
    prompt_index: int  # position in the list of prompts given to the sampler
    sample_index: int  # 0..K-1
    prompt_ids: list[int]
    response_ids: list[int]  # generated tokens, the stop token included when it was produced
    response: str  # decoded, special tokens skipped, cut after a stop string, stripped (`response_text`)
    logp: float  # sum over response_ids of log π(token | prefix), untempered
    finished: bool  # the model stopped by itself or at a stop string (False: cut at max_new_tokens)
    ref_logp: float | None = None  # log μ(response) under a reference decoded alongside (Nash-MD)


class Sampler(Protocol):
    """A backend's `iter_samples` (hf.py, vllm.py): K samples of each prompt, yielded in consecutive
    batches of batch_size // k prompts from prompt `start` on. The draws are seeded from (seed, keys[i]
    or i), not from the batch a prompt is in, so a stage can resume or split its prompts."""

    def __call__(
        self,
        model,
        tokenizer,
        prompts: Sequence,
        *,
        k: int,
        params: SamplingParams,
        batch_size: int = 32,
        seed: int = 0,
        start: int = 0,
        keys: Sequence[int] | None = None,
    ) -> Iterator[list[Sample]]: ...


def as_messages(prompt) -> list[dict]:
    """The chat messages of a prompt given as a `Prompt`, a list of {"role", "content"}, or a plain
    string (one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = getattr(prompt, "messages", prompt)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a conversation (the policy's chat template over every turn) followed by the
    assistant header. Without a chat template, a one-turn prompt is its text as the tokenizer encodes it."""
    messages = as_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise UserError(
            "the policy's tokenizer has no chat template, so it can only take one-turn prompts; this "
            f"prompt has the turns {[m['role'] for m in messages]} (give the tokenizer a chat_template)"
        )
    return tokenizer(messages[0]["content"])["input_ids"]


def batch_seed(seed: int, *parts: object) -> int:
    """A seed derived from the run seed and the batch's identity (not from the order batches run
    in), so a resumed run draws exactly the samples an uninterrupted one would have drawn."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of sample `sample` of prompt `prompt` (its index in the prompts given to the sampler):
    each sample draws from its own uniform stream (sampling.py), so it does not depend on batching."""
    return batch_seed(seed, "sample", prompt, sample)


def stop_end(text: str, stop: Sequence[str]) -> int | None:
    """End (exclusive) of the first occurrence of any stop string in `text`, or None."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return min(ends) if ends else None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to and including the first occurrence of a stop string (unchanged if none occurs)."""
    end = stop_end(text, stop) if stop else None
    return text if end is None else text[:end]


def cut_ids(tokenizer, ids: list[int], stop) -> list[int]:
    """The shortest prefix of `ids` whose text holds a stop string (all of `ids` when none is there)."""

    def holds(part):
        return stop_end(tokenizer.decode(part, skip_special_tokens=True), stop) is not None

    if not holds(ids):
        return ids
    n = len(ids)
    while n > 1 and holds(ids[: n - 1]):
        n -= 1
    return ids[:n]


def response_text(tokenizer, ids: list[int], stop: Sequence[str]) -> str:
    """A `Sample`'s text: `ids` decoded (special tokens skipped), cut after the first stop string, stripped."""
    return cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop).strip()
