"""`llm`: a local causal LM as a pairwise judge (any HF model, the embedded `smollm2-135m` included).

For each ordered pair the judge model reads the rendered template (sparring.judges.pairwise) under its
own chat template, and the next-token log-probs of the label tokens "A" and "B" at the assistant's
first position give q = σ(lp_A − lp_B) (exact soft labels: every label is in the full distribution,
so a local judge never abstains). Queries are batched, left-padded and sorted by length; a judging text
longer than `judge.max_length` tokens keeps its last `max_length` tokens (the question and both
responses' ends), counted in the stats as `truncated`. Each batch's answers reach `on_result` when the
batch is done, so the judge cache commits them then and a kill loses at most the batch being computed.

With `protocol: arena_hard` the judge model writes a judgment instead (greedy, up to `max_new_tokens`
new tokens, batched the same way): its own answer, then one verdict among [[A>>B]] ... [[B>>A]], parsed by
sparring.judges.pairwise.parse_verdict. A judgment without any verdict is asked again, up to `reask` times
(default 1, as Arena-Hard-Auto; 0: never), with the judgment and a follow-up turn added to its conversation
(sparring.judges.pairwise.next_reask); a batch's re-asks are generated together, and the batch reaches
`on_result` once they are done. A verdict still unreadable is an abstention, counted (`abstentions`,
`verdicts_missing` / `verdicts_conflicting` / `verdicts_malformed`, and `verdicts_cut` when the last answer
ran out of tokens); `reasks` counts the follow-ups, `reasks_recovered` the judgments they turned into
verdicts. A follow-up longer than `max_length` keeps its last tokens, as any judging text (`truncated`
counts the texts cut, follow-ups included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import PairwiseJudge
from sparring.judges.pairwise import (
    LABELS,
    PROTOCOLS,
    compile_template,
    load_template,
    next_reask,
    read_judgment,
    reask_id,
    render,
    soft_label,
    template_hash,
)
from sparring.judges.settings import JudgeConfig, check_model, check_template, from_keywords
from sparring.schema import setting


@dataclass(kw_only=True)
class LLMSettings(JudgeConfig):
    name: str = "llm"
    model: str = setting(required=" (a causal LM: a directory, a hub id, or smollm2-135m)")
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    batch_size: int = setting(8, lo=1)
    max_length: int = setting(2048, lo=8)
    template: str | None = None  # llm / openai: a pairwise template file replacing the built-in one
    # llm / openai: logprob (one label token's log-probs) or arena_hard (own answer, then [[A>>B]]..[[B>>A]])
    protocol: Literal["logprob", "arena_hard"] = "logprob"
    max_new_tokens: int = setting(4096, lo=1)  # llm / openai, arena_hard only: tokens the judgment may take
    # llm / openai, arena_hard only: times a judgment without a verdict is asked again (Arena-Hard: 1; 0: never)
    reask: int = setting(1, lo=0)

    def check(self, where: str, prefix: str) -> None:
        check_model(self.model, where, f"{prefix}model")
        check_template(self.template, where, f"{prefix}template")


class LLMJudge(PairwiseJudge):
    Settings = LLMSettings
    streams = True  # each batch's answers reach on_result when it is done: the cache commits them then

    def __init__(self, settings: LLMSettings | str | None = None, *, device="cpu", **kwargs):
        """`LLMJudge(settings)`, or its settings as keywords (`LLMJudge(model=DIR, batch_size=4)`; the model
        may come first)."""
        super().__init__()
        if isinstance(settings, str):
            settings, kwargs = None, {"model": settings, **kwargs}
        self.settings = cfg = from_keywords(LLMSettings, settings, kwargs, "LLMJudge")
        model, revision, dtype, template = cfg.model, cfg.revision, cfg.dtype, cfg.template
        batch_size, max_length = cfg.batch_size, cfg.max_length
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sparring.hardware import model_dtype

        dtype = model_dtype(dtype, device, "judge.dtype")  # auto: bf16 only where the device runs it natively

        from sparring.models import model_fingerprint, quiet_loading, resolve_model

        path = resolve_model(model)
        self.protocol = PROTOCOLS[cfg.protocol]
        self.max_new_tokens = cfg.max_new_tokens
        self.reask = cfg.reask if self.protocol.generates else 0  # logprob reads no verdict: nothing to re-ask
        text = load_template(template, cfg.protocol)
        self.template = compile_template(text)
        self.batch_size, self.max_length = batch_size, max_length
        try:
            self.tok = AutoTokenizer.from_pretrained(path, revision=revision)
            with quiet_loading():
                self.model = AutoModelForCausalLM.from_pretrained(
                    path, revision=revision, dtype={"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
                )
        except (OSError, ValueError) as exc:
            raise UserError(f"judge.model = {model!r}: cannot load it as a causal LM ({exc})") from None
        self.model.to(device).eval()
        if not getattr(self.tok, "chat_template", None):
            raise UserError(
                f"judge.model = {model!r}: its tokenizer has no chat template, which the llm judge "
                "needs to ask its question"
            )
        self.label_ids = []
        for label in () if self.protocol.generates else LABELS:  # arena_hard reads written verdicts
            ids = self.tok(label, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise UserError(
                    f"judge.model = {model!r}: the label {label!r} is {len(ids)} tokens in its tokenizer; "
                    "the llm judge needs single-token labels"
                )
            self.label_ids.append(ids[0])
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.id = (
            f"llm-v1:model={model_fingerprint(model, revision)}:dtype={dtype}:template={template_hash(text)}"
            f":max_length={max_length}"
        )
        if self.protocol.generates:  # the logprob id is unchanged, so existing caches stay valid
            self.id += f":protocol={cfg.protocol}:max_new_tokens={cfg.max_new_tokens}" + reask_id(self.reask)

    def combine(self, Q):
        return self.protocol.combine(Q)

    def order_view(self, Q):
        return self.protocol.orders(Q)

    def _conversation(self, prompt, first: str, second: str) -> list[dict]:
        return [{"role": "user", "content": render(self.template, prompt, first, second)}]

    def _ids(self, prompt, first: str, second: str) -> list[int]:
        return self._encode(self._conversation(prompt, first, second))

    def _encode(self, conversation: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            self.stats.add(truncated=1)
            ids = ids[-self.max_length :]
        return ids

    def compare_many(self, queries, on_result=None) -> list[float]:
        import torch

        from sparring.generation.hf import left_pad

        conversations = [self._conversation(p, a, b) for p, a, b in queries]
        rows = [self._encode(c) for c in conversations]
        order = sorted(range(len(rows)), key=lambda n: -len(rows[n]))  # similar lengths share a batch
        out = [0.0] * len(rows)
        device = self.model.device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                part = order[start : start + self.batch_size]
                ids, mask = (t.to(device) for t in left_pad([rows[n] for n in part], self.pad_id))
                if self.protocol.generates:
                    values = self._judgments([conversations[n] for n in part], ids, mask)
                else:
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = (
                        self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
                        .logits[:, -1]
                        .float()
                    )
                    lp = torch.log_softmax(logits, dim=-1)[:, self.label_ids].double().cpu().numpy()
                    values = [soft_label(float(lp_a), float(lp_b)) for lp_a, lp_b in lp]
                self.stats.add(queries=len(part))
                for n, q in zip(part, values):
                    out[n] = q
                    if on_result is not None:  # this batch is done: the cache may keep it now
                        on_result(n, q)
        return out

    def _judgments(self, conversations: list[list[dict]], ids, mask) -> list[float]:
        """arena_hard: one batch's written judgments (greedy), re-asked where they hold no verdict, read as
        verdict codes. `conversations`: the batch's, in the order of its rows."""
        from sparring.generation.hf import left_pad

        conversations = list(conversations)
        answers = [[got] for got in self._generate(ids, mask)]  # per query: (text, cut) of each answer
        while True:
            asks = {n: next_reask(conversations[n], [text for text, _ in a], self.reask) for n, a in enumerate(answers)}
            asks = {n: c for n, c in asks.items() if c is not None}
            if not asks:
                return [read_judgment(self.stats, [text for text, _ in a], cut=a[-1][1]) for a in answers]
            ids, mask = (
                t.to(self.model.device) for t in left_pad([self._encode(c) for c in asks.values()], self.pad_id)
            )
            for (n, conversation), got in zip(asks.items(), self._generate(ids, mask)):
                conversations[n] = conversation
                answers[n].append(got)

    def _generate(self, ids, mask) -> list[tuple[str, bool]]:
        """Greedy judgments for a left-padded batch: (text, whether max_new_tokens stopped it)."""
        gen = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
        )
        new = gen[:, ids.shape[1] :].tolist()
        eos = self.tok.eos_token_id
        eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        out = []
        for row in new:
            cut = not eos.intersection(row) and len(row) >= self.max_new_tokens  # the limit stopped it
            out.append((self.tok.decode(row, skip_special_tokens=True), cut))
        return out

    def close(self) -> None:
        del self.model
        import gc

        gc.collect()


def label_logprobs(judge: LLMJudge, prompt, first: str, second: str) -> np.ndarray:
    """(lp_A, lp_B) of one ordered query, computed alone (no batching): for tests and inspection."""
    import torch

    ids = torch.tensor([judge._ids(prompt, first, second)], device=judge.model.device)
    with torch.inference_mode():
        logits = judge.model(input_ids=ids).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)[judge.label_ids].double().cpu().numpy()
