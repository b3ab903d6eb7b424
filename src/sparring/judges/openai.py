"""`openai`: the pairwise LLM judge over any OpenAI-compatible Chat Completions endpoint (a vLLM or
SGLang server, a hosted API).

Each ordered query is one request: the rendered template (sparring.judges.pairwise) as the user turn,
`max_tokens: 1`, `logprobs: true`, `top_logprobs` (default 20). From the first token's top log-probs:
- both labels present: q = σ(lp_A − lp_B), a soft label;
- one label present: the other's log-prob is at most the lowest top log-prob returned, and that bound is
  used (a conservative soft label; a confident "A" whose "B" fell out of the top 20 stays a clear A
  rather than a coin flip), counted as `partial_labels`;
- neither present: an abstention, q = ½ for that order, counted (`abstentions`; the stage reports
  `abstention_rate`);
- a server that returns no log-probs at all: the verdict is parsed from the text (q ∈ {0, ½, 1}),
  counted as `parsed_verdicts`, so the metrics say the judge gave hard labels.
With `protocol: arena_hard` each request instead lets the judge write its own answer and a verdict
([[A>>B]] ... [[B>>A]]) in up to `max_new_tokens` tokens, without log-probs; the verdict is parsed
(sparring.judges.pairwise.parse_verdict). A judgment without any verdict is asked again, up to `reask`
times (default 1, as Arena-Hard-Auto; 0: never), in the same conversation (sparring.judges.pairwise.next_reask):
the same worker sends the follow-up at once, and only the final verdict reaches the cache. One still
unreadable is an abstention, counted (`abstentions`, and `verdicts_missing` / `verdicts_conflicting` /
`verdicts_malformed`; `verdicts_cut` when the judge's last answer hit `max_new_tokens` first); `reasks`
counts the follow-ups sent, `reasks_recovered` the judgments they turned into verdicts.
Requests run `max_concurrency` at a time with retries and backoff (sparring.judges.openai_client); after
the last retry the stage stops with an error naming the endpoint and status. Every answer is committed to
the judge cache as it arrives, so a rerun (after that error, or after the process was killed) asks only
for the rest: at most the `max_concurrency` conversations that were in flight are paid twice (with a re-ask,
a conversation's first answer too, which is not kept until its follow-up is answered). The API key is read from the
environment variable named by `api_key_env` and never written anywhere (config, manifest, cache, logs,
errors).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from sparring.errors import UserError
from sparring.judges.base import PairwiseJudge
from sparring.judges.pairwise import (
    LABELS,
    PROTOCOLS,
    compile_template,
    load_template,
    next_reask,
    parsed_label,
    read_judgment,
    reask_id,
    render,
    soft_label,
    template_hash,
)
from sparring.judges.settings import JudgeConfig, check_template, from_keywords
from sparring.schema import setting


@dataclass(kw_only=True)
class OpenAISettings(JudgeConfig):
    name: str = "openai"
    model: str = setting(required=" (the model name the endpoint serves)")
    # openai: the endpoint, e.g. http://127.0.0.1:8000/v1
    base_url: str = setting(required=" (e.g. http://127.0.0.1:8000/v1)")
    api_key_env: str | None = None  # openai: NAME of the environment variable holding the key
    template: str | None = None
    max_concurrency: int = setting(8, lo=1)  # openai: requests in flight
    timeout: float = setting(60.0, lo=0, lo_open=True)  # openai: s per request
    max_retries: int = setting(6, lo=0)  # openai: retries per request
    top_logprobs: int = setting(20, lo=2, hi=20)  # openai: log-probs asked per token
    # llm / openai: logprob (one label token's log-probs) or arena_hard (own answer, then [[A>>B]]..[[B>>A]])
    protocol: Literal["logprob", "arena_hard"] = "logprob"
    max_new_tokens: int = setting(4096, lo=1)  # llm / openai, arena_hard only: tokens the judgment may take
    # llm / openai, arena_hard only: times a judgment without a verdict is asked again (Arena-Hard: 1; 0: never)
    reask: int = setting(1, lo=0)

    def check(self, where: str, prefix: str) -> None:
        check_template(self.template, where, f"{prefix}template")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(f"{where}: {prefix}base_url = {self.base_url!r} must start with http:// or https://")
        if self.api_key_env is not None and self.api_key_env not in os.environ:
            raise UserError(
                f"{where}: {prefix}api_key_env names the environment variable {self.api_key_env!r}, "
                "which is not set (export it before running)"
            )


class OpenAIJudge(PairwiseJudge):
    Settings = OpenAISettings
    streams = True  # each answer reaches on_result as it arrives: the cache commits it then

    def __init__(self, settings: OpenAISettings | None = None, *, device=None, backoff_base: float = 1.0, **kwargs):
        """`OpenAIJudge(settings)`, or its settings as keywords (`OpenAIJudge(model=M, base_url=URL)`).
        `backoff_base`: seconds of the first retry's wait (tests make it short)."""
        super().__init__()
        self.settings = cfg = from_keywords(OpenAISettings, settings, kwargs, "OpenAIJudge")
        model, template, top_logprobs = cfg.model, cfg.template, cfg.top_logprobs
        from sparring.judges.openai_client import ChatLabeler

        self.protocol = PROTOCOLS[cfg.protocol]
        writes = self.protocol.generates
        self.reask = cfg.reask if writes else 0  # the logprob protocol reads no verdict: nothing to re-ask
        text = load_template(template, cfg.protocol)
        self.template = compile_template(text)
        self.labeler = ChatLabeler(
            base_url=cfg.base_url.rstrip("/"),
            model=model,
            api_key_env=cfg.api_key_env,
            labels=LABELS,
            max_tokens=cfg.max_new_tokens if writes else 1,
            top_logprobs=top_logprobs,
            logprobs=not writes,
            max_concurrency=cfg.max_concurrency,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            backoff_base=backoff_base,
        )
        # the endpoint is not part of the id: the same model served elsewhere gives the same verdicts
        self.id = f"openai-v1:model={model}:template={template_hash(text)}:top_logprobs={top_logprobs}"
        if writes:  # the logprob id is unchanged, so existing caches stay valid
            self.id = f"openai-v1:model={model}:template={template_hash(text)}:protocol={cfg.protocol}"
            self.id += f":max_new_tokens={cfg.max_new_tokens}" + reask_id(self.reask)

    def answer(self, result) -> float:
        """The value stored for one endpoint answer (q, or arena_hard's verdict code; see the module
        docstring), counting how it was read."""
        if self.protocol.generates:
            texts = [r.text for r in (*result.earlier, result)]
            return read_judgment(self.stats, texts, cut=result.finish_reason == "length")
        if result.logprobs is None:
            q = parsed_label(result.text)
            self.stats.add(parsed_verdicts=1, abstentions=q is None)
            return 0.5 if q is None else q
        lp = result.logprobs
        if "A" in lp and "B" in lp:
            return soft_label(lp["A"], lp["B"])
        if ("A" in lp or "B" in lp) and result.top_floor is not None:
            self.stats.add(partial_labels=1)
            return soft_label(lp["A"], result.top_floor) if "A" in lp else soft_label(result.top_floor, lp["B"])
        self.stats.add(abstentions=1)
        return 0.5

    def combine(self, Q):
        return self.protocol.combine(Q)

    def order_view(self, Q):
        return self.protocol.orders(Q)

    def compare_many(self, queries, on_result=None) -> list[float]:
        conversations = [[{"role": "user", "content": render(self.template, p, a, b)}] for p, a, b in queries]
        out = [0.5] * len(queries)

        def got(n: int, result) -> None:
            out[n] = self.answer(result)
            self.stats.add(queries=1)
            if on_result is not None:
                on_result(n, out[n])

        follow_up = self._follow_up if self.reask else None
        self.labeler.label_many(conversations, on_result=got, follow_up=follow_up)
        return out

    def _follow_up(self, conversation, answers):
        """arena_hard: the re-ask after a judgment without a verdict (runs on the labeler's worker threads:
        it reads nothing shared and counts nothing; `answer` counts the re-asks of each final answer)."""
        return next_reask(conversation, [r.text for r in answers], self.reask)
