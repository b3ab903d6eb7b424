"""`gpm`: the General Preference Model (Zhang et al., "General Preference Modeling with Preference
Representations for Aligning Language Models", ICML 2025) as a judge, run natively on transformers
(no trust_remote_code, no flash attention).

A GPM embeds each response once and scores pairs with a skew-symmetric form, so a prompt's K responses
cost K forward passes and the K×K matrix can hold cycles (rock ≻ scissors ≻ paper ≻ rock), which no
scalar reward (Bradley–Terry) can:

- text: `apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)`,
  tokenized as the tokenizer does by default (its own special tokens added, as the authors' code does),
  cut to `judge.max_length` tokens keeping the start, and its **last token replaced by EOS** (the
  authors' "to avoid EOS truncation": the embedding is read at an EOS token even when the text was cut);
- embedding: v = W_v h / ‖W_v h‖₂ with h the backbone's last hidden state at that final token and
  W_v = `value_head.weight` [2k, H] (no bias): a unit vector in R^{2k};
- prompt weights: with `prompt_head.weight` [k, H], λ(x) = softmax(W_p h_x), h_x the last hidden state
  at the prompt's last token (the end of `apply_chat_template(messages)`, read from the same forward pass:
  the model is causal, so every response of the prompt gives the same h_x; their mean is used, which
  makes λ one vector per prompt and P exactly antisymmetric). Without a prompt head every λ_l = 1 (the
  fixed block matrix of the authors' `generate_high_dim_result` and of their training loss);
- score: s(i, j) = Σ_l λ_l (v_i[2l]·v_j[2l+1] − v_i[2l+1]·v_j[2l]) = ⟨R^≻ v_i, v_j⟩ with R^≻ the block-
  diagonal skew-symmetric matrix [[0, −λ_l], [λ_l, 0]] per block; s(j, i) = −s(i, j) and s(i, i) = 0;
- probability: P(y_i ≻ y_j) = σ(c·s(i, j)/τ), τ = `judge.tau` (0.1, the authors' training default), with
  c = 1 for `judge.link: model` (default: the probability the model was trained to give,
  −log σ(s(w, l)/τ)) or c = 2 for `judge.link: gpo` (what the authors' SPPO/GPO pipeline feeds the loss:
  it tabulates s(i, j)/τ and takes σ(table[i, j] − table[j, i]) = σ(2s/τ)).

Where the authors' files disagree this follows their inference code (`gpm_example_usage.py`): the
embedding is L2-normalised (their training model file has that line commented out) and λ is a plain
softmax (their later training file divides by √hidden_dim and multiplies by k, with names it never
defines). docs/judge.md lists the differences.

The checkpoint: a local directory in the released layout, a transformers backbone under `model.*`
(config.json gives its architecture), `value_head.weight` [2k, H] and optionally `prompt_head.weight`
[k, H] (k and H read from the shapes), in model.safetensors / pytorch_model.bin or their sharded index,
with a tokenizer that has a chat template. Identical responses to one prompt are embedded once and get
P = ½ exactly.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sparring.errors import UserError
from sparring.judges.base import JudgeStats, win_probability
from sparring.judges.settings import JudgeConfig, from_keywords
from sparring.schema import setting

# judge.link -> c in P = σ(c·s/τ)
LINKS: dict[str, float] = {
    "model": 1.0,  # the model's own probability: its training loss is −log σ(s(w, l)/τ)
    "gpo": 2.0,  # the authors' SPPO/GPO pipeline: σ(s(i,j)/τ − s(j,i)/τ) = σ(2s/τ)
}

VALUE_HEAD = "value_head.weight"
PROMPT_HEAD = "prompt_head.weight"


# ------------------------------------------------------------------ the model's formulas (pure)


def embed(values):
    """Rows of value-head outputs W_v h [N, 2k] -> unit vectors v = W_v h / ‖W_v h‖₂ (a zero row stays 0)."""
    import torch

    return torch.nn.functional.normalize(values, p=2, dim=-1)


def prompt_weights(logits, k: int):
    """λ [N, k]: softmax of the prompt head's outputs, or all ones without a prompt head (`logits` None)."""
    import torch

    if logits is None:
        return torch.ones(k, dtype=torch.float64)
    return torch.softmax(logits, dim=-1)


def pair_scores(V, lam):
    """S[i, j] = s(i, j) = Σ_l λ_l (V[i, 2l]·V[j, 2l+1] − V[i, 2l+1]·V[j, 2l]) for the rows of V [K, 2k]
    and one weight vector λ [k]; differentiable. Exactly antisymmetric: the upper triangle is computed
    and the lower one is its negation, so S[j, i] = −S[i, j] and S[i, i] = 0 bit for bit."""
    import torch

    even, odd = V[:, 0::2], V[:, 1::2]
    full = (even * lam) @ odd.T - (odd * lam) @ even.T
    upper = torch.triu(full, diagonal=1)
    return upper - upper.T


def preference_matrix(S: np.ndarray, tau: float, link: str) -> np.ndarray:
    """P[i, j] = σ(c·S[i, j]/τ) (c from LINKS) for an antisymmetric S; P + Pᵀ = 1 exactly, diagonal ½."""
    c = LINKS[link]
    k = S.shape[0]
    P = np.full((k, k), 0.5, dtype=np.float64)
    for i in range(k):
        for j in range(i + 1, k):
            P[i, j], P[j, i] = win_probability(c * float(S[i, j]) / tau)
    return P


# ------------------------------------------------------------------ the checkpoint


def _weight_files(directory: Path) -> list[Path]:
    """The weight files from_pretrained would read (sparring.models.WEIGHT_FILES' order), shards expanded."""
    from sparring.models import WEIGHT_FILES

    for name in WEIGHT_FILES:
        f = directory / name
        if f.is_file():
            if name.endswith(".index.json"):
                weight_map = json.loads(f.read_text(encoding="utf-8")).get("weight_map") or {}
                return [directory / s for s in sorted(set(weight_map.values()))]
            return [f]
    return []


def read_heads(directory: Path) -> dict:
    """{"value_head.weight": tensor, "prompt_head.weight": tensor (if present)} from a checkpoint's weight
    files, read without loading the backbone."""
    import torch

    heads = {}
    for f in _weight_files(directory):
        if f.name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                for name in (VALUE_HEAD, PROMPT_HEAD):
                    if name in fh.keys():
                        heads[name] = fh.get_tensor(name)
        else:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            heads.update({n: state[n] for n in (VALUE_HEAD, PROMPT_HEAD) if n in state})
    return heads


def check_heads(heads: dict, hidden: int, where: str) -> tuple[int, bool]:
    """(k, has a prompt head) from the heads' shapes; UserError naming `where` when they do not fit."""
    v = heads.get(VALUE_HEAD)
    if v is None:
        raise UserError(
            f"{where}: no {VALUE_HEAD} in its weights: not a General Preference Model checkpoint (a reward model "
            "with a score head is judge.name=reward_model)"
        )
    if v.dim() != 2 or v.shape[1] != hidden or v.shape[0] < 2 or v.shape[0] % 2:
        raise UserError(
            f"{where}: {VALUE_HEAD} has shape {list(v.shape)}; a GPM's is [2k, hidden_size] = [even ≥ 2, {hidden}]"
            + (" (one row: a Bradley–Terry head, not a GPM)" if v.dim() == 2 and v.shape[0] == 1 else "")
        )
    k = v.shape[0] // 2
    p = heads.get(PROMPT_HEAD)
    if p is not None and (p.dim() != 2 or tuple(p.shape) != (k, hidden)):
        raise UserError(
            f"{where}: {PROMPT_HEAD} has shape {list(p.shape)}; with {VALUE_HEAD} {list(v.shape)} "
            f"it must be [{k}, {hidden}]"
        )
    return k, p is not None


@contextmanager
def _quiet_load_report():
    """Silence transformers' load report while the backbone loads: it lists the heads and lm_head as
    UNEXPECTED at every judge stage. Missing backbone tensors are checked from the loading info instead."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


# ------------------------------------------------------------------ the judge


@dataclass(kw_only=True)
class GPMSettings(JudgeConfig):
    name: str = "gpm"
    model: str = setting(required=" (a local directory holding a GPM checkpoint: model.*, value_head.weight)")
    # a local judge model's dtype; auto: bfloat16 where the device runs bf16 natively, float32 elsewhere
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    batch_size: int = setting(16, lo=1)  # texts per forward pass
    max_length: int = setting(4096, lo=8)  # gpm: tokens kept from the start, the last one set to EOS
    tau: float = setting(0.1, lo=0, lo_open=True)  # gpm: P = σ(c·s/τ)
    link: Literal["model", "gpo"] = "model"  # gpm: c = 1 (model: the trained probability) or 2 (gpo: SPPO's table)

    def check(self, where: str, prefix: str) -> None:
        path = Path(self.model).expanduser()
        if not path.is_dir():
            raise UserError(
                f"{where}: {prefix}model = {self.model!r}: not a directory; the gpm judge loads a local copy of a "
                "checkpoint (e.g. hf download general-preference/GPM-Llama-3.1-8B --local-dir DIR)"
            )
        from sparring.models import check_model_dir

        check_model_dir(path, f"{where}: {prefix}model {self.model}")


class GPMJudge:
    """A GPM checkpoint as a judge: one forward pass per distinct response, the K×K matrix from the
    embeddings (module docstring)."""

    Settings = GPMSettings

    def __init__(self, settings: GPMSettings | str | None = None, *, device="cpu", **kwargs):
        """`GPMJudge(settings)`, or its settings as keywords (`GPMJudge(model=DIR, link="gpo")`; the model may
        come first, `GPMJudge(DIR)`)."""
        if isinstance(settings, str):
            settings, kwargs = None, {"model": settings, **kwargs}
        self.settings = cfg = from_keywords(GPMSettings, settings, kwargs, "GPMJudge")
        cfg.check("GPMJudge", "judge.")
        import torch
        from transformers import AutoModel, AutoTokenizer

        from sparring.hardware import model_dtype
        from sparring.models import model_fingerprint, quiet_loading

        self.stats = JudgeStats()
        path = Path(cfg.model).expanduser()
        dtype = model_dtype(cfg.dtype, device, "judge.dtype")
        where = f"judge.model = {cfg.model!r}"
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path))
            with quiet_loading(), _quiet_load_report():
                self.backbone, info = AutoModel.from_pretrained(
                    str(path),
                    dtype={"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype],
                    output_loading_info=True,
                )
        except (OSError, ValueError) as exc:
            raise UserError(f"{where}: cannot load it as a GPM backbone ({exc})") from None
        missing = list(info.get("missing_keys") or [])
        if missing:  # random weights where the checkpoint should have given them: refuse, never judge with them
            raise UserError(
                f"{where}: its weights lack {len(missing)} backbone tensor(s) (first: {sorted(missing)[0]}); "
                "expected the released layout, the backbone under model.*"
            )
        if not getattr(self.tok, "chat_template", None):
            raise UserError(f"{where}: its tokenizer has no chat template, which the gpm judge formats texts with")
        if self.tok.eos_token_id is None:
            raise UserError(f"{where}: its tokenizer has no EOS token, at which the gpm judge reads each embedding")
        hidden = self.backbone.config.hidden_size
        heads = read_heads(path)
        self.k, has_prompt_head = check_heads(heads, hidden, where)
        # the heads run in float64 on the backbone's hidden states: they are tiny, and it keeps the
        # normalisation and the softmax out of bf16
        self.value_head = heads[VALUE_HEAD].to(torch.float64)
        self.prompt_head = heads[PROMPT_HEAD].to(torch.float64) if has_prompt_head else None
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.backbone.to(device).eval()
        self.device = device
        self.tau, self.link, self.batch_size, self.max_length = cfg.tau, cfg.link, cfg.batch_size, cfg.max_length
        self.id = (
            f"gpm-v1:model={model_fingerprint(str(path))}:dtype={dtype}:max_length={self.max_length}"
            f":tau={self.tau!r}:link={self.link}"
        )

    @staticmethod
    def check_prompts(prompts, label: str) -> None:
        pass

    # -------------------------------------------------------------- tokens

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text)["input_ids"])  # the tokenizer's own special tokens, as the authors'

    def prompt_length(self, prompt) -> int:
        """Tokens of the prompt alone, `apply_chat_template(messages)`: its last one is where λ is read."""
        return len(self._encode(self.tok.apply_chat_template([dict(m) for m in prompt.messages], tokenize=False)))

    def token_ids(self, prompt, response: str) -> list[int]:
        messages = [dict(m) for m in prompt.messages] + [{"role": "assistant", "content": response}]
        ids = self._encode(self.tok.apply_chat_template(messages, tokenize=False))
        if len(ids) > self.max_length:
            self.stats.add(truncated=1)
            ids = ids[: self.max_length]
        ids[-1] = self.tok.eos_token_id
        return ids

    # -------------------------------------------------------------- embeddings

    def embeddings(self, rows: list[tuple[list[int], int]]):
        """(V [N, 2k], prompt-head logits [N, k] or None), float64, for token rows given with the index of
        their prompt's last token. One forward pass per row, batched by length (right-padded: the model
        is causal, so padding after a row changes none of its states)."""
        import torch

        n = len(rows)
        V = torch.zeros((n, 2 * self.k), dtype=torch.float64)
        logits = torch.zeros((n, self.k), dtype=torch.float64) if self.prompt_head is not None else None
        order = sorted(range(n), key=lambda r: -len(rows[r][0]))
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                part = order[start : start + self.batch_size]
                width = max(len(rows[r][0]) for r in part)
                ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(part), width), dtype=torch.long)
                for b, r in enumerate(part):
                    ids[b, : len(rows[r][0])] = torch.tensor(rows[r][0])
                    mask[b, : len(rows[r][0])] = 1
                h = self.backbone(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                at = torch.arange(len(part), device=h.device)

                def states(index: list[int]):  # one position per row, to the CPU in float64
                    return h[at, torch.tensor(index, device=h.device)].to("cpu", torch.float64)

                V[part] = embed(states([len(rows[r][0]) - 1 for r in part]) @ self.value_head.T)
                if logits is not None:
                    logits[part] = states([rows[r][1] for r in part]) @ self.prompt_head.T
        self.stats.add(calls=n)
        return V, logits

    def preferences_many(self, prompts, response_lists) -> list[np.ndarray]:
        import torch

        rows, groups = [], []
        for prompt, responses in zip(prompts, response_lists):
            distinct: dict[str, int] = {}
            index = [distinct.setdefault(r, len(distinct)) for r in responses]
            end = self.prompt_length(prompt) if self.prompt_head is not None else 0
            groups.append((len(rows), len(distinct), index))
            for response in distinct:
                ids = self.token_ids(prompt, response)
                rows.append((ids, min(end, len(ids)) - 1))
        V, logits = self.embeddings(rows) if rows else (None, None)
        out = []
        for first, count, index in groups:
            if not index:
                out.append(np.zeros((0, 0)))
                continue
            part = slice(first, first + count)
            lam = prompt_weights(None if logits is None else logits[part], self.k)
            if lam.dim() == 2:  # one λ per prompt: its responses' (equal up to rounding) mean
                lam = lam.mean(dim=0)
            S = pair_scores(V[part], lam)
            pick = torch.tensor(index)
            out.append(preference_matrix(S[pick][:, pick].numpy(), self.tau, self.link))
        return out

    def close(self) -> None:
        del self.backbone
        import gc

        gc.collect()
