"""The first step's loss guard (issue 27): with π = π_ref, the first optimizer step's loss is the loss's
value at ρ = 0 — ln 2 for DPO (and IPO's, SPPO's closed forms) — averaged over the rows of that step,
in every way the trainer can batch a step. A batching bug (a sum where a mean belongs, a micro-batch's
mean counted once per micro-batch, padding or another response's tokens leaking into a log-prob, an
adapter that does not start at π_t) moves it off that value: users of other trainers report a first
DPO loss of 6 × ln 2.

Through the real trainer (`sparring.train.train`, its reference pass and its step) on a tiny model:
micro-batches and gradient accumulation, padding (rows of different lengths), the packed forward pass
with SDPA's boolean mask and eager's additive one, the unpacked fallback, LoRA (with dropout), gradient
checkpointing, LD-DPO, bf16 autocast; a step that holds only some of the rows. Then through whole runs,
where the reference is the log-prob recorded by the sampler: in one process, and with 2 processes and
with FSDP under `accelerate launch`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from tiny import make_tokenizer, tiny_run_config

from sparring.config import LoRAConfig, MethodConfig, TrainConfig, config_from_dict
from sparring.loop import make_context, open_run, run
from sparring.methods import get_method
from sparring.models import load_model
from sparring.rundir import RunDir
from sparring.stages.context import stage_seed
from sparring.tables import read_rows
from sparring.train import _batches, train

BETA = 0.1
LN2 = math.log(2.0)


def closed_form(method: str, row: dict) -> float:
    """The method's loss at ρ = 0 (π = π_ref), by hand."""
    if method in ("dpo", "dno", "fdpo"):  # −log σ(β·0) = ln 2, for every f-divergence too (g(0) − g(0) = 0)
        return LN2
    if method == "ipo":  # (0 − 1/(2β))²
        return (1 / (2 * BETA)) ** 2
    if method == "sppo":  # ½[((P̂_w − ½)/β)² + ((P̂_l − ½)/β)²]
        return 0.5 * (((row["p_w"] - 0.5) / BETA) ** 2 + ((row["p_l"] - 0.5) / BETA) ** 2)
    if method in ("sppo-single", "sppo-all"):  # ½[(−t)² + (t)²] = t², t = (p − ½)/β
        return ((row["p"] - 0.5) / BETA) ** 2
    raise AssertionError(method)


def f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))  # the trainer reads float columns as float32


def make_rows(method: str, n: int = 6) -> list[dict]:
    """n rows of different prompt and response lengths (1 to 23 tokens), each with its own preference
    values, so a mean taken over the wrong rows or the wrong count is another number; reference
    log-probs missing, so the trainer fills them under π_t: π = π_ref at the first step."""
    tok = make_tokenizer()
    prompts = ["hi", "what is the capital of france?", "x", "name three colours please", "ok", "count to five"]
    w = ["yes", "paris is the capital of france", "y", "red, green, blue", "a", "1 2 3 4 5"]
    l = ["no thanks", "lyon", "no", "I do not know any colours", "bb", "one"]
    rows = []
    for i in range(n):
        row = {
            "prompt_id": f"p{i}",
            "prompt_ids": tok.encode(prompts[i % 6]),
            "p": f32(0.55 + 0.07 * i),
            "p_w": f32(0.6 + 0.06 * i),
            "p_l": f32(0.4 - 0.05 * i),
        }
        if method == "sppo-all":
            row.update(y_ids=tok.encode(w[i % 6]), ref_logp_y=float("nan"))
        else:
            row.update(
                w_ids=tok.encode(w[i % 6]), l_ids=tok.encode(l[i % 6]), ref_logp_w=float("nan"), ref_logp_l=float("nan")
            )
        rows.append(row)
    return rows


def first_step(tiny_model, method: str, *, batch=6, micro=2, mode: str = "plain", monkeypatch=None, epochs=1) -> tuple:
    """(the trainer's first-step loss, its expected value) for `method` under one batching `mode`."""
    rows = make_rows(method)
    model = load_model(str(tiny_model), "float32")
    precision = "fp32"
    method_cfg = MethodConfig(name=method, beta=BETA, divergence="js" if method == "fdpo" else "reverse_kl")
    checkpointing = False
    if mode in ("sdpa", "eager"):
        model.config._attn_implementation = mode
    elif mode == "fallback":  # a kernel that takes no 4-D mask: one padded sequence per response
        monkeypatch.setattr("sparring.train._packed_mask_kind", lambda m: None)
    elif mode == "lora":  # a fresh adapter (B = 0) with dropout on: the model is still exactly π_t
        from sparring.lora import attach

        model = attach(model, LoRAConfig(r=4, alpha=8, dropout=0.1), seed=1)
    elif mode == "checkpointing":
        checkpointing = True
    elif mode == "ld":
        method_cfg = MethodConfig(name=method, beta=BETA, ld_alpha=0.3)
    elif mode == "bf16":
        precision = "bf16"
    seed = 11
    train_cfg = TrainConfig(
        lr=1e-3,
        batch_size=batch,
        micro_batch_size=micro,
        epochs=epochs,
        precision=precision,
        gradient_checkpointing=checkpointing,
    )
    out = train(model, rows, get_method(method), method_cfg, train_cfg, pad_id=0, seed=seed, progress=False)
    step = next(_batches(len(rows), batch, epochs, seed))  # the rows of the first step, as the trainer draws them
    expected = sum(closed_form(method, rows[i]) for i in step) / len(step)
    return out["loss_first"], expected


MODES = ["plain", "eager", "fallback", "lora", "checkpointing"]
SPLITS = [(6, 6), (6, 3), (6, 2), (6, 1)]  # (rows per step, rows per forward pass)


@pytest.mark.parametrize("batch,micro", SPLITS, ids=lambda v: str(v))
@pytest.mark.parametrize("method", ["dpo", "ipo", "sppo", "sppo-single", "sppo-all"])
def test_first_step_is_the_closed_form_for_every_micro_batch_split(tiny_model, method, batch, micro):
    got, want = first_step(tiny_model, method, batch=batch, micro=micro)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["dpo", "sppo", "sppo-all"])
def test_first_step_is_the_closed_form_in_every_forward_mode(tiny_model, method, mode, monkeypatch):
    got, want = first_step(tiny_model, method, micro=3, mode=mode, monkeypatch=monkeypatch)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method", ["dno", "fdpo"])
def test_first_step_of_the_other_dpo_losses_is_ln2(tiny_model, method):
    got, want = first_step(tiny_model, method, micro=2)
    assert want == LN2 and got == pytest.approx(LN2, rel=1e-5)


@pytest.mark.parametrize("method", ["dpo", "ipo", "sppo"])
def test_first_step_with_ld_dpo_is_the_closed_form(tiny_model, method):
    # LD-DPO re-weights policy and reference alike, so at π = π_ref every ρ is still 0
    got, want = first_step(tiny_model, method, micro=2, mode="ld")
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_a_first_step_of_some_rows_averages_over_those_rows(tiny_model):
    # 6 rows, 2 per step: the first step's loss is the mean of its own 2 rows' closed forms, not all 6
    got, want = first_step(tiny_model, "sppo", batch=2, micro=1, epochs=2)
    everything = sum(closed_form("sppo", r) for r in make_rows("sppo")) / 6
    assert abs(want - everything) > 1.0
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("method", ["dpo", "sppo"])
def test_first_step_under_bf16_autocast(tiny_model, method):
    """bf16 autocast: the reference pass (one padded sequence per response, no grad) and the training pass
    (packed, with grad) may round differently on other kernels, so ρ need not be 0 to the bit. Measured on
    this CPU: bf16 moves the log-probs by ~4e-4 nats from fp32's, but both passes round alike and the first
    loss is the closed form to float32 rounding (relative 3e-9 DPO, 6e-8 SPPO); 1e-3 leaves room for
    other kernels and is still far from a batching error's factor of 2 or more."""
    got, want = first_step(tiny_model, method, micro=3, mode="bf16")
    assert got == pytest.approx(want, rel=1e-3)


# ------------------------------------------------------------------------------------- whole runs


def length_judged(tiny_model, runs: Path, method: str, **over) -> dict:
    """One iteration judged by length (tests/lengthjudge.py: seldom a tie, so there are rows), 3 rows
    per step in micro-batches of 1, fp32: the reference is the log-prob recorded by the sampler."""
    cfg = tiny_run_config(tiny_model, runs, "first", iterations=1, **over)
    cfg["method"] = {"name": method, "beta": BETA}
    cfg["judge"] = {"name": "python", "function": "lengthjudge:by_length"}
    cfg["prompts"] = {"per_iteration": 12}
    cfg["train"] = {**cfg["train"], "batch_size": 3, "micro_batch_size": 1}
    cfg["eval"] = {"max_new_tokens": 2, "limit": 2, "batch_size": 2, "base": False, "bootstrap": 100}
    return cfg


def run_first_loss(root: Path, cfg: dict) -> tuple[float, float]:
    """(the recorded first-step loss of iter_0/train, the closed form over that step's rows)."""
    c = config_from_dict(cfg)
    metrics = RunDir(root).manifest()["stages"]["iter_0/train"]["metrics"]
    rows = read_rows(RunDir(root).rows(0))
    seed = stage_seed(c.seed, "train", 0) % (2**31)  # the train stage's seed (stages/train.py)
    step = next(_batches(len(rows), c.train.batch_size, c.train.epochs, seed))
    return metrics["loss_first"], sum(closed_form(c.method.name, rows[i]) for i in step) / len(step)


# the sampler's log-probs come from its decode loop (one token at a time, a KV cache), the trainer's
# from one pass over the whole sequence: in fp32 they agree to ~1e-6 per sequence, which moves the
# first loss by ~β·1e-6 (DPO) or ~|target|·1e-6 (SPPO). Measured in one process: relative −1.1e-7
# (DPO) and −1.6e-6 (SPPO); 1e-4 leaves a margin of 60x
RECORDED_REL = 1e-4


@pytest.mark.parametrize("method", ["dpo", "sppo"])
def test_a_runs_first_step_against_the_recorded_reference(tiny_model, tmp_path, method):
    cfg = length_judged(tiny_model, tmp_path, method)
    c = config_from_dict(cfg)
    rd = open_run(c, Path(c.runs_dir) / c.name)
    run(make_context(c, rd, progress=False, log=lambda _: None))
    rd.lock.release()
    got, want = run_first_loss(rd.root, cfg)
    assert len(read_rows(rd.rows(0))) >= 3
    assert got == pytest.approx(want, rel=RECORDED_REL)


def test_a_run_with_ld_dpo_and_madpo_starts_at_the_weighted_ln2(tiny_model, tmp_path):
    """Both modifiers from the config through the stages: LD-DPO's reference is recomputed under π_t, so
    every ρ is 0 at the first step, and MADPO weighs each pair's ln 2 by w(logit p)."""
    from sparring.losses import madpo_weight

    cfg = length_judged(tiny_model, tmp_path, "dpo")
    cfg["method"] = {"name": "dpo", "beta": BETA, "ld_alpha": 0.5, "madpo": True}
    c = config_from_dict(cfg)
    rd = open_run(c, Path(c.runs_dir) / c.name)
    run(make_context(c, rd, progress=False, log=lambda _: None))
    rd.lock.release()
    rows = read_rows(rd.rows(0))
    step = next(_batches(len(rows), c.train.batch_size, c.train.epochs, stage_seed(c.seed, "train", 0) % (2**31)))
    p = torch.tensor([f32(rows[i]["p"]) for i in step], dtype=torch.float64)
    want = LN2 * float(madpo_weight(torch.logit(p)).mean())
    assert abs(want - LN2) > 1e-3  # the length judge's margins are finite and below τ: the weights are not 1
    got = RunDir(rd.root).manifest()["stages"]["iter_0/train"]["metrics"]["loss_first"]
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(
    "launch_config,method", [("cpu-2proc.yaml", "dpo"), ("fsdp.yaml", "sppo")], ids=["2-processes", "fsdp"]
)
def test_a_launched_runs_first_step_against_the_recorded_reference(tiny_model, tmp_path, launch_config, method):
    """Under `accelerate launch` with 2 processes each rank backpropagates its micro-batches' loss over
    the whole step's row count and the step's loss is summed over the ranks (FSDP: and scaled by the
    world size against its averaging): the first loss is still the one-process closed form."""
    from test_distributed import launch_and_wait

    cfg = length_judged(tiny_model, tmp_path / "runs", method)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    extra = ("--num_processes", "2") if launch_config == "fsdp.yaml" else ()
    launch_and_wait(["run", str(recipe), "--no-progress"], tmp_path / "launch.log", config=launch_config, extra=extra)
    if launch_config == "fsdp.yaml":
        assert "FSDP: the training model was sharded over 2 ranks" in (tmp_path / "launch.log").read_text()
    got, want = run_first_loss(tmp_path / "runs" / "first", cfg)
    assert got == pytest.approx(want, rel=RECORDED_REL)
