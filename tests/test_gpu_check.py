"""bench/gpu_check.py, the prepared script that is run once on a lent GPU, run here on the CPU with
small sizes, so that it cannot rot between the rare runs on a GPU: every check must report a record
of the documented shape, and the end-to-end iteration and the generation check must succeed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"
RUN_TIMEOUT = 1500  # seconds; a run took 1.5 to 3.5 minutes on the shared 2-core CPU (a hang guard, not a timing)
STATUSES = {"ok", "failed", "skipped"}
EXPECTED = [
    "environment",
    "prepare",
    "pytest_device",
    "device_paths",
    "fsdp2_one_process",
    "sppo_iteration",
    "train_throughput",
    "generation",
    "summary",
]


def model_files() -> Path:
    """The embedded SmolLM2-135M's directory: only its config and tokenizer files are read."""
    from sparring.errors import UserError
    from sparring.models import resolve_model

    try:
        return Path(resolve_model("smollm2-135m"))
    except UserError as exc:
        pytest.skip(f"the embedded SmolLM2-135M is not available here: {exc}")


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "records.jsonl"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--device",
        "cpu",
        "--small",
        "--out",
        str(out),
        "--work",
        str(tmp / "work"),
        "--model-files",
        str(model_files()),
        "--budget-s",
        str(RUN_TIMEOUT - 60),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return proc, out


def test_every_check_writes_one_record_of_the_documented_shape(cpu_run):
    proc, out = cpu_run
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    # stdout carries the same lines as the file, and nothing else
    assert proc.stdout.splitlines() == lines, proc.stderr[-3000:]
    assert [r["check"] for r in records] == EXPECTED, proc.stderr[-3000:]
    for r in records:
        assert {"check", "status", "error", "seconds", "numbers"} <= set(r), r
        assert r["status"] in STATUSES, r
        assert isinstance(r["numbers"], dict) and isinstance(r["seconds"], (int, float)) and r["seconds"] >= 0
        assert (r["error"] is None) == (r["status"] == "ok"), r  # a record that is not ok says why
    # every line says where it ran: the environment check's `env`, the same in each
    env = records[0]["env"]
    assert all(r["env"] == env for r in records), records[0]
    assert env["auto"]["choice"] in ("bf16", "fp32") and env["auto"]["reason"] and env["isa"], env
    assert env["torch_threads"] >= 1 and env["cuda"] is None  # --device cpu hides any GPU
    summary = records[-1]["numbers"]
    assert summary["failed"] == [r["check"] for r in records[:-1] if r["status"] == "failed"]
    assert proc.returncode == (1 if summary["failed"] else 0)


def by_name(out: Path) -> dict:
    return {r["check"]: r for r in map(json.loads, out.read_text().splitlines())}


def failure(r: dict) -> str:
    return json.dumps({k: r.get(k) for k in ("error", "traceback", "log_tail")})[-4000:]


def test_the_sppo_iteration_runs_end_to_end_and_lists_its_files(cpu_run):
    r = by_name(cpu_run[1])["sppo_iteration"]
    assert r["status"] == "ok", failure(r)
    n = r["numbers"]
    assert n["device"] == "cpu"
    stages = ["base/eval"] + [f"iter_0/{s}" for s in ("generate", "judge", "rows", "train", "eval")]
    assert set(n["stage_seconds"]) == set(stages)
    assert all(e["status"] == "done" and e["seconds"] >= 0 for e in n["stage_seconds"].values())
    for f in (
        "manifest.json",
        "config.yaml",
        "summary.json",
        "iter_0/samples.parquet",
        "iter_0/preferences.parquet",
        "iter_0/train.parquet",
        "iter_0/policy/model.safetensors",
        "iter_0/eval/metrics.json",
    ):
        assert n["files"][f] > 0, f
    assert n["n_files"] == len(n["files"]) and n["total_bytes"] == sum(n["files"].values())
    assert n["samples"] == 4 * 4  # --small: 4 prompts, K = 4
    assert n["policy_changed"] is True
    assert n["stage_metrics"]["iter_0/train"]["steps"] > 0
    assert 0 <= n["win_rate_vs_base"] <= 1


def test_the_generation_check_compares_both_engines_sampled_and_greedy(cpu_run):
    r = by_name(cpu_run[1])["generation"]
    assert r["status"] == "ok", failure(r)
    n = r["numbers"]
    # the peak is unrounded GFLOP/s, so a slow CPU's is > 0 too; the fractions are kept to 3 significant digits
    assert n["peak_gflops"] > 0 and n["peak_dtype"] == "bfloat16" and n["params"] > 0
    for name in ("generate", "sparring", "generate_greedy", "sparring_greedy"):
        assert n[name]["tokens"] > 0 and n[name]["tokens_per_s"] > 0
        assert n[name]["fraction_of_peak"] == pytest.approx(
            n[name]["tokens_per_s"] * 2 * n["params"] / (n["peak_gflops"] * 1e9), rel=0.01
        )
    assert n["sparring_vs_generate_sampled"] == pytest.approx(
        n["sparring"]["tokens_per_s"] / n["generate"]["tokens_per_s"], rel=0.01
    )
    assert n["sparring_vs_generate_greedy"] > 0
    assert 0 <= n["greedy_identical_fraction"] <= 1


def test_the_device_checks_pass_on_the_cpu(cpu_run):
    """What runs on the GPU runs here too: pytest's device tests, the device paths (fp32 and bf16) and
    the 1-process FSDP2 launch, which must have sharded (DTensor parameters) and trained like one."""
    records = by_name(cpu_run[1])
    for name in ("environment", "prepare", "pytest_device", "device_paths", "fsdp2_one_process"):
        assert records[name]["status"] == "ok", (name, failure(records[name]))
    py = records["pytest_device"]["numbers"]
    assert py["tests"] > 0 and py["passed"] == py["tests"] - py["skipped"] and py["failed"] == py["errors"] == 0
    fsdp = records["fsdp2_one_process"]["numbers"]
    assert fsdp["launch_env"]["ACCELERATE_USE_FSDP"] == "true" and fsdp["launch_env"]["WORLD_SIZE"] == "1"
    assert fsdp["fsdp2"]["parameters_are_dtensors"] and not fsdp["unsharded"]["parameters_are_dtensors"]
    assert fsdp["steps"] > 0 and fsdp["max_abs_update"] > 0
    paths = records["device_paths"]["numbers"]
    assert paths["train_bf16"]["steps"] > 0 and paths["train_bf16"]["parameters_on"] == ["cpu"]


def test_training_throughput_reports_or_says_trl_is_missing(cpu_run):
    import importlib.util

    r = by_name(cpu_run[1])["train_throughput"]
    n = r["numbers"]
    # GFLOP/s unrounded: a CPU without native bf16 (~1 GFLOP/s) once reported a 0.0 TFLOP/s peak here
    assert n["peak_gflops"] > 0 and n["peak_dtype"] == "bfloat16" and n["precision"] == "bf16"
    assert n["sparring"]["tokens_per_s"] > 0 and n["sparring"]["mfu_vs_bf16_peak"] > 0
    assert n["sparring"]["mfu"] == n["sparring"]["mfu_vs_bf16_peak"]  # it trained in bf16
    if importlib.util.find_spec("trl") is None:
        assert r["status"] == "skipped" and "trl not installed" in r["error"]
    else:
        assert r["status"] == "ok", failure(r)
        assert n["speedup_vs_trl_precompute"] > 0 and n["agreement_fp32"]["max_abs_step_loss_diff"] <= 1e-3


def test_bad_arguments_stop_before_anything_runs(tmp_path):
    out = tmp_path / "r.jsonl"
    for extra, says in (
        (["--model-files", str(tmp_path / "nope")], "no such directory"),
        (["--model-files", str(tmp_path)], "no config.json"),
        (["--model-files", str(model_files()), "--checks", "generaton"], "unknown check(s) generaton"),
        (["--model-files", str(model_files()), "--pytest", "tests/no_such.py"], "no such test file"),
    ):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *extra],
            cwd=REPO,
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()  # nothing ran, nothing was written


def test_a_missing_gpu_stops_the_run_instead_of_running_on_the_cpu(tmp_path):
    """--device cuda where torch sees no GPU: the environment check fails saying so, and every other
    check is skipped (run anyway, they would pass on the CPU and prove nothing about a GPU)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cuda",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "w"),
            "--model-files",
            str(model_files()),
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    records = by_name(out)
    assert records["environment"]["status"] == "failed" and "no CUDA device" in records["environment"]["error"]
    skipped = [r for name, r in records.items() if name not in ("environment", "summary")]
    assert skipped and all(r["status"] == "skipped" and "environment failed" in r["error"] for r in skipped)
    assert records["summary"]["numbers"]["failed"] == ["environment"]
