"""`reward_model`: any Hugging Face sequence-classification reward model as a pointwise judge.

The reward model reads the conversation with its own tokenizer and chat template (not the policy's):
the text scored is `tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
tokenize=False)`, tokenized with `add_special_tokens=False` (the template already holds the special
tokens it wants); the reward is `logits[0, 0]` of that text, and P(y_i ≻ y_j) = σ((r_i − r_j)/τ) with τ = 1
by default (plain Bradley–Terry, the model the reward model was trained under). Each response is scored
once, whatever the number of pairs it is in. Texts are batched across prompts, sorted by length (less
padding), right-padded; a text longer than `judge.max_length` tokens keeps its last `max_length` tokens
(the end of the response, where a reward model reads its verdict), counted as `truncated` in the stats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import PointwiseJudge
from sparring.judges.settings import JudgeConfig, check_model, from_keywords
from sparring.schema import setting


@dataclass(kw_only=True)
class RewardModelSettings(JudgeConfig):
    name: str = "reward_model"
    # reward_model / pairrm / llm: directory, hub id or alias; openai: the served name
    model: str = setting(required=" (a Hugging Face sequence-classification model: a directory or a hub id)")
    revision: str | None = None  # a hub model's revision (branch, tag or commit)
    # a local judge model's dtype; auto: bfloat16 where the device runs bf16 natively, float32 elsewhere
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    batch_size: int = setting(16, lo=1)  # texts per forward pass
    max_length: int = setting(2048, lo=8)  # tokens kept per judged text
    tau: float = setting(1.0, lo=0, lo_open=True)  # P = σ(Δs/τ), pointwise judges

    def check(self, where: str, prefix: str) -> None:
        check_model(self.model, where, f"{prefix}model")


class RewardModelJudge(PointwiseJudge):
    Settings = RewardModelSettings

    def __init__(self, settings: RewardModelSettings | str | None = None, *, device="cpu", **kwargs):
        """`RewardModelJudge(settings)`, or its settings as keywords (`RewardModelJudge(model=DIR, tau=2)`;
        the model may come first, `RewardModelJudge(DIR)`)."""
        super().__init__()
        if isinstance(settings, str):
            settings, kwargs = None, {"model": settings, **kwargs}
        self.settings = cfg = from_keywords(RewardModelSettings, settings, kwargs, "RewardModelJudge")
        model, revision, dtype, max_length = cfg.model, cfg.revision, cfg.dtype, cfg.max_length
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from sparring.hardware import model_dtype

        dtype = model_dtype(dtype, device, "judge.dtype")  # auto: bf16 only where the device runs it natively

        from sparring.models import model_fingerprint, quiet_loading, resolve_model

        path = resolve_model(model)
        config = Path(path) / "config.json"
        if config.is_file():
            archs = json.loads(config.read_text()).get("architectures") or []
            if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
                raise UserError(
                    f"judge.model = {model!r} is a {', '.join(archs)}, not a sequence-classification "
                    "reward model (its architectures must end in ForSequenceClassification)"
                )
        try:
            self.tok = AutoTokenizer.from_pretrained(path, revision=revision)
            with quiet_loading():
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    path, revision=revision, dtype={"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
                )
        except (OSError, ValueError) as exc:
            raise UserError(f"judge.model = {model!r}: cannot load it as a reward model ({exc})") from None
        if not getattr(self.tok, "chat_template", None):
            raise UserError(
                f"judge.model = {model!r}: its tokenizer has no chat template; the reward model judge "
                "scores apply_chat_template(messages + [response]) and needs one"
            )
        if self.tok.pad_token_id is None:  # a batch needs a pad token, and the model must know it
            self.tok.pad_token = self.tok.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.model.to(device).eval()
        self.tau, self.batch_size, self.max_length = cfg.tau, cfg.batch_size, max_length
        self.id = (
            f"reward_model-v1:model={model_fingerprint(model, revision)}:dtype={dtype}:max_length={max_length}"
            f":tau={self.tau!r}"
        )

    def text(self, prompt, response: str) -> str:
        messages = [dict(m) for m in prompt.messages] + [{"role": "assistant", "content": response}]
        return self.tok.apply_chat_template(messages, tokenize=False)

    def token_ids(self, prompt, response: str) -> list[int]:
        ids = self.tok(self.text(prompt, response), add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            self.stats.add(truncated=1)
            ids = ids[-self.max_length :]
        return ids

    def rewards(self, rows: list[list[int]]) -> np.ndarray:
        """logits[:, 0] of each token row, batched by length."""
        import torch

        order = sorted(range(len(rows)), key=lambda n: -len(rows[n]))
        out = np.zeros(len(rows), dtype=np.float64)
        device = self.model.device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                part = order[start : start + self.batch_size]
                batch = self.tok.pad({"input_ids": [rows[n] for n in part]}, padding=True, return_tensors="pt")
                logits = self.model(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                ).logits
                out[part] = logits[:, 0].double().cpu().numpy()
        self.stats.add(calls=len(rows))
        return out

    def scores_many(self, prompts, response_lists) -> list[np.ndarray]:
        rows = [self.token_ids(p, r) for p, responses in zip(prompts, response_lists) for r in responses]
        flat = self.rewards(rows)
        out, at = [], 0
        for responses in response_lists:
            out.append(flat[at : at + len(responses)])
            at += len(responses)
        return out

    def close(self) -> None:
        del self.model
        import gc

        gc.collect()
