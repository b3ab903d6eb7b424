"""The loop survives kills (issue 5): SIGKILL anywhere, resume, and get bit-for-bit the files of an
uninterrupted run; same config twice gives the same bits; the judge cache makes re-judging free; a
full disk is a clear error that leaves the run resumable; `status` and the stage commands.

The kill test runs the real `sparring run` command in child processes forked from
tests/resume_worker.py (a fork server that imports torch once; see its docstring), because starting
twenty fresh Python processes would take minutes on a small machine. Every run here uses one
intra-op thread (see `one_thread`).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

HERE = Path(__file__).parent
from tiny import tiny_run_config  # noqa: E402

from sparring.cli import main  # noqa: E402
from sparring.config import config_from_dict  # noqa: E402
from sparring.loop import STAGE_FUNCS, STAGES, load_run, make_context, open_run, run, run_stage  # noqa: E402
from sparring.rundir import RunDir, sha256_of, write_json  # noqa: E402

N_PROMPTS, K, SHARD = 16, 4, 4  # 4 generation shards per iteration
ALL_STAGES = ["base/eval"] + [f"iter_{t}/{s}" for t in range(2) for s in STAGES]


def resume_config(model: Path, runs_dir: Path, name: str = "r", lora: bool = False) -> dict:
    """Two iterations, 16 prompts x 4 samples in 4 shards; seed 3 gives training rows in both
    iterations, and batch size 1 with 2 epochs gives several optimizer steps to kill between. The
    training state is checkpointed after every step, so a kill inside a training stage resumes from
    its last checkpoint. `lora`: the same run training a LoRA adapter (with dropout) per iteration."""
    cfg = tiny_run_config(
        model,
        runs_dir,
        name,
        **{
            "judge.name": "python",
            "judge.function": "lengthjudge:by_length",  # rows in every iteration
            "prompts.per_iteration": N_PROMPTS,
            "generation.k": K,
            "generation.batch_size": 8,
            "generation.shard_size": SHARD,
            "train.batch_size": 1,
            "train.micro_batch_size": 1,
            "train.epochs": 2,
            "train.checkpoint_every": 1,
        },
    )
    if lora:
        cfg["train"]["lr"] = 1e-2
        cfg["lora"] = {"r": 4, "alpha": 8, "dropout": 0.1}
    return cfg


def write_recipe(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------ comparing run directories


def parquet_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.parquet"))}


def assert_same_outputs(a: Path, b: Path, *, base_eval: bool = True, eval_metrics: bool = True) -> None:
    """Every parquet file as a table, every policy's tensors, every eval's responses (and metrics)."""
    import torch
    from safetensors.torch import load_file

    pa_, pb = parquet_files(a), parquet_files(b)
    if not base_eval:
        pa_, pb = ({k: v for k, v in d.items() if not k.startswith("base/")} for d in (pa_, pb))
    assert set(pa_) == set(pb) and pa_, f"different parquet files: {sorted(pa_)} vs {sorted(pb)}"
    for rel in pa_:
        ta, tb = pq.read_table(pa_[rel]), pq.read_table(pb[rel])
        if not eval_metrics and rel.endswith("eval/scores.parquet"):  # the same responses, other comparisons
            ta, tb = (t.select([c for c in t.column_names if not c.startswith("win_")]) for t in (ta, tb))
        assert ta.equals(tb), f"{rel} differs"
    policies = sorted(p.relative_to(a) for p in a.rglob("policy/model.safetensors"))
    assert [str(p) for p in policies] == ["iter_0/policy/model.safetensors", "iter_1/policy/model.safetensors"]
    adapters = sorted(p.relative_to(a) for p in a.rglob("adapter/adapter_model.safetensors"))
    assert sorted(p.relative_to(b) for p in b.rglob("adapter/adapter_model.safetensors")) == adapters
    for rel in policies + adapters:
        ta, tb = load_file(a / rel), load_file(b / rel)
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), f"{rel}: weights differ"
    for rel in ("base/eval", "iter_0/eval", "iter_1/eval")[0 if base_eval else 1 :]:
        assert (a / rel / "responses.jsonl").read_text() == (b / rel / "responses.jsonl").read_text(), rel
        if eval_metrics:
            metrics = [json.loads((d / rel / "metrics.json").read_text()) for d in (a, b)]
            assert metrics[0] == metrics[1], rel


def output_hashes(rd: RunDir) -> dict[str, dict]:
    return {k: e["outputs"] for k, e in rd.manifest()["stages"].items() if e["status"] == "done"}


def assert_done_stages_trustworthy(rd: RunDir) -> None:
    """What a resumed run trusts: each stage recorded as done has exactly the outputs it recorded."""
    for key, entry in rd.manifest()["stages"].items():
        if entry["status"] == "done":
            for rel, digest in entry["outputs"].items():
                assert sha256_of(rd.root / rel) == digest, f"{key}: {rel} changed after it was recorded"


def assert_clean(rd: RunDir) -> None:
    assert rd.leftover_temporaries() == []
    assert list(rd.root.rglob("samples.shards")) == []
    assert list(rd.root.rglob("train_checkpoint")) == []  # a finished training stage deletes its checkpoints


# ------------------------------------------------------------------ fixtures


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread, bit-for-bit comparable runs


class Worker:
    """Client of tests/resume_worker.py: runs `sparring <argv>` in a forked child and reports how
    it ended."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.n = 0
        # One intra-op thread, as in the test process (see `one_thread`).
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(logs / "worker.stderr", "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "resume_worker.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
                env=env,
            )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = False  # it imports torch while the test builds its model

    def _wait_ready(self) -> None:
        if not self.ready:
            assert self._next(300) == {"ready": True}, (self.logs / "worker.stderr").read_text()[-3000:]
            self.ready = True

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def _next(self, timeout: float) -> dict:
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the worker gave no answer in {timeout}s") from None
        assert msg is not None, "the worker died: " + (self.logs / "worker.stderr").read_text()[-3000:]
        return msg

    def run(self, argv: list[str], root: Path, kill: dict | None = None, kill_after: float | None = None) -> dict:
        self._wait_ready()
        self.n += 1
        log = self.logs / f"child{self.n:02d}.log"
        req = {"argv": argv, "root": str(root), "kill": kill, "kill_after": kill_after, "log": str(log)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        self._next(60)  # {"pid": ...}
        end = self._next(300)
        end["log"] = log.read_text() if log.exists() else ""
        return end

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("worker"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def reference(worker, tiny_model, tmp_path_factory) -> RunDir:
    """An uninterrupted `sparring run` of the resume config, in a worker child like the killed runs."""
    return uninterrupted(worker, tiny_model, tmp_path_factory.mktemp("reference"), lora=False)


@pytest.fixture(scope="module")
def lora_reference(worker, tiny_model, tmp_path_factory) -> RunDir:
    """The same with LoRA on."""
    return uninterrupted(worker, tiny_model, tmp_path_factory.mktemp("lora_reference"), lora=True)


def uninterrupted(worker, tiny_model, base: Path, lora: bool) -> RunDir:
    recipe = write_recipe(base / "recipe.yaml", resume_config(tiny_model, base / "runs", lora=lora))
    end = worker.run(["run", str(recipe), "--no-progress"], base / "runs" / "r")
    assert end["code"] == 0, end["log"][-3000:]
    rd = RunDir(base / "runs" / "r")
    stages = rd.manifest()["stages"]
    assert sorted(stages) == sorted(ALL_STAGES) and all(e["status"] == "done" for e in stages.values())
    # the config really exercises what the kill test aims at: several shards and optimizer steps
    steps = [stages[f"iter_{t}/train"]["metrics"]["steps"] for t in range(2)]
    assert min(steps) >= 4, f"optimizer steps per iteration {steps}: pick another seed in resume_config"
    assert_clean(rd)
    if lora:
        assert all(f"iter_{t}/adapter" in stages[f"iter_{t}/train"]["outputs"] for t in range(2))
    return rd


# ------------------------------------------------------------------ 1. kills


# Where the kills land, in run order: every stage, mid-stage and at its edges. "before_replace" kills
# with a temporary file or directory fully written but not renamed; "before_done" with the stage's
# output in place but the manifest not saying so; "after_running" right as a stage starts.
KILL_POINTS = [
    {"before_replace": "base/eval"},
    {"after_replace": "iter_0/samples.shards/00000.parquet"},
    {"before_replace": "iter_0/samples.shards/00002.parquet"},
    {"after_cache_put": 1},  # iteration 0's verdicts committed to the cache, preferences not written
    {"before_done": "iter_0/rows"},
    {"train_step": ["iter_0/train", 1]},
    {"before_replace": "iter_0/policy"},
    {"after_running": "iter_0/eval"},
    {"before_replace": "iter_1/samples.parquet"},  # all shards written, not yet joined
    {"before_replace": "iter_1/preferences.parquet"},
    {"after_running": "iter_1/rows"},
    {"train_step": ["iter_1/train", 0]},
    {"before_replace": "iter_1/eval"},
    {"before_replace": "summary.json"},
]


# With LoRA: kills inside both training stages (between checkpoints, and right after the adapter or
# the merged policy is written) and around them.
LORA_KILL_POINTS = [
    {"after_running": "iter_0/generate"},
    {"train_step": ["iter_0/train", 2]},
    {"before_replace": "iter_0/adapter"},
    {"before_replace": "iter_0/policy"},
    {"before_done": "iter_0/train"},
    {"before_replace": "iter_1/samples.parquet"},
    {"train_step": ["iter_1/train", 0]},
    {"train_step": ["iter_1/train", 3]},
    {"after_replace": "iter_1/adapter"},
    {"before_replace": "iter_1/eval"},
]


def test_sigkill_anywhere_then_resume_gives_identical_files(worker, tiny_model, reference, tmp_path):
    killed_in, logs = kill_and_resume(worker, tiny_model, tmp_path, KILL_POINTS, lora=False)
    root = tmp_path / "runs" / "r"
    rd = RunDir(root)
    assert len(killed_in) >= 10
    assert set(ALL_STAGES) <= set(killed_in), f"kills landed in {killed_in}"
    assert_clean(rd)
    assert_same_outputs(root, reference.root)
    assert output_hashes(rd) == output_hashes(reference)
    # the judge stage killed after its verdicts were cached did not judge again when resumed
    judge0 = rd.stage("iter_0/judge")["metrics"]
    assert judge0["judge_calls"] == 0 and judge0["cache_hits"] == N_PROMPTS * K * (K - 1) // 2
    assert summary_results(root) == summary_results(reference.root)
    # both training stages killed after a step resumed from their checkpoint, not from the start
    for t in range(2):
        assert f"[iter_{t}/train] resuming from the checkpoint after optimizer step" in logs, t


def test_lora_sigkill_anywhere_then_resume_gives_identical_files(worker, tiny_model, lora_reference, tmp_path):
    killed_in, logs = kill_and_resume(worker, tiny_model, tmp_path, LORA_KILL_POINTS, lora=True)
    root = tmp_path / "runs" / "r"
    rd = RunDir(root)
    assert {"iter_0/train", "iter_1/train"} <= set(killed_in), f"kills landed in {killed_in}"
    assert_clean(rd)
    assert_same_outputs(root, lora_reference.root)
    assert output_hashes(rd) == output_hashes(lora_reference)
    assert summary_results(root) == summary_results(lora_reference.root)
    for t in range(2):
        assert f"[iter_{t}/train] resuming from the checkpoint after optimizer step" in logs, t


def kill_and_resume(worker, tiny_model, tmp_path: Path, points: list[dict], lora: bool) -> tuple[list[str], str]:
    """Run the resume config, SIGKILLed at each of `points` in turn (every other one preceded by a kill
    from outside at a random moment), resuming after each; then let it finish. Returns the stages the
    kills landed in and the logs of every launch."""
    recipe = write_recipe(tmp_path / "recipe.yaml", resume_config(tiny_model, tmp_path / "runs", lora=lora))
    root = tmp_path / "runs" / "r"
    rd = RunDir(root)
    rng = random.Random(5)
    commands = [["run", str(recipe), "--no-progress"], ["run", "--resume", str(root), "--no-progress"]]
    killed_in: list[str] = []  # the stage that was running at each kill ("-" for none)
    logs: list[str] = []
    attempt = 0

    def launch(**kill) -> dict:
        nonlocal attempt
        argv = commands[attempt % 2] if (root / "config.yaml").exists() else commands[0]
        attempt += 1
        end = worker.run(argv, root, **kill)
        logs.append(end["log"])
        if end["signal"] == signal.SIGKILL:
            stages = rd.manifest()["stages"] if rd.manifest_path.exists() else {}
            running = [k for k, e in stages.items() if e["status"] == "running"]
            killed_in.append(running[0] if running else "-")
            assert_done_stages_trustworthy(rd)
        return end

    for n, point in enumerate(points):
        if n % 2 == 1:
            # first a kill from outside at a random (seeded) moment on the way to the point: it lands
            # wherever the child is then (loading the model, in sqlite, in a write...) or, if the child
            # reaches the point first, the point kills it
            end = launch(kill=point, kill_after=rng.uniform(0.05, 0.4))
            if not end["external"]:
                assert end["signal"] == signal.SIGKILL, f"no kill at {point}:\n{end['log'][-3000:]}"
                continue
        end = launch(kill=point)
        assert end["signal"] == signal.SIGKILL, f"the run did not reach kill point {point}:\n{end['log'][-3000:]}"
    end = launch()
    assert end["code"] == 0 and end["signal"] is None, end["log"][-3000:]
    return killed_in, "\n".join(logs)


def summary_results(root: Path) -> list[dict]:
    """summary.json's rows without what legitimately differs between runs (timings, paths)."""
    rows = json.loads((root / "summary.json").read_text())["iterations"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "policy")} for r in rows]


# ------------------------------------------------------------------ 2. determinism


def run_in_process(cfg_dict: dict) -> RunDir:
    cfg = config_from_dict(cfg_dict)
    rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
    run(make_context(cfg, rd, progress=False, log=lambda line: None))
    return rd


def test_same_config_twice_gives_identical_bits(tiny_model, reference, tmp_path):
    a = run_in_process(resume_config(tiny_model, tmp_path / "a"))
    b = run_in_process(resume_config(tiny_model, tmp_path / "b"))
    assert_same_outputs(a.root, b.root)
    assert output_hashes(a) == output_hashes(b)
    # and the same bits as the reference run, made in another process (forked from the worker)
    assert_same_outputs(a.root, reference.root)
    assert output_hashes(a) == output_hashes(reference)


def test_same_lora_config_gives_identical_bits_in_another_process(tiny_model, lora_reference, tmp_path):
    """LoRA: this process against the worker's child, whose string hash seed differs (the adapter's
    files must not depend on the order of a set of names)."""
    a = run_in_process(resume_config(tiny_model, tmp_path / "a", lora=True))
    assert_same_outputs(a.root, lora_reference.root)
    assert output_hashes(a) == output_hashes(lora_reference)


# ------------------------------------------------------------------ 3. judge cache


def test_judging_the_same_samples_again_makes_no_judge_calls(reference, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(reference.root, root)
    rd, cfg = load_run(root)
    first = rd.stage("iter_1/judge")["metrics"]
    assert first["judge_calls"] == N_PROMPTS  # the first time, the function scored every prompt's responses
    data = rd.manifest()
    del data["stages"]["iter_1/judge"]
    write_json(rd.manifest_path, data)
    (root / "iter_1" / "preferences.parquet").unlink()

    ctx = make_context(cfg, rd, progress=False, log=lambda line: None)
    run_stage(ctx, "iter_1/judge", lambda: STAGE_FUNCS["judge"](ctx, 1))
    again = rd.stage("iter_1/judge")
    counts = {k: again["metrics"][k] for k in ("pairs", "judge_calls", "cache_hits")}
    assert counts == {"pairs": N_PROMPTS * K * K, "judge_calls": 0, "cache_hits": N_PROMPTS * K * (K - 1) // 2}
    assert again["metrics"]["tie_rate"] == first["tie_rate"]  # the diagnostics read the same verdicts
    assert pq.read_table(root / "iter_1" / "preferences.parquet").equals(
        pq.read_table(reference.root / "iter_1" / "preferences.parquet")
    )
    assert again["outputs"] == reference.stage("iter_1/judge")["outputs"]


# ------------------------------------------------------------------ 4. full disk


def test_full_disk_is_a_clear_error_and_the_run_resumes(tiny_model, reference, tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", resume_config(tiny_model, tmp_path / "runs"))
    root = tmp_path / "runs" / "r"
    rd = RunDir(root)
    argv = ["run", str(recipe), "--no-progress"]
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def check_state(running: str, done: list[str]) -> None:
        stages = rd.manifest()["stages"]  # still parses
        assert stages[running]["status"] == "running"
        hashes = output_hashes(rd)
        assert sorted(hashes) == sorted(done)
        assert hashes == {k: output_hashes(reference)[k] for k in done}
        assert_done_stages_trustworthy(rd)
        assert rd.leftover_temporaries() == []

    # (a) the disk fills up while iteration 0's preferences are being written
    real_write_table = pq.write_table

    def write_table(table, where, *args, **kwargs):
        if Path(where).name.startswith(".sparring-preferences.parquet."):  # the temporary of preferences.parquet
            Path(where).write_bytes(b"PAR1" + bytes(100))  # half a file, then no more space
            raise enospc
        return real_write_table(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"could not write {root / 'iter_0' / 'preferences.parquet'}: No space left on device" in err
    check_state("iter_0/judge", ["base/eval", "iter_0/generate"])
    assert not (root / "iter_0" / "preferences.parquet").exists()
    monkeypatch.undo()

    # (b) the disk is full when the manifest is to record iteration 1's judge stage as done
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "manifest.json":
            entry = json.loads(Path(src).read_text())["stages"].get("iter_1/judge", {})
            if entry.get("status") == "done":
                raise enospc
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"could not write {rd.manifest_path}: No space left on device" in err
    check_state("iter_1/judge", ["base/eval", *(f"iter_0/{s}" for s in STAGES), "iter_1/generate"])
    monkeypatch.undo()

    # space again: the same command finishes the run, with the files of an uninterrupted one
    assert main(argv) == 0
    capsys.readouterr()
    assert_clean(rd)
    assert_same_outputs(root, reference.root)
    assert output_hashes(rd) == output_hashes(reference)


# ------------------------------------------------------------------ 5. status


def test_status_lists_done_running_and_missing_stages(reference, tmp_path, capsys):
    root = tmp_path / "r"
    shutil.copytree(reference.root, root)
    rd = RunDir(root)
    data = rd.manifest()
    for key in ("iter_1/train", "iter_1/eval"):
        del data["stages"][key]
    write_json(rd.manifest_path, data)
    rd.mark_running("iter_1/rows")

    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out

    def row(label: str) -> list[str]:
        (line,) = [ln for ln in out.splitlines() if re.match(rf"\W*{label}\W", ln)]
        return re.findall(r"done|running|stopped|missing", line)

    assert row("base") == ["done"]
    assert row("0") == ["done"] * 5
    # recorded as running, but no process holds the run's lock: its process was killed
    assert row("1") == ["done", "done", "stopped", "missing", "missing"]
    rd.lock.acquire("test")  # now a live process holds it
    try:
        assert main(["status", str(root)]) == 0
        out = capsys.readouterr().out
        assert row("1") == ["done", "done", "running", "missing", "missing"]
    finally:
        rd.lock.release()


# ------------------------------------------------------------------ 6. stage commands


def test_stage_commands_one_by_one_give_the_files_of_run(tiny_model, reference, tmp_path, capsys):
    cfg = config_from_dict(resume_config(tiny_model, tmp_path / "runs"))
    root = tmp_path / "runs" / "r"
    rd = open_run(cfg, root)  # the run directory as `sparring run` starts it: config.yaml, manifest.json
    r = str(root)

    assert main(["judge", "--run", r, "--iter", "0", "--no-progress"]) == 2
    assert "needs iter_0/generate first" in capsys.readouterr().err
    assert main(["generate", "--run", r, "--iter", "1", "--no-progress"]) == 2
    assert "iter_0/train" in capsys.readouterr().err
    assert not (root / "iter_0").exists() and not (root / "iter_1").exists()

    for t in range(2):
        for stage in ("generate", "judge", "train", "eval"):
            assert main([stage, "--run", r, "--iter", str(t), "--no-progress"]) == 0, capsys.readouterr().err
    capsys.readouterr()

    assert_clean(rd)
    # No stage command runs base/eval, so the iterations' eval metrics lack win_rate_vs_base.
    assert_same_outputs(root, reference.root, base_eval=False, eval_metrics=False)
    for t in range(2):
        mine, ref = (
            json.loads((d / f"iter_{t}" / "eval" / "metrics.json").read_text()) for d in (root, reference.root)
        )
        for key in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose", "mean_response_tokens"):
            assert mine[key] == ref[key]
            assert mine["intervals"][key]["ci95"] == ref["intervals"][key]["ci95"] if key in ref["intervals"] else True
        assert "win_rate_vs_base" in ref and "win_rate_vs_base" not in mine
    mine, ref = output_hashes(rd), output_hashes(reference)
    assert sorted(mine) == sorted(k for k in ref if k != "base/eval")
    assert {k: v for k, v in mine.items() if not k.endswith("/eval")} == {
        k: v for k, v in ref.items() if not k.endswith("/eval")
    }
