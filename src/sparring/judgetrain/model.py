"""The judges `sparring train-judge` trains: their losses, heads, token rows, features and output
directories.

Both kinds read one vector per text, h: the backbone's last hidden state at the position their judge
reads it at, so the trained head is exactly what the judge then runs:
- bt (sparring.judges.reward_model): the text is `apply_chat_template(messages + [response])` tokenized
  without special tokens, its last `max_length` tokens kept; h at the rightmost token that is not the pad
  token (where transformers' *ForSequenceClassification pools). r = w·h (the model's `score` row); the
  loss is −log σ(r_w − r_l) (Bradley–Terry; Ouyang et al. 2022, eq. 1), and with a soft label p the
  binary cross-entropy −[p log σ(r_w − r_l) + (1 − p) log σ(r_l − r_w)].
- gpm (sparring.judges.gpm): the same text tokenized with the tokenizer's special tokens, its first
  `max_length` tokens kept and the last one set to EOS; h at that EOS. v = W_v h / ‖W_v h‖₂ and
  s(w, l) = Σ_l λ_l (v_w[2l]·v_l[2l+1] − v_w[2l+1]·v_l[2l]), computed by sparring.judges.gpm's own
  functions; the loss is −log σ(s(w, l)/τ) (Zhang et al., ICML 2025, the General Preference loss), or the
  cross-entropy with a soft label. Without a prompt head λ_l = 1. With one (gpm.prompt_head),
  λ(x) = softmax(W_p h_x), W_p = `prompt_head.weight` [k, H], h_x read where the judge reads it: at the
  prompt's last token, the end of `apply_chat_template(messages)` tokenized alone, within the response's
  token row (its "prompt row": that row's first tokens, up to there). The judge reads h_x from each
  response's forward pass and averages λ over the prompt's responses, so a pair's λ is the mean of the
  chosen's and the rejected's (one λ when, as usual, both rows start with the same prompt tokens).
A margin m (a column) is subtracted from the log-odds before the sigmoid, as in TRL's RewardTrainer.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from sparring.errors import UserError
from sparring.judges.gpm import PROMPT_HEAD, VALUE_HEAD, embed, pair_scores, prompt_weights

# ------------------------------------------------------------------ losses (pure)


def preference_loss(z, p=None, margin=None):
    """Per pair: −[p log σ(z − m) + (1 − p) log σ(m − z)], the binary cross-entropy of the pair's log-odds
    z against P(chosen ≻ rejected) = p (None: 1, which gives −log σ(z − m)); margin m None: 0."""
    x = z if margin is None else z - margin
    target = torch.ones_like(x) if p is None else p.to(x.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(x, target, reduction="none")


def bt_loss(r_w, r_l, p=None, margin=None):
    """Bradley–Terry: −log σ(r_w − r_l − m), or with soft labels the BCE on σ(r_w − r_l − m); per pair."""
    return preference_loss(r_w - r_l, p, margin)


def gpm_loss(s, tau: float, p=None, margin=None):
    """The General Preference loss −log σ(s(w, l)/τ − m), or with soft labels its BCE; per pair."""
    return preference_loss(s / tau, p, margin)


def paired_scores(v_w, v_l, lam):
    """s(w_b, l_b) = Σ_l λ_bl (v_w[b, 2l]·v_l[b, 2l+1] − v_w[b, 2l+1]·v_l[b, 2l]) for each pair b, with a
    weight vector λ_b [k] per pair: sparring.judges.gpm.pair_scores' (i, j) entry, one pair at a time (a
    pair's λ depends on its prompt, so one matrix over the batch would not do)."""
    even_w, odd_w, even_l, odd_l = v_w[:, 0::2], v_w[:, 1::2], v_l[:, 0::2], v_l[:, 1::2]
    return (lam * (even_w * odd_l - odd_w * even_l)).sum(-1)


# ------------------------------------------------------------------ heads


class BTHead(torch.nn.Module):
    """r = w·h: the `score` row of the *ForSequenceClassification model the output becomes (no bias: the
    Bradley–Terry loss cannot see one)."""

    def __init__(self, hidden: int, generator: torch.Generator):
        super().__init__()
        self.score = torch.nn.Linear(hidden, 1, bias=False)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(1, hidden, generator=generator) / hidden**0.5)

    def rewards(self, h):
        return self.score(h).squeeze(-1)

    def logits(self, h_w, h_l, h_x=None):
        """The pair's log-odds z = r_w − r_l (a reward model reads no prompt feature: h_x is None)."""
        return self.rewards(h_w) - self.rewards(h_l)

    def loss(self, h_w, h_l, p, margin, h_x=None):
        return bt_loss(self.rewards(h_w), self.rewards(h_l), p, margin)

    def weights(self) -> dict:
        return {"score": self.score.weight.detach()}


class GPMHead(torch.nn.Module):
    """v = W_v h / ‖W_v h‖₂, s(w, l) from sparring.judges.gpm; λ = 1 without a prompt head, else
    λ = softmax(W_p h_x) averaged over the pair's two prompt rows (module docstring)."""

    def __init__(self, hidden: int, dim: int, tau: float, generator: torch.Generator, prompt_head: bool = False):
        super().__init__()
        self.value_head = torch.nn.Linear(hidden, dim, bias=False)
        self.k, self.tau = dim // 2, tau
        with torch.no_grad():
            self.value_head.weight.copy_(torch.randn(dim, hidden, generator=generator) / hidden**0.5)
        self.prompt_head = None
        if prompt_head:  # drawn after W_v, so W_v's draw is that of a head without one
            self.prompt_head = torch.nn.Linear(hidden, self.k, bias=False)
            with torch.no_grad():
                self.prompt_head.weight.copy_(torch.randn(self.k, hidden, generator=generator) / hidden**0.5)

    def scores(self, h_w, h_l, h_x=None):
        """s(w_b, l_b) for each pair b. Without a prompt head: the (b, B + b) entries of the antisymmetric
        score matrix of the 2B embeddings (upper triangle: computed as is, never through the negation).
        With one, h_x = (h_x of the chosen's prompt row, of the rejected's) and λ_b their mean softmax."""
        V = embed(self.value_head(torch.cat([h_w, h_l])))
        b = torch.arange(len(h_w))
        if self.prompt_head is None:
            lam = prompt_weights(None, self.k).to(V.dtype)
            return pair_scores(V, lam)[b, len(h_w) + b]
        x_w, x_l = h_x
        lam = (prompt_weights(self.prompt_head(x_w), self.k) + prompt_weights(self.prompt_head(x_l), self.k)) / 2
        return paired_scores(V[b], V[len(h_w) + b], lam.to(V.dtype))

    def logits(self, h_w, h_l, h_x=None):
        return self.scores(h_w, h_l, h_x) / self.tau

    def loss(self, h_w, h_l, p, margin, h_x=None):
        return gpm_loss(self.scores(h_w, h_l, h_x), self.tau, p, margin)

    def weights(self) -> dict:
        out = {"value_head": self.value_head.weight.detach()}
        if self.prompt_head is not None:
            out["prompt_head"] = self.prompt_head.weight.detach()
        return out


def make_head(cfg, hidden: int):
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.kind == "bt":
        return BTHead(hidden, g)
    return GPMHead(hidden, cfg.gpm.dim, cfg.gpm.tau, g, cfg.gpm.prompt_head)


# ------------------------------------------------------------------ texts


class Texts:
    """Token rows (ids, the position h is read at) of (messages, response), as the kind's judge makes them."""

    def __init__(self, tok, kind: str, max_length: int):
        self.tok, self.kind, self.max_length = tok, kind, max_length
        self.truncated = 0
        self._prompt_ends: dict[str, int] = {}

    def row(self, messages, response: str) -> tuple[tuple[int, ...], int]:
        text = self.tok.apply_chat_template(
            [dict(m) for m in messages] + [{"role": "assistant", "content": response}], tokenize=False
        )
        if self.kind == "bt":  # sparring.judges.reward_model: no special tokens, the end kept
            ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
            if len(ids) > self.max_length:
                self.truncated += 1
                ids = ids[-self.max_length :]
            pad = self.tok.pad_token_id
            # transformers' sequence classifiers pool at the rightmost token that is not the pad token
            at = next((i for i in range(len(ids) - 1, -1, -1) if ids[i] != pad), len(ids) - 1)
            return tuple(ids), at
        ids = list(self.tok(text)["input_ids"])  # sparring.judges.gpm: the tokenizer's special tokens, the start kept
        if len(ids) > self.max_length:
            self.truncated += 1
            ids = ids[: self.max_length]
        ids[-1] = self.tok.eos_token_id
        return tuple(ids), len(ids) - 1

    def prompt_row(self, messages, ids) -> tuple[tuple[int, ...], int]:
        """gpm's prompt row of a response's token row `ids`: its tokens up to the prompt's last one, read
        there. The prompt's end is where sparring.judges.gpm reads λ's h_x (GPMJudge.prompt_length: the
        tokens of `apply_chat_template(messages)` alone), capped at the row's end as the judge caps it; the
        model is causal, so h there is the state the judge reads from the whole row."""
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key not in self._prompt_ends:
            text = self.tok.apply_chat_template([dict(m) for m in messages], tokenize=False)
            self._prompt_ends[key] = len(self.tok(text)["input_ids"])
        n = min(self._prompt_ends[key], len(ids))
        return tuple(ids[:n]), n - 1


# ------------------------------------------------------------------ the backbone


def load_backbone(name: str, dtype: str):
    """(tokenizer, the causal LM's base model — its decoder without the LM head —, the causal LM's config,
    the base model's prefix in the causal LM's weights)."""
    from sparring.models import load_model, load_tokenizer

    tok = load_tokenizer(name)  # a pad token (EOS when the tokenizer has none)
    if not getattr(tok, "chat_template", None):
        raise UserError(
            f"model = {name!r}: its tokenizer has no chat template, which the judges format every text with; "
            "use a chat model's tokenizer, or add a chat_template to its tokenizer_config.json"
        )
    if tok.eos_token_id is None:
        raise UserError(f"model = {name!r}: its tokenizer has no EOS token")
    lm = load_model(name, dtype)
    prefix = lm.base_model_prefix
    backbone = lm.base_model
    if backbone is lm:
        raise UserError(f"model = {name!r}: {type(lm).__name__} has no separate base model to put a head on")
    return tok, backbone, lm.config, prefix


def hidden_states(backbone, rows, device, pad_id: int, autocast: bool = False):
    """h [N, H] (float32) of token rows (ids, position): one right-padded forward pass (the model is
    causal, so padding after a row changes none of its states), gradients kept when enabled."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (r, _) in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        h = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    at = torch.tensor([pos for _, pos in rows], device=h.device)
    return h[torch.arange(len(rows), device=h.device), at].float()


# ------------------------------------------------------------------ the output


def save_judge(out: Path, kind: str, backbone, config, prefix: str, head, tok) -> None:
    """Write the judge into `out` (an empty directory): bt as a *ForSequenceClassification model, gpm in the
    released GPM layout (the backbone under `prefix.*`, value_head.weight and, with a prompt head,
    prompt_head.weight), each with the tokenizer (and its chat template)."""
    if kind == "bt":
        from transformers import AutoModelForSequenceClassification

        cfg = copy.deepcopy(config)
        cfg.num_labels, cfg.pad_token_id, cfg.architectures = 1, tok.pad_token_id, None
        seq = AutoModelForSequenceClassification.from_config(cfg).to(backbone.dtype)
        seq.base_model.load_state_dict(backbone.state_dict())
        extra = {n: p for n, p in seq.named_parameters() if not n.startswith(f"{seq.base_model_prefix}.")}
        weights = [n for n in extra if n.endswith("weight")]
        if len(weights) != 1 or extra[weights[0]].shape != head.score.weight.shape:
            raise UserError(
                f"{type(seq).__name__}'s head is {[(n, list(p.shape)) for n, p in extra.items()]}, not one [1, hidden] "
                "row: sparring cannot write its Bradley–Terry head into it"
            )
        with torch.no_grad():
            for n, p in extra.items():
                p.copy_(head.score.weight.to(p.dtype) if n == weights[0] else torch.zeros_like(p))
        seq.save_pretrained(str(out))
    else:
        from safetensors.torch import save_file

        tensors = {f"{prefix}.{n}": t.detach().to("cpu").contiguous().clone() for n, t in backbone.state_dict().items()}
        tensors[VALUE_HEAD] = head.value_head.weight.detach().to("cpu", torch.float32).contiguous().clone()
        if head.prompt_head is not None:  # [k, H]: sparring.judges.gpm reads λ = softmax(W_p h_x) from it
            tensors[PROMPT_HEAD] = head.prompt_head.weight.detach().to("cpu", torch.float32).contiguous().clone()
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(out))
    tok.save_pretrained(str(out))
