"""Precision chosen for the hardware (sparring.hardware): the `auto` decision for each hardware case
(mocked capabilities), a run recording it and keeping it on resume (also when the machine's choice
differs), the warning for explicit bf16 where it is not native, and `sparring env`.

CI runs this file twice: as it is, and under ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2 (`make test-avx2`), where the real machine has no native bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny import tiny_run_config

from sparring import hardware
from sparring.cli import main
from sparring.commands import print_summary
from sparring.config import config_from_dict
from sparring.hardware import Choice, CpuInfo, decide_cpu, resolve, resolve_run

AVX2 = CpuInfo("laptop", frozenset({"avx2", "fma"}), "AVX2", onednn_bf16=False)
AVX512 = CpuInfo("server", frozenset({"avx2", "fma", "avx512f"}), "AVX512", onednn_bf16=True)
AVX512_BF16 = CpuInfo("epyc", frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}), "AVX512", onednn_bf16=True)
AMX = CpuInfo("xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}), "AVX512", True)


def no_probe():
    raise AssertionError("the decision was conclusive; no probe should run")


def machine(monkeypatch, bf16: bool, reason: str | None = None, slowdown: float = 41.0):
    """Make this process's `auto` choice `bf16` (any device), with a measured bf16 slowdown."""
    choice = Choice(bf16, reason or ("bf16: test machine" if bf16 else "fp32: test machine"), "cpu")
    monkeypatch.setattr(hardware, "_choose", lambda device: choice)
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda device="cpu": None if bf16 else slowdown)
    return choice


# ------------------------------------------------------------------ the decision


def test_no_onednn_bf16_kernels_is_fp32_without_a_probe(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    c = decide_cpu(AVX2, probe=no_probe)
    assert not c.bf16 and c.dtype == "float32" and c.precision == "fp32"
    assert "no native bf16" in c.reason and "AVX2" in c.reason


def test_dispatch_limit_is_named_in_the_reason(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    limited = CpuInfo("epyc", AVX512_BF16.flags, "AVX2", onednn_bf16=False)
    c = decide_cpu(limited, probe=no_probe)
    assert not c.bf16 and "ONEDNN_MAX_CPU_ISA=AVX2" in c.reason and "AVX512-BF16" in c.reason


@pytest.mark.parametrize("info", [AMX, AVX512_BF16], ids=["amx", "avx512_bf16"])
def test_native_bf16_instructions_are_bf16_without_a_probe(info, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    c = decide_cpu(info, probe=no_probe)
    assert c.bf16 and c.dtype == "bfloat16" and info.isa() in c.reason


@pytest.mark.parametrize(
    "fp32, bf16, expect",
    [(100.0, 150.0, True), (100.0, 100.0, True), (100.0, 6.0, False)],
    ids=["faster", "tie", "slow"],
)
def test_inconclusive_cpu_is_decided_by_the_probe(fp32, bf16, expect, monkeypatch):
    """AVX-512 without BF16: oneDNN offers bf16 kernels (emulated), so only a measurement says whether
    they are at least as fast as fp32."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    c = decide_cpu(AVX512, probe=lambda: (fp32, bf16))
    assert c.bf16 is expect
    assert (c.fp32_gflops, c.bf16_gflops) == (fp32, bf16)
    assert c.slowdown() == pytest.approx(fp32 / bf16)


def test_a_dispatch_limit_makes_even_a_bf16_cpu_probe(monkeypatch):
    """ONEDNN_MAX_CPU_ISA may take oneDNN below the CPU's bf16 instructions while it still offers
    emulated bf16 kernels: the flags no longer say what runs, so it is measured."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert not decide_cpu(AVX512_BF16, probe=lambda: (94.0, 6.0)).bf16
    assert decide_cpu(AVX512_BF16, probe=lambda: (94.0, 260.0)).bf16


def test_cuda_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        c = hardware._choose.__wrapped__("cuda:0")
        assert c.bf16 is supported and "Test GPU" in c.reason


def test_this_machine_agrees_with_onednn():
    """On the real machine (CI runs this with and without the AVX2 dispatch limit): no oneDNN bf16
    kernels means fp32, and a probe, where one ran, measured both dtypes."""
    c = hardware.choose("cpu")
    if not hardware.cpu_info().onednn_bf16:
        assert not c.bf16
    if c.fp32_gflops is not None:
        assert c.fp32_gflops > 0 and c.bf16_gflops > 0
    assert hardware.resolve("auto") == c.dtype


def test_matmul_gflops_is_unrounded_and_positive():
    g = hardware.matmul_gflops(torch.float32, (8, 16, 16), repeats=1)
    assert g > 0 and g != round(g, 2)  # a slow machine reports a small number, never 0.0


# ------------------------------------------------------------------ resolving a config


def test_resolve_spells_each_setting_its_own_way(monkeypatch):
    machine(monkeypatch, bf16=False)
    assert resolve("auto") == "float32" and resolve(None) == "float32"
    assert resolve("auto", names=("bf16", "fp32")) == "fp32"
    assert resolve("bfloat16") == "bfloat16"  # explicit values stay
    machine(monkeypatch, bf16=True)
    assert resolve("auto") == "bfloat16" and resolve("auto", names=("bf16", "fp32")) == "bf16"


def test_every_precision_setting_defaults_to_auto():
    cfg = config_from_dict({})
    assert cfg.generation.dtype == "auto" and cfg.train.precision == "auto"
    assert cfg.precision_reason is None


def test_a_new_run_takes_the_machines_choice_and_records_why(monkeypatch):
    machine(monkeypatch, bf16=False, reason="fp32: no bf16 here")
    data, res = resolve_run(config_from_dict({}).to_dict())
    assert data["generation"]["dtype"] == "float32" and data["train"]["precision"] == "fp32"
    assert data["precision_reason"] == "fp32: no bf16 here" and res.source == "machine"
    assert res.values == {"generation.dtype": "float32", "train.precision": "fp32"}
    assert not res.warnings
    assert "auto, chosen for this machine" in res.line(data) and "fp32: no bf16 here" in res.line(data)


def test_a_resumed_run_keeps_its_recorded_precision_on_another_machine(monkeypatch):
    """Started where bf16 is native, resumed where it is not: the recorded bf16 stays (numerics must
    not change mid-run), with the warning that says what it costs here."""
    recorded, _ = resolve_run(config_from_dict({}).to_dict())  # whatever this machine picks...
    recorded["generation"]["dtype"], recorded["train"]["precision"] = "bfloat16", "bf16"  # ...say bf16
    recorded["precision_reason"] = "bf16: the first machine"
    machine(monkeypatch, bf16=False, slowdown=41.0)
    data, res = resolve_run(config_from_dict({}).to_dict(), recorded)
    assert data["generation"]["dtype"] == "bfloat16" and data["train"]["precision"] == "bf16"
    assert data["precision_reason"] == "bf16: the first machine" and res.source == "recorded"
    assert len(res.warnings) == 2 and all("41x slower than fp32" in w for w in res.warnings)


def test_explicit_bf16_warns_with_the_measured_slowdown_only_where_it_is_not_native(monkeypatch):
    machine(monkeypatch, bf16=False, slowdown=78.6)
    message = hardware.bf16_warning("train.precision", "bf16")
    assert "train.precision = bf16" in message and "79x slower than fp32" in message and "auto" in message
    assert hardware.bf16_warning("train.precision", "fp32") is None
    machine(monkeypatch, bf16=True)
    assert hardware.bf16_warning("train.precision", "bf16") is None


def test_local_judges_resolve_auto(monkeypatch, tmp_path):
    from tiny import make_tiny_reward_model

    from sparring.judges import build_judge

    machine(monkeypatch, bf16=False)
    judge = build_judge({"name": "reward_model", "model": str(make_tiny_reward_model(tmp_path / "rm"))})
    assert ":dtype=float32:" in judge.id  # the cache key names the concrete dtype, never `auto`


# ------------------------------------------------------------------ runs and commands


def _recipe(tmp_path: Path, model: Path, **over) -> Path:
    cfg = tiny_run_config(model, tmp_path / "runs", "p", iterations=1, **over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_records_auto_and_resume_keeps_it_when_the_machine_changes(tiny_model, tmp_path, monkeypatch, capsys):
    recipe = _recipe(tmp_path, tiny_model, **{"generation.dtype": "auto", "train.precision": "auto"})
    machine(monkeypatch, bf16=False, reason="fp32: the first machine")
    assert main(["run", str(recipe), "--no-progress"]) == 0
    saved = tmp_path / "runs" / "p" / "config.yaml"
    recorded = yaml.safe_load(saved.read_text())
    assert recorded["generation"]["dtype"] == "float32" and recorded["train"]["precision"] == "fp32"
    assert recorded["precision_reason"] == "fp32: the first machine"
    text = saved.read_text()

    machine(monkeypatch, bf16=True, reason="bf16: the second machine")  # resumed elsewhere, same recipe
    assert main(["run", str(recipe), "--no-progress"]) == 0  # no "different config" refusal
    assert saved.read_text() == text
    capsys.readouterr()
    assert main(["run", str(recipe), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "kept from the run's recorded config" in plan and "fp32: the first machine" in plan
    assert main(["run", "--resume", str(saved.parent), "--dry-run"]) == 0
    assert "generation.dtype=float32" in capsys.readouterr().out

    # the model card and the report say it too
    card = (tmp_path / "runs" / "p" / "iter_0" / "policy" / "README.md").read_text()
    assert "fp32: the first machine" in card
    page = (tmp_path / "runs" / "p" / "report.html").read_text()
    assert "fp32: the first machine" in page


def test_dry_run_shows_the_choice_and_warns_for_explicit_bf16(tiny_model, tmp_path, monkeypatch, capsys):
    machine(monkeypatch, bf16=False, reason="fp32: no bf16 here", slowdown=40.0)
    recipe = _recipe(tmp_path, tiny_model, **{"generation.dtype": "auto", "train.precision": "bf16"})
    assert main(["run", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "precision     : generation.dtype=float32, train.precision=bf16" in out.out
    assert "train.precision = bf16" in out.err and "40x slower than fp32" in out.err
    assert not (tmp_path / "runs" / "p").exists()  # a dry run writes nothing


def test_env_command_text_and_json(capsys):
    assert main(["env", "--no-measure"]) == 0
    text = capsys.readouterr().out
    for field in ("torch:", "transformers:", "cpu:", "ATen dispatch:", "oneDNN bf16 kernels:", "precision auto on"):
        assert field in text
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auto"]["choice"] in ("bf16", "fp32") and report["auto"]["reason"]
    assert report["matmul_gflops"]["fp32"] > 0 and report["matmul_gflops"]["bf16"] > 0
    assert report["cpu"]["aten_capability"] == torch.backends.cpu.get_cpu_capability()


def test_the_results_table_is_whole_in_a_log(capsys):
    """Not a terminal (a log, a pipe): the table keeps every column whole instead of rich's 80 columns
    with an ellipsis."""
    row = {
        "iteration": 1,
        "prompt_strict": 0.408,
        "instruction_strict": 0.474,
        "win_rate_vs_base": 0.512,
        "length_controlled_win_rate": 0.533,
        "mean_response_tokens": 87.6,
        "seconds": {"generate": 291.2, "judge": 3.1, "rows": 0.2, "train": 160.4, "eval": 82.3},
        "intervals": {
            "prompt_strict": {
                "ci95": [0.325, 0.492],
                "delta": 0.075,
                "delta_ci95": [0.0, 0.15],
                "significant": False,
            },
            "instruction_strict": {"ci95": [0.41, 0.53]},
            "win_rate_vs_base": {"ci95": [0.47, 0.55]},
            "length_controlled_win_rate": {"ci95": [0.48, 0.58]},
        },
    }
    base = {"iteration": 0, "prompt_strict": 0.333, "mean_response_tokens": 88, "seconds": {"eval": 82.0}}

    class Run:
        root = Path("runs/x")

    print_summary({"method": "sppo", "model": "m", "iterations": [base, row]}, Run())
    out = capsys.readouterr().out
    assert "…" not in out
    assert "40.8% [32.5, 49.2]" in out and "+7.5 [+0.0, +15.0]" in out and "generate=291" in out


def test_a_tiny_run_with_auto_records_this_machines_choice(tiny_model, tmp_path):
    """No mocks: the run's recorded dtypes are what `auto` means on the machine running the test (CI
    runs this with and without the AVX2 dispatch limit, where it is fp32)."""
    recipe = _recipe(tmp_path, tiny_model, **{"generation.dtype": "auto", "train.precision": "auto"})
    assert main(["run", str(recipe), "--no-progress"]) == 0
    recorded = yaml.safe_load((tmp_path / "runs" / "p" / "config.yaml").read_text())
    choice = hardware.choose("cpu")
    assert recorded["generation"]["dtype"] == choice.dtype and recorded["train"]["precision"] == choice.precision
    assert recorded["precision_reason"] == choice.reason
    summary = json.loads((tmp_path / "runs" / "p" / "summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == [0, 1]
