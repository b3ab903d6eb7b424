"""The nearest valid key for an unknown one across all sections, and TRL's argument names mapped to
sparring's keys: the tail of config's unknown-key errors.

The valid keys are an argument (`sparring.config.config_keys()` gives them), so that this module sits
below sparring.config, which asks it for its hints.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

# TRL's DPOConfig / TrainingArguments names -> (sparring key, what differs); a note says how to translate
TRL_KEYS: dict[str, tuple[str, str]] = {
    "learning_rate": ("train.lr", ""),
    "num_train_epochs": ("train.epochs", "passes over each iteration's rows"),
    "per_device_train_batch_size": ("train.micro_batch_size", "rows per forward pass"),
    "gradient_accumulation_steps": (
        "train.batch_size",
        "here train.batch_size is the rows of one optimizer step "
        "over all processes, i.e. per-device batch × accumulation steps × processes, and "
        "train.micro_batch_size the rows of one forward pass",
    ),
    "per_device_eval_batch_size": ("eval.batch_size", "held-out prompts per generate call"),
    "beta": ("method.beta", ""),
    "loss_type": (
        "method.name",
        "sparring names the method, which fixes the loss; TRL's sigmoid is dpo, ipo is ipo, see docs/methods.md",
    ),
    "label_smoothing": ("method.label_smoothing", ""),
    "simpo_gamma": ("method.gamma", "method.name: simpo"),
    "f_divergence_type": ("method.divergence", "method.name: fdpo"),
    "f_alpha_divergence_coef": ("method.alpha", "method.name: fdpo"),
    "max_new_tokens": ("generation.max_new_tokens", "eval.max_new_tokens for the held-out responses"),
    "max_completion_length": ("generation.max_new_tokens", "eval.max_new_tokens for the held-out responses"),
    "max_length": ("generation.max_new_tokens", "sparring bounds the response, not prompt + response"),
    "num_generations": ("generation.k", "samples per prompt"),
    "temperature": ("generation.temperature", ""),
    "top_p": ("generation.top_p", ""),
    "use_vllm": ("generation.backend", "generation.backend: vllm"),
    "seed": ("seed", ""),
    "warmup_ratio": ("train.warmup_ratio", ""),
    "warmup_steps": ("train.warmup_ratio", "sparring sets the warmup as a fraction of the steps"),
    "weight_decay": ("train.weight_decay", ""),
    "max_grad_norm": ("train.max_grad_norm", ""),
    "optim": ("train.optimizer", "adamw, rmsprop, sgd or mars"),
    "bf16": ("train.precision", "train.precision: bf16 (or fp32)"),
    "fp16": ("train.precision", "sparring trains in bf16 or fp32, not fp16"),
    "model_name_or_path": ("model", ""),
    "output_dir": ("runs_dir", "the run is written to runs_dir/name"),
    "run_name": ("name", ""),
    "report_to": ("tracking.log_with", ""),
}


def _norm(key: str) -> str:
    return str(key).strip().lower().replace("-", "_")


def suggest_keys(key: str, keys: Sequence[str]) -> list[str]:
    """Valid dotted keys near an unknown `key`, best first (several when equally near: `batch_size`).
    `keys`: every valid dotted key, in declaration order (which breaks ties)."""
    all_keys = list(keys)
    valid = set(all_keys)
    key = ".".join(_norm(p) for p in str(key).split("."))
    if key in valid:
        return []
    prefix, _, last = key.rpartition(".")
    under = prefix + "." if prefix else ""
    lasts = {k: k.rpartition(".")[2] for k in all_keys}

    def in_context(candidates: list[str]) -> list[str]:
        # a key under the section the user wrote wins (train.gamma -> train.mars.gamma, not method.gamma)
        mine = [k for k in candidates if under and k.startswith(under)]
        if mine:
            return mine
        # eval.judge.* repeats judge.*: offered only to someone writing under eval.judge
        rest = [k for k in candidates if not k.startswith("eval.judge.")] or candidates
        return sorted(rest, key=lambda k: (k.count("."), all_keys.index(k)))

    if last in TRL_KEYS:
        target = TRL_KEYS[last][0]
        same = f"{under}{lasts[target]}"  # eval.max_length -> eval.max_new_tokens, not generation's
        return [same if under and same in valid else target]
    exact = [k for k in all_keys if lasts[k] == last]
    if exact:
        return in_context(exact)
    siblings = [k for k in all_keys if k.rpartition(".")[0] == prefix]
    near = difflib.get_close_matches(last, [lasts[k] for k in siblings], n=1)
    if near:
        return [f"{under}{near[0]}"]
    near = difflib.get_close_matches(last, list(TRL_KEYS), n=1, cutoff=0.85)
    if near:
        return [TRL_KEYS[near[0]][0]]
    near = difflib.get_close_matches(last, sorted(set(lasts.values())), n=1, cutoff=0.75)
    if near:
        return in_context([k for k in all_keys if lasts[k] == near[0]])
    near = difflib.get_close_matches(key, all_keys, n=1, cutoff=0.75)
    return near


def suggest_key(key: str, keys: Sequence[str]) -> str | None:
    """The nearest valid dotted key to an unknown one, across all sections (`lr` -> `train.lr`,
    `temperature` -> `generation.temperature`, TRL's `learning_rate` -> `train.lr`); None if nothing is near."""
    found = suggest_keys(key, keys)
    return found[0] if found else None


def key_hint(key: str, keys: Sequence[str]) -> str:
    """The tail of an unknown-key error: "; did you mean train.lr?" (with what differs, for TRL's names), or ""."""
    found = suggest_keys(key, keys)
    if not found:
        return ""
    shown = found[:4]
    text = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
    last = _norm(str(key).rpartition(".")[2])
    note = ""
    # a TRL name that is also sparring's (beta, seed, temperature) needs no translation note
    if last in TRL_KEYS and (TRL_KEYS[last][1] or TRL_KEYS[last][0].rpartition(".")[2] != last):
        note = f" (TRL's {last}" + (f": {TRL_KEYS[last][1]}" if TRL_KEYS[last][1] else "") + ")"
    return f"; did you mean {text}?{note}"
