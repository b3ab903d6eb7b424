"""The README.md model card of a judge `sparring train-judge` wrote: how to use it, its data, its
settings and its held-out accuracy."""

from __future__ import annotations

import yaml

KINDS = {
    "bt": (
        "a Bradley–Terry reward model (a sequence-classification model: reward = logits[0, 0])",
        "reward_model",
        "−log σ(r_w − r_l − m) (soft label p: the binary cross-entropy of σ(r_w − r_l − m) against p)",
    ),
    "gpm": (
        "a General Preference Model (Zhang et al., ICML 2025): the backbone under model.*, value_head.weight",
        "gpm",
        "−log σ(s(w, l)/τ − m) (soft label p: the binary cross-entropy against p)",
    ),
}
MODES = {
    "head": "head only: the backbone frozen, its features cached, the head trained on them",
    "lora": "a LoRA adapter on the backbone and the head, the adapter merged into the weights written here",
    "full": "every weight of the backbone and the head",
}


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4f}"


def _feature_texts(info: dict) -> str:
    """Mode head: how many texts' features were computed and how many read (a shared cache, a resume)."""
    counts = info.get("feature_texts")
    if not counts:
        return ""
    where = f"the feature cache {counts['cache']}" if counts.get("cache") else "the work directory (a resume)"
    return f" ({counts['computed']} computed, {counts['read']} read from {where})"


def _bootstrap(info: dict) -> list[str]:
    drawn = info.get("bootstrap")
    if not drawn:
        return []
    return [
        f"- bootstrap (data.bootstrap): {drawn['of_prompts']} draws of a prompt with replacement drew "
        f"{drawn['prompts']} distinct prompts ({drawn['distinct_pairs']} of the {drawn['of_pairs']} pairs); "
        f"trained on {drawn['pairs']} pairs, repeats counted"
    ]


def model_card(cfg, info: dict, train, held) -> str:
    what, judge, loss = KINDS[cfg.kind]
    if cfg.kind == "gpm":
        what += (
            " and prompt_head.weight (λ(x) = softmax(W_p h_x) weighs the planes by the prompt)"
            if cfg.gpm.prompt_head
            else ", no prompt head (λ = 1)"
        )
    use = f"judge: {{name: {judge}, model: {cfg.output}"
    if cfg.kind == "gpm":
        use += f", tau: {cfg.gpm.tau}"  # the τ it was trained with
    use += "}"
    held_from = (
        ", ".join(cfg.data.heldout)
        if cfg.data.heldout
        else f"{cfg.data.heldout_fraction:g} of the train pairs, whole prompts, seed {cfg.seed}"
    )
    lines = [
        "---",
        "library_name: transformers",
        "tags: [sparring, preference-model, "
        + ("reward-model" if cfg.kind == "bt" else "general-preference-model")
        + "]",
        "---",
        "",
        f"# A {cfg.kind} judge trained by `sparring train-judge`",
        "",
        f"This directory is {what}, trained from `{cfg.model}` ({MODES[cfg.mode]}). Use it in a sparring run with",
        "",
        "```yaml",
        use,
        "```",
        "",
        "## Results",
        "",
        "| | pairs | accuracy | loss |",
        "|---|---|---|---|",
        f"| held-out | {info['pairs']['heldout']} | {_fmt(info['heldout_accuracy'])} | {_fmt(info['heldout_loss'])} |",
        f"| train | {info['pairs']['train']} | {_fmt(info['train_accuracy'])} | {_fmt(info['train_loss'])} |",
        "",
        "Accuracy: the fraction of pairs the judge orders as their label does (a tie counts ½). "
        f"Loss: {loss}, the training loss, averaged.",
        "",
        "| epoch | train loss | held-out loss | held-out accuracy |",
        "|---|---|---|---|",
        *(
            f"| {h['epoch']} | {_fmt(h['train_loss'])} | {_fmt(h['heldout_loss'])} | {_fmt(h['heldout_accuracy'])} |"
            for h in info["history"]
        ),
        "",
        "## Data",
        "",
        f"- train: {', '.join(cfg.data.train)} ({len(train)} pairs"
        + (f", the first {cfg.data.limit}" if cfg.data.limit else "")
        + f"; sha256 {info['record']['train_data'][:16]})",
        *_bootstrap(info),
        f"- held-out: {held_from} ({len(held)} pairs; sha256 {info['record']['heldout_data'][:16]})",
        f"- texts embedded: {info['texts']} distinct{_feature_texts(info)}; {info['truncated']} cut to "
        f"max_length = {cfg.max_length} tokens",
        "",
        "## Settings",
        "",
        "```yaml",
        yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        f"Trained in {info['seconds']} s on {info['device']} ({info['dtype']}).",
        "",
    ]
    return "\n".join(lines)
