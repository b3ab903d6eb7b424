"""A run under `accelerate launch` with 2 processes on the CPU (issue 8) gives the files of a
one-process run, and resumes after a kill like one.

- samples, preferences and training rows: the same tables, bit for bit (generation shards and eval
  batches are seeded / decoded exactly as in one process, only by another rank);
- the trained weights: within WEIGHT_ATOL. Each optimizer step's gradient is summed over the ranks,
  so float additions happen in another order than in one process: step 0 of this config splits its
  3 micro-batches 2 + 1 over the ranks, (g1 + g3) + g2 instead of (g1 + g2) + g3. Measured on this
  config: a max abs difference of 1.2e-7, where training moved a weight by up to 1.2e-2. WEIGHT_ATOL
  = 1e-5 leaves a margin of ~80x over the measurement and is still ~1000x below the update, so a
  wrong gradient scale (e.g. averaged over the ranks once more: half the update) fails it;
- a 2-process run SIGKILLed while generating (some shards written), resumed with --resume under 2
  processes, ends with exactly the files of the uninterrupted 2-process run;
- an FSDP launch (the shipped accelerate/fsdp.yaml, 2 processes, gloo): the same samples, preferences
  and rows bit for bit, and trained weights within FSDP_ATOL of one process's (see that test);
- two "nodes" of one process each on this machine (--num_machines 2): the files of one process, with
  rank 0 judging alone, as it must across hosts;
- with LoRA on (an adapter with dropout per iteration): 2 processes give one process's samples, rows
  and, within WEIGHT_ATOL, adapter and merged weights (the dropout masks are drawn per micro-batch, so
  they do not depend on the rank); under FSDP too; and a 2-process LoRA run killed inside its
  training stage resumes from the stage's checkpoint to the files of the uninterrupted 2-process run.

The launches use the shipped accelerate/cpu-2proc.yaml (fsdp.yaml for FSDP), on a free port, one
thread per process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

HERE = Path(__file__).parent
REPO = HERE.parent

from sparring.config import config_from_dict  # noqa: E402
from sparring.loop import make_context, open_run, run  # noqa: E402
from sparring.rundir import RunDir  # noqa: E402

WEIGHT_ATOL = 1e-5
# FSDP: each rank's gradient shard is reduce-scattered per backward pass and averaged over the ranks
# (the loss is scaled by 2 to undo it, exact in binary), so again only the order of float additions
# differs from one process. Measured: see test_fsdp_two_processes_train_like_one. Same bound as above.
FSDP_ATOL = 1e-5
LAUNCH_TIMEOUT = 300  # seconds for one launch; generous, a launch takes ~20 s on a busy 2-core machine


def dist_config(model: Path, runs_dir: Path) -> dict:
    """One SPPO iteration judged by length (tests/lengthjudge.py), so the tiny model's samples are seldom
    tied and there are training rows whatever it samples; batch 3 with micro-batch 1 puts 3 micro-batches
    in each step, so the ranks split a step unevenly.
    8 generation shards and 3 eval batches: both ranks get work in every stage."""
    return {
        "name": "d",
        "seed": 5,
        "iterations": 1,
        "model": str(model),
        "runs_dir": str(runs_dir),
        "method": {"name": "sppo", "beta": 0.1},
        "judge": {"name": "python", "function": "lengthjudge:by_length"},
        "prompts": {"per_iteration": 24},
        "generation": {"k": 4, "max_new_tokens": 10, "batch_size": 8, "dtype": "float32", "shard_size": 3},
        # plain SGD, no clipping: the update is lr × the summed gradient, so a gradient off by a factor
        # (averaged over the ranks once too often) moves the weights far outside WEIGHT_ATOL; AdamW and
        # clipping would hide a scale error
        "train": {
            "optimizer": "sgd",
            "lr": 1e-3,
            "max_grad_norm": 0.0,
            "batch_size": 3,
            "micro_batch_size": 1,
            "epochs": 2,
            "precision": "fp32",
        },
        "eval": {"max_new_tokens": 6, "limit": 6, "batch_size": 2},
    }


def lora_dist_config(model: Path, runs_dir: Path, **train) -> dict:
    """dist_config with a LoRA adapter (dropout on) and a step size that moves the merged weights far
    beyond WEIGHT_ATOL (the adapter's B starts at 0, so its first updates are small)."""
    cfg = dist_config(model, runs_dir)
    cfg["lora"] = {"r": 4, "alpha": 8, "dropout": 0.1}
    # 4 epochs: 8 optimizer steps, time enough to kill a launch between two of its checkpoints
    cfg["train"] = {**cfg["train"], "lr": 0.05, "epochs": 4, **train}
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    argv: list[str], log: Path, config: str = "cpu-2proc.yaml", extra: tuple[str, ...] = (), port: str | None = None
) -> subprocess.Popen:
    """`accelerate launch --config_file accelerate/<config> <extra> -m sparring.cli <argv>` (on a free
    port unless `port` is given: the launchers of several 'nodes' share one)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # the sparring under test, wherever it is checked out (and tests/, for the length judge)
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate" / config),
        *extra,
        "--main_process_port",
        port or str(free_port()),
        "-m",
        "sparring.cli",
        *argv,
    ]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def launch_and_wait(argv: list[str], log: Path, **kw) -> None:
    wait_ok(launch(argv, log, **kw), log)


def wait_ok(proc: subprocess.Popen, log: Path, others: tuple[subprocess.Popen, ...] = ()) -> None:
    """Wait for a launch to exit with 0; on a time-out kill it (and the `others` launched with it)."""
    try:
        code = proc.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        for p in (proc, *others):
            kill_tree(p)
        raise AssertionError(f"launch timed out:\n{log.read_text()[-3000:]}") from None
    assert code == 0, log.read_text()[-3000:]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it. torchrun starts each rank in a session of
    its own, so killing the launcher's process group would leave the ranks running."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(procs, timeout=60)


@pytest.fixture(scope="module")
def single(tiny_model, tmp_path_factory) -> Path:
    """The one-process run, in this process (one thread, as the launched ranks)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = config_from_dict(dist_config(tiny_model, tmp_path_factory.mktemp("single")))
        rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
        run(make_context(cfg, rd, progress=False, log=lambda line: None))
    finally:
        torch.set_num_threads(before)
    return rd.root


def run_single(cfg_dict: dict) -> Path:
    """A one-process run in this process (one thread, as the launched ranks)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = config_from_dict(cfg_dict)
        rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
        run(make_context(cfg, rd, progress=False, log=lambda line: None))
        rd.lock.release()
    finally:
        torch.set_num_threads(before)
    return rd.root


@pytest.fixture(scope="module")
def single_lora(tiny_model, tmp_path_factory) -> Path:
    return run_single(lora_dist_config(tiny_model, tmp_path_factory.mktemp("single_lora")))


@pytest.fixture(scope="module")
def two_procs_lora(tiny_model, tmp_path_factory) -> Path:
    """The LoRA recipe under `accelerate launch` with 2 processes, uninterrupted."""
    base = tmp_path_factory.mktemp("two_lora")
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(lora_dist_config(tiny_model, base / "runs", checkpoint_every=1)))
    launch_and_wait(["run", str(recipe), "--no-progress"], base / "launch.log")
    return base / "runs" / "d"


@pytest.fixture(scope="module")
def two_procs(tiny_model, tmp_path_factory) -> Path:
    """The same recipe under `accelerate launch` with 2 processes, uninterrupted."""
    base = tmp_path_factory.mktemp("two")
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dist_config(tiny_model, base / "runs")))
    launch_and_wait(["run", str(recipe), "--no-progress"], base / "launch.log")
    return base / "runs" / "d"


def max_weight_difference(a: Path, b: Path, rel: str = "iter_0/policy/model.safetensors") -> float:
    from safetensors.torch import load_file

    ta, tb = (load_file(p) if p.suffix else load_file(p / rel) for p in (a, b))
    assert ta.keys() == tb.keys()
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def test_two_processes_give_the_files_of_one(tiny_model, single, two_procs):
    for rel in ("iter_0/samples.parquet", "iter_0/preferences.parquet", "iter_0/train.parquet"):
        assert pq.read_table(two_procs / rel).equals(pq.read_table(single / rel)), f"{rel} differs"
    for rel in ("base/eval/responses.jsonl", "iter_0/eval/responses.jsonl", "iter_0/eval/metrics.json"):
        assert (two_procs / rel).read_text() == (single / rel).read_text(), f"{rel} differs"
    one, two = RunDir(single).manifest()["stages"], RunDir(two_procs).manifest()["stages"]
    assert sorted(one) == sorted(two) and all(e["status"] == "done" for e in two.values())
    assert two["iter_0/train"]["metrics"]["steps"] == one["iter_0/train"]["metrics"]["steps"] >= 2
    # the judge stage's counts are the sums over the ranks: the same as one process's
    assert two["iter_0/judge"]["metrics"] == one["iter_0/judge"]["metrics"]
    diff = max_weight_difference(single, two_procs)
    update = max_weight_difference(tiny_model / "model.safetensors", single)
    print(f"max abs weight difference, 2 processes vs 1: {diff:.3g} (largest update of a weight: {update:.3g})")
    assert diff <= WEIGHT_ATOL
    assert update >= 100 * WEIGHT_ATOL  # the tolerance is far below what training moved
    assert (two_procs / "summary.json").exists()
    assert RunDir(two_procs).leftover_temporaries() == []


def test_two_processes_killed_while_generating_resume_to_the_same_files(tiny_model, two_procs, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dist_config(tiny_model, tmp_path / "runs")))
    root = tmp_path / "runs" / "d"
    proc = launch(["run", str(recipe), "--no-progress"], tmp_path / "killed.log")
    # kill every process of the launch once some (not necessarily all) generation shards are written
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    shards = root / "iter_0" / "samples.shards"
    joined = root / "iter_0" / "samples.parquet"
    while not (shards.is_dir() and any(shards.glob("0*.parquet"))) and not joined.exists():
        assert proc.poll() is None, "the run ended early:\n" + (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no generation shard appeared"
        time.sleep(0.02)
    kill_tree(proc)
    rd = RunDir(root)
    assert not rd.is_done("iter_0/train") and not (root / "summary.json").exists(), "the kill came too late"

    launch_and_wait(["run", "--resume", str(root), "--no-progress"], tmp_path / "resumed.log")
    assert rd.leftover_temporaries() == [] and not shards.exists()
    for rel in ("iter_0/samples.parquet", "iter_0/preferences.parquet", "iter_0/train.parquet"):
        assert pq.read_table(root / rel).equals(pq.read_table(two_procs / rel)), f"{rel} differs"
    for rel in (
        "base/eval/responses.jsonl",
        "iter_0/eval/responses.jsonl",
        "iter_0/eval/metrics.json",
        "iter_0/policy/model.safetensors",
    ):
        assert (root / rel).read_bytes() == (two_procs / rel).read_bytes(), f"{rel} differs"
    outputs = {k: e["outputs"] for k, e in rd.manifest()["stages"].items()}
    assert outputs == {k: e["outputs"] for k, e in RunDir(two_procs).manifest()["stages"].items()}


def test_fsdp_two_processes_train_like_one(tiny_model, single, tmp_path):
    """accelerate/fsdp.yaml with 2 processes on the CPU: training shards the model with FSDP2 (step 0
    has 3 micro-batches, so rank 1 runs a weight-0 repeat to match rank 0's 2 passes), rank 0 saves
    the gathered full state dict. Everything before training is bitwise the one-process run's."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dist_config(tiny_model, tmp_path / "runs")))
    launch_and_wait(
        ["run", str(recipe), "--no-progress"],
        tmp_path / "launch.log",
        config="fsdp.yaml",
        extra=("--num_processes", "2"),
    )
    root = tmp_path / "runs" / "d"
    assert "FSDP: the training model was sharded over 2 ranks" in (tmp_path / "launch.log").read_text()
    for rel in ("iter_0/samples.parquet", "iter_0/preferences.parquet", "iter_0/train.parquet"):
        assert pq.read_table(root / rel).equals(pq.read_table(single / rel)), f"{rel} differs"
    one, fsdp = RunDir(single).manifest()["stages"], RunDir(root).manifest()["stages"]
    assert fsdp["iter_0/train"]["metrics"]["steps"] == one["iter_0/train"]["metrics"]["steps"] >= 2
    assert abs(fsdp["iter_0/train"]["metrics"]["loss_mean"] - one["iter_0/train"]["metrics"]["loss_mean"]) < 1e-6
    diff = max_weight_difference(single, root)
    update = max_weight_difference(tiny_model / "model.safetensors", single)
    print(f"max abs weight difference, FSDP 2 processes vs 1: {diff:.3g} (largest update of a weight: {update:.3g})")
    assert diff <= FSDP_ATOL
    assert update >= 100 * FSDP_ATOL
    assert (root / "summary.json").exists()


def test_two_nodes_on_one_machine_give_the_files_of_one(tiny_model, single, tmp_path):
    """The several-nodes command of docs/distributed.md, as two 'nodes' of one process each on this
    machine (two launchers, --num_machines 2, rendezvous on 127.0.0.1): LOCAL_WORLD_SIZE is 1 while
    WORLD_SIZE is 2, so rank 0 judges every prompt alone (the SQLite judge cache's WAL mode needs one
    host), and the files are still those of one process."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dist_config(tiny_model, tmp_path / "runs")))
    port = str(free_port())
    procs = [
        launch(
            ["run", str(recipe), "--no-progress"],
            tmp_path / f"node{r}.log",
            extra=(
                "--num_machines",
                "2",
                "--machine_rank",
                str(r),
                "--num_processes",
                "2",
                "--main_process_ip",
                "127.0.0.1",
            ),
            port=port,
        )
        for r in (0, 1)
    ]
    for r, proc in enumerate(procs):
        wait_ok(proc, tmp_path / f"node{r}.log", others=tuple(procs))
    assert "rank 0 judges every prompt" in (tmp_path / "node0.log").read_text()
    root = tmp_path / "runs" / "d"
    for rel in ("iter_0/samples.parquet", "iter_0/preferences.parquet", "iter_0/train.parquet"):
        assert pq.read_table(root / rel).equals(pq.read_table(single / rel)), f"{rel} differs"
    for rel in ("base/eval/responses.jsonl", "iter_0/eval/responses.jsonl", "iter_0/eval/metrics.json"):
        assert (root / rel).read_text() == (single / rel).read_text(), f"{rel} differs"
    one, two = RunDir(single).manifest()["stages"], RunDir(root).manifest()["stages"]
    assert two["iter_0/judge"]["metrics"] == one["iter_0/judge"]["metrics"]
    assert max_weight_difference(single, root) <= WEIGHT_ATOL


def assert_lora_run_like(root: Path, single: Path, tiny_model: Path, label: str) -> None:
    """A LoRA run of several processes against one process's: everything before training bit for bit,
    the adapter and the merged policy within WEIGHT_ATOL, far below what training moved."""
    for rel in ("iter_0/samples.parquet", "iter_0/preferences.parquet", "iter_0/train.parquet"):
        assert pq.read_table(root / rel).equals(pq.read_table(single / rel)), f"{rel} differs"
    one, many = RunDir(single).manifest()["stages"], RunDir(root).manifest()["stages"]
    assert sorted(many["iter_0/train"]["outputs"]) == ["iter_0/adapter", "iter_0/policy"]
    assert many["iter_0/train"]["metrics"]["steps"] == one["iter_0/train"]["metrics"]["steps"] >= 2
    adapter = max_weight_difference(single, root, "iter_0/adapter/adapter_model.safetensors")
    diff = max_weight_difference(single, root)
    update = max_weight_difference(tiny_model / "model.safetensors", single)
    print(
        f"LoRA, {label} vs 1 process: max abs difference {diff:.3g} (merged), {adapter:.3g} (adapter); "
        f"largest update of a merged weight: {update:.3g}"
    )
    assert diff <= WEIGHT_ATOL and adapter <= WEIGHT_ATOL
    assert update >= 100 * WEIGHT_ATOL
    assert (root / "summary.json").exists() and not list(root.rglob("train_checkpoint"))


def test_two_processes_with_lora_train_like_one(tiny_model, single_lora, two_procs_lora):
    assert_lora_run_like(two_procs_lora, single_lora, tiny_model, "2 processes")
    for rel in ("base/eval/responses.jsonl", "iter_0/eval/responses.jsonl"):
        assert (two_procs_lora / rel).read_text() == (single_lora / rel).read_text(), f"{rel} differs"


def test_two_processes_with_lora_killed_while_training_resume_from_the_checkpoint(tiny_model, two_procs_lora, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(lora_dist_config(tiny_model, tmp_path / "runs", checkpoint_every=1)))
    root = tmp_path / "runs" / "d"
    proc = launch(["run", str(recipe), "--no-progress"], tmp_path / "killed.log")
    # kill every process of the launch once the training stage has written a checkpoint
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    checkpoints = root / "iter_0" / "train_checkpoint"
    while not (checkpoints.is_dir() and any(checkpoints.glob("step_*"))):
        assert proc.poll() is None, "the run ended early:\n" + (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no training checkpoint appeared"
        time.sleep(0.005)
    kill_tree(proc)
    rd = RunDir(root)
    assert not rd.is_done("iter_0/train") and any(checkpoints.glob("step_*")), "the kill came too late"

    launch_and_wait(["run", "--resume", str(root), "--no-progress"], tmp_path / "resumed.log")
    assert "[iter_0/train] resuming from the checkpoint after optimizer step" in (tmp_path / "resumed.log").read_text()
    assert rd.leftover_temporaries() == [] and not checkpoints.exists()
    for rel in (
        "iter_0/train.parquet",
        "iter_0/eval/responses.jsonl",
        "iter_0/policy/model.safetensors",
        "iter_0/adapter/adapter_model.safetensors",
    ):
        assert (root / rel).read_bytes() == (two_procs_lora / rel).read_bytes(), f"{rel} differs"
    outputs = {k: e["outputs"] for k, e in rd.manifest()["stages"].items()}
    assert outputs == {k: e["outputs"] for k, e in RunDir(two_procs_lora).manifest()["stages"].items()}


def test_fsdp_two_processes_with_lora_train_like_one_and_resume_from_a_checkpoint(tiny_model, single_lora, tmp_path):
    """FSDP2 shards the frozen base weights and the adapter alike; rank 0 gathers the adapter's state
    into an unsharded LoRA model, merges and saves it. The launch is killed inside its training stage
    once a checkpoint is written (gathered to rank 0 at every step), and the resumed launch (every
    rank takes its shard of the checkpoint) trains like one process."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(lora_dist_config(tiny_model, tmp_path / "runs", checkpoint_every=1)))
    root = tmp_path / "runs" / "d"
    fsdp = {"config": "fsdp.yaml", "extra": ("--num_processes", "2")}
    proc = launch(["run", str(recipe), "--no-progress"], tmp_path / "killed.log", **fsdp)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    checkpoints = root / "iter_0" / "train_checkpoint"
    while not (checkpoints.is_dir() and any(checkpoints.glob("step_*"))):
        assert proc.poll() is None, "the run ended early:\n" + (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no training checkpoint appeared"
        time.sleep(0.005)
    kill_tree(proc)
    assert not RunDir(root).is_done("iter_0/train"), "the kill came too late"
    launch_and_wait(["run", "--resume", str(root), "--no-progress"], tmp_path / "resumed.log", **fsdp)
    log = (tmp_path / "resumed.log").read_text()
    assert "FSDP: the training model was sharded over 2 ranks" in log
    assert "[iter_0/train] resuming from the checkpoint after optimizer step" in log
    assert_lora_run_like(root, single_lora, tiny_model, "FSDP 2 processes, killed and resumed,")
