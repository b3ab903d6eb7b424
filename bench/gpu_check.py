"""One prepared run that proves sparring's device paths on a real GPU (and runs on a CPU in the tests).

Every check runs in a process of its own, under a time limit, so a check that crashes (a CUDA error
poisons its process), hangs (a collective that never returns) or fails does not stop the others.
Each writes one JSON line, to stdout and to --out, as soon as it ends:
    {"check": NAME, "status": "ok" | "failed" | "skipped", "error": null | TEXT, "seconds": S,
     "numbers": {...}, "env": {...}}
(a failed check adds "traceback" and/or "log_tail"). The last line is {"check": "summary", ...}.
"env", the same in every line, is what the environment check found (bench/train_vs_trl.py's
bench_env: CPU, instruction set, kernel dispatch, threads, torch, the GPU, what `auto` picks and why;
{"error": ...} where sparring could not say, null where the environment check wrote no record).

Checks, in order:
  environment         versions, the device, what is missing (a requested GPU that is absent stops the run)
  prepare             the policy built with random weights from a config and tokenizer copied into the work
                      dir (no download): SmolLM2-135M's shape, or a 2-layer one with --small; with --big
                      also a ~1B model of the same architecture (hidden 2048, 16 layers)
  pytest_device       `pytest tests/test_device.py` (and every --pytest FILE) with the device visible
  device_paths        on the device, fp32 and bf16: sparring's decode loop and model.generate, the log-prob
                      each sample recorded against a recomputation, packed against one-pass log-probs,
                      fp32 log-probs against the CPU's, and bf16-autocast training steps
  fsdp2_one_process   a 1-process `accelerate launch --config_file accelerate/fsdp.yaml`: the same DPO
                      steps trained unsharded and sharded with FSDP2 (`fully_shard`), losses and weights
                      compared. sparring.dist reads an FSDP launch only when WORLD_SIZE > 1, so under one
                      process the worker joins a 1-rank group and turns sharding on itself (the record
                      says what Dist made of the launch)
  sppo_iteration      one SPPO iteration through the real loop (base eval, generate, judge, rows, train,
                      eval) with K = 4 and a length judge defined here (judge.name: python); every file of
                      the run directory with its size, and the stage timings from manifest.json
  train_throughput    sparring's trainer against TRL's DPOTrainer on the same pairs (bench/train_vs_trl.py's
                      pairs and tokenization): tokens/s, the ratio, MFU against a bf16 matmul peak measured
                      in the same process (peak_gflops, unrounded GFLOP/s), and an fp32 loss-agreement run;
                      "skipped" (with sparring's own numbers) where TRL is not installed
  generation          sparring's decode loop against model.generate, sampled and greedy: tokens/s, ratio,
                      and fraction_of_peak (tokens/s × 2 × params over the bf16 matmul peak, peak_gflops)
  train_throughput_1b, generation_1b   the same two on the ~1B model (--big)

On the GPU machine (no network; torch, transformers, accelerate and pytest are there, sparring is not
installed: this script puts the checkout's src/ on the path). The config and tokenizer files and the
wheels it lacks (datasets, dill, multiprocess; trl for the TRL comparison) travel in an ignored folder
that the run carries, e.g. .gpucheck/ (docs/distributed.md, "Checking on a GPU"):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpucheck/whl/*.whl && \\
      export PYTHONPATH=/tmp/site; python3 bench/gpu_check.py --device cuda --big \\
      --model-files .gpucheck/files --out $OUT/gpu_check.jsonl
On this CPU (what tests/test_gpu_check.py runs):
    python bench/gpu_check.py --device cpu --small --out /tmp/gpu_check.jsonl

Exit status: 0 when no check failed, 1 when one did, 2 on bad arguments (nothing run).
"""

from __future__ import annotations

# Only the standard library at the top: the parent process orchestrates and must be able to report
# even when torch or sparring cannot be imported, and the python judge imports this module by name.
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCRIPT = Path(__file__).resolve()

# The files of a model directory that are not weights: what a model is rebuilt from.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")

# Shapes of the random-weight models, as changes to the copied config (SmolLM2-135M's by default).
SHAPES = {
    "smollm2-135m": {},
    # --small: the CPU test's model; the real tokenizer (49152 ids), two thin layers
    "small": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
    # --big: the same architecture scaled to ~1.07B parameters (Llama-3.2-1B's widths)
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
    },
}

# (name, time cap on a GPU in seconds, needs the prepared models). On the CPU the caps are tripled:
# they guard against hangs; the run as a whole is held to --budget-s.
CHECKS = [
    ("environment", 120, False),
    ("prepare", 240, False),
    ("pytest_device", 300, False),
    ("device_paths", 180, True),
    ("fsdp2_one_process", 240, True),
    ("sppo_iteration", 300, True),
    ("train_throughput", 300, True),
    ("generation", 240, True),
    ("train_throughput_1b", 300, True),
    ("generation_1b", 240, True),
]
BIG_CHECKS = ("train_throughput_1b", "generation_1b")
ALWAYS = ("environment", "prepare")

# Sizes per scale: "gpu" for SmolLM2-135M on the device, "small" for --small, "1b" for --big.
SIZES = {
    "device_paths": {"gpu": {"new_tokens": 24, "train_rows": 16}, "small": {"new_tokens": 8, "train_rows": 8}},
    "fsdp": {"gpu": {"rows": 32, "batch": 8, "micro": 4}, "small": {"rows": 8, "batch": 4, "micro": 2}},
    "sppo": {
        "gpu": {
            "prompts": 32,
            "k": 4,
            "new_tokens": 64,
            "batch": 128,
            "shard": 16,
            "train_batch": 8,
            "eval_limit": 32,
            "eval_tokens": 64,
        },
        "small": {
            "prompts": 4,
            "k": 4,
            "new_tokens": 8,
            "batch": 16,
            "shard": 2,
            "train_batch": 2,
            "eval_limit": 4,
            "eval_tokens": 6,
        },
    },
    "train": {
        "gpu": {"pairs": 256, "batch": 32, "micro": 8, "repeats": 2, "agree_pairs": 16},
        "1b": {"pairs": 128, "batch": 32, "micro": 8, "repeats": 1, "agree_pairs": 0},
        "small": {"pairs": 16, "batch": 8, "micro": 4, "repeats": 1, "agree_pairs": 8},
    },
    "generation": {
        "gpu": {"prompts": 32, "k": 4, "new_tokens": 128, "batch": 128, "repeats": 2},
        "1b": {"prompts": 32, "k": 4, "new_tokens": 128, "batch": 128, "repeats": 1},
        "small": {"prompts": 4, "k": 2, "new_tokens": 8, "batch": 8, "repeats": 1},
    },
}

# Tolerances of device_paths (per token of a response, in nats) and fsdp2_one_process.
FP32_LOGP_TOL = 1e-3  # recorded vs recomputed log-prob, fp32: different kernels, same arithmetic
BF16_LOGP_TOL = 0.1  # the same in bf16, mean over the samples: two bf16 paths round differently
CPU_GPU_LOGP_TOL = 1e-3  # fp32 log-probs of the same responses on the device and on the CPU
PACKED_LOGP_TOL = 1e-3  # packed (one prompt pass) against one pass per response, fp32
FSDP_LOSS_TOL = 1e-3  # per-step loss, sharded vs unsharded (one rank: only float order may differ)
FSDP_WEIGHT_REL = 1e-2  # max |Δw| sharded vs unsharded, relative to the largest update training made
AGREE_TOL = 1e-3  # per-step DPO loss, sparring vs TRL, fp32


class UserError(Exception):
    """Bad arguments: reported in one line, exit status 2. (sparring.errors.UserError is the same idea;
    the parent does not import sparring, so it can report even when sparring cannot be imported.)"""


def by_length(messages, responses):
    """The length judge of sppo_iteration (judge.function: gpu_check:by_length): the longer response
    wins. A random-weight policy's samples seldom tie on it, so the iteration has rows to train on."""
    return [len(r) for r in responses]


# ====================================================================== the parent: runs the checks


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda: the checks must run on the GPU (the run stops if there is none); cpu: hide any GPU",
    )
    ap.add_argument("--small", action="store_true", help="tiny model and sizes (the CPU test)")
    ap.add_argument("--big", action="store_true", help="also the ~1B model's throughput checks")
    ap.add_argument("--out", required=True, help="JSON-lines file the records are written to (replaced)")
    ap.add_argument(
        "--model-files",
        default="~/.cache/sparring/models/smollm2-135m-instruct",
        help="directory holding config.json and the tokenizer files (weights are not read)",
    )
    ap.add_argument("--work", default=None, help="work directory (default: a new one under the temp dir)")
    ap.add_argument(
        "--pytest", action="append", default=[], metavar="FILE", help="another test file for pytest_device (repeatable)"
    )
    ap.add_argument("--checks", default=None, help="comma list of checks to run (environment and prepare always run)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="seconds for the whole run; a check that cannot start in time is skipped",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one check
    return ap.parse_args(argv)


def validate(args) -> None:
    """Every bad argument stops the run before anything runs, with one line saying what to fix."""
    files = Path(args.model_files).expanduser()
    if not files.is_dir():
        raise UserError(
            f"--model-files {args.model_files}: no such directory (it must hold config.json and the "
            "tokenizer files of the model whose shape is rebuilt, e.g. SmolLM2-135M-Instruct's)"
        )
    if not (files / "config.json").is_file():
        raise UserError(f"--model-files {files}: no config.json there")
    if not any((files / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        raise UserError(f"--model-files {files}: no tokenizer files there (tokenizer.json, tokenizer_config.json)")
    args.pytest_files = ["tests/test_device.py"]
    for f in args.pytest:
        if (REPO / f).is_file():  # pytest runs in the repository root
            args.pytest_files.append(f)
        elif Path(f).is_file():
            args.pytest_files.append(str(Path(f).resolve()))
        else:
            raise UserError(f"--pytest {f}: no such test file (paths are relative to the repository root {REPO})")
    known = [c[0] for c in CHECKS]
    if args.checks:
        unknown = [c for c in args.checks.split(",") if c not in known]
        if unknown:
            raise UserError(f"--checks: unknown check(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.budget_s <= 0:
        raise UserError(f"--budget-s {args.budget_s}: must be positive")
    if args.small and args.big:
        raise UserError("--small and --big together make no sense: --big adds the ~1B model's checks")


def selected(args) -> list[tuple[str, int, bool]]:
    chosen = set(args.checks.split(",")) if args.checks else None
    out = []
    for name, cap, needs in CHECKS:
        if name in BIG_CHECKS and not args.big:
            continue
        if chosen is not None and name not in chosen and name not in ALWAYS:
            continue
        out.append((name, cap, needs))
    return out


def child_env(args, work: Path) -> dict:
    env = dict(os.environ)
    # the checkout's sparring, whether or not one is installed (the GPU machine has none)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "TQDM_DISABLE": "1",
            "HF_DATASETS_CACHE": str(work / "hf_datasets"),
        }
    )
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --device cpu means the CPU even on a GPU machine
    return env


def common_argv(args, work: Path) -> list[str]:
    argv = [
        "--device",
        args.device,
        "--out",
        args.out,
        "--work",
        str(work),
        "--seed",
        str(args.seed),
        "--model-files",
        str(Path(args.model_files).expanduser().resolve()),
    ]
    return argv + (["--small"] if args.small else []) + (["--big"] if args.big else [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_process(cmd: list[str], env: dict, log: Path, timeout: float) -> tuple[int | None, str]:
    """Run `cmd` (its output to `log`), killing it and everything it started after `timeout` seconds.
    Returns (exit status or None on a time-out, the log's last 3000 characters)."""
    with open(log, "w") as fh:
        # no session of its own: whatever ends this script (the device machine's time limit) ends it too
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            code = None
    return code, log.read_text(errors="replace")[-3000:]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process under it. A launch's ranks are not in the launcher's process
    group (torchrun starts each in a session of its own), so they are found by parentage."""
    try:
        import psutil

        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except Exception:  # psutil missing, or the process already gone
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except Exception:
            pass
    proc.kill()
    proc.wait()


def pytest_counts(xml_path: Path) -> dict:
    """Counts and failing tests from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    root = ET.parse(xml_path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    bad = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                bad.append(
                    {
                        "test": f"{case.get('classname')}::{case.get('name')}",
                        "kind": tag,
                        "message": (node.get("message") or "")[:400],
                    }
                )
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {
        "tests": counts["tests"],
        "passed": passed,
        "failed": counts["failures"],
        "errors": counts["errors"],
        "skipped": counts["skipped"],
        "failing": bad[:20],
    }


def run_pytest(args, work: Path, env: dict, timeout: float) -> dict:
    files = args.pytest_files
    xml = work / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *files]
    code, tail = run_process(cmd, env, work / "logs" / "pytest_device.log", timeout)
    if code is None:
        return {
            "status": "failed",
            "error": f"pytest did not finish within {timeout:.0f} s",
            "log_tail": tail,
            "numbers": {"files": files},
        }
    if not xml.is_file():
        return {
            "status": "failed",
            "error": f"pytest exited with {code} and wrote no report",
            "log_tail": tail,
            "numbers": {"files": files, "returncode": code},
        }
    numbers = {"files": files, "returncode": code, **pytest_counts(xml)}
    ok = code == 0 and numbers["failed"] == 0 and numbers["errors"] == 0 and numbers["tests"] > 0
    rec = {
        "status": "ok" if ok else "failed",
        "numbers": numbers,
        "error": None if ok else f"{numbers['failed']} failed, {numbers['errors']} errors (exit {code})",
    }
    if not ok:
        rec["log_tail"] = tail
    return rec


def check_command(name: str, args, work: Path) -> list[str]:
    me = [str(SCRIPT), *common_argv(args, work)]
    if name == "fsdp2_one_process":
        # the shipped FSDP config, one process: the launcher sets what a real FSDP launch sets
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "accelerate" / "fsdp.yaml"),
            "--num_processes",
            "1",
            "--main_process_port",
            str(free_port()),
            *me,
            "--child",
            "fsdp_worker",
        ]
    return [sys.executable, *me, "--child", name]


def torchrun_fallback(args, work: Path) -> tuple[list[str], dict]:
    """torchrun with the environment fsdp.yaml gives, for when `accelerate launch` itself fails."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        *common_argv(args, work),
        "--child",
        "fsdp_worker",
    ]
    extra = {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",
        "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
        "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_OFFLOAD_PARAMS": "false",
    }
    return cmd, extra


def run_child(name: str, args, work: Path, env: dict, timeout: float, budget_bound: bool = False) -> dict:
    result = work / "records" / f"{name}.json"
    result.unlink(missing_ok=True)
    code, tail = run_process(check_command(name, args, work), env, work / "logs" / f"{name}.log", timeout)
    launcher_note = None
    if name == "fsdp2_one_process" and not result.is_file() and code is not None:
        # accelerate launch failed before the worker wrote anything: try plain torchrun once
        launcher_note = f"accelerate launch exited with {code} before the worker reported: {tail[-800:]}"
        cmd, extra = torchrun_fallback(args, work)
        code, tail = run_process(cmd, {**env, **extra}, work / "logs" / f"{name}.torchrun.log", timeout)
    if result.is_file():
        try:
            rec = json.loads(result.read_text())
        except ValueError:
            rec = {"status": "failed", "error": "the check's record is not valid JSON", "numbers": {}}
        if rec.get("status") == "failed" or code not in (0, None):
            rec["log_tail"] = tail
        if code is None:  # it reported, then hung (e.g. at process-group teardown)
            rec.setdefault("notes", []).append(f"the process did not exit within {timeout:.0f} s after reporting")
    elif code is None:
        why = "its time cap (a hang?)" if not budget_bound else "the run's --budget-s, not a hang"
        rec = {
            "status": "failed",
            "error": f"did not finish within {timeout:.0f} s, killed at {why}",
            "numbers": {},
            "log_tail": tail,
        }
    else:
        rec = {
            "status": "failed",
            "error": f"the check's process exited with {code} without a record (a crash: see log_tail)",
            "numbers": {},
            "log_tail": tail,
        }
    if launcher_note:
        rec.setdefault("notes", []).append(launcher_note)
    return rec


class Emitter:
    def __init__(self, path: str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "w")  # one file, one run
        except OSError as exc:
            raise UserError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None

    def __call__(self, record: dict) -> None:
        line = json.dumps(record, default=str)
        print(line, flush=True)
        self.fh.write(line + "\n")
        self.fh.flush()


def main_parent(args) -> int:
    validate(args)
    emit = Emitter(args.out)
    start = time.monotonic()
    # absolute: the checks run in the repository root, wherever this was started
    work = Path(args.work).expanduser().resolve() if args.work else Path(tempfile.mkdtemp(prefix="sparring-gpucheck-"))
    for sub in ("records", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = child_env(args, work)
    scale = 3 if args.device == "cpu" else 1
    status: dict[str, str] = {}
    env_found = None  # the environment check's "env", then carried by every line
    print(f"[gpu_check] work directory {work}", file=sys.stderr, flush=True)
    for name, cap, needs_models in selected(args):
        left = args.budget_s - (time.monotonic() - start)
        reason = None
        if status.get("environment") == "failed":
            reason = "environment failed (see its record): the checks would not run where they should"
        elif needs_models and status.get("prepare") != "ok":
            reason = "prepare failed: no model to run on"
        elif left < 15:
            reason = f"out of time: {left:.0f} s of --budget-s {args.budget_s:.0f} left"
        t0 = time.monotonic()
        if reason:
            rec = {"status": "skipped", "error": reason, "numbers": {}}
        elif name == "pytest_device":
            rec = run_pytest(args, work, env, min(cap * scale, left - 5))
        else:
            rec = run_child(name, args, work, env, min(cap * scale, left - 5), budget_bound=left - 5 < cap * scale)
        if name == "environment":
            env_found = rec.pop("env", None)
        rec.pop("env", None)
        record = {
            "check": name,
            "status": rec.pop("status"),
            "error": rec.pop("error", None),
            "seconds": round(time.monotonic() - t0, 2),
            "numbers": rec.pop("numbers", {}),
            "env": env_found,
            **rec,
        }
        status[name] = record["status"]
        emit(record)
        print(
            f"[gpu_check] {name}: {record['status']} ({record['seconds']} s)"
            + (f" — {record['error']}" if record["error"] else ""),
            file=sys.stderr,
            flush=True,
        )
    failed = [n for n, s in status.items() if s == "failed"]
    emit(
        {
            "check": "summary",
            "status": "failed" if failed else "ok",
            "error": f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else None,
            "seconds": round(time.monotonic() - start, 2),
            "numbers": {
                "device": args.device,
                "small": args.small,
                "big": args.big,
                "work": str(work),
                "ok": [n for n, s in status.items() if s == "ok"],
                "failed": failed,
                "skipped": [n for n, s in status.items() if s == "skipped"],
            },
            "env": env_found,
        }
    )
    return 1 if failed else 0


# ====================================================================== the children: one check each


def _device(args):
    import torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no CUDA device")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _scale(args, which: str = "policy") -> str:
    if which == "big":
        return "1b"
    return "small" if args.small else "gpu"


def _models(args) -> dict:
    """{"policy": its directory, "big": ...}, as prepare built them."""
    return {k: v["path"] for k, v in _model_info(args).items()}


def _model_info(args) -> dict:
    return json.loads((Path(args.work) / "models.json").read_text())


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_environment(args) -> dict:
    import importlib
    import platform

    numbers: dict = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform()}
    numbers["versions"] = {
        d: _version(d)
        for d in (
            "torch",
            "transformers",
            "accelerate",
            "tokenizers",
            "safetensors",
            "datasets",
            "dill",
            "multiprocess",
            "pyarrow",
            "fsspec",
            "huggingface-hub",
            "numpy",
            "pandas",
            "pyyaml",
            "jinja2",
            "pytest",
            "trl",
            "peft",
            "psutil",
            "scipy",
            "nltk",
            "langdetect",
        )
    }
    problems = []
    import torch

    numbers["cuda_available"] = torch.cuda.is_available()
    numbers["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        numbers.update(
            {
                "device_count": torch.cuda.device_count(),
                "device_name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        problems.append("--device cuda, but torch sees no CUDA device (the other checks would run on the CPU)")
    # what each check imports: a missing one is named here, before a check fails on it
    imports = {
        "sparring": "sparring",
        "sparring.loop": "sparring.loop",
        "sparring.train": "sparring.train",
        "datasets (sparring's prompt reader: sppo_iteration, train_throughput)": "datasets",
        "pytest (pytest_device)": "pytest",
        "accelerate (fsdp2_one_process)": "accelerate",
        "trl (train_throughput's TRL side)": "trl",
    }
    missing = {}
    for what, module in imports.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or an error inside the module (a version mismatch)
            missing[what] = f"{type(exc).__name__}: {exc}"[:300]
    numbers["missing"] = missing
    if "sparring" in missing:
        problems.append(f"sparring cannot be imported: {missing['sparring']}")
    else:
        import sparring

        numbers["sparring_path"] = str(Path(sparring.__file__).parent)
    try:
        import train_vs_trl as tvt

        env = tvt.bench_env()
    except Exception as exc:  # not a failure of this check: `missing` names what cannot be imported
        env = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {
        "status": "failed" if problems else "ok",
        "error": "; ".join(problems) or None,
        "numbers": numbers,
        "env": env,
    }


def _build_model(files: Path, out: Path, shape: str, device, dtype, seed: int) -> dict:
    """A model of `shape` with random weights (seeded), from the copied config, saved with the copied
    tokenizer files to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(files)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    # initialised where it will run: a 1B model's random init takes seconds on a GPU, a minute on CPUs
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    if (files / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(files)
    out.mkdir(parents=True, exist_ok=True)
    for f in files.iterdir():
        if f.is_file() and f.name != "config.json" and f.name != "generation_config.json":
            shutil.copy2(f, out / f.name)
    model.to(dtype).save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    return {
        "path": str(out),
        "shape": shape,
        "params": params,
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "saved_dtype": str(dtype),
        "bytes": sum(f.stat().st_size for f in out.iterdir()),
    }


def check_prepare(args) -> dict:
    import torch

    device = _device(args)
    files_in = Path(args.model_files).expanduser()
    files = Path(args.work) / "files"
    files.mkdir(parents=True, exist_ok=True)
    copied = {}
    for f in sorted(files_in.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.startswith("."):
            shutil.copy2(f, files / f.name)
            copied[f.name] = f.stat().st_size
    models = {
        "policy": _build_model(
            files,
            Path(args.work) / "models" / "policy",
            "small" if args.small else "smollm2-135m",
            device,
            torch.float32,
            args.seed,
        )
    }
    if args.big:  # saved in bf16: half the bytes to write and read back at every load
        models["big"] = _build_model(files, Path(args.work) / "models" / "big", "1b", device, torch.bfloat16, args.seed)
    (Path(args.work) / "models.json").write_text(json.dumps(models))
    return {"status": "ok", "numbers": {"files_copied": copied, "models": models}}


def _prompt_ids(tok, n: int) -> list[list[int]]:
    from sparring.generation.hf import chat_prompt_ids

    texts = [
        "Write a haiku about rivers.",
        "Explain what a prime number is.",
        "Name three colours.",
        "Give me a tip for learning to cook.",
        "Why is the sky blue?",
        "Describe a cat in one sentence.",
    ]
    return [chat_prompt_ids(tok, texts[i % len(texts)]) for i in range(n)]


def _shipped_chats(name: str) -> list[list[dict]]:
    """The chat messages of a shipped prompt set, read as plain JSON lines: the checks that only need
    some prompts do not depend on `datasets` (sparring's prompt reader), the wheel most likely to be
    missing or mismatched on the GPU machine, so a problem there fails only the checks that need it."""
    from sparring.prompts import shipped_path

    lines = shipped_path(name).read_text().splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def _chat_pairs(n: int) -> list[dict]:
    """n conversational preference pairs in TRL's format (what bench/train_vs_trl.py's tokenize_pairs
    takes): each shipped chat prompt, answered with other prompts' texts (chosen: two of them, rejected:
    one), so the two responses differ in length and content."""
    chats = _shipped_chats("chat-train")
    text = lambda i: chats[i % len(chats)][-1]["content"]  # noqa: E731
    return [
        {
            "prompt": chats[i % len(chats)],
            "chosen": [{"role": "assistant", "content": f"{text(i + 1)} {text(i + 3)}"}],
            "rejected": [{"role": "assistant", "content": text(i + 2)}],
        }
        for i in range(n)
    ]


def _per_token_gaps(samples, recomputed) -> list[float]:
    """|recorded − recomputed| / n_tokens for each sample with at least one token."""
    return [abs(lp - float(r)) / len(ids) for (ids, lp, _), r in zip(samples, recomputed) if ids]


def check_device_paths(args) -> dict:
    import torch

    from sparring.config import MethodConfig, TrainConfig
    from sparring.generation.base import SamplingParams
    from sparring.generation.hf import sample_batch, sample_batch_generate
    from sparring.methods import METHODS
    from sparring.models import load_model, load_tokenizer
    from sparring.train import packed_logps, sequence_logps, train

    device = _device(args)
    size = SIZES["device_paths"][_scale(args)]
    policy = _models(args)["policy"]
    tok = load_tokenizer(policy)
    pad = tok.pad_token_id
    ids = _prompt_ids(tok, 3)
    numbers: dict = {"device": str(device)}
    problems: list[str] = []
    kw = {"k": 2, "params": SamplingParams(max_new_tokens=size["new_tokens"], temperature=0.7, top_p=0.9), "seed": 3}
    flat_prompts = [p for p in ids for _ in range(kw["k"])]
    for dtype in ("float32", "bfloat16"):
        model = load_model(policy, dtype).to(device).eval()
        where = {str(p.device) for p in model.parameters()}
        if where != {str(device)}:
            problems.append(f"{dtype}: parameters on {sorted(where)}, not {device}")
        got: dict = {}
        for engine, fn in (("sparring", sample_batch), ("generate", sample_batch_generate)):
            out = fn(model, tok, ids, **kw)
            flat = [s for per in out for s in per]
            with torch.no_grad():
                again = sequence_logps(model, flat_prompts, [s[0] for s in flat], pad)
            if again.logp.device != device:
                problems.append(f"{dtype}: sequence_logps returned a tensor on {again.logp.device}")
            gaps = _per_token_gaps(flat, again.logp.tolist())
            finite = all(torch.isfinite(torch.tensor([s[1] for s in flat])).tolist())
            got[engine] = {
                "samples": len(flat),
                "tokens": sum(len(s[0]) for s in flat),
                "logps_finite": finite,
                "logp_gap_per_token_max": max(gaps, default=0.0),
                "logp_gap_per_token_mean": sum(gaps) / max(1, len(gaps)),
            }
            if not finite:
                problems.append(f"{dtype}/{engine}: a recorded log-prob is not finite")
            bound = FP32_LOGP_TOL if dtype == "float32" else BF16_LOGP_TOL
            key = "logp_gap_per_token_max" if dtype == "float32" else "logp_gap_per_token_mean"
            if got[engine][key] > bound:
                problems.append(
                    f"{dtype}/{engine}: recorded vs recomputed log-prob differ by {got[engine][key]:.3g} "
                    f"nats per token ({key.rsplit('_', 1)[1]}; tolerance {bound})"
                )
        # the same seed draws the same samples (one uniform stream per sample)
        got["sparring_repeatable"] = sample_batch(model, tok, ids, **kw) == sample_batch(model, tok, ids, **kw)
        if not got["sparring_repeatable"]:
            problems.append(f"{dtype}: sparring's decode loop drew other samples with the same seed")
        greedy = {"k": 1, "params": SamplingParams(max_new_tokens=size["new_tokens"], greedy=True), "seed": 0}
        a = [per[0][0] for per in sample_batch(model, tok, ids, **greedy)]
        b = [per[0][0] for per in sample_batch_generate(model, tok, ids, **greedy)]
        # information, not a pass/fail: random weights give near-uniform logits, so rounding can flip an argmax
        got["greedy_same_as_generate"] = sum(x == y for x, y in zip(a, b)) / len(a)
        got["greedy_first_token_same"] = sum(x[:1] == y[:1] for x, y in zip(a, b)) / len(a)
        if dtype == "float32":
            responses = [[s[0] for s in per] for per in sample_batch(model, tok, ids, **kw)]
            firsts, seconds_ = [r[0] or [pad] for r in responses], [r[1] or [pad] for r in responses]
            with torch.no_grad():
                packed = packed_logps(model, ids, [firsts, seconds_], pad)
                one = [sequence_logps(model, ids, r, pad) for r in (firsts, seconds_)]
                gap = max(float((p.logp - o.logp).abs().max()) for p, o in zip(packed, one))
                cpu_model = load_model(policy, "float32").eval()
                cpu = sequence_logps(cpu_model, ids, firsts, pad).logp
            n_tok = torch.tensor([len(r) for r in firsts], dtype=torch.float64)
            dev_gap = float(((one[0].logp.cpu().double() - cpu.double()).abs() / n_tok).max())
            got["packed_vs_one_pass_max"] = gap
            got["device_vs_cpu_per_token_max"] = dev_gap
            if gap > PACKED_LOGP_TOL * max(len(r) for r in firsts + seconds_):
                problems.append(f"packed_logps differs from sequence_logps by {gap:.3g}")
            if dev_gap > CPU_GPU_LOGP_TOL:
                problems.append(f"fp32 log-probs on {device} differ from the CPU's by {dev_gap:.3g} nats per token")
            del cpu_model
        numbers[dtype] = got
        del model
    # bf16 autocast training on the device (what train.precision: bf16 does): steps with finite losses
    # that move the weights, the model staying on the device
    model = load_model(policy, "float32").to(device)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = sample_batch(model.eval(), tok, _prompt_ids(tok, size["train_rows"]), **kw)
    rows = [
        {
            "prompt_id": str(i),
            "prompt_ids": ids_,
            "w_ids": per[0][0] or [pad],
            "l_ids": per[1][0] or [pad],
            "ref_logp_w": float("nan"),
            "ref_logp_l": float("nan"),
        }
        for i, (ids_, per) in enumerate(zip(_prompt_ids(tok, size["train_rows"]), out))
    ]
    losses: list[dict] = []
    tcfg = TrainConfig(optimizer="adamw", lr=1e-4, batch_size=4, micro_batch_size=2, warmup_ratio=0.0, precision="bf16")
    result = train(
        model,
        rows,
        METHODS["dpo"],
        MethodConfig(name="dpo"),
        tcfg,
        pad_id=pad,
        seed=0,
        on_step=losses.append,
        progress=False,
    )
    moved = max(float((model.state_dict()[k].float() - v.float()).abs().max()) for k, v in before.items())
    where = {str(p.device) for p in model.parameters()}
    numbers["train_bf16"] = {
        "steps": result["steps"],
        "losses": [round(r["loss"], 6) for r in losses],
        "grad_norms": [round(r["grad_norm"], 6) for r in losses],
        "max_weight_change": moved,
        "parameters_on": sorted(where),
    }
    if result["steps"] == 0 or not all(map(_finite, [r["loss"] for r in losses] + [r["grad_norm"] for r in losses])):
        problems.append("bf16 training: no step, or a loss / gradient norm that is not finite")
    if moved == 0.0:
        problems.append("bf16 training did not change any weight")
    if where != {str(device)}:
        problems.append(f"bf16 training left parameters on {sorted(where)}")
    if device.type == "cuda":
        numbers["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return {"status": "failed" if problems else "ok", "error": "; ".join(problems) or None, "numbers": numbers}


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def check_fsdp_worker(args) -> dict:
    """Runs under a 1-process launch (accelerate/fsdp.yaml, or torchrun with its environment)."""
    import copy
    from datetime import timedelta

    import torch
    import torch.distributed as td
    import train_vs_trl as tvt

    from sparring.config import MethodConfig, TrainConfig
    from sparring.dist import Dist
    from sparring.methods import METHODS
    from sparring.models import load_model, load_tokenizer
    from sparring.train import train

    device = _device(args)
    size = SIZES["fsdp"][_scale(args)]
    policy = _models(args)["policy"]
    launch = {
        k: os.environ.get(k)
        for k in (
            "WORLD_SIZE",
            "RANK",
            "LOCAL_RANK",
            "ACCELERATE_USE_FSDP",
            "FSDP_VERSION",
            "FSDP_TRANSFORMER_CLS_TO_WRAP",
            "FSDP_RESHARD_AFTER_FORWARD",
        )
    }
    plain = Dist()  # what sparring makes of this launch by itself
    numbers: dict = {
        "launch_env": launch,
        "dist_as_launched": {"world": plain.world, "fsdp": plain.fsdp, "device": str(plain.device)},
    }
    problems: list[str] = []
    if launch["ACCELERATE_USE_FSDP"] != "true":
        problems.append("the launch did not set ACCELERATE_USE_FSDP=true (not an FSDP launch)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Dist joins a process group only when WORLD_SIZE > 1; one rank's group is joined here (the launcher
    # set RANK, WORLD_SIZE, MASTER_ADDR/PORT) so that FSDP2's device mesh has one
    td.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=timedelta(seconds=120),
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    sharded = Dist()
    sharded.fsdp = True  # what Dist sets for an FSDP launch of several processes
    tok = load_tokenizer(policy)
    rows = [
        {"prompt_id": str(i), **r, "ref_logp_w": float("nan"), "ref_logp_l": float("nan")}
        for i, r in enumerate(tvt.tokenize_pairs(tok, _chat_pairs(size["rows"])))
    ]
    # plain SGD without clipping: the update is lr × the gradient, so a gradient off by a factor shows in
    # the weights (AdamW would normalise it away)
    tcfg = TrainConfig(
        optimizer="sgd",
        lr=1e-2,
        max_grad_norm=0.0,
        batch_size=size["batch"],
        micro_batch_size=size["micro"],
        warmup_ratio=0.0,
        precision="bf16",
    )
    start_state = load_model(policy, "float32").state_dict()

    def one(dist) -> tuple[list[float], dict, float, bool]:
        model = load_model(policy, "float32").to(device)
        losses: list[float] = []
        _sync(device)
        t0 = time.perf_counter()
        train(
            model,
            copy.deepcopy(rows),
            METHODS["dpo"],
            MethodConfig(name="dpo"),
            tcfg,
            pad_id=tok.pad_token_id,
            seed=args.seed,
            on_step=lambda r: losses.append(r["loss"]),
            progress=False,
            dist=dist,
        )
        _sync(device)
        sec = time.perf_counter() - t0
        is_sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
        state = {k: v.detach().float().cpu() for k, v in dist.full_state_dict(model).items()}
        return losses, state, sec, is_sharded

    base_losses, base_state, base_sec, base_sharded = one(plain)
    fsdp_losses, fsdp_state, fsdp_sec, fsdp_sharded = one(sharded)
    td.destroy_process_group()
    update = max(float((base_state[k] - start_state[k].float()).abs().max()) for k in base_state)
    weight_gap = max(float((base_state[k] - fsdp_state[k]).abs().max()) for k in base_state)
    loss_gap = max((abs(a - b) for a, b in zip(base_losses, fsdp_losses)), default=float("inf"))
    numbers.update(
        {
            "rows": len(rows),
            "steps": len(fsdp_losses),
            "precision": "bf16",
            "optimizer": "sgd",
            "unsharded": {
                "seconds": round(base_sec, 3),
                "losses": base_losses,
                "parameters_are_dtensors": base_sharded,
            },
            "fsdp2": {"seconds": round(fsdp_sec, 3), "losses": fsdp_losses, "parameters_are_dtensors": fsdp_sharded},
            "max_abs_loss_diff": loss_gap,
            "max_abs_weight_diff": weight_gap,
            "max_abs_update": update,
            "state_dict_keys_match": set(base_state) == set(fsdp_state),
        }
    )
    if device.type == "cuda":
        numbers["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if not fsdp_sharded:
        problems.append("the FSDP run's parameters are not DTensors: fully_shard did not run")
    if len(fsdp_losses) != len(base_losses) or not fsdp_losses:
        problems.append(f"step counts differ or are zero: {len(base_losses)} unsharded, {len(fsdp_losses)} sharded")
    if loss_gap > FSDP_LOSS_TOL:
        problems.append(f"per-step losses differ by up to {loss_gap:.3g} (tolerance {FSDP_LOSS_TOL})")
    if update == 0.0:
        problems.append("training did not change the weights")
    elif weight_gap > FSDP_WEIGHT_REL * update:
        problems.append(
            f"weights differ by {weight_gap:.3g}, {weight_gap / update:.2%} of the largest update "
            f"(tolerance {FSDP_WEIGHT_REL:.0%})"
        )
    return {"status": "failed" if problems else "ok", "error": "; ".join(problems) or None, "numbers": numbers}


def check_sppo_iteration(args) -> dict:
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import load_file

    from sparring.config import config_from_dict
    from sparring.dist import current
    from sparring.loop import load_inputs, make_context, open_run, run

    device = _device(args)
    size = SIZES["sppo"][_scale(args)]
    policy = _models(args)["policy"]
    runs = Path(args.work) / "runs"
    shutil.rmtree(runs / "gpucheck", ignore_errors=True)  # a reused --work: a fresh run, not a resumed one
    cfg_dict = {
        "name": "gpucheck",
        "seed": args.seed,
        "iterations": 1,
        "model": policy,
        "runs_dir": str(runs),
        "method": {"name": "sppo", "beta": 0.1},
        "judge": {"name": "python", "function": "gpu_check:by_length"},
        # chat prompts: no IFEval instructions, so the evaluation is the judge's win rates
        "prompts": {"train": "shipped:chat-train", "heldout": "shipped:chat-heldout", "per_iteration": size["prompts"]},
        "generation": {
            "k": size["k"],
            "max_new_tokens": size["new_tokens"],
            "batch_size": size["batch"],
            "dtype": "bfloat16",
            "shard_size": size["shard"],
        },
        "train": {
            "lr": 1e-5,
            "batch_size": size["train_batch"],
            "micro_batch_size": size["train_batch"],
            "precision": "bf16",
        },
        "eval": {
            "max_new_tokens": size["eval_tokens"],
            "limit": size["eval_limit"],
            "batch_size": size["eval_limit"],
            "bootstrap": 200,
        },
    }
    cfg = config_from_dict(cfg_dict, "gpu_check")
    inputs = load_inputs(cfg)
    rd = open_run(cfg, runs / cfg.name)
    log: list[str] = []
    summary = run(make_context(cfg, rd, progress=False, log=log.append, inputs=inputs))
    root = rd.root
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    stages = rd.manifest()["stages"]
    timings = {k: {"status": e.get("status"), "seconds": e.get("seconds")} for k, e in stages.items()}
    it = root / "iter_0"
    problems = []
    want = ["base/eval"] + [f"iter_0/{s}" for s in ("generate", "judge", "rows", "train", "eval")]
    not_done = [k for k in want if stages.get(k, {}).get("status") != "done"]
    if not_done:
        problems.append(f"stages not done: {not_done}")
    n_samples = pq.read_table(it / "samples.parquet").num_rows if (it / "samples.parquet").is_file() else 0
    if n_samples != size["prompts"] * size["k"]:
        problems.append(f"{n_samples} samples, expected {size['prompts']} prompts × K {size['k']}")
    train_metrics = stages.get("iter_0/train", {}).get("metrics", {})
    if not train_metrics.get("steps"):
        problems.append("the train stage took no optimizer step (no rows?)")
    weights = it / "policy" / "model.safetensors"
    changed = None
    if weights.is_file():
        before, after = load_file(Path(policy) / "model.safetensors"), load_file(weights)
        changed = any(not torch.equal(before[k], after[k]) for k in before)
        if not changed:
            problems.append("the trained policy has the base policy's weights")
    else:
        problems.append("iter_0/policy/model.safetensors is missing")
    ev = it / "eval" / "metrics.json"
    metrics = json.loads(ev.read_text()) if ev.is_file() else {}
    if "win_rate_vs_base" not in metrics:
        problems.append("iter_0/eval/metrics.json has no win_rate_vs_base")
    numbers = {
        "device": str(current().device),
        "config": cfg_dict,
        "stage_seconds": timings,
        "stage_metrics": {
            k: {m: v for m, v in (e.get("metrics") or {}).items() if isinstance(v, (int, float))}
            for k, e in stages.items()
        },
        "files": files,
        "n_files": len(files),
        "total_bytes": sum(files.values()),
        "samples": n_samples,
        "policy_changed": changed,
        "win_rate_vs_base": metrics.get("win_rate_vs_base"),
        "summary_seconds": [r.get("seconds") for r in summary.get("iterations", [])],
    }
    if device.type == "cuda":
        numbers["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if current().device != device:
        problems.append(f"the run's ranks used {current().device}, not {device}")
    return {"status": "failed" if problems else "ok", "error": "; ".join(problems) or None, "numbers": numbers}


def _sig(x: float, digits: int = 3) -> float:
    """`x` to `digits` significant digits: a slow CPU's small rate or MFU is shortened, never rounded to 0."""
    return float(f"{x:.{digits}g}")


def _sparring_train_timed(model_dir, rows_tok, ref, ns, precision, device) -> dict:
    from sparring.config import MethodConfig, TrainConfig
    from sparring.methods import METHODS
    from sparring.models import load_model, load_tokenizer
    from sparring.train import train

    model = load_model(model_dir, "float32").to(device)
    tok = load_tokenizer(model_dir)
    rows = [
        {"prompt_id": str(i), **r, "ref_logp_w": ref[i][0], "ref_logp_l": ref[i][1]} for i, r in enumerate(rows_tok)
    ]
    # the settings of bench/train_vs_trl.py's run_sparring
    tcfg = TrainConfig(
        optimizer="adamw",
        lr=ns.lr,
        epochs=1,
        batch_size=ns.batch_size,
        micro_batch_size=ns.micro_batch_size,
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        precision=precision,
    )
    losses: list[float] = []
    _sync(device)
    t0 = time.perf_counter()
    train(
        model,
        rows,
        METHODS["dpo"],
        MethodConfig(name="dpo", beta=ns.beta),
        tcfg,
        pad_id=tok.pad_token_id,
        seed=ns.seed,
        on_step=lambda r: losses.append(r["loss"]),
        progress=False,
    )
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "losses": losses}


def _reference_logps(model_dir, rows_tok, micro, precision, device) -> tuple[list[tuple[float, float]], float]:
    """log π_0 of both responses of every pair (what sampling records in a real run), on the device."""
    import contextlib

    import torch

    from sparring.methods import METHODS
    from sparring.models import load_model, load_tokenizer
    from sparring.train import fill_reference_logps

    model = load_model(model_dir, "float32").to(device)
    pad = load_tokenizer(model_dir).pad_token_id
    rows = [{**r, "ref_logp_w": float("nan"), "ref_logp_l": float("nan")} for r in rows_tok]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    _sync(device)
    t0 = time.perf_counter()
    fill_reference_logps(model, rows, METHODS["dpo"], pad, micro, autocast)
    _sync(device)
    return [(r["ref_logp_w"], r["ref_logp_l"]) for r in rows], time.perf_counter() - t0


def _trl_train_timed(model_dir, pairs_ordered, ns, precision, precompute, device, check_rows=None) -> dict:
    """TRL's DPOTrainer with bench/train_vs_trl.py's settings, on `device` (that bench pins the CPU)."""
    import contextlib
    import io
    import tempfile

    import train_vs_trl as tvt
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import DPOTrainer

    from sparring.models import load_model, load_tokenizer

    class Timed(DPOTrainer):
        ref_seconds = 0.0

        def _get_train_sampler(self, train_dataset=None):
            # the order sparring's seed drew, so step k holds the same pairs on both sides
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_ref_log_probs(self, model, inputs):
            t0 = time.perf_counter()
            try:
                return super().compute_ref_log_probs(model, inputs)
            finally:
                _sync(device)
                Timed.ref_seconds += time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as out_dir:
        cfg = tvt.dpo_config(out_dir, ns, precision, precompute, use_cpu=device.type == "cpu")
        ds = Dataset.from_list(pairs_ordered)
        # a fresh fingerprint per run: the precompute pass must not hit an earlier run's datasets cache
        ds = ds.add_column("run_nonce", [time.perf_counter_ns()] * len(ds))
        model = load_model(model_dir, "float32")
        ref_model = None if precompute else load_model(model_dir, "float32")
        Timed.ref_seconds = 0.0
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer = Timed(
                model=model, ref_model=ref_model, args=cfg, train_dataset=ds, processing_class=load_tokenizer(model_dir)
            )
        if check_rows is not None:  # the same token ids on both sides
            for i, r in enumerate(check_rows):
                row = trainer.train_dataset[i]
                theirs = (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
                if theirs != (r["prompt_ids"], r["w_ids"], r["l_ids"]):
                    raise RuntimeError(f"TRL tokenized pair {i} differently from sparring")
        ref_seconds = Timed.ref_seconds  # the precompute pass ran inside the constructor
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _sync(device)
            t0 = time.perf_counter()
            trainer.train()
            _sync(device)
            train_seconds = time.perf_counter() - t0
        on = str(next(trainer.model.parameters()).device)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    return {
        "seconds": train_seconds + ref_seconds,
        "train_seconds": train_seconds,
        "ref_seconds": ref_seconds,
        "losses": losses,
        "model_on": on,
    }


def check_train_throughput(args, which: str = "policy") -> dict:
    import importlib.util

    import numpy as np
    import torch
    import train_vs_trl as tvt

    from sparring.models import load_tokenizer
    from sparring.train import _batches

    device = _device(args)
    size = SIZES["train"][_scale(args, which)]
    model_dir = _models(args)[which]
    tok = load_tokenizer(model_dir)
    # bench/train_vs_trl.py's settings: sigmoid DPO, β 0.1, lr 5e-6, AdamW, clip 1.0, one epoch
    ns = argparse.Namespace(
        model=model_dir, beta=0.1, lr=5e-6, seed=args.seed, batch_size=size["batch"], micro_batch_size=size["micro"]
    )
    pairs = tvt.build_pairs(tok, size["pairs"], args.seed)
    rows = tvt.tokenize_pairs(tok, pairs)
    order = np.concatenate(list(_batches(len(rows), ns.batch_size, 1, args.seed)))  # sparring's step order
    pairs_ord = [pairs[i] for i in order]
    tokens = tvt.work_tokens(rows)
    n_params = _model_info(args)[which]["params"]  # counted when prepare built it (tied weights once)
    # the MFU's denominator, measured here: unrounded GFLOP/s of a large bf16 matmul on the device
    peak = tvt.matmul_peak(torch.bfloat16, device)
    have_trl = importlib.util.find_spec("trl") is not None
    numbers: dict = {
        "device": str(device),
        "model": which,
        "params": n_params,
        "pairs": len(rows),
        "tokens": tokens,
        "batch_size": ns.batch_size,
        "micro_batch_size": ns.micro_batch_size,
        "precision": "bf16",
        **peak,  # peak_gflops, peak_dtype, peak_shape
    }
    problems: list[str] = []
    if have_trl and size["agree_pairs"]:
        # loss agreement in fp32 first (a smaller step, so a few pairs make several steps)
        a_ns = argparse.Namespace(**{**vars(ns), "batch_size": 4, "micro_batch_size": 2})
        a_pairs = tvt.build_pairs(tok, size["agree_pairs"], args.seed)
        a_rows = tvt.tokenize_pairs(tok, a_pairs)
        a_order = np.concatenate(list(_batches(len(a_rows), 4, 1, args.seed)))
        a_ref, _ = _reference_logps(model_dir, a_rows, 2, "fp32", device)
        s = _sparring_train_timed(model_dir, a_rows, a_ref, a_ns, "fp32", device)
        t = _trl_train_timed(
            model_dir,
            [a_pairs[i] for i in a_order],
            a_ns,
            "fp32",
            True,
            device,
            check_rows=[a_rows[i] for i in a_order],
        )
        diffs = [abs(x - y) for x, y in zip(s["losses"], t["losses"])]
        gap = max(diffs) if diffs and len(s["losses"]) == len(t["losses"]) else float("inf")
        numbers["agreement_fp32"] = {
            "pairs": len(a_rows),
            "steps": len(s["losses"]),
            "sparring_losses": s["losses"],
            "trl_losses": t["losses"],
            "max_abs_step_loss_diff": gap,
            "tolerance": AGREE_TOL,
            "trl_model_on": t["model_on"],
        }
        if gap > AGREE_TOL:
            problems.append(
                f"fp32 per-step DPO losses of sparring and TRL differ by up to {gap:.3g} (tolerance {AGREE_TOL})"
            )
    ref, ref_sec = _reference_logps(model_dir, rows, ns.micro_batch_size, "bf16", device)
    numbers["sparring_ref_logps_seconds_not_counted"] = round(ref_sec, 3)
    configs = ["sparring"] + (["trl_precompute", "trl_ref_model"] if have_trl else [])
    best: dict[str, dict] = {}
    for _ in range(size["repeats"]):  # alternating, best kept: the first run of each also warms the kernels
        for name in configs:
            if name == "sparring":
                r = _sparring_train_timed(model_dir, rows, ref, ns, "bf16", device)
            else:
                r = _trl_train_timed(model_dir, pairs_ord, ns, "bf16", name == "trl_precompute", device)
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    for name, r in best.items():
        tps = tokens / r["seconds"]
        mfu = _sig(6 * n_params * tps / (peak["peak_gflops"] * 1e9))
        entry = {
            "seconds": round(r["seconds"], 3),
            "tokens_per_s": _sig(tps, 4),
            "mfu": mfu,  # against the peak of the precision it trained in, bf16
            "mfu_vs_bf16_peak": mfu,
            "final_loss": r["losses"][-1] if r["losses"] else None,
            "steps": len(r["losses"]),
        }
        if name != "sparring":
            entry.update(
                {
                    "train_seconds": round(r["train_seconds"], 3),
                    "ref_seconds": round(r["ref_seconds"], 3),
                    "model_on": r["model_on"],
                }
            )
        numbers[name] = entry
        if not r["losses"] or not all(map(_finite, r["losses"])):
            problems.append(f"{name}: no steps or a loss that is not finite")
        if name != "sparring" and not r["model_on"].startswith(device.type):
            problems.append(f"{name}: TRL trained on {r['model_on']}, not on {device}")
    for name in configs[1:]:
        numbers[f"speedup_vs_{name}"] = _sig(best[name]["seconds"] / best["sparring"]["seconds"])
    if device.type == "cuda":
        numbers["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if problems:
        return {"status": "failed", "error": "; ".join(problems), "numbers": numbers}
    if not have_trl:
        return {
            "status": "skipped",
            "numbers": numbers,
            "error": "trl not installed: TRL's side was skipped (sparring's own numbers are here); carry the wheel "
            "trl (pure Python; it needs accelerate, datasets, transformers)",
        }
    return {"status": "ok", "numbers": numbers}


def check_generation(args, which: str = "policy") -> dict:
    import torch
    import train_vs_trl as tvt

    from sparring.generation.base import SamplingParams
    from sparring.generation.hf import iter_samples
    from sparring.models import load_model, load_tokenizer

    device = _device(args)
    size = SIZES["generation"][_scale(args, which)]
    model_dir = _models(args)[which]
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, "bfloat16").to(device).eval()
    chats = _shipped_chats("chat-train")
    sampled_prompts = chats[: size["prompts"]]
    # greedy: one response per prompt over prompts × K prompts, the same number of sequences as sampled
    greedy_prompts = [chats[i % len(chats)] for i in range(size["prompts"] * size["k"])]

    def timed(engine: str, greedy: bool, new_tokens: int, prompts) -> tuple[float, int, list]:
        _sync(device)
        t0 = time.perf_counter()
        out = []
        for batch in iter_samples(
            model,
            tok,
            prompts,
            k=1 if greedy else size["k"],
            params=SamplingParams(max_new_tokens=new_tokens, temperature=0.7, top_p=0.9, greedy=greedy),
            batch_size=size["batch"],
            seed=0,
            engine=engine,
        ):
            out += [s.response_ids for s in batch]
        _sync(device)
        return time.perf_counter() - t0, sum(map(len, out)), out

    for engine in ("sparring", "generate"):  # warm-up: CUDA context, kernels, allocator
        timed(engine, False, 4, sampled_prompts[:2])
        timed(engine, True, 4, greedy_prompts[:2])
    configs = {
        "generate": ("generate", False),
        "sparring": ("sparring", False),
        "generate_greedy": ("generate", True),
        "sparring_greedy": ("sparring", True),
    }
    best: dict[str, tuple[float, int, list]] = {}
    for _ in range(size["repeats"]):
        for name, (engine, greedy) in configs.items():
            r = timed(engine, greedy, size["new_tokens"], greedy_prompts if greedy else sampled_prompts)
            if name not in best or r[0] < best[name][0]:
                best[name] = r
    numbers: dict = {
        "device": str(device),
        "model": which,
        "dtype": "bfloat16",
        "prompts": size["prompts"],
        "k": size["k"],
        "max_new_tokens": size["new_tokens"],
        "batch_size": size["batch"],
        "repeats": size["repeats"],
        "params": _model_info(args)[which]["params"],
        # measured after the timings: unrounded GFLOP/s of a large bf16 matmul on the device
        **tvt.matmul_peak(torch.bfloat16, device),
    }
    problems = []
    rate = {name: n / sec for name, (sec, n, _) in best.items()}
    for name, (sec, n, _) in best.items():
        numbers[name] = {
            "seconds": round(sec, 3),
            "tokens": n,
            "tokens_per_s": _sig(rate[name], 4),
            # the decode's model FLOP/s (2 × params a token) over the peak
            "fraction_of_peak": _sig(rate[name] * 2 * numbers["params"] / (numbers["peak_gflops"] * 1e9)),
        }
        if n == 0:
            problems.append(f"{name} generated no tokens")
    if not problems:
        numbers["sparring_vs_generate_sampled"] = _sig(rate["sparring"] / rate["generate"])
        numbers["sparring_vs_generate_greedy"] = _sig(rate["sparring_greedy"] / rate["generate_greedy"])
    a, b = best["sparring_greedy"][2], best["generate_greedy"][2]
    # information: with random weights the logits are nearly flat, so bf16 rounding can flip an argmax
    numbers["greedy_identical_fraction"] = round(sum(x == y for x, y in zip(a, b)) / max(1, len(a)), 3)
    if device.type == "cuda":
        numbers["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return {"status": "failed" if problems else "ok", "error": "; ".join(problems) or None, "numbers": numbers}


CHILDREN = {
    "environment": check_environment,
    "prepare": check_prepare,
    "device_paths": check_device_paths,
    "fsdp_worker": check_fsdp_worker,
    "sppo_iteration": check_sppo_iteration,
    "train_throughput": check_train_throughput,
    "generation": check_generation,
    "train_throughput_1b": lambda args: check_train_throughput(args, "big"),
    "generation_1b": lambda args: check_generation(args, "big"),
}


def main_child(args) -> int:
    """Run one check and write its record to <work>/records/<check>.json (the parent reads it)."""
    import logging
    import warnings

    name = "fsdp2_one_process" if args.child == "fsdp_worker" else args.child
    out = Path(args.work) / "records" / f"{name}.json"
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        rec = CHILDREN[args.child](args)
    except BaseException as exc:  # a check's failure is its record, whatever it was
        rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000], "numbers": {}}
        if type(exc).__name__ != "UserError":  # sparring's own errors say what to fix; others need the stack
            rec["traceback"] = traceback.format_exc()[-4000:]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, default=str))
    tmp.replace(out)  # whole or absent: the parent never reads half a record
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return main_child(args)
    try:
        return main_parent(args)
    except UserError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
