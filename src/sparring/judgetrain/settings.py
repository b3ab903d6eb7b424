"""`sparring train-judge`'s settings: a recipe of their own (recipes/judges/train-judge.yaml), typed and
validated like a run's config (sparring.schema.build), but no part of the run config: a judge is trained
before a run and named by it (`judge: {name: reward_model | gpm, model: OUTPUT}`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sparring.errors import UserError
from sparring.schema import build, setting

# the columns a preference row may have; `data.fields` maps them to other names
COLUMNS = ("prompt", "chosen", "rejected", "label", "margin")


@dataclass
class DataSettings:
    # preference pairs in TRL's format (prompt / chosen / rejected): one or more prompt sources (a .jsonl,
    # .json, .parquet or .csv file, a datasets.save_to_disk directory[@SPLIT], shipped:NAME, hf:ORG/NAME)
    train: list[str] = setting(required=" (preference pairs: a file, a saved dataset[@SPLIT] or hf:ORG/NAME)")
    # held-out pairs (sources as train); none: heldout_fraction of the train pairs, split by prompt
    heldout: list[str] = field(default_factory=list)
    heldout_fraction: float = setting(0.1, lo=0, hi=1, hi_open=True)  # used without data.heldout; 0: none
    # column names for prompt, chosen, rejected, label (P(chosen ≻ rejected), soft label) and margin,
    # e.g. {label: p_chosen_beats_rejected} for a `sparring export`; unmapped: the field's own name (label: also p)
    fields: dict[str, str] = field(default_factory=dict)
    limit: int = setting(0, lo=0)  # train pairs used (the first ones); 0: all
    # bagging for an ensemble: the train pairs resampled by prompt with replacement (as many draws as train
    # prompts), seeded by seed, after the held-out split (which it leaves as it is)
    bootstrap: bool = False

    def check(self, where: str) -> None:
        for name in self.fields:
            if name not in COLUMNS:
                raise UserError(f"{where}: data.fields.{name}: unknown field; fields are {', '.join(COLUMNS)}")


@dataclass
class OptimSettings:
    lr: float = setting(1e-3, lo=0, lo_open=True)  # AdamW's learning rate, constant
    epochs: int = setting(3, lo=1)  # passes over the train pairs; a checkpoint after each
    batch_size: int = setting(32, lo=1)  # pairs per optimizer step
    weight_decay: float = setting(0.0, lo=0)
    max_grad_norm: float = setting(1.0, lo=0)  # 0: no clipping
    feature_batch_size: int = setting(16, lo=1)  # texts per backbone forward pass (features, held-out scoring)


@dataclass
class LoraSettings:
    r: int = setting(8, lo=1)  # mode lora: the adapter's rank
    alpha: float = setting(16.0, lo=0, lo_open=True)  # the update is scaled by alpha / r
    dropout: float = setting(0.0, lo=0, hi=1, hi_open=True)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class GPMTrainSettings:
    dim: int = setting(4, lo=2)  # 2k: the value head's rows (an even number); k = dim / 2 planes
    tau: float = setting(0.1, lo=0, lo_open=True)  # the loss −log σ(s(w, l)/τ); the judge's judge.tau
    # a prompt head W_p [k, H] trained with the value head: λ(x) = softmax(W_p h_x) weighs the k planes by
    # the prompt (h_x at the prompt's last token, where sparring.judges.gpm reads it); false: λ = 1
    prompt_head: bool = False


@dataclass
class TrainJudgeSettings:
    kind: Literal["bt", "gpm"] = setting(
        required=" (bt: a Bradley–Terry reward model; gpm: a General Preference Model)"
    )
    model: str = setting(required=" (the backbone: any Hugging Face causal LM, a directory or a hub id)")
    output: str = setting(required=" (the directory the trained judge is written to)")
    data: DataSettings = setting(required=" (data.train: the preference pairs)")
    # head: the backbone frozen, its last-token features cached once, only the head trained (the CPU path);
    # lora: a LoRA adapter (peft) and the head, merged into the output; full: every weight
    mode: Literal["head", "lora", "full"] = "head"
    # the head's and the LoRA adapter's initialisation, the order of the pairs, the held-out split
    seed: int = setting(0, lo=0)
    # the backbone's dtype; auto: bfloat16 where the device runs it natively, float32 elsewhere. lora and
    # full train float32 weights under bf16 autocast when this is bfloat16
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    max_length: int = setting(1024, lo=8)  # tokens per text (bt keeps the end, gpm the start, as their judges do)
    # mode head: a directory of backbone features shared by trainings (keyed by the backbone's name, config
    # and dtype and each text's tokens; docs/train-judge.md); null: none, the features live in the work directory
    features_cache: str | None = None
    train: OptimSettings = field(default_factory=OptimSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    gpm: GPMTrainSettings = field(default_factory=GPMTrainSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def settings_from_dict(data: dict, where: str) -> TrainJudgeSettings:
    """The settings from a mapping; every key and value checked (UserError naming the key)."""
    cfg = build(TrainJudgeSettings, data or {}, "", where)
    cfg.data.check(where)
    if cfg.gpm.dim % 2:
        raise UserError(f"{where}: gpm.dim = {cfg.gpm.dim} must be even (the value head's 2k rows: k planes)")
    if cfg.gpm.prompt_head and cfg.kind != "gpm":
        raise UserError(f"{where}: gpm.prompt_head is for kind gpm (a reward model has no prompt head)")
    if cfg.features_cache and cfg.mode != "head":
        raise UserError(
            f"{where}: features_cache = {cfg.features_cache!r} is for mode head (a frozen backbone's features); "
            f"mode {cfg.mode} trains the backbone, so its features change every step"
        )
    if cfg.mode == "lora" and not cfg.lora.target_modules:
        raise UserError(f"{where}: lora.target_modules is empty; name the linear layers that get an adapter")
    return cfg


def shipped_recipe(name: str) -> Path | None:
    """recipes/judges/NAME.yaml, shipped with sparring, for `sparring train-judge NAME`."""
    from sparring.recipebook import judge_recipes

    return judge_recipes().get(name)


def load_settings(recipe: str | None, overrides: list[str] = ()) -> TrainJudgeSettings:
    """A recipe (a YAML file or the name of a shipped one; None: only the overrides) with `key=value`
    overrides, validated."""
    from sparring.config import parse_override, with_values
    from sparring.tables import read_yaml_mapping

    data: dict = {}
    where = "command line"
    if recipe is not None:
        path = Path(recipe).expanduser()
        if not path.exists() and "/" not in str(recipe) and shipped_recipe(str(recipe)) is not None:
            path = shipped_recipe(str(recipe))
        if not path.is_file():
            raise UserError(f"{recipe}: train-judge recipe not found (a YAML file, or a shipped name: train-judge)")
        where = str(path)
        data = read_yaml_mapping(path)
    for text in overrides:  # in order: a later one wins, as on the command line
        path, value = parse_override(text)
        data = with_values(data, {".".join(path): value})
    return settings_from_dict(data, where if not overrides else f"{where} (with overrides)")
