"""`sparring train-judge RECIPE [key=value ...]`: train a preference judge on preference pairs.

Two kinds, each written as a directory its judge loads as is: `bt`, a Bradley–Terry reward model
(`judge.name: reward_model`), and `gpm`, a General Preference Model (`judge.name: gpm`); any Hugging Face
causal LM as the backbone; three modes (head only on cached features, LoRA, full). The pieces:
settings.py (the recipe's keys), data.py (TRL's preference format from any prompt source), model.py
(losses, heads, texts, the output), train.py (the resumable training), features.py (features_cache, the
feature store trainings share), card.py (the model card).
docs/train-judge.md is the user's page.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-judge",
        help="train a preference judge (Bradley–Terry reward model or GPM) on preference pairs",
        description="Trains a judge on preference pairs in TRL's format (docs/train-judge.md) and writes a "
        "directory that judge.name=reward_model (kind bt) or judge.name=gpm (kind gpm) loads. Started again "
        "after a kill, it resumes after its last completed epoch.",
    )
    p.add_argument("recipe", nargs="?", help="YAML recipe, or a shipped one's name (train-judge)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. kind=gpm mode=lora")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_judge)


def cmd_train_judge(args) -> int:
    from sparring.judgetrain.settings import load_settings
    from sparring.judgetrain.train import train_judge

    cfg = load_settings(args.recipe, list(args.overrides))
    info = train_judge(cfg, progress=not args.no_progress)
    acc = info["heldout_accuracy"]
    print(
        f"{cfg.output}: {cfg.kind} judge, held-out accuracy "
        + ("— (no held-out pairs)" if acc is None else f"{acc:.3f} on {info['pairs']['heldout']} pairs")
    )
    name = "reward_model" if cfg.kind == "bt" else "gpm"
    print(f"use it with judge.name={name} judge.model={cfg.output}")
    return 0
