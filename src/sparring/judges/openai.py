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
Requests run `max_concurrency` at a time with retries and backoff (sparring.judges.openai_client); after
the last retry the stage stops with an error naming the endpoint and status, and every answer already
received is in the judge cache, so the rerun asks only for the rest. The API key is read from the
environment variable named by `api_key_env` and never written anywhere (config, manifest, cache, logs,
errors).
"""

from __future__ import annotations

from sparring.judges.base import PairwiseJudge
from sparring.judges.pairwise import (
    LABELS,
    compile_template,
    load_template,
    parsed_label,
    render,
    soft_label,
    template_hash,
)


class OpenAIJudge(PairwiseJudge):
    KEYS = ("model", "base_url", "api_key_env", "template", "max_concurrency", "timeout", "max_retries", "top_logprobs")

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key_env: str | None = None,
        template: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 6,
        top_logprobs: int = 20,
        backoff_base: float = 1.0,
    ):
        super().__init__()
        from sparring.judges.openai_client import ChatLabeler

        text = load_template(template)
        self.template = compile_template(text)
        self.labeler = ChatLabeler(
            base_url=base_url.rstrip("/"),
            model=model,
            api_key_env=api_key_env,
            labels=LABELS,
            max_tokens=1,
            top_logprobs=top_logprobs,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
        )
        # the endpoint is not part of the id: the same model served elsewhere gives the same verdicts
        self.id = f"openai-v1:model={model}:template={template_hash(text)}:top_logprobs={top_logprobs}"

    @classmethod
    def from_config(cls, cfg, device=None) -> OpenAIJudge:
        return cls(
            model=cfg.model,
            base_url=cfg.base_url,
            api_key_env=cfg.api_key_env,
            template=cfg.template,
            max_concurrency=cfg.max_concurrency,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            top_logprobs=cfg.top_logprobs,
        )

    def answer(self, result) -> float:
        """q from one endpoint answer (see the module docstring), counting how it was read."""
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

    def compare_many(self, queries, on_result=None) -> list[float]:
        conversations = [[{"role": "user", "content": render(self.template, p, a, b)}] for p, a, b in queries]
        out = [0.5] * len(queries)

        def got(n: int, result) -> None:
            out[n] = self.answer(result)
            self.stats.add(queries=1)
            if on_result is not None:
                on_result(n, out[n])

        self.labeler.label_many(conversations, on_result=got)
        return out
