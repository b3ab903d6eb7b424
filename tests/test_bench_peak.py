"""The benchmarks' environment and matmul-peak fields (bench/train_vs_trl.py's helpers, which
bench/generate.py and bench/gpu_check.py use too): the peak's shape follows what the device runs
natively, its GFLOP/s are not rounded away, and `auto` resolves through sparring.hardware. The
matmuls themselves are replaced by stubs here: tests/test_gpu_check.py measures a real peak."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import sparring.hardware as hardware

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tvt():
    spec = importlib.util.spec_from_file_location("train_vs_trl", REPO / "bench" / "train_vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def measured(monkeypatch):
    """matmul_gflops stubbed: the shapes it was asked for, and a slow CPU's unrounded answer."""
    calls = []

    def fake(dtype, shape, repeats=3, device="cpu", min_seconds=0.0):
        calls.append({"dtype": dtype, "shape": shape, "device": device, "min_seconds": min_seconds})
        return 0.8612345

    monkeypatch.setattr(hardware, "matmul_gflops", fake)
    return calls


def choice(monkeypatch, bf16: bool):
    made = hardware.Choice(bf16, "bf16: stub" if bf16 else "fp32: stub (an AVX2-only CPU)")
    monkeypatch.setattr(hardware, "choose", lambda device="cpu": made)


def test_emulated_bf16_is_measured_on_a_small_product_and_native_dtypes_on_2048_cubed(tvt, measured, monkeypatch):
    import torch

    choice(monkeypatch, bf16=False)
    slow = tvt.matmul_peak(torch.bfloat16)
    fp32 = tvt.matmul_peak("float32")
    assert measured[0]["shape"] == tvt.PEAK_SHAPES["cpu_emulated_bf16"] == (128, 1024, 1024)
    assert measured[1]["shape"] == tvt.PEAK_SHAPES["cpu"] == (2048, 2048, 2048)
    # unrounded, the dtype named: ~1 GFLOP/s is reported as such, not as 0.0 TFLOP/s
    assert slow == {"peak_gflops": 0.8612345, "peak_dtype": "bfloat16", "peak_shape": [128, 1024, 1024]}
    assert fp32["peak_dtype"] == "float32" and fp32["peak_gflops"] > 0

    choice(monkeypatch, bf16=True)
    assert tvt.matmul_peak(torch.bfloat16)["peak_shape"] == [2048, 2048, 2048]


def test_a_gpu_peak_uses_the_large_product_repeated_for_a_while(tvt, measured, monkeypatch):
    import torch

    choice(monkeypatch, bf16=False)  # not consulted on a GPU
    peak = tvt.matmul_peak(torch.bfloat16, torch.device("cuda", 0))
    assert peak["peak_shape"] == [8192] * 3
    assert measured[0]["device"] == "cuda:0" and measured[0]["min_seconds"] > 0


def test_small_fractions_keep_significant_digits(tvt):
    assert tvt.sig(0.000123456) == 0.000123  # round(x, 3) would say 0.0
    assert tvt.sig(0.5244) == 0.524 and tvt.sig(0.0) == 0.0 and tvt.sig(346.54, 4) == 346.5


def test_auto_resolves_to_fp32_without_native_bf16_and_says_why(tvt, monkeypatch, capsys):
    choice(monkeypatch, bf16=False)
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda device="cpu": 40.0)
    assert tvt.resolve_dtype("--dtype", "auto", ("bfloat16", "float32")) == "float32"
    assert "--dtype float32 (auto: fp32: stub" in capsys.readouterr().err
    # an explicit bf16 is kept, with the warning that gives the slowdown
    assert tvt.resolve_dtype("--precision", "bf16", ("bf16", "fp32")) == "bf16"
    err = capsys.readouterr().err
    assert "set explicitly" in err and "40x slower than fp32" in err

    choice(monkeypatch, bf16=True)
    assert tvt.resolve_dtype("--precision", "auto", ("bf16", "fp32")) == "bf16"


def test_env_is_the_compact_env_report(tvt):
    env = tvt.bench_env()
    report = hardware.env_report(measure=False)
    assert env["cpu"] == report["cpu"]["model"] and env["isa"] == report["cpu"]["isa"]
    assert env["aten_capability"] == report["cpu"]["aten_capability"]
    assert env["onednn_bf16_kernels"] == report["cpu"]["onednn_bf16_kernels"]
    assert env["dispatch_limits"] == report["cpu"]["dispatch_limits"]
    assert env["torch_threads"] >= 1 and env["torch"] == report["versions"]["torch"]
    assert env["auto"] == report["auto"] and env["auto"]["choice"] in ("bf16", "fp32")


@pytest.mark.parametrize(
    "script, option", [("generate.py", "--dtype {auto,bfloat16,float32}"), ("train_vs_trl.py", "--precision")]
)
def test_the_benches_default_to_auto(script, option):
    """Run as scripts (bench/ on the path, so generate.py finds train_vs_trl's helpers)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--help"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert option in proc.stdout and "auto" in proc.stdout
