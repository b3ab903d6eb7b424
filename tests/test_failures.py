"""Fail closed, heal on resume (issue 16): each case of a trial of bad inputs and damaged run directories,
reproduced. Every error exits 2 with one line naming the file or key, prints no traceback, and leaves the
run directory as it was or healed; damaged recorded outputs are rerun to the bits of an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
from test_resume import assert_same_outputs  # noqa: E402
from tiny import tiny_run_config  # noqa: E402

from sparring.cli import main  # noqa: E402
from sparring.config import config_from_dict  # noqa: E402
from sparring.loop import STAGES, load_run, make_context, open_run, run  # noqa: E402
from sparring.rundir import RunDir, sha256_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread, bit-for-bit comparable runs


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def judges_module(tmp_path_factory):
    d = tmp_path_factory.mktemp("judges")
    (d / "failjudges.py").write_text("def by_length(messages, responses):\n    return [len(r) for r in responses]\n")
    sys.path.insert(0, str(d))
    return "failjudges:by_length"


def cfg_dict(tiny, runs, judges_module, **over) -> dict:
    """Two iterations judged by response length (every iteration has training rows), 8 prompts in 2 shards."""
    base = {
        "judge.name": "python",
        "judge.function": judges_module,
        "prompts.per_iteration": 8,
        "generation.max_new_tokens": 8,
        "generation.shard_size": 4,
        "eval.bootstrap": 100,
    }
    return tiny_run_config(tiny, runs, "f", **{**base, **over})


def run_cfg(d: dict, root: Path | None = None):
    cfg = config_from_dict(d)
    rd = open_run(cfg, root or Path(cfg.runs_dir) / cfg.name)
    logs: list[str] = []
    summary = run(make_context(cfg, rd, progress=False, log=logs.append))
    return rd, summary, logs


@pytest.fixture(scope="module")
def reference(tiny, judges_module, tmp_path_factory):
    rd, _, _ = run_cfg(cfg_dict(tiny, tmp_path_factory.mktemp("ref"), judges_module))
    return rd


def recipe(tmp_path: Path, d: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


# ------------------------------------------------------------------ 1. recorded hashes are verified


def rewind(root: Path, after: str) -> None:
    """The run as a kill right after stage `after` would have left it: later stages forgotten, their
    files gone."""
    rd = RunDir(root)
    data = rd.manifest()
    keys = ["base/eval"] + [f"iter_{t}/{s}" for t in range(2) for s in STAGES]  # the order stages run in
    for key in keys[keys.index(after) + 1 :]:
        for rel in data["stages"][key].get("outputs", {}):
            p = root / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        del data["stages"][key]
    (root / "manifest.json").write_text(json.dumps(data))
    (root / "summary.json").unlink(missing_ok=True)


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "after,damage,how",
    [
        ("iter_0/judge", "iter_0/samples.parquet", "flip"),  # the rows stage reads it: generate reruns
        ("iter_0/judge", "iter_0/samples.parquet", "truncate"),
        ("iter_0/judge", "iter_0/preferences.parquet", "empty"),  # 0 bytes
        ("iter_0/eval", "iter_0/policy/model.safetensors", "truncate"),  # π_1 for iteration 1: train reruns
        ("iter_0/train", "base/eval/responses.jsonl", "flip"),  # the eval compares with the base
    ],
)
def test_a_damaged_recorded_output_is_rerun_to_the_same_bits(
    tiny, judges_module, reference, tmp_path, after, damage, how
):
    root = tmp_path / "f"
    shutil.copytree(reference.root, root)
    rewind(root, after)
    path = root / damage
    if how == "flip":
        flip(path)
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        path.write_bytes(b"")
    rd, _, logs = run_cfg(cfg_dict(tiny, tmp_path, judges_module), root)
    recorded = "/".join(damage.split("/")[:2]).removesuffix("/model.safetensors")  # a file, or its directory
    assert any("missing or damaged" in line and line.split("] ")[1].startswith(recorded) for line in logs), logs
    assert_same_outputs(root, reference.root)
    assert all(e["status"] == "done" for e in rd.manifest()["stages"].values())


def test_a_damaged_samples_shard_is_regenerated(tiny, judges_module, reference, tmp_path):
    root = tmp_path / "f"
    shutil.copytree(reference.root, root)
    rewind(root, "iter_0/eval")
    # iteration 1's generate stage killed after its two shards: the first is then damaged on disk
    rd, cfg = load_run(root)
    ctx = make_context(cfg, rd, progress=False, log=lambda line: None)
    from sparring.loop import generate_stage

    real = shutil.rmtree
    shutil.rmtree = lambda p, *a, **k: (
        (_ for _ in ()).throw(KeyboardInterrupt) if str(p).endswith("shards") else real(p, *a, **k)
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            generate_stage(ctx, 1)
    finally:
        shutil.rmtree = real
    shards = root / "iter_1" / "samples.shards"
    assert sorted(p.name for p in shards.iterdir()) == [
        "00000.parquet",
        "00000.parquet.sha256",
        "00001.parquet",
        "00001.parquet.sha256",
    ]
    (root / "iter_1" / "samples.parquet").unlink()
    flip(shards / "00000.parquet")
    run_cfg(cfg_dict(tiny, tmp_path, judges_module), root)
    assert_same_outputs(root, reference.root)


def test_status_verify_names_damaged_outputs(reference, tmp_path, capsys):
    root = tmp_path / "f"
    shutil.copytree(reference.root, root)
    code, _ = cli(["status", root, "--verify"], capsys)
    assert code == 0
    flip(root / "iter_1" / "train.parquet")
    code = main(["status", str(root), "--verify"])
    out = capsys.readouterr().out
    assert code == 2 and "damaged: iter_1/rows: iter_1/train.parquet" in out


# ------------------------------------------------------------------ 2. inputs validate before the directory is written


@pytest.mark.parametrize(
    "over,message",
    [
        ({"model": "/no/such/model"}, "model: model '/no/such/model' is neither"),
        ({"prompts.train": "/no/such/prompts.jsonl"}, "prompt source not found"),
        ({"tracking.log_with": "wandb"}, "no such tracker is installed"),
    ],
)
def test_bad_inputs_leave_no_run_directory_and_the_corrected_command_runs(
    tiny, judges_module, tmp_path, capsys, over, message
):
    if over.get("tracking.log_with") == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
    good = cfg_dict(tiny, tmp_path / "runs", judges_module, iterations=1)
    bad = cfg_dict(tiny, tmp_path / "runs", judges_module, iterations=1, **over)
    for dry in ([], ["--dry-run"]):
        code, err = cli(["run", recipe(tmp_path, bad), *dry], capsys)
        assert code == 2 and message in err, err
        assert not (tmp_path / "runs").exists()
    code, err = cli(["run", recipe(tmp_path, good), "--no-progress"], capsys)
    assert code == 0, err


# ------------------------------------------------------------------ 3. non-finite values


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=.inf",
        "train.lr=.nan",
        "generation.temperature=.nan",
        "generation.top_p=.nan",
        "method.beta=.nan",
        "train.warmup_ratio=.nan",
        "seed=-1",
    ],
)
def test_non_finite_values_and_negative_seeds_are_refused(tmp_path, capsys, override):
    code, err = cli(["run", f"runs_dir={tmp_path}", override, "--dry-run"], capsys)
    assert code == 2 and override.split("=")[0] in err


def test_a_non_finite_loss_stops_training_and_records_nothing(tiny, judges_module, tmp_path, capsys):
    d = cfg_dict(tiny, tmp_path / "runs", judges_module, iterations=1, **{"train.lr": 1e30})
    code, err = cli(["run", recipe(tmp_path, d), "--no-progress"], capsys)
    assert code == 2 and "training stopped at optimizer step" in err and "nothing was saved" in err
    rd = RunDir(tmp_path / "runs" / "f")
    assert rd.stage("iter_0/train")["status"] == "running"
    assert not (rd.root / "iter_0" / "policy").exists()


# ------------------------------------------------------------------ 4. one run per directory, nothing outside it


def test_a_second_run_of_the_same_directory_is_refused_naming_the_holder(tiny, judges_module, tmp_path, capsys):
    d = cfg_dict(tiny, tmp_path / "runs", judges_module, iterations=1)
    root = tmp_path / "runs" / "f"
    root.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import fcntl, sys, time
        fh = open({str(root / ".sparring.lock")!r}, "a+")
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write("pid 4242 on testhost since now (sparring run other.yaml)"); fh.flush()
        print("locked", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = cli(["run", recipe(tmp_path, d), "--no-progress"], capsys)
        assert code == 2 and "is in use by pid 4242 on testhost" in err
        assert not (root / "config.yaml").exists()
        code, _ = cli(["status", root], capsys) if (root / "config.yaml").exists() else (0, "")
    finally:
        holder.kill()
        holder.wait()
    code, err = cli(["run", recipe(tmp_path, d), "--no-progress"], capsys)  # the holder is gone: the lock is free
    assert code == 0, err


@pytest.mark.parametrize("name", ["..", "/abs/path", "a/b", "."])
def test_name_must_be_one_directory_name(tmp_path, capsys, name):
    for argv in (
        ["run", f"runs_dir={tmp_path}", "--name", name, "--dry-run"],
        ["run", f"runs_dir={tmp_path}", f"name={name}", "--dry-run"],
    ):
        code, err = cli(argv, capsys)
        assert code == 2 and "must be a single directory name" in err


def test_the_start_up_sweep_touches_only_sparrings_own_temporaries(tiny, judges_module, tmp_path):
    runs = tmp_path / "runs"
    (runs / "f" / "iter_0").mkdir(parents=True)
    foreign = [
        tmp_path / ".important.tmp",
        runs / ".important.tmp",
        runs / "f" / ".notes.tmp",
        runs / "f" / "iter_0" / "mine.tmp",
    ]
    for p in foreign:
        p.write_text("keep me")
    own = runs / "f" / "iter_0" / ".sparring-samples.parquet.abcd1234.tmp"
    own.write_text("half a file")
    run_cfg(cfg_dict(tiny, runs, judges_module, iterations=1))
    assert all(p.read_text() == "keep me" for p in foreign) and not own.exists()


# ------------------------------------------------------------------ 5. the environment


def test_a_full_disk_while_saving_weights_is_a_clear_error_and_resumable(
    tiny, judges_module, reference, tmp_path, capsys, monkeypatch
):
    import transformers.modeling_utils as mu

    d = cfg_dict(tiny, tmp_path / "runs", judges_module)
    real = mu.safe_save_file

    def full(*a, **k):  # what safetensors raises when the disk fills up mid-write
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(mu, "safe_save_file", full)
    code, err = cli(["run", recipe(tmp_path, d), "--no-progress"], capsys)
    assert code == 2 and "could not write" in err and "disk full" in err
    rd = RunDir(tmp_path / "runs" / "f")
    assert rd.leftover_temporaries() == [] and not (rd.root / "iter_0" / "policy").exists()
    monkeypatch.setattr(mu, "safe_save_file", real)
    code, err = cli(["run", recipe(tmp_path, d), "--no-progress"], capsys)
    assert code == 0, err
    assert_same_outputs(rd.root, reference.root)


def test_a_read_only_disk_is_a_clear_error(tiny, judges_module, tmp_path, capsys, monkeypatch):
    d = cfg_dict(tiny, tmp_path / "runs", judges_module, iterations=1)
    import sparring.rundir

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(sparring.rundir, "_tmp_path", read_only)
    code, err = cli(["run", recipe(tmp_path, d), "--no-progress"], capsys)
    assert code == 2 and "Read-only file system" in err and "(the file system is read-only)" in err


def test_a_finished_run_is_not_rewritten(reference, tiny, judges_module, tmp_path, capsys):
    root = tmp_path / "runs" / "f"
    shutil.copytree(reference.root, root)
    command = ["run", recipe(tmp_path, cfg_dict(tiny, tmp_path / "runs", judges_module)), "--no-progress"]
    assert cli(command, capsys)[0] == 0  # the copy's new location is written into config.yaml and summary.json once
    before = {
        p: (p.stat().st_mtime_ns, sha256_of(p)) for p in root.rglob("*") if p.is_file() and p.name != ".sparring.lock"
    }
    code, err = cli(command, capsys)
    assert code == 0, err
    after = {
        p: (p.stat().st_mtime_ns, sha256_of(p)) for p in root.rglob("*") if p.is_file() and p.name != ".sparring.lock"
    }
    assert after == before


@pytest.mark.parametrize(
    "what,message",
    [
        ("config", "config.yaml: the run's saved config is not valid YAML"),
        ("stage_string", "the entry of stage 'iter_0/judge' is str"),
        ("outputs_number", "has outputs 7"),
    ],
)
def test_corrupt_run_files_are_clear_errors(reference, tmp_path, capsys, what, message):
    root = tmp_path / "f"
    shutil.copytree(reference.root, root)
    if what == "config":
        (root / "config.yaml").write_text("name: [unclosed\n")
    else:
        data = json.loads((root / "manifest.json").read_text())
        if what == "stage_string":
            data["stages"]["iter_0/judge"] = "done"
        else:
            data["stages"]["iter_0/judge"]["outputs"] = 7
        (root / "manifest.json").write_text(json.dumps(data))
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    for argv in (["run", "--resume", root], ["status", root]):
        code, err = cli(argv, capsys)
        assert code == 2 and message in err, err
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before


# ------------------------------------------------------------------ 6. smaller


def test_out_of_range_judge_cache_values_are_judged_again(reference, tmp_path):
    import sqlite3

    from sparring.judges.cache import CachedJudge, JudgeCache
    from sparring.records import user_prompt
    from sparring.tasks.ifeval import IFEvalJudge

    prompt = user_prompt("1", "Say hi.", instruction_id_list=["punctuation:no_comma"], kwargs=[{}])
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        first = CachedJudge(IFEvalJudge(), cache).preferences(prompt, ["a, b", "ab"])
    db = sqlite3.connect(tmp_path / "c.sqlite")
    db.execute("UPDATE judge_prefs SET p = 7.5")
    db.commit()
    db.close()
    judge = IFEvalJudge()
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        again = CachedJudge(judge, cache).preferences(prompt, ["a, b", "ab"])
        assert cache.invalid == 2 and judge.calls == 2
    assert (again == first).all()


def test_status_tells_a_killed_stage_from_a_running_one(reference, tmp_path, capsys):
    root = tmp_path / "f"
    shutil.copytree(reference.root, root)
    data = json.loads((root / "manifest.json").read_text())
    data["stages"]["iter_1/eval"] = {"status": "running", "started_at": 1.0}
    (root / "manifest.json").write_text(json.dumps(data))
    code, _ = cli(["status", root], capsys)
    main(["status", str(root)])
    out = capsys.readouterr().out
    assert "stopped (killed)" in out and "not running" in out


def test_a_moved_run_directory_resumes_with_the_same_command(reference, tiny, judges_module, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(reference.root, moved)
    rewind(moved, "iter_1/train")
    d = cfg_dict(tiny, tmp_path / "elsewhere", judges_module)
    code, err = cli(["run", recipe(tmp_path, d), "--name", "renamed", "--no-progress"], capsys)
    assert code == 0, err
    assert_same_outputs(moved, reference.root)
    assert set(STAGES) <= {k.split("/")[1] for k in RunDir(moved).manifest()["stages"] if "/" in k}
    assert os.path.exists(moved / "summary.json")
