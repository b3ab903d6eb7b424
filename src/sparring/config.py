"""Typed run configuration, validated before any work starts.

A config is a tree of dataclasses. `load_config` reads YAML, applies `key.sub=value` overrides, and
checks every key and value: an unknown key names the nearest valid one; a bad value names the key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sparring.errors import UserError
from sparring.evaluate import METRICS, plan_metrics
from sparring.judges.settings import JudgeConfig, judge_settings
from sparring.keyhints import key_hint
from sparring.schema import bounds as _range
from sparring.schema import build, check_value, is_plugin, optional_dataclass, section_keys, switched_keys
from sparring.tables import read_yaml_mapping

MetricName = Literal[tuple(METRICS)]  # the names of evaluate's metrics registry
_check_value = check_value  # the names config's callers used before the machinery moved to sparring.schema
_optional_dataclass = optional_dataclass


@dataclass
class MethodConfig:
    """Which method builds the training rows and which loss it trains with (see docs/methods.md)."""

    name: str = "sppo"
    # β of the loss; SPPO regresses ρ onto (P̂ − ½)/β, so β sets the size of a step (η = 1/β).
    beta: float = field(default=0.1, metadata=_range(0, None, lo_open=True))
    label_smoothing: float = field(default=0.0, metadata=_range(0, 0.5, hi_open=True))
    gamma: float = field(default=1.4, metadata=_range(0, None))  # SimPO margin
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = "reverse_kl"  # f-DPO
    alpha: float = field(default=0.5, metadata=_range(0, None, lo_open=True))  # f-DPO α-divergence
    include_self: bool = True  # SPPO reference code keeps the self-comparison (0.5) in P̂
    margin_threshold: float = field(default=0.0, metadata=_range(0, 1, hi_open=True))  # DNO: min P̂_w − P̂_l
    spin_history: bool = False  # SPIN: iteration t also trains on iteration t-1's pairs
    # APO (Nesterov momentum between iterations): θ̂_{t+1} = θ_{t+1} + α(θ_{t+1} − θ_t); 0 disables
    apo_alpha: float = field(default=0.0, metadata=_range(0, None))
    # Nash-MD: opponents drawn from log_softmax((1 − c)·log π_t + c·log μ), c = mixture
    mixture: float = field(default=0.5, metadata=_range(0, 1))
    # LD-DPO (Liu et al. 2024), on any pairwise method with a reference: each response's log-prob (policy
    # and reference) counts its first min(|y_w|, |y_l|) tokens fully and the rest × ld_alpha; the reference
    # is then recomputed per token under π_t before the first update. Unset: off (1.0: the plain sums)
    ld_alpha: float | None = field(default=None, metadata=_range(0, 1))
    # MADPO (Rho 2025), on any pairwise method: each pair's loss × σ(c·h)/σ(h), h = logit P(y_w ≻ y_l) the
    # judge's margin, c = c_min + (c_max − c_min)/(1 + (c_max − 1)/(1 − c_min)·exp(λ(|h| − τ)))
    madpo: bool = False
    # MADPO: c's bound for the hardest pairs (c(0) is just under it)
    madpo_c_max: float = field(default=2.0, metadata=_range(1, None, lo_open=True))
    # MADPO: c's bound for the easiest pairs (c(∞) = c_min)
    madpo_c_min: float = field(default=0.5, metadata=_range(0, 1, lo_open=True, hi_open=True))
    madpo_lambda: float = field(default=1.0, metadata=_range(0, None, lo_open=True))  # MADPO: c's steepness λ
    # MADPO: τ, the margin where c = 1 (harder pairs get c > 1, easier c < 1); the paper's ln(0.999/0.001)
    madpo_tau: float = field(default=6.906754778648554, metadata=_range(0, None, lo_open=True))
    # which (preferred, dispreferred) pairs a pairwise method trains on: best_worst, one per prompt; all, every
    # pair P̂_w > P̂_l; curriculum, Curry-DPO's best-vs-rest, iteration t on each prompt's (t mod (K−1))-th
    # easiest (sparring.methods.pairs)
    pairs: Literal["best_worst", "all", "curriculum"] = "best_worst"
    # DisCO (Li et al. 2025): τ of the log-sum-exp over a group's negatives (method.beta is the KL penalty's β)
    disco_tau: float = field(default=10.0, metadata=_range(0, None, lo_open=True))
    # DisCO: δ, the bound on the per-token KL(π_t ‖ π_θ) that the squared-hinge penalty β[KL − δ]₊² keeps
    disco_delta: float = field(default=1e-4, metadata=_range(0, None))


@dataclass
class PromptsConfig:
    # a prompt source: shipped:NAME, a .jsonl/.json/.parquet/.csv file, a datasets.save_to_disk directory
    # (DIR[@SPLIT]) or hf:ORG/NAME[@SPLIT] (see sparring.prompts)
    train: str = "shipped:train"
    heldout: str = "shipped:heldout"
    per_iteration: int = field(default=64, metadata=_range(1, None))  # a fresh slice each iteration
    # column names of the training source for sparring's fields, e.g. {prompt: instruction}
    fields: dict[str, str] = field(default_factory=dict)
    # the same for the held-out source; unset: prompts.fields applies to it too ({}: its own column names)
    heldout_fields: dict[str, str] | None = None


@dataclass
class GenerationConfig:
    # "hf": sparring's decode loop on the HF model; "vllm": a vLLM engine (optional extra, docs/generation.md)
    backend: Literal["hf", "vllm"] = "hf"
    k: int = field(default=4, metadata=_range(2, None))  # samples per prompt
    max_new_tokens: int = field(default=128, metadata=_range(1, None))
    temperature: float = field(default=0.7, metadata=_range(0, None, lo_open=True))
    top_p: float = field(default=0.9, metadata=_range(0, 1, lo_open=True))
    batch_size: int = field(default=32, metadata=_range(1, None))  # sequences decoded at once
    # auto: bfloat16 where the device runs bf16 matmuls natively, float32 elsewhere (sparring.hardware)
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    shard_size: int = field(default=16, metadata=_range(1, None))  # prompts per samples shard
    # transformers' processors' semantics, both backends (docs/generation.md); the recorded log-probs
    # stay those of the raw model. Defaults: off.
    top_k: int = field(default=0, metadata=_range(0, None))  # keep the k most likely tokens; 0: off
    min_p: float = field(default=0.0, metadata=_range(0, 1))  # drop tokens below min_p × the top one's prob
    repetition_penalty: float = field(default=1.0, metadata=_range(0, None, lo_open=True))  # 1: off
    stop: list[str] = field(default_factory=list)  # a response ends after the first of these strings


@dataclass
class MarsConfig:
    """MARS's own settings (train.optimizer: mars; sparring.mars, Yuan et al. 2024, arXiv 2411.10438)."""

    beta1: float = field(default=0.95, metadata=_range(0, 1, hi_open=True))
    beta2: float = field(default=0.99, metadata=_range(0, 1, hi_open=True))
    gamma: float = field(default=0.025, metadata=_range(0, None))  # weight of the gradient correction
    eps: float = field(default=1e-8, metadata=_range(0, None))
    lr_1d: float | None = field(default=None, metadata=_range(0, None))  # tensors that are not 2-D; unset: train.lr
    beta1_1d: float = field(default=0.9, metadata=_range(0, 1, hi_open=True))
    beta2_1d: float = field(default=0.95, metadata=_range(0, 1, hi_open=True))
    weight_decay_1d: float = field(default=0.1, metadata=_range(0, None))


@dataclass
class TrainConfig:
    optimizer: Literal["adamw", "rmsprop", "sgd", "mars"] = "adamw"
    lr: float = field(default=1e-5, metadata=_range(0, None, lo_open=True))
    epochs: int = field(default=1, metadata=_range(1, None))
    batch_size: int = field(default=8, metadata=_range(1, None))  # rows per optimizer step
    micro_batch_size: int = field(default=8, metadata=_range(1, None))  # rows per forward pass
    warmup_ratio: float = field(default=0.1, metadata=_range(0, 1, hi_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0, None))
    max_grad_norm: float = field(default=1.0, metadata=_range(0, None))  # 0 disables clipping
    # bf16: bf16 autocast, fp32 weights and log-softmax; fp32; auto: bf16 where the device runs it
    # natively, fp32 elsewhere (sparring.hardware)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    mars: MarsConfig = field(default_factory=MarsConfig)  # used when optimizer is mars
    # recompute each decoder layer's activations in the backward pass instead of keeping them
    # (transformers' activation / gradient checkpointing): less memory, about one more forward pass of time
    gradient_checkpointing: bool = False
    # save the training state (weights or adapter, optimizer, schedule, RNG, step) every N optimizer
    # steps under iter_<t>/train_checkpoint/, so a killed stage resumes from there; 0: off
    checkpoint_every: int = field(default=0, metadata=_range(0, None))


@dataclass
class LoRAConfig:
    """LoRA through peft (docs/cli.md): each iteration trains a fresh adapter on top of π_t, and π_{t+1}
    is π_t with that adapter merged in, so sampling and evaluation see plain weights. The run keeps each
    iteration's adapter (iter_<t>/adapter/) and the merged policy (iter_<t>/policy/)."""

    r: int = field(default=0, metadata=_range(0, None))  # the adapter's rank; 0: no LoRA, every weight trains
    alpha: float = field(default=16.0, metadata=_range(0, None, lo_open=True))  # the update is scaled by alpha / r
    dropout: float = field(default=0.0, metadata=_range(0, 1, hi_open=True))  # dropout on the adapter's input
    # names (last component) of the linear layers that get an adapter: the attention and MLP projections
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class EvalConfig:
    """Held-out evaluation of every policy (docs/evaluation.md)."""

    max_new_tokens: int = field(default=128, metadata=_range(1, None))
    batch_size: int = field(default=32, metadata=_range(1, None))
    limit: int | None = field(default=None, metadata=_range(1, None))  # first N held-out prompts
    base: bool = True  # also evaluate the starting policy (iteration table row 0, win-rate anchor)
    greedy: bool = True  # greedy responses; false: sampled with every generation option (temperature, top_p, ...)
    # which metrics; unset: ifeval (when the held-out prompts carry IFEval instructions), win_rate and
    # length_controlled (against the base), win_rate_vs_reference (when eval.reference is set)
    metrics: list[MetricName] | None = None
    judge: JudgeConfig | None = None  # the judge of the win rates; unset: the run's judge
    reference: str | None = None  # responses to compare with (IFEval's or AlpacaEval's format)
    bootstrap: int = field(default=1000, metadata=_range(100, None))  # resamples for the 95% intervals
    bootstrap_seed: int = field(default=0, metadata=_range(0, None))


@dataclass
class TrackingConfig:
    # metrics.jsonl is always written; this also sends every record through accelerate's trackers
    log_with: Literal["none", "tensorboard", "wandb", "trackio", "all"] = "none"


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = field(default=0, metadata=_range(0, None))
    iterations: int = field(default=2, metadata=_range(1, None))
    model: str = "smollm2-135m"  # embedded alias, HF model directory, or hub id
    runs_dir: str = "runs"
    method: MethodConfig = field(default_factory=MethodConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=lambda: judge_settings("ifeval")())
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # train a LoRA adapter per iteration instead of every weight
    # keep only the newest N iter_<t>/policy directories (and APO's policy_trained): older ones are deleted
    # once a newer one is recorded and no pending stage reads them; 0: keep all (docs/cli.md)
    keep_policies: int = field(default=0, metadata=_range(0, None))
    # written by sparring, not a setting: why the `auto` precision settings resolved as they did when the
    # run started (the plan, the report and the model card print it; a resumed run keeps it)
    precision_reason: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- validation


def config_keys() -> list[tuple[str, type, dataclasses.Field, Any]]:
    """Every config key in declaration order: (dotted name, the dataclass that declares it, its field, its
    type). The judge sections list name and cache, then every judge's own keys (sparring.schema)."""
    return section_keys(RunConfig)


def _hint(full: str, section: list[str]) -> str:
    everywhere = [k for k, *_ in config_keys()]  # the nearest key of any section, or TRL's name
    return key_hint(full, everywhere)


def build_section(cls, data: dict, prefix: str, where: str):
    """One config section (a dataclass) from a mapping, validated like a whole config."""
    return _build(cls, data, prefix, where)


def _build(cls, data: dict, prefix: str, where: str):
    def special(full: str, value: Any) -> None:
        if full == "model" and isinstance(value, dict):
            raise UserError(_model_is_a_name(value, where))

    return build(cls, data, prefix, where, hint=_hint, special=special)


def _model_is_a_name(value: dict, where: str) -> str:
    """The error for `model` given as a mapping (`model.lora.r=16`, or `model: {lora: ...}` in a recipe):
    `model` is the model's name in every recipe, so LoRA is the top-level section `lora`."""

    def dotted(d: dict, prefix: str) -> list[str]:
        return [
            k for key, v in d.items() for k in (dotted(v, f"{prefix}{key}.") if isinstance(v, dict) else [prefix + key])
        ]

    keys = dotted(value, "model.")
    lora = [k.removeprefix("model.") for k in keys if k.startswith("model.lora.")]
    hint = (
        f"; LoRA settings are the top-level section lora: write {', '.join(lora)}"
        if lora
        else "; LoRA settings are the top-level section lora (lora.r, lora.alpha, lora.dropout, lora.target_modules)"
    )
    return f"{where}: {keys[0] if keys else 'model'}: model is the model's name (a string), not a section{hint}"


def config_from_dict(data: dict, where: str = "config") -> RunConfig:
    cfg = _build(RunConfig, data or {}, "", where)
    _cross_checks(cfg, where)
    return cfg


def _method_checks(cfg: RunConfig, method, where: str) -> None:
    """What the chosen method cannot do with these settings, refused before any work starts, naming the
    file: method.pairs on a method whose rows are not pairs of its samples, LD-DPO / MADPO on one they do
    not apply to, more samples per prompt than its rows hold."""
    from sparring.methods import METHODS

    m = cfg.method
    if m.pairs != "best_worst" and "pairs" not in method.settings:
        fits = ", ".join(x.name for x in METHODS.values() if "pairs" in x.settings)
        raise UserError(
            f"{where}: method.pairs = {m.pairs!r}: method {m.name!r} does not train on pairs of its samples; "
            f"it applies to: {fits}"
        )
    problem = method.modifier_problem(m) if (m.ld_alpha is not None or m.madpo) else None
    if problem:
        fits = ", ".join(x.name for x in METHODS.values() if x.modifier_problem(m) is None)
        raise UserError(f"{where}: {problem}; it applies to: {fits}")
    if method.max_k is not None and cfg.generation.k > method.max_k:
        raise UserError(
            f"{where}: generation.k = {cfg.generation.k}: method {m.name!r} holds at most {method.max_k} samples "
            "per prompt in a row"
        )


def _cross_checks(cfg: RunConfig, where: str) -> None:
    from sparring.losses import LOSSES  # noqa: F401  (import check only)
    from sparring.methods import METHODS

    if cfg.method.name not in METHODS:
        near = difflib.get_close_matches(cfg.method.name, list(METHODS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise UserError(
            f"{where}: method.name = {cfg.method.name!r} is not a known method{hint} "
            f"(known: {', '.join(sorted(METHODS))})"
        )
    method = METHODS[cfg.method.name]
    _method_checks(cfg, method, where)
    if method.mixture_opponents and cfg.generation.k % 2:
        raise UserError(
            f"{where}: generation.k = {cfg.generation.k} must be even for method {cfg.method.name!r} "
            "(half of each prompt's samples are the policy's, half the mixture opponents)"
        )
    if cfg.generation.backend == "vllm":
        if method.mixture_opponents:
            raise UserError(
                f"{where}: method {cfg.method.name!r} decodes the policy and the reference in lockstep, "
                "which only generation.backend: hf does; set generation.backend: hf"
            )
        from sparring.generation import require_vllm

        require_vllm(where)
    from sparring.rundir import check_name

    check_name(cfg.name, f"{where}: name")
    if cfg.eval.reference is not None and not Path(cfg.eval.reference).expanduser().is_file():
        raise UserError(f"{where}: eval.reference = {cfg.eval.reference!r}: no such response file")
    if cfg.eval.metrics is not None:
        if not cfg.eval.metrics:
            raise UserError(
                f"{where}: eval.metrics is empty; name at least one of {', '.join(METRICS)} (or leave it unset)"
            )
        missing = {  # the held-out prompts' instructions are checked when they are loaded (load_inputs)
            "base": "compares with the base policy, which eval.base: false does not evaluate",
            "reference": "needs eval.reference, which is not set",
        }
        have = {"instructions": True, "base": cfg.eval.base, "reference": cfg.eval.reference is not None}
        plan_metrics(
            cfg.eval.metrics, have, lambda m, need: f"{where}: eval.metrics has {m.name}, which {missing[need]}"
        )
    if cfg.lora.r > 0:
        if not cfg.lora.target_modules or not all(m.strip() for m in cfg.lora.target_modules):
            raise UserError(
                f"{where}: lora.target_modules = {cfg.lora.target_modules!r} must name at least one linear "
                "layer (e.g. q_proj), with no empty names"
            )
    if cfg.train.micro_batch_size > cfg.train.batch_size or cfg.train.batch_size % cfg.train.micro_batch_size:
        raise UserError(
            f"{where}: train.batch_size = {cfg.train.batch_size} must be a multiple of "
            f"train.micro_batch_size = {cfg.train.micro_batch_size}"
        )


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value (e.g. train.lr=2e-5)")
    key, raw = text.split("=", 1)
    if not key:
        raise UserError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str], note=None, source: str = "the config") -> dict:
    """`data` with each `key=value` override (dotted key, YAML value) set; `data` itself is not changed.

    A plug-in switched by an override (`judge.name=openai` over a recipe for ifeval) does not inherit the
    settings `data` gave the plug-in it replaces: the keys of that section which the new plug-in does not
    take are dropped, with a one-line note (`note(text)`, default: stderr; `source` names `data` in it).
    Keys the overrides give are left to validation, strictly: one that does not apply is still an error."""
    given = []
    out = data
    for text in overrides:  # one at a time, in order: a later override wins, as on the command line
        path, value = parse_override(text)
        given.append(".".join(path))
        out = with_values(out, {".".join(path): value})
    for section, cls in _plugin_sections():
        dropped = switched_keys(cls, _dotted(data, section), _dotted(out, section), section, set(given))
        if dropped:
            out = with_values(out, {section: {k: v for k, v in _dotted(out, section).items() if k not in dropped}})
            shown = [f"{section}.{k}={_dotted(data, f'{section}.{k}')!r}" for k in dropped]
            if any(_dotted(data, f"{section}.{k}") is not None for k in dropped):
                name = _dotted(out, f"{section}.name")
                (note or _stderr)(
                    f"sparring: {section}.name={name} (command line): dropped {source}'s {', '.join(shown)}, "
                    f"which {cls.kind} {name!r} does not take"
                )
    return out


def _plugin_sections() -> list[tuple[str, type]]:
    """(dotted section, its plug-in base class) of every plug-in section: judge, eval.judge."""
    out = []
    for key, _, _, typ in config_keys():
        inner = typ if dataclasses.is_dataclass(typ) else optional_dataclass(typ)
        if inner is not None and is_plugin(inner):
            out.append((key, inner))
    return out


def _dotted(data, key: str):
    for part in key.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def with_values(data: dict, values: dict[str, Any]) -> dict:
    """`data` with each dotted key of `values` ("train.lr") set to its value, the sections on its path
    copied (or made, where missing or not a mapping); `data` itself is not changed."""
    data = dict(data)
    for key, value in values.items():
        *path, last = key.split(".")
        node = data
        for part in path:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[last] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] = (), note=None) -> RunConfig:
    """The run config of a recipe (None: the defaults) with `key=value` overrides, validated. A plug-in
    switched by an override drops the recipe's settings of the one it replaces that the new one does not
    take, with a note (`apply_overrides`); keys given on the command line are checked strictly."""
    data: dict = {}
    where = "command line"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        data = read_yaml_mapping(path)
    data = apply_overrides(data, list(overrides), note=note, source=where)
    return config_from_dict(data, where if not overrides else f"{where} (with overrides)")


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys (dotted) whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out
