"""Sharing a run, and finding one's way around sparring.

- `write_model_card` / `refresh_model_cards`: a Hugging Face model card (README.md) in each saved
  policy directory: base model, method and loss, iteration, judge, held-out metrics with their 95%
  intervals and paired differences from the base, the resolved config, how to load it.
- `push`: upload a policy directory to the Hugging Face Hub (validated first; hub failures become
  UserErrors that name the repo and the remedy, never the token).
- `export_trl`: every iteration's preference pairs as a `datasets` DatasetDict (one split per
  iteration) and JSONL files in TRL's conversational preference format.
- `config_reference`: docs/config.md, generated from the config dataclasses and the comments of
  config.py's source.
- `suggest_key` / `key_hint`: the nearest valid key for an unknown one across all sections, and TRL's
  argument names mapped to sparring's keys.
- `find_recipe`: `sparring run sppo` finds the shipped recipes/sppo.yaml.

Run directories are read leniently (the raw config.yaml, not `load_config`): a run of an earlier
version may hold keys this version dropped, and validating its judge would need the judge's model and
API key variable present, which neither a card nor an export needs.

`add_parser` registers the commands export, push, card, recipes and config-reference (for
sparring.cli's COMMAND_MODULES); heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import json
import os
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

from sparring import config as config_module
from sparring.errors import UserError

# ------------------------------------------------------------------ reading a run leniently


def _read_run_config(run_dir: Path) -> dict:
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a sparring run directory (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values")
    return data


def _setting(cfg: dict, dotted: str) -> Any:
    """cfg's value of a dotted key, or this version's default when the run's config lacks it."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _default(dotted)
        node = node[part]
    return node


def _default(dotted: str) -> Any:
    node: Any = config_module.RunConfig()
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _iterations_on_disk(run_dir: Path) -> list[int]:
    out = []
    for p in Path(run_dir).glob("iter_*"):
        m = re.fullmatch(r"iter_(\d+)", p.name)
        if m and p.is_dir():
            out.append(int(m.group(1)))
    return sorted(out)


# ------------------------------------------------------------------ model cards

CARD_MARK = "<!-- written by sparring: `sparring card --run RUN` rewrites it; remove this line to keep your edits -->"

# The hub ids of the embedded aliases (the embedded model is converted from a quantized GGUF of it)
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# What each method trains on and its loss, in the notation of docs/methods.md
METHOD_LOSSES = {
    "sppo": "½[(ρ_w − (P̂_w − ½)/β)² + (ρ_l − (P̂_l − ½)/β)²] on each prompt's best (w) and worst (l) sample",
    "sppo-single": "½[(ρ_w − (p − ½)/β)² + (ρ_l + (p − ½)/β)²], p = P(y_w ≻ y_l), on the best/worst pair",
    "sppo-all": "(ρ_k − (P̂_k − ½)/β)² on every one of the K samples",
    "dpo": "−(1 − ε) log σ(βΔ) − ε log σ(−βΔ), Δ = ρ_w − ρ_l, on the best/worst pair",
    "ipo": "(Δ − 1/(2β))², Δ = ρ_w − ρ_l, on the best/worst pair",
    "fdpo": "−log σ(β[g(ρ_w) − g(ρ_l)]), g from method.divergence, on the best/worst pair",
    "simpo": "−log σ(β(l̄_w − l̄_l) − γ) on length-averaged log-probabilities l̄, no reference",
    "dno": "the DPO loss on best/worst pairs whose win-rate margin P̂_w − P̂_l exceeds method.margin_threshold",
    "spin": "the DPO loss with the prompt's ground-truth response preferred over π_t's sample",
    "nash-md": "β·stopgrad(log π_θ − log μ)·log π_θ − (P̂(y ≻ π_t^μ) − ½)·log π_θ, μ the initial model",
}
# The method.* keys that matter to each method (the card lists these, not every key)
METHOD_KEYS = {
    "sppo": ("beta", "include_self"),
    "sppo-single": ("beta", "include_self"),
    "sppo-all": ("beta", "include_self"),
    "dpo": ("beta", "label_smoothing", "include_self"),
    "ipo": ("beta", "include_self"),
    "fdpo": ("beta", "divergence", "alpha", "include_self"),
    "simpo": ("beta", "gamma", "include_self"),
    "dno": ("beta", "label_smoothing", "margin_threshold", "include_self"),
    "spin": ("beta", "spin_history"),
    "nash-md": ("beta", "mixture"),
}
_METRIC_NAMES = {
    "prompt_strict": "IFEval prompt-level strict accuracy",
    "instruction_strict": "IFEval instruction-level strict",
    "prompt_loose": "IFEval prompt-level loose",
    "instruction_loose": "IFEval instruction-level loose",
    "win_rate_vs_base": "win rate vs the base model",
    "length_controlled_win_rate": "length-controlled win rate",
    "win_rate_vs_reference": "win rate vs the reference responses",
}
_SECRET = re.compile(r"(token|secret|password|passwd|api_?key)$", re.IGNORECASE)


def _redacted(obj: Any) -> Any:
    """The config with anything that could be a credential hidden: values of secret-looking keys (a
    key *naming* an environment variable, like judge.api_key_env, stays) and user:password@ in URLs."""
    if isinstance(obj, dict):
        return {
            k: ("<redacted>" if isinstance(k, str) and _SECRET.search(k) and v is not None else _redacted(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_redacted(v) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"(?<=://)[^/@\s]+@", "<redacted>@", obj)
    return obj


def _base_model_id(model: str) -> str | None:
    """A hub id for the card's base_model field, or None for a local directory (the hub rejects
    metadata naming something that is not a model id)."""
    if model in HUB_IDS:
        return HUB_IDS[model]
    if Path(model).expanduser().exists():
        return None
    return model if re.fullmatch(r"[\w.-]+/[\w.-]+", model) else None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _metrics_for(run_dir: Path, iteration: int | None, summary: dict | None) -> tuple[dict | None, dict]:
    """(the summary row of a policy, extra facts: n, judge, bootstrap). `iteration` None: the base. The
    summary is written at the end of a run, so a policy evaluated since then is read from its eval/."""
    number = 0 if iteration is None else iteration + 1
    row = None
    for r in (summary or {}).get("iterations") or []:
        if isinstance(r, dict) and r.get("iteration") == number:
            row = r
    eval_dir = Path(run_dir) / ("base" if iteration is None else f"iter_{iteration}") / "eval"
    met = _read_json(eval_dir / "metrics.json")
    if row is None and met is not None:
        from sparring.metrics import summary_row

        row = summary_row(met)
    extra = {k: met[k] for k in ("n", "bootstrap", "judge") if met and k in met}
    return row, extra


def _metrics_section(run_dir: Path, iteration: int, cfg: dict, summary: dict | None) -> list[str]:
    row, extra = _metrics_for(run_dir, iteration, summary)
    lines = ["## Held-out evaluation", ""]
    heldout = _setting(cfg, "prompts.heldout")
    limit = _setting(cfg, "eval.limit")
    if row is None:
        lines += [
            f"Not evaluated yet: the evaluation on the held-out prompts ({heldout}) runs after training. "
            f"Once `iter_{iteration}/eval` is done, `sparring card --run RUN` rewrites this card with the "
            "results.",
            "",
        ]
        return lines
    base, _ = _metrics_for(run_dir, None, summary)
    ivs = row.get("intervals") or {}
    shown = [k for k in _METRIC_NAMES if row.get(k) is not None]
    what = [f"{extra['n']} held-out prompts" if "n" in extra else "held-out prompts", f"from `{heldout}`"]
    if limit:
        what.append(f"(the first {limit})")
    greedy = _setting(cfg, "eval.greedy")
    lines.append(
        f"On {' '.join(what)}, {'greedy' if greedy else 'sampled'} responses of at most "
        f"{_setting(cfg, 'eval.max_new_tokens')} tokens. Intervals: 95% percentile bootstrap over prompts"
        + (f" ({extra['bootstrap']} resamples)" if "bootstrap" in extra else "")
        + "; the difference from the base is paired (the same resampled prompts for both policies)."
    )
    if "judge" in extra:
        lines.append(f"Win rates judged by `{extra['judge']}`.")
    lines += ["", "| metric | this policy [95% CI] | base model | difference from base [95% CI] |", "|---|---|---|---|"]
    for k in shown:
        iv = ivs.get(k) or {}
        mine = _pct(row[k]) + (f" [{_pct(iv['ci95'][0])}, {_pct(iv['ci95'][1])}]" if "ci95" in iv else "")
        base_v = 0.5 if k in ("win_rate_vs_base", "length_controlled_win_rate") else (base or {}).get(k)
        if "delta" in iv:
            lo, hi = iv["delta_ci95"]
            delta = f"{100 * iv['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] points"
            if iv.get("significant"):
                delta += " (excludes 0)"
        else:
            delta = "–"
        lines.append(f"| {_METRIC_NAMES[k]} | {mine} | {_pct(base_v)} | {delta} |")
    if row.get("mean_response_tokens") is not None:
        base_tok = (base or {}).get("mean_response_tokens")
        lines.append(
            f"| mean response tokens | {row['mean_response_tokens']:.0f} | "
            f"{'–' if base_tok is None else f'{base_tok:.0f}'} | – |"
        )
    if not shown:
        lines.append("| (no metric recorded) | – | – | – |")
    return lines + [""]


def _judge_section(cfg: dict) -> list[str]:
    from sparring.judges.settings import COMMON, KEYS

    def settings(prefix: str) -> tuple[str, list[str]]:
        name = _setting(cfg, f"{prefix}name")
        keys = KEYS.get(name, {})
        out = []
        for key in [k for k in COMMON if k != "name"] + list(keys):
            value = _setting(cfg, f"{prefix}{key}")
            if value is None:
                value = keys.get(key)
            if value is None:
                continue
            if key == "api_key_env":  # the variable's name only: its value (the key) is never read here
                out.append(f"- `{prefix}{key}`: `{value}` (the environment variable holding the key; not recorded)")
            else:
                out.append(f"- `{prefix}{key}`: {_value_text(_redacted({key: value})[key])}")
        return name, out

    name, lines = settings("judge.")
    out = [
        "## Judge",
        "",
        f"Preferences P(y_i ≻ y_j) between the K samples of each prompt came from the `{name}` judge (docs/judge.md):",
        "",
        *lines,
    ]
    if isinstance(cfg.get("eval"), dict) and isinstance(cfg["eval"].get("judge"), dict):
        ename, elines = settings("eval.judge.")
        out += ["", f"The held-out win rates were judged by `{ename}`:", "", *elines]
    return out + [""]


def render_model_card(
    *,
    run_dir: str | Path,
    iteration: int,
    cfg: dict,
    summary: dict | None,
    repo_id: str | None = None,
    stages: dict | None = None,
) -> str:
    """The text of the model card of iteration `iteration`'s policy (π_{t+1}, saved in iter_t/policy)."""
    import yaml

    from sparring.methods import METHODS

    run_dir = Path(run_dir)
    method = _setting(cfg, "method.name")
    model = str(_setting(cfg, "model"))
    total = _setting(cfg, "iterations")
    base_id = _base_model_id(model)
    apo = (_setting(cfg, "method.apo_alpha") or 0) > 0
    front: dict = {}
    if base_id:
        front["base_model"] = base_id
    front["library_name"] = "transformers"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["sparring", method, "self-play", "preference-optimization"] + (["apo"] if apo else [])
    train_src = str(_setting(cfg, "prompts.train"))
    if train_src.startswith("hf:"):
        front["datasets"] = [train_src[3:].split("@")[0]]
    t1 = iteration + 1
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", CARD_MARK, ""]
    lines += [f"# {_setting(cfg, 'name')}: π_{t1}, iteration {t1} of {total} ({method})", ""]
    lines += [
        "A policy trained with sparring's self-play preference optimization loop: "
        f"{t1} round(s) of generate → judge → train starting from "
        + (f"`{base_id}`" if base_id else f"the local model `{model}`")
        + (" (the embedded copy, converted from its quantized GGUF file)" if model in HUB_IDS else "")
        + f". This is the policy saved after iteration {iteration} (`iter_{iteration}/policy` of the run).",
        "",
    ]
    m = METHODS.get(method)
    lines += ["## Training", "", f"- **Method**: `{method}`" + (f" — {m.description}" if m else "")]
    if method in METHOD_LOSSES:
        lines.append(
            f"- **Loss**: {METHOD_LOSSES[method]}; ρ = log π_θ(y) − log π_t(y), P̂ = win rate against the "
            "iteration's K samples"
        )
    keys = METHOD_KEYS.get(method, ("beta",))
    params = ", ".join(f"`{k}` = {_value_text(_setting(cfg, 'method.' + k))}" for k in keys)
    lines.append(f"- **Method settings**: {params}")
    if apo:
        lines.append(
            f"- **APO**: the saved weights are extrapolated, θ̂ = θ + α(θ − θ_prev), α = "
            f"{_setting(cfg, 'method.apo_alpha')}"
        )
    lines += [
        f"- **Iteration**: {t1} of {total}",
        f"- **Prompts**: `{train_src}`, {_setting(cfg, 'prompts.per_iteration')} fresh prompts per iteration",
        f"- **Sampling**: K = {_setting(cfg, 'generation.k')} responses per prompt, at most "
        f"{_setting(cfg, 'generation.max_new_tokens')} new tokens, temperature "
        f"{_setting(cfg, 'generation.temperature')}, top-p {_setting(cfg, 'generation.top_p')}",
        f"- **Optimizer**: {_setting(cfg, 'train.optimizer')}, lr {_setting(cfg, 'train.lr')}, "
        f"{_setting(cfg, 'train.epochs')} epoch(s), {_setting(cfg, 'train.batch_size')} rows per step, "
        f"{_setting(cfg, 'train.precision')}",
        f"- **Seed**: {_setting(cfg, 'seed')}",
    ]
    done = (stages or {}).get(f"iter_{iteration}/train", {}).get("metrics") or {}
    rows = (stages or {}).get(f"iter_{iteration}/rows", {}).get("metrics") or {}
    facts = []  # at save time the train stage is not recorded yet: say what the manifest knows
    if "rows" in rows and "prompts" in rows:
        facts.append(f"{rows['rows']} training rows from {rows['prompts']} prompts")
    if "steps" in done:
        facts.append(f"{done['steps']} optimizer steps")
    if facts:
        lines.append(f"- **This iteration**: {', '.join(facts)}")
    lines.append("")
    lines += _judge_section(cfg)
    lines += _metrics_section(run_dir, iteration, cfg, summary)
    # no absolute path: the card is part of the policy's recorded hash, and two runs of one config in
    # two places (or a moved run) must give the same bits
    where = repo_id or f"{run_dir.name}/iter_{iteration}/policy"
    lines += [
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        'messages = [{"role": "user", "content": "Write a haiku about autumn."}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)",
        "output = model.generate(**inputs, max_new_tokens=128)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
    ]
    shown = {k: v for k, v in _redacted(cfg).items() if k != "runs_dir"}
    lines += [
        "## Configuration",
        "",
        "The run's resolved config (`config.yaml` without `runs_dir`, which says where "
        "the run lived, not what it computed; `sparring run` reruns it):",
        "",
        "```yaml",
        yaml.safe_dump(shown, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    policy_dir: str | Path, *, run_dir: str | Path, iteration: int, cfg: dict, summary: dict | None
) -> Path:
    """Write README.md (a model card) into `policy_dir`, the policy trained in iteration `iteration`
    (0-based: iter_t/policy holds π_{t+1}). `cfg`: the resolved config as a dict; `summary`: summary.json's
    content or None (before the evaluation the card says "not evaluated yet"). Written atomically, and
    only when its text changes (a finished run may sit on a read-only disk).

    `policy_dir` may be the temporary directory train_stage saves the policy into (the card then goes
    into the sha256 the stage records; it names the final iter_t/policy from `run_dir`). When it is the
    run's recorded iter_t/policy, the card is rewritten under the run's lock and the new sha256 of the
    directory is recorded, so that resuming or `status --verify` does not take the card for damage."""
    policy_dir, run_dir = Path(policy_dir), Path(run_dir)
    if not policy_dir.is_dir():
        raise UserError(f"{policy_dir}: no such policy directory")
    from sparring.rundir import RunDir, write_text

    rd = RunDir(run_dir)
    try:
        stages = rd.manifest()["stages"]
    except UserError:  # a card must not fail over a damaged manifest; it only adds row and step counts
        stages = {}
    text = render_model_card(run_dir=run_dir, iteration=iteration, cfg=cfg, summary=summary, stages=stages)
    path = policy_dir / "README.md"
    try:
        if path.read_text() == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    rel = f"iter_{iteration}/policy"
    recorded = ((stages.get(f"iter_{iteration}/train") or {}).get("outputs") or {}).get(rel)
    if recorded is None or not _same_dir(policy_dir, run_dir / rel):
        write_text(path, text)
    else:
        _rewrite_recorded_card(rd, iteration, text)
    return path


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _rewrite_recorded_card(rd, t: int, text: str) -> None:
    """Rewrite the card of the recorded iter_t/policy, holding the run's lock (a live run of the directory
    is not raced). The card is not part of the policy's recorded sha256 (sparring.rundir.sha256_of leaves it
    out), so the record stays valid; a policy that no longer matches its record keeps its card (a card with
    the metrics of other weights would mislead)."""
    from sparring.rundir import sha256_of, write_text

    key, rel = f"iter_{t}/train", f"iter_{t}/policy"
    policy = rd.root / rel
    held = (rd.lock.holder() or "").startswith("this process")  # the loop's own refresh holds it already
    if not held:
        rd.lock.acquire("sparring card")
    try:
        entry = rd.stage(key) or {}
        if sha256_of(policy) != (entry.get("outputs") or {}).get(rel):
            raise UserError(
                f"{policy} no longer matches the sha256 that {key} recorded, so its model card is left "
                f"as it is; `sparring status --verify {rd.root}` checks the run, and resuming it trains "
                "the policy again"
            )
        write_text(policy / "README.md", text)
    finally:
        if not held:
            rd.lock.release()


def _is_ours(readme: Path) -> bool:
    """True when README.md is absent or a card sparring wrote (a hand-edited card loses the mark)."""
    try:
        return CARD_MARK in readme.read_text()
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False


def refresh_model_cards(run_dir: str | Path) -> list[Path]:
    """Rewrite the card of every saved policy of the run (after its evaluation, with its metrics); a
    README.md without sparring's mark line (edited by hand) is left alone. Returns the cards (each
    written only if its text changed; see write_model_card for the manifest's record)."""
    run_dir = Path(run_dir)
    cfg = _read_run_config(run_dir)
    summary = _read_json(run_dir / "summary.json")
    written, problems = [], []
    for t in _iterations_on_disk(run_dir):
        policy = run_dir / f"iter_{t}" / "policy"
        if (policy / "config.json").is_file() and _is_ours(policy / "README.md"):
            try:
                written.append(write_model_card(policy, run_dir=run_dir, iteration=t, cfg=cfg, summary=summary))
            except UserError as exc:  # one damaged policy does not keep the others' cards stale
                problems.append(str(exc))
    if problems:
        raise UserError("\n".join(dict.fromkeys(problems)))  # a live run's lock refuses every card alike
    return written


def _run_of_policy(policy_dir: Path) -> tuple[Path, int] | None:
    """(run directory, t) when `policy_dir` is a run's iter_t/policy."""
    m = re.fullmatch(r"iter_(\d+)", policy_dir.parent.name)
    if policy_dir.name == "policy" and m and (policy_dir.parent.parent / "config.yaml").is_file():
        return policy_dir.parent.parent, int(m.group(1))
    return None


# ------------------------------------------------------------------ push to the hub

# A hub repo id: ORG/NAME, letters, digits, '-', '_', '.', at most 96 characters a name, no '--' or '..',
# not starting or ending with '-' or '.' (the hub's own rules, checked here before any network call)
_REPO_PART = r"(?!.*(--|\.\.))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or "/" not in repo_id:
        raise UserError(
            f"repo id {repo_id!r} must be ORG/NAME (your user name or an organization, then the model "
            "name), e.g. alice/smollm2-sppo-iter2"
        )
    org, _, name = repo_id.partition("/")
    for part, what in ((org, "ORG"), (name, "NAME")):
        if not re.fullmatch(_REPO_PART, part):
            raise UserError(
                f"repo id {repo_id!r}: {what} {part!r} may hold only letters, digits, '-', '_' and '.', "
                "at most 96 characters, without '--' or '..', and must not start or end with '-' or '.'"
            )


def check_policy_dir(policy_dir: Path) -> None:
    if not policy_dir.is_dir():
        raise UserError(f"{policy_dir}: no such directory (a saved policy, e.g. runs/NAME/iter_T/policy)")
    if not (policy_dir / "config.json").is_file():
        raise UserError(f"{policy_dir} has no config.json: not a saved Hugging Face model directory")
    if not any((policy_dir / f).is_file() for f in WEIGHT_FILES) and not list(policy_dir.glob("*.safetensors")):
        raise UserError(
            f"{policy_dir} has no weights (model.safetensors or pytorch_model.bin): was its save interrupted?"
        )


def _hub_error(exc: BaseException, repo_id: str, secrets: list[str]) -> UserError:
    """A UserError for a failed hub call: what went wrong with `repo_id` and what to do."""
    from huggingface_hub import errors

    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for s in secrets:  # the hub does not echo tokens, but the message is printed: make sure
        if s:
            detail = detail.replace(s, "<token>")
    if isinstance(exc, errors.LocalTokenNotFoundError):
        return UserError(
            f"push to {repo_id}: no Hugging Face token found; log in with `hf auth login` or set HF_TOKEN "
            "to a token with write access"
        )
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return UserError(f"push to {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    if isinstance(exc, errors.HFValidationError):
        return UserError(f"push to {repo_id}: the hub rejects this repo id ({detail})")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            return UserError(
                f"push to {repo_id}: the hub rejected the token (HTTP 401: invalid or expired); log in "
                "again with `hf auth login` or set HF_TOKEN to a valid token"
            )
        if status == 403:
            return UserError(
                f"push to {repo_id}: the token may not write to {repo_id.split('/')[0]!r} (HTTP 403); use "
                "a token with write access, and an organization you are a member of"
            )
        if status == 404:
            return UserError(
                f"push to {repo_id}: the hub found no such repository, or the token cannot see it "
                "(HTTP 404); check the repo id and the token's permissions"
            )
        if status == 429:
            return UserError(f"push to {repo_id}: the hub is rate-limiting these requests (HTTP 429); wait and retry")
        return UserError(f"push to {repo_id}: the hub answered HTTP {status}: {detail}")
    return UserError(
        f"push to {repo_id}: could not reach the Hugging Face Hub ({type(exc).__name__}: {detail}); "
        "check the network connection (and HF_ENDPOINT, if set), then retry"
    )


def push(policy_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None, api=None) -> str:
    """Upload a saved policy directory to the hub repo `repo_id` (created if needed); returns its URL.
    A run's policy is uploaded with a fresh model card whose snippet loads `repo_id`, rendered in memory:
    push writes nothing in the run (which may be running, or read-only). `token`: None uses the logged-in
    token (`hf auth login`, HF_TOKEN). `api`: an HfApi or a stand-in with its create_repo, upload_folder
    and upload_file."""
    policy_dir = Path(policy_dir)
    check_repo_id(repo_id)
    check_policy_dir(policy_dir)
    run = _run_of_policy(policy_dir)
    card = None
    if run is not None and _is_ours(policy_dir / "README.md"):
        from sparring.rundir import RunDir

        run_dir, t = run
        try:
            stages = RunDir(run_dir).manifest()["stages"]
        except UserError:
            stages = {}
        card = render_model_card(
            run_dir=run_dir,
            iteration=t,
            cfg=_read_run_config(run_dir),
            summary=_read_json(run_dir / "summary.json"),
            repo_id=repo_id,
            stages=stages,
        )
    from huggingface_hub import HfApi, errors

    if api is None:
        api = HfApi(token=token)
    auth = {"token": token} if token is not None else {}
    # Network failures arrive as the hub's HTTP errors, its transport-level HTTPError, or plain OSErrors
    hub_errors = (
        errors.HfHubHTTPError,
        getattr(errors, "HTTPError", OSError),
        errors.LocalTokenNotFoundError,
        errors.HFValidationError,
        errors.OfflineModeIsEnabled,
        OSError,
    )
    secrets = [token or "", os.environ.get("HF_TOKEN", "")]
    name = policy_dir.parent.parent.name + "/" + policy_dir.parent.name if run else policy_dir.name
    ignore = [".*.tmp", ".*.tmp/*"] + (["README.md"] if card is not None else [])
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", **auth)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(policy_dir),
            repo_type="model",
            commit_message=f"sparring: upload {name}",
            ignore_patterns=ignore,
            **auth,
        )
        if card is not None:
            api.upload_file(
                path_or_fileobj=card.encode("utf-8"),
                path_in_repo="README.md",
                repo_id=repo_id,
                repo_type="model",
                commit_message=f"sparring: model card of {name}",
                **auth,
            )
    except hub_errors as exc:
        raise _hub_error(exc, repo_id, secrets) from None
    endpoint = getattr(api, "endpoint", None) or "https://huggingface.co"
    return f"{str(endpoint).rstrip('/')}/{repo_id}"


# ------------------------------------------------------------------ export for TRL


def _conversation_features():
    from datasets import Features, List, Value

    turns = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "prompt": turns,
            "chosen": turns,
            "rejected": turns,
            "prompt_id": Value("string"),
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "p_chosen_beats_rejected": Value("float64"),
            "chosen_index": Value("int32"),
            "rejected_index": Value("int32"),
            "iteration": Value("int32"),
        }
    )


def _samples_by_prompt(path: Path) -> tuple[list[str], dict[str, dict[int, dict]]]:
    """(prompt ids in prompt order, {prompt id: {sample index: sample row}}) of a samples.parquet.
    Only the columns every version wrote are read."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["prompt_id", "prompt_index", "sample_index", "prompt", "response"])
    order: dict[str, int] = {}
    by: dict[str, dict[int, dict]] = {}
    for row in table.to_pylist():
        order.setdefault(row["prompt_id"], row["prompt_index"])
        by.setdefault(row["prompt_id"], {})[row["sample_index"]] = row
    return sorted(order, key=order.get), by


def _pref_matrices(path: Path, k_of: dict[str, int]):
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["prompt_id", "i", "j", "p"]).to_pydict()
    mats = {pid: np.full((k, k), np.nan) for pid, k in k_of.items()}
    for pid, i, j, p in zip(t["prompt_id"], t["i"], t["j"], t["p"]):
        if pid in mats and 0 <= i < mats[pid].shape[0] and 0 <= j < mats[pid].shape[0]:
            mats[pid][i, j] = p
    return mats


def _load_run_prompts(cfg: dict) -> tuple[dict, str | None]:
    """{id: Prompt} from the run's training source, and a note when it cannot be read (moved, offline)."""
    from sparring.prompts import load_prompts

    source = _setting(cfg, "prompts.train")
    try:
        prompts = load_prompts(source, fields=_setting(cfg, "prompts.fields") or {})
    except (UserError, OSError) as exc:
        return {}, (
            f"the run's training prompts ({source}) could not be read ({str(exc).splitlines()[0]}): each "
            "prompt is its text from samples.parquet as one user turn"
        )
    return {p.id: p for p in prompts}, None


def _describe(method: str, cfg: dict, uses_pairs: bool) -> str:
    include_self = _setting(cfg, "method.include_self")
    head = (
        f"Preference pairs of the sparring run {_setting(cfg, 'name')!r} (method {method}), one split per iteration. "
    )
    if method == "spin":
        how = (
            "chosen is the prompt's ground-truth reference response and rejected is π_t's first sample: the pair "
            "SPIN trained on (iter_t/train.parquet; SPIN keeps tied prompts too, and score_chosen and "
            "p_chosen_beats_rejected are null, the ground truth never being judged). "
        )
    elif uses_pairs:
        how = (
            "chosen and rejected are the pair the method trained on in that iteration (iter_t/train.parquet): "
            "the prompt's best and worst sample by win rate P̂"
        )
        if method == "dno":
            threshold = _setting(cfg, "method.margin_threshold")
            how += f", kept when P̂_chosen − P̂_rejected > method.margin_threshold = {threshold}"
        how += ". "
    else:
        how = (
            f"Method {method} does not train on pairs, so chosen and rejected are each prompt's best and worst "
            "sample by win rate P̂ (argmax / argmin, ties to the lower sample index), from samples.parquet and "
            "preferences.parquet. "
        )
    return (
        head + how + "score_chosen / score_rejected: the win rates P̂ of the two samples against the prompt's K "
        f"samples (mean of P(y ≻ y_j), self-comparison {'included' if include_self else 'excluded'}); "
        "p_chosen_beats_rejected: the judge's P(chosen ≻ rejected). Prompts whose K samples all tie are left "
        "out and counted in export.json."
    )


def _export_iteration(run_dir: Path, t: int, cfg: dict, prompts: dict, uses_pairs: bool) -> tuple[list[dict], dict]:
    import numpy as np
    import pyarrow.parquet as pq

    from sparring.winrates import best_worst, win_rates

    d = run_dir / f"iter_{t}"
    order, samples = _samples_by_prompt(d / "samples.parquet")
    mats = _pref_matrices(d / "preferences.parquet", {pid: len(s) for pid, s in samples.items()})
    include_self = bool(_setting(cfg, "method.include_self"))
    stats = {"prompts": len(order), "pairs": 0, "skipped_tied": 0, "skipped_incomplete": 0, "skipped_other": 0}
    p_hat, tied = {}, set()
    for pid in order:
        m = mats[pid]
        if np.isnan(m).any() or sorted(samples[pid]) != list(range(len(samples[pid]))):
            continue  # a verdict or a sample is missing: no win rates for this prompt
        p_hat[pid] = win_rates(m[None], include_self=include_self)[0]
        if float(p_hat[pid].max() - p_hat[pid].min()) == 0.0:
            tied.add(pid)
    if uses_pairs:
        train = pq.read_table(d / "train.parquet")
        names = set(train.column_names)
        cols = [c for c in ("prompt_id", "w_index", "l_index", "from_history") if c in names]
        # spin_history adds iteration t-1's pairs to iteration t's rows: those are t-1's, exported there
        picks = [
            (r["prompt_id"], r["w_index"], r["l_index"])
            for r in train.select(cols).to_pylist()
            if r.get("prompt_id") and not r.get("from_history")
        ]
    else:
        picks = []
        for pid in order:
            if pid in p_hat and pid not in tied:
                bw = best_worst(p_hat[pid][None])
                picks.append((pid, int(bw.best[0]), int(bw.worst[0])))
    rows, reason = [], {}
    for pid, w, l in picks:
        if pid not in p_hat or pid not in samples or l not in samples[pid] or (w != -1 and w not in samples[pid]):
            reason.setdefault(pid, "skipped_incomplete")  # the pair names a sample or verdict that is not there
            continue
        prompt = prompts.get(pid)
        text = samples[pid][l]["prompt"]
        if prompt is not None and prompt.text == text:
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt.messages]
        else:  # the source changed or is unreadable since the run: its samples say what was asked
            messages = [{"role": "user", "content": text}]
            prompt = None
        if w == -1:  # SPIN's preferred response is the prompt's ground truth, never sampled or judged
            if prompt is None or not prompt.reference:
                reason.setdefault(pid, "skipped_other")
                continue
            chosen, score_w, p_wl = prompt.reference, None, None
        else:
            chosen, score_w, p_wl = samples[pid][w]["response"], float(p_hat[pid][w]), float(mats[pid][w, l])
        rows.append(
            {
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": samples[pid][l]["response"]}],
                "prompt_id": pid,
                "score_chosen": score_w,
                "score_rejected": float(p_hat[pid][l]),
                "p_chosen_beats_rejected": p_wl,
                "chosen_index": w,
                "rejected_index": l,
                "iteration": t,
            }
        )
    paired = {r["prompt_id"] for r in rows}
    for pid in order:
        if pid in paired:
            continue
        if pid in reason:
            stats[reason[pid]] += 1
        elif pid not in p_hat:
            stats["skipped_incomplete"] += 1
        elif pid in tied:
            stats["skipped_tied"] += 1
        else:
            stats["skipped_other"] += 1  # no pair in train.parquet: DNO's margin was under its threshold
    stats["pairs"] = len(rows)
    return rows, stats


def export_trl(run_dir: str | Path, out_dir: str | Path, format: str = "trl") -> dict:
    """Every iteration's preference pairs in TRL's conversational preference format: a DatasetDict saved
    to `out_dir` (datasets.load_from_disk(out_dir), one split `iter_<t>` per iteration that has pairs),
    `out_dir/iter_<t>.jsonl` for every iteration, and `out_dir/export.json` (counts, description). The
    directory is written as a whole; an existing one is replaced only if it is an earlier export."""
    import shutil

    from sparring.methods import METHODS
    from sparring.rundir import atomic_dir, write_json, write_text

    if format != "trl":
        raise UserError(f"export format {format!r} is not supported; the one format is 'trl'")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = _read_run_config(run_dir)
    method = _setting(cfg, "method.name")
    # a method whose rows name a preferred and a dispreferred sequence trains on pairs; the others
    # (sppo-all, nash-md: one sequence per row) get each prompt's best and worst sample
    uses_pairs = method in METHODS and "w" in METHODS[method].sequences and "l" in METHODS[method].sequences
    replaceable = out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / "export.json").is_file())
    if out_dir.exists() and not replaceable:
        raise UserError(
            f"{out_dir} exists and is not an earlier sparring export; choose another output directory "
            "(an export replaces its directory as a whole)"
        )
    iterations, notes = [], []
    for t in _iterations_on_disk(run_dir):
        d = run_dir / f"iter_{t}"
        if not ((d / "samples.parquet").is_file() and (d / "preferences.parquet").is_file()):
            notes.append(f"iter_{t}: not judged yet, left out")
        elif uses_pairs and not (d / "train.parquet").is_file():
            notes.append(f"iter_{t}: its training pairs (train.parquet) are not built yet, left out")
        else:
            iterations.append(t)
    if not iterations:
        raise UserError(
            f"{run_dir}: no iteration has samples and preferences yet"
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; nothing to export"
        )
    prompts, note = _load_run_prompts(cfg)
    if note:
        notes.append(note)
    description = _describe(method, cfg, uses_pairs)
    splits, stats = {}, {}
    for t in iterations:
        splits[f"iter_{t}"], stats[f"iter_{t}"] = _export_iteration(run_dir, t, cfg, prompts, uses_pairs)
    from datasets import Dataset, DatasetDict, DatasetInfo

    features = _conversation_features()
    report = {
        "format": "trl",
        "run": str(run_dir),
        "name": _setting(cfg, "name"),
        "method": method,
        "selection": "train.parquet pairs" if uses_pairs else "best and worst sample by win rate",
        "description": description,
        "splits": stats,
        "notes": notes,
    }
    with atomic_dir(out_dir) as tmp:
        kept = {name: rows for name, rows in splits.items() if rows}
        if kept:
            # datasets cannot reload a split saved with no rows, so an iteration without pairs has only
            # its (empty) JSONL file and its counts in export.json
            dd = DatasetDict(
                {
                    name: Dataset.from_dict(
                        {c: [r[c] for r in rows] for c in features},
                        features=features,
                        info=DatasetInfo(description=description, features=features),
                    )
                    for name, rows in kept.items()
                }
            )
            stage = tmp / ".dataset.tmp"
            dd.save_to_disk(str(stage))
            for p in stage.iterdir():  # save_to_disk wants its own directory; its files go to the top
                shutil.move(str(p), str(tmp / p.name))
            stage.rmdir()
        for name, rows in splits.items():
            write_text(tmp / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            stats[name]["in_dataset"] = bool(rows)
        write_json(tmp / "export.json", report)
    return report


# ------------------------------------------------------------------ the config reference

_SECTION_TEXT = {
    "": "Keys at the top level of a recipe.",
    "prompts": "Where the training and held-out prompts come from (docs/data.md).",
    "generation": "Sampling the K responses per prompt from π_t each iteration (docs/generation.md).",
    "train": "The optimizer and batches of each iteration's training.",
    "tracking": "Where metrics go besides metrics.jsonl.",
}
# One line of meaning for the fields config.py gives no comment; a comment there takes precedence, and
# a test keeps this table free of keys that have one (so the source stays the authority)
_MEANINGS = {
    "name": "run name: the run directory is runs_dir/name",
    "seed": "seed of the prompt order, sampling and training",
    "iterations": "number of generate → judge → train → evaluate iterations",
    "runs_dir": "directory that holds the run directories",
    "method": "the method and its loss settings",
    "prompts": "prompt sources",
    "generation": "sampling settings",
    "judge": "the judge of the training samples",
    "train": "optimizer settings",
    "eval": "held-out evaluation settings",
    "tracking": "metric trackers",
    "method.name": "the method: sppo, sppo-all, sppo-single, dpo, ipo, fdpo, simpo, dno, spin, nash-md "
    "(docs/methods.md)",
    "method.label_smoothing": "DPO label smoothing ε (cDPO); 0 is plain DPO",
    "prompts.heldout": "the held-out prompt source, in the same forms as prompts.train",
    "generation.max_new_tokens": "longest response sampled, in tokens",
    "generation.temperature": "sampling temperature",
    "generation.top_p": "nucleus sampling: keep the smallest set of tokens with this much probability",
    "generation.dtype": "dtype of the sampling model",
    "judge.name": "the judge (docs/judge.md)",
    "train.optimizer": "the optimizer",
    "train.lr": "peak learning rate of each iteration (linear warmup, then linear decay to 0)",
    "train.epochs": "passes over each iteration's training rows",
    "train.warmup_ratio": "fraction of each iteration's steps spent warming the learning rate up",
    "train.weight_decay": "the optimizer's weight decay (decoupled in AdamW)",
    "train.mars.beta1": "MARS's first-moment decay for 2-D tensors",
    "train.mars.beta2": "MARS's second-moment decay for 2-D tensors",
    "train.mars.eps": "added to the denominator for stability",
    "train.mars.beta1_1d": "first-moment decay (AdamW) of the tensors that are not 2-D",
    "train.mars.beta2_1d": "second-moment decay (AdamW) of the tensors that are not 2-D",
    "train.mars.weight_decay_1d": "weight decay of the tensors that are not 2-D",
    "eval.max_new_tokens": "longest held-out response, in tokens",
    "eval.batch_size": "held-out prompts per generate call",
    "eval.bootstrap_seed": "seed of the bootstrap resamples",
}


def _field_comments() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """({class: docstring}, {class: {field: comment}}) from config.py's source: a field's comment is the
    comment lines right above it and the comment at the end of its line, joined."""
    path = inspect.getsourcefile(config_module)
    source = Path(path).read_text()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    docs: dict[str, str] = {}
    fields: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs[node.name] = " ".join((ast.get_docstring(node) or "").split())
        fields[node.name] = {}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above = []
            n = stmt.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments.get(n, ""))
                n -= 1
            trailing = [comments[i] for i in range(stmt.lineno, stmt.end_lineno + 1) if i in comments]
            text = " ".join(above)
            if trailing:
                text = f"{text}; {' '.join(trailing)}" if text else " ".join(trailing)
            if text:
                fields[node.name][stmt.target.id] = text
    return docs, fields


def _type_text(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        return " or ".join(_type_text(a) for a in inner) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(typ))
    if origin is list:
        (inner,) = typing.get_args(typ)
        inner_text = _type_text(inner)
        return f"list of ({inner_text})" if typing.get_origin(inner) is Literal else f"list of {inner_text}"
    if origin is dict:
        return "mapping of names to strings"
    if dataclasses.is_dataclass(typ):
        return "section"
    names = {str: "string", int: "integer", float: "number", bool: "true / false"}
    return names.get(typ, getattr(typ, "__name__", str(typ)))


def _range_text(meta: dict) -> str:
    if "range" not in meta:
        return ""
    lo, hi, lo_open, hi_open = meta["range"]
    if lo is not None and hi is not None:
        return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '≥'} {lo}"
    return f"{'<' if hi_open else '≤'} {hi}"


def _value_text(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return ""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_keys() -> list[tuple[str, type, dataclasses.Field, Any]]:
    """Every config key in declaration order: (dotted name, the dataclass that declares it, its field, its type)."""
    out = []

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.append((prefix + f.name, cls, f, hints[f.name]))
            typ = hints[f.name]
            nested = typ if dataclasses.is_dataclass(typ) else config_module._optional_dataclass(typ)
            if nested is not None:
                walk(nested, f"{prefix}{f.name}.")

    walk(config_module.RunConfig, "")
    return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_reference() -> str:
    """docs/config.md: every config key with its type, range, default and meaning, from the config
    dataclasses and config.py's comments, and the table of TRL's names."""
    from sparring.judges.settings import KEYS

    docs, comments = _field_comments()
    keys = config_keys()
    sections: dict[str, list] = {}
    section_doc: dict[str, str] = {"": _SECTION_TEXT[""]}
    for dotted, cls, f, typ in keys:
        prefix = dotted.rpartition(".")[0]
        nested = typ if dataclasses.is_dataclass(typ) else config_module._optional_dataclass(typ)
        if nested is not None and not (prefix == "eval" and f.name == "judge"):
            section_doc[dotted] = docs.get(nested.__name__) or _SECTION_TEXT.get(dotted, "")
            sections.setdefault(dotted, [])
        if prefix.startswith("eval.judge"):
            continue  # the same keys as judge.*; one row says so
        sections.setdefault(prefix, []).append((dotted, cls, f, typ))
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by sparring.share.config_reference() from src/sparring/config.py: do not edit by hand. "
        "Regenerate with `python -m sparring.share config-reference --out docs/config.md`. -->",
        "",
        "Every key a recipe (YAML) may hold, and `key.sub=value` overrides on the command line. A bad value is an "
        "error naming the key and what is allowed; an unknown key is an error naming the nearest valid key, "
        "whichever section it is in, and TRL's argument names are recognised (see the end of this page). "
        "Ranges: `[a, b)` includes a and excludes b; `null` is YAML's empty value.",
        "",
    ]
    for prefix, rows in sections.items():
        out += [f"## {'Top level' if not prefix else f'`{prefix}`'}", ""]
        if section_doc.get(prefix):
            out += [section_doc[prefix], ""]
        out += ["| key | type | range | default | meaning |", "|---|---|---|---|---|"]
        for dotted, cls, f, typ in rows:
            meaning = comments.get(cls.__name__, {}).get(f.name) or _MEANINGS.get(dotted, "")
            if dataclasses.is_dataclass(typ):
                meaning = f"{meaning} (section [`{dotted}`](#{dotted.replace('.', '')}))".strip()
            elif dotted == "eval.judge":
                meaning += "; the same keys as [`judge`](#judge)"
            if prefix == "judge" and f.name not in ("name", "cache"):
                defaults = [
                    f"{name} {_value_text(ks[f.name])}"
                    for name, ks in KEYS.items()
                    if f.name in ks and ks[f.name] is not None
                ]
                users = [name for name, ks in KEYS.items() if f.name in ks]
                meaning += f" (judges: {', '.join(users)}" + (f"; default {', '.join(defaults)}" if defaults else "")
                meaning += ")"
            out.append(
                f"| `{dotted}` | {_cell(_type_text(typ))} | {_range_text(dict(f.metadata))} | "
                f"{_cell(_value_text(_field_default(f)))} | {_cell(meaning)} |"
            )
        out.append("")
    out += [
        "## Coming from TRL",
        "",
        "TRL's `DPOConfig` / `TrainingArguments` names and the sparring keys that play their part; given in a "
        "recipe, each is an unknown-key error that names its sparring key.",
        "",
        "| TRL | sparring | note |",
        "|---|---|---|",
    ]
    for name, (key, note) in TRL_KEYS.items():
        out.append(f"| `{name}` | `{key}` | {_cell(note)} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ key suggestions

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


def suggest_keys(key: str) -> list[str]:
    """Valid dotted keys near an unknown `key`, best first (several when equally near: `batch_size`)."""
    all_keys = [k for k, *_ in config_keys()]
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


def suggest_key(key: str) -> str | None:
    """The nearest valid dotted key to an unknown one, across all sections (`lr` -> `train.lr`,
    `temperature` -> `generation.temperature`, TRL's `learning_rate` -> `train.lr`); None if nothing is near."""
    found = suggest_keys(key)
    return found[0] if found else None


def key_hint(key: str) -> str:
    """The tail of an unknown-key error: "; did you mean train.lr?" (with what differs, for TRL's names), or ""."""
    found = suggest_keys(key)
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


# ------------------------------------------------------------------ recipes by name


def recipes_dir() -> Path:
    return Path(__file__).parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """The first sentence of a recipe's leading comment (what it runs)."""
    text = ""
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = f"{text} {line.lstrip('#').strip()}".strip()
        if text.endswith("."):
            break
        # a sentence ends at a full stop before a capital ("Wu et al. 2024" does not end one)
        end = re.search(r"(?<!\bal)\.\s+(?=[A-Z])", text)
        if end:
            return text[: end.start() + 1]
    return text


def find_recipe(name: str) -> Path | None:
    """The shipped recipe for `sparring run NAME` (also `recipes/NAME.yaml` when no such file is here, as
    the README writes it); None when `name` is an existing file or another path, left to load_config.
    A bare name that is no shipped recipe is a UserError naming the nearest one."""
    name = str(name)
    path = Path(name).expanduser()
    if path.exists() or "=" in name:
        return None
    recipes = shipped_recipes()
    if path.suffix in (".yaml", ".yml"):
        if path.parent.name == "recipes" and path.stem in recipes:
            return recipes[path.stem]
        return None
    if "/" in name or os.sep in name:
        return None
    if name in recipes:
        return recipes[name]
    near = difflib.get_close_matches(name, list(recipes), n=1)
    raise UserError(
        f"{name!r} is neither a recipe file nor a shipped recipe"
        + (f"; did you mean {near[0]!r}?" if near else "")
        + f" (shipped: {', '.join(recipes)}; `sparring recipes` lists them)"
    )


# ------------------------------------------------------------------ commands


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a run's preference pairs as a datasets/JSONL dataset in TRL's format",
        description="Writes OUT as a datasets.DatasetDict (load_from_disk(OUT), one split iter_<t> per "
        "iteration), OUT/iter_<t>.jsonl and OUT/export.json (docs/share.md).",
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--format", default="trl", choices=["trl"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "push",
        help="upload a trained policy (with its model card) to the Hugging Face Hub",
        description="Uploads RUN_DIR/iter_T/policy (or any saved model directory) to REPO_ID, creating "
        "the repo if needed. The token is the logged-in one (`hf auth login`) or HF_TOKEN.",
    )
    p.add_argument("source", metavar="RUN_DIR|POLICY_DIR")
    p.add_argument("repo_id", metavar="ORG/NAME")
    p.add_argument(
        "--iter", type=int, metavar="T", help="with a run directory: iteration T's policy (default: the last trained)"
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("card", help="write or refresh the model card (README.md) of every policy of a run")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("recipes", help="list the shipped recipes (`sparring run NAME` runs one)")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("config-reference", help="print the reference of every config key (docs/config.md)")
    p.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    p.set_defaults(func=cmd_config_reference)


def cmd_export(args) -> int:
    report = export_trl(args.run, args.out, format=args.format)
    for name, s in report["splits"].items():
        print(
            f"{name}: {s['pairs']} pairs from {s['prompts']} prompts ({s['skipped_tied']} tied, "
            f"{s['skipped_incomplete'] + s['skipped_other']} other left out)"
        )
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"written: {args.out} (datasets.load_from_disk), {args.out}/iter_<t>.jsonl, {args.out}/export.json")
    return 0


def cmd_push(args) -> int:
    source = Path(args.source)
    if (source / "config.yaml").is_file():
        trained = [
            t for t in _iterations_on_disk(source) if (source / f"iter_{t}" / "policy" / "config.json").is_file()
        ]
        if args.iter is None:
            if not trained:
                raise UserError(f"{source}: no iteration has a trained policy yet")
            t = trained[-1]
        elif args.iter in trained:
            t = args.iter
        else:
            raise UserError(
                f"{source}: iteration {args.iter} has no trained policy"
                + (f" (trained: {', '.join(map(str, trained))})" if trained else "")
            )
        source = source / f"iter_{t}" / "policy"
    elif args.iter is not None:
        raise UserError(f"--iter goes with a run directory; {source} is not one (no config.yaml)")
    print(f"uploaded {source}: {push(source, args.repo_id, private=args.private)}")
    return 0


def cmd_card(args) -> int:
    written = refresh_model_cards(args.run)
    if not written:
        print(f"{args.run}: no saved policy with a sparring card to write")
    for path in written:
        print(f"written: {path}")
    return 0


def cmd_recipes(args) -> int:
    recipes = shipped_recipes()
    width = max(map(len, recipes))
    for name, path in recipes.items():
        print(f"{name:<{width}}  {recipe_summary(path)}")
    return 0


def cmd_config_reference(args) -> int:
    text = config_reference()
    if args.out:
        from sparring.rundir import write_text

        write_text(args.out, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m sparring.share")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    try:
        sys.exit(ns.func(ns))
    except UserError as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
