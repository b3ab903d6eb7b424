"""LoRA for the training stage, through peft (the `lora:` section of a recipe).

Iteration t trains a fresh adapter on top of π_t and merges it: π_{t+1} = π_t + (α/r)·B·A on every
targeted linear layer, every other weight π_t's own. The merged weights are saved as a plain policy,
so both sampling backends and every later stage read a full model as before, and the reference
log-probs stay the ones recorded while sampling from π_t: no reference model, no adapter at sampling
time. The adapter itself is kept too (iter_<t>/adapter/, peft's format), small enough to keep for
every iteration.

Why a fresh adapter each iteration rather than one adapter grown over the run: π_t is the reference
of iteration t, and an adapter initialised with B = 0 starts training exactly at π_t (the model's
output is π_t's to the bit: x·W + 0), which is what the loss assumes.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

from sparring.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"


def _require_peft():
    try:
        import peft
    except ImportError:
        raise UserError(
            "lora.r > 0 needs peft, which is not installed: pip install peft, or set lora.r: 0 to train every weight"
        ) from None
    return peft


def _matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of target names: the module's full name is one of them or ends with
    '.' + one of them."""
    return any(name == t or name.endswith("." + t) for t in targets)


def check_targets(model, lora_cfg, label: str = "the model") -> list[str]:
    """The names of the modules of `model` that lora.target_modules selects; UserError naming the key
    when a name selects nothing or selects something that is not a linear layer (peft would fail on
    it, or silently adapt fewer layers than asked)."""
    import torch

    linear_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    all_names = [n for n, _ in model.named_modules()]
    chosen = []
    for target in lora_cfg.target_modules:
        hits = [n for n in all_names if _matches(n, [target])]
        if not hits:
            leaves = sorted({n.rpartition(".")[2] for n in linear_names if n.rpartition(".")[2] != "lm_head"})
            raise UserError(
                f"lora.target_modules: {target!r} names no module of {label}; its linear layers are {', '.join(leaves)}"
            )
        odd = [n for n in hits if n not in linear_names]
        if odd:
            raise UserError(
                f"lora.target_modules: {target!r} selects {odd[0]}, which is not a linear layer "
                "(sparring's LoRA adapts torch.nn.Linear layers only)"
            )
        chosen += hits
    return sorted(set(chosen), key=all_names.index)


def check_model_targets(model_name: str, lora_cfg) -> None:
    """Before a run directory is written: lora.target_modules against the model's architecture, built
    on the meta device (no weights are read or allocated, so this takes a moment even for a 70B model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sparring.models import resolve_model

    _require_peft()
    resolved = resolve_model(model_name)
    try:
        config = AutoConfig.from_pretrained(resolved)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as exc:  # load_inputs' own checks name the model's problems
        raise UserError(f"model {model_name!r}: cannot build it to check lora.target_modules ({exc})") from None
    check_targets(skeleton, lora_cfg, f"model {model_name!r}")


@contextmanager
def _quiet():
    # peft asks transformers 5 for is_gradient_checkpointing, which warns that the name is deprecated:
    # noise in every training stage's log, about peft's code, not the user's
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
        yield


def attach(model, lora_cfg, seed: int):
    """`model` wrapped with a fresh LoRA adapter (A random, B = 0: the wrapped model computes exactly
    what `model` does). A is drawn from its own generator seeded with `seed`, so the same seed gives
    the same adapter whatever ran before; the process's RNG is left as it was."""
    import torch

    peft = _require_peft()
    check_targets(model, lora_cfg)
    config = peft.LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def targeted_weights(peft_model) -> list[str]:
    """The names, in the merged (plain) model, of the weights an adapter changes, in module order."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return [
        f"{name.removeprefix(prefix)}.weight"
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    ]


def merge(peft_model):
    """The plain model with the adapter merged into its weights (W += (α/r)·B·A, in W's dtype)."""
    with _quiet():
        return peft_model.merge_and_unload()


def save_adapter(peft_model, directory: Path, base: str) -> None:
    """peft's adapter files (adapter_model.safetensors, adapter_config.json) in `directory`, loadable with
    `PeftModel.from_pretrained(π_t, directory)`. `base` names π_t relative to the run (the path of the
    run directory is not part of what a run computes: a moved run must keep its recorded hashes), and
    the config is written with sorted keys and target names, so the same adapter gives the same bytes
    in every process (peft keeps target_modules as a set, whose order follows the string hash seed)."""
    with _quiet():
        peft_model.save_pretrained(str(directory), safe_serialization=True)
    (Path(directory) / "README.md").unlink(missing_ok=True)  # peft's card template: paths, no information
    path = Path(directory) / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_merged(base_dir: str, adapter_dir: str, dtype: str = "float32"):
    """π_t (`base_dir`) with the adapter of `adapter_dir` merged: what iter_t/policy holds (tests, and
    rebuilding a deleted policy by hand)."""
    peft = _require_peft()
    from sparring.models import load_model

    with _quiet():
        model = peft.PeftModel.from_pretrained(load_model(base_dir, dtype), adapter_dir)
        return model.merge_and_unload()
