"""The model card (README.md) of each saved policy: base model, method and loss, iteration, judge,
held-out metrics with their 95% intervals and paired differences from the base, the resolved config,
how to load it.

`write_model_card` writes one (the loop calls it when it saves a policy); `refresh_model_cards`
rewrites every card of a run (after its evaluation, or `sparring card`); `render_model_card` gives the
text (`sparring push` uploads it with the repo id in its snippet).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sparring.errors import UserError
from sparring.report.runconfig import iterations_on_disk, read_json, read_run_config, setting, value_text

CARD_MARK = "<!-- written by sparring: `sparring card --run RUN` rewrites it; remove this line to keep your edits -->"

# The hub ids of the embedded aliases (the embedded model is converted from a quantized GGUF of it)
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

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
    met = read_json(eval_dir / "metrics.json")
    if row is None and met is not None:
        from sparring.metrics import summary_row

        row = summary_row(met)
    extra = {k: met[k] for k in ("n", "bootstrap", "judge") if met and k in met}
    return row, extra


def _metrics_section(run_dir: Path, iteration: int, cfg: dict, summary: dict | None) -> list[str]:
    row, extra = _metrics_for(run_dir, iteration, summary)
    lines = ["## Held-out evaluation", ""]
    heldout = setting(cfg, "prompts.heldout")
    limit = setting(cfg, "eval.limit")
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
    greedy = setting(cfg, "eval.greedy")
    lines.append(
        f"On {' '.join(what)}, {'greedy' if greedy else 'sampled'} responses of at most "
        f"{setting(cfg, 'eval.max_new_tokens')} tokens. Intervals: 95% percentile bootstrap over prompts"
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
    from sparring.judges.settings import COMMON, JUDGES, defaults

    def settings(prefix: str) -> tuple[str, list[str]]:
        name = setting(cfg, f"{prefix}name")
        keys = defaults(name) if name in JUDGES else {}
        out = []
        for key in [k for k in COMMON if k != "name"] + list(keys):
            value = setting(cfg, f"{prefix}{key}")
            if value is None:
                value = keys.get(key)
            if value is None:
                continue
            if key == "api_key_env":  # the variable's name only: its value (the key) is never read here
                out.append(f"- `{prefix}{key}`: `{value}` (the environment variable holding the key; not recorded)")
            else:
                out.append(f"- `{prefix}{key}`: {value_text(_redacted({key: value})[key])}")
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

    from sparring.methods import METHODS, hooks_for

    run_dir = Path(run_dir)
    method = setting(cfg, "method.name")
    model = str(setting(cfg, "model"))
    total = setting(cfg, "iterations")
    base_id = _base_model_id(model)
    apo = (setting(cfg, "method.apo_alpha") or 0) > 0
    front: dict = {}
    if base_id:
        front["base_model"] = base_id
    front["library_name"] = "transformers"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["sparring", method, "self-play", "preference-optimization"] + (["apo"] if apo else [])
    train_src = str(setting(cfg, "prompts.train"))
    if train_src.startswith("hf:"):
        front["datasets"] = [train_src[3:].split("@")[0]]
    t1 = iteration + 1
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", CARD_MARK, ""]
    lines += [f"# {setting(cfg, 'name')}: π_{t1}, iteration {t1} of {total} ({method})", ""]
    lines += [
        "A policy trained with sparring's self-play preference optimization loop: "
        f"{t1} round(s) of generate → judge → train starting from "
        + (f"`{base_id}`" if base_id else f"the local model `{model}`")
        + (" (the embedded copy, converted from its quantized GGUF file)" if model in HUB_IDS else "")
        + f". This is the policy saved after iteration {iteration} (`iter_{iteration}/policy` of the run).",
        "",
    ]
    # what the method trains on, its loss and the settings it reads are the method's own (sparring.methods)
    m = METHODS.get(method)
    lines += ["## Training", "", f"- **Method**: `{method}`" + (f" — {m.description}" if m else "")]
    if m:
        lines.append(
            f"- **Loss**: {m.loss_text}; ρ = log π_θ(y) − log π_t(y), P̂ = win rate against the iteration's K samples"
        )
    keys = m.settings if m else ("beta",)
    params = ", ".join(f"`{k}` = {value_text(setting(cfg, 'method.' + k))}" for k in keys)
    lines.append(f"- **Method settings**: {params}")
    method_cfg = cfg.get("method") if isinstance(cfg.get("method"), dict) else {}
    lines += [line for hook in hooks_for(method_cfg) if (line := hook.card_line())]  # APO's extrapolation
    lines += _modifier_lines(cfg)
    lines += [
        f"- **Iteration**: {t1} of {total}",
        f"- **Prompts**: `{train_src}`, {setting(cfg, 'prompts.per_iteration')} fresh prompts per iteration",
        f"- **Sampling**: K = {setting(cfg, 'generation.k')} responses per prompt, at most "
        f"{setting(cfg, 'generation.max_new_tokens')} new tokens, temperature "
        f"{setting(cfg, 'generation.temperature')}, top-p {setting(cfg, 'generation.top_p')}",
        f"- **Optimizer**: {setting(cfg, 'train.optimizer')}, lr {setting(cfg, 'train.lr')}, "
        f"{setting(cfg, 'train.epochs')} epoch(s), {setting(cfg, 'train.batch_size')} rows per step",
        f"- **Precision**: sampling {setting(cfg, 'generation.dtype')}, training {setting(cfg, 'train.precision')}"
        + (f" — {setting(cfg, 'precision_reason')}" if setting(cfg, "precision_reason") not in (None, "") else ""),
        f"- **Seed**: {setting(cfg, 'seed')}",
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


def is_ours(readme: Path) -> bool:
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
    cfg = read_run_config(run_dir)
    summary = read_json(run_dir / "summary.json")
    written, problems = [], []
    for t in iterations_on_disk(run_dir):
        policy = run_dir / f"iter_{t}" / "policy"
        if (policy / "config.json").is_file() and is_ours(policy / "README.md"):
            try:
                written.append(write_model_card(policy, run_dir=run_dir, iteration=t, cfg=cfg, summary=summary))
            except UserError as exc:  # one damaged policy does not keep the others' cards stale
                problems.append(str(exc))
    if problems:
        raise UserError("\n".join(dict.fromkeys(problems)))  # a live run's lock refuses every card alike
    return written


def _modifier_lines(cfg: dict) -> list[str]:
    """The card's lines for the modifiers on the pairwise loss (docs/methods.md): LD-DPO's length
    desensitization and MADPO's margin weights change what the loss trains on, so a reader must see them."""
    out = []
    alpha = setting(cfg, "method.ld_alpha")
    if alpha is not None:
        out.append(
            f"- **LD-DPO**: α = {value_text(alpha)}: each response's log-probability counts its first "
            "min(|y_w|, |y_l|) tokens fully and the rest × α, for policy and reference (Liu et al. 2024)"
        )
    if setting(cfg, "method.madpo"):
        keys = ("madpo_c_max", "madpo_c_min", "madpo_lambda", "madpo_tau")
        values = ", ".join(f"`{k}` = {value_text(setting(cfg, 'method.' + k))}" for k in keys)
        out.append(f"- **MADPO**: each pair weighted by σ(c(|h|)·h)/σ(h), h the judge's margin (Rho 2025); {values}")
    return out
