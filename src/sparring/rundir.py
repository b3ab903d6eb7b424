"""The run directory: atomic writes, the manifest of completed stages, the lock, and verification.

Every file is written to a temporary name in the same directory and renamed when complete, so a
killed run never leaves a half file that a later stage would trust. Temporary names start with
`.sparring-` and end with `.tmp`, so the start-up sweep removes sparring's own leftovers and nothing
else. `manifest.json` records each stage's status, timings and the sha256 of its outputs; a stage is
done only once its manifest entry says so, and a resumed run starts at the first stage that is not —
after checking that the recorded outputs the remaining stages will read still have their recorded
hashes (`verify`). One process at a time owns a run directory (`RunLock`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparring.errors import UserError

MANIFEST_FORMAT = 1
TMP_PREFIX = ".sparring-"
LOCK_NAME = ".sparring.lock"
# temporaries of sparring before TMP_PREFIX existed: "." + a known output name + "." + mkstemp's 8 characters
_LEGACY_TMP = re.compile(r"^\.(?:[\w.-]+)\.[a-z0-9_]{8}\.tmp$")

_UMASK = os.umask(0)
os.umask(_UMASK)


def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make every run file private
    os.close(fd)
    return Path(tmp)


def write_failure(path: Path, exc: BaseException) -> UserError | None:
    """A UserError for an exception raised while writing `path` that the user must fix (the disk is
    full or read-only, no permission; safetensors reports a full disk as its own SafetensorError, which
    is not an OSError), or None for other exceptions."""
    if isinstance(exc, OSError):
        hint = {
            errno.ENOSPC: " (the disk is full: free space, then run the same command again to resume)",
            errno.EROFS: " (the file system is read-only)",
            errno.EACCES: " (no permission)",
            errno.EDQUOT: " (disk quota exceeded)",
        }.get(exc.errno, "")
        return UserError(f"could not write {path}: {exc.strerror or exc}{hint}")
    if type(exc).__name__ == "SafetensorError":
        return UserError(
            f"could not write {path}: {exc} (is the disk full? free space, then run the same command again to resume)"
        )
    return None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(path)
    except OSError as exc:
        raise write_failure(path, exc) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        err = write_failure(path, exc)
        if err is not None:
            raise err from None
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(path: str | Path, table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; it replaces `path` as a whole if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_UMASK)
    except OSError as exc:
        raise write_failure(path, exc) from None
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_failure(path, exc)
        if err is not None:
            raise err from None
        raise


CARD = "README.md"  # a saved policy's model card: rewritten as its metrics arrive, read by no stage


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents) — without a top-level model card,
    which is documentation that changes after the stage, not data a later stage reads."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path) != Path(CARD)):
            h.update(str(f.relative_to(path)).encode())
            h.update(sha256_of(f).encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_name(name: str, where: str = "name") -> None:
    """A run name is one path component: it names a directory inside runs_dir, never a path elsewhere."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(
            f"{where} = {name!r} must be a single directory name (no '/', not '.' or '..'): the run "
            "directory is runs_dir/NAME"
        )


_HELD: dict[str, object] = {}  # lock files this process holds, by resolved path (re-entrant within a process)


class RunLock:
    """An exclusive lock on a run directory (flock on RUN/.sparring.lock), held while a process works on
    it: a second `sparring run` of the same directory is refused, naming the holder, instead of running
    every stage twice. The kernel drops the lock when the holder dies (even by SIGKILL), so a killed run
    never leaves a stale lock; `holder()` tells a live run from a killed one."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_NAME
        self._fh = None

    def acquire(self, command: str = "") -> None:
        key = str(self.path.resolve())
        if key in _HELD:  # this process holds it already (a run resumed in the same process, tests)
            self._fh = _HELD[key]
            return
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise write_failure(self.path, exc) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            who = fh.read().strip() or "another process"
            fh.close()
            raise UserError(
                f"{self.path.parent} is in use by {who}; wait for it to finish or stop it, then run the "
                "same command again (one process at a time works on a run directory)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            + (f" ({command})" if command else "")
        )
        fh.flush()
        self._fh = _HELD[key] = fh

    def release(self) -> None:
        """Give the lock up (the process's exit does too, however it ends)."""
        fh = _HELD.pop(str(self.path.resolve()), None)
        if fh is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_UN)
            finally:
                fh.close()
        self._fh = None

    def holder(self) -> str | None:
        """Who holds the lock now (its description), or None when nobody does."""
        if not self.path.exists():
            return None
        if str(self.path.resolve()) in _HELD:
            return f"this process (pid {os.getpid()})"
        try:
            with open(self.path) as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    return fh.read().strip() or "another process"
                fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError:
            return None
        return None


# The names of a run directory's files (docs/cli.md, "The run directory"): every stage, report and command
# names a path through these, so the layout is written down once.
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
METRICS_LOG = "metrics.jsonl"
JUDGE_CACHE = "judge_cache.sqlite"
SAMPLES = "samples.parquet"
SAMPLE_SHARDS = "samples.shards"  # the generate stage's shards while it runs
PREFERENCES = "preferences.parquet"
ROWS = "train.parquet"
POLICY = "policy"
POLICY_TRAINED = "policy_trained"  # APO: the trained weights before extrapolation
ADAPTER = "adapter"  # LoRA: the iteration's adapter
TRAIN_CHECKPOINTS = "train_checkpoint"
EVAL = "eval"


def rel(t: int | None, name: str = "") -> str:
    """A path relative to the run directory, as the manifest records it: `iter_<t>/name`, or
    `base/name` for t = None (the base policy's evaluation)."""
    top = "base" if t is None else f"iter_{t}"
    return f"{top}/{name}" if name else top


def stage_key(t: int | None, stage: str) -> str:
    """A stage's key in the manifest: `iter_<t>/<stage>`, or `base/<stage>` for t = None."""
    return rel(t, stage)


def key_iteration(key: str) -> int | None:
    """t of a stage key or relative path `iter_<t>/...`; None for base/ and anything else."""
    head = key.split("/", 1)[0]
    return int(head[5:]) if head.startswith("iter_") and head[5:].isdigit() else None


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST
        self.lock = RunLock(self.root)

    def iter_dir(self, t: int) -> Path:
        return self.root / rel(t)

    def path(self, t: int | None, name: str) -> Path:
        """RUN/iter_<t>/name (RUN/base/name for t = None)."""
        return self.root / rel(t, name)

    # ------------------------------------------------------------ named paths
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_LOG

    @property
    def judge_cache_path(self) -> Path:
        return self.root / JUDGE_CACHE

    def samples(self, t: int) -> Path:
        return self.path(t, SAMPLES)

    def sample_shards(self, t: int) -> Path:
        return self.path(t, SAMPLE_SHARDS)

    def preferences(self, t: int) -> Path:
        return self.path(t, PREFERENCES)

    def rows(self, t: int) -> Path:
        return self.path(t, ROWS)

    def policy(self, t: int) -> Path:
        """π_{t+1}, trained in iteration t."""
        return self.path(t, POLICY)

    def policy_trained(self, t: int) -> Path:
        return self.path(t, POLICY_TRAINED)

    def adapter(self, t: int) -> Path:
        return self.path(t, ADAPTER)

    def train_checkpoints(self, t: int) -> Path:
        return self.path(t, TRAIN_CHECKPOINTS)

    def eval_dir(self, t: int | None) -> Path:
        """The evaluation of π_{t+1} (iter_t/eval), or of the base policy for t = None (base/eval)."""
        return self.path(t, EVAL)

    # ------------------------------------------------------------ manifest
    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"format": MANIFEST_FORMAT, "stages": {}}
        how = (
            " Repair or delete it: deleting manifest.json restarts the run from scratch; deleting one stage's "
            "entry reruns that stage."
        )
        try:
            data = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(
                f"{self.manifest_path} is corrupted ({exc}); refusing to guess which stages are done." + how
            ) from None
        except OSError as exc:
            raise UserError(f"cannot read {self.manifest_path}: {exc.strerror or exc}") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("stages"), dict)
            or data.get("format") != MANIFEST_FORMAT
        ):
            raise UserError(
                f"{self.manifest_path} is not a sparring manifest (format {MANIFEST_FORMAT} with a 'stages' mapping); "
                "refusing to guess which stages are done." + how
            )
        for key, entry in data["stages"].items():
            problem = _entry_problem(entry)
            if problem:
                raise UserError(
                    f"{self.manifest_path}: the entry of stage {key!r} {problem}; refusing to guess "
                    "whether it is done." + how
                )
        return data

    def _save_manifest(self, data: dict) -> None:
        write_json(self.manifest_path, data)

    def stage(self, key: str) -> dict | None:
        return self.manifest()["stages"].get(key)

    def is_done(self, key: str) -> bool:
        entry = self.stage(key)
        return bool(entry) and entry.get("status") == "done"

    def missing_outputs(self, key: str) -> list[Path]:
        entry = self.stage(key) or {}
        return [self.root / rel for rel in entry.get("outputs", {}) if not (self.root / rel).exists()]

    def producer(self, rel: str) -> str | None:
        """The stage that recorded `rel` (a path relative to the run) as one of its outputs."""
        for key, entry in self.manifest()["stages"].items():
            if rel in entry.get("outputs", {}):
                return key
        return None

    def pruned_by(self, rel: str) -> tuple[str, dict] | None:
        """(the stage, its entry) whose output `rel` keep_policies deleted, or None."""
        for key, entry in self.manifest()["stages"].items():
            if rel in entry.get("pruned", {}):
                return key, entry
        return None

    def verify(self, key: str) -> list[str]:
        """The recorded outputs of stage `key` that are missing or whose sha256 is not the recorded one."""
        entry = self.stage(key) or {}
        bad = []
        for rel, digest in entry.get("outputs", {}).items():
            path = self.root / rel
            if not path.exists() or sha256_of(path) != digest:
                bad.append(rel)
        return bad

    def forget(self, key: str) -> None:
        """Drop stage `key` from the manifest (it reruns); its outputs are removed by the rerun."""
        data = self.manifest()
        if data["stages"].pop(key, None) is not None:
            self._save_manifest(data)

    def mark_running(self, key: str) -> None:
        data = self.manifest()
        data["stages"][key] = {"status": "running", "started_at": time.time()}
        self._save_manifest(data)

    def mark_done(self, key: str, outputs: list[Path], seconds: float, metrics: dict | None = None) -> None:
        data = self.manifest()
        entry = data["stages"].get(key, {})
        entry.update(
            status="done",
            finished_at=time.time(),
            seconds=round(seconds, 3),
            outputs={str(p.relative_to(self.root)): sha256_of(p) for p in outputs},
        )
        if metrics:
            entry["metrics"] = metrics
        data["stages"][key] = entry
        self._save_manifest(data)

    # ------------------------------------------------------------ temporaries
    def _own_dirs(self) -> list[Path]:
        """The directories sparring writes in: the run root, base/, base/eval, iter_<t>/ and their
        subdirectories — never anything above the run root or elsewhere."""
        dirs = [self.root]
        for top in [self.root / rel(None), *sorted(self.root.glob("iter_*"))]:
            if top.is_dir() and not top.is_symlink():
                dirs.append(top)
                dirs += [d for d in top.iterdir() if d.is_dir() and not d.is_symlink()]
        return dirs

    def leftover_temporaries(self, under: Path | None = None) -> list[Path]:
        base = self.root if under is None else Path(under)
        out = []
        for d in self._own_dirs():
            if d == base or base in d.parents:
                out += [
                    p
                    for p in d.iterdir()
                    if p.name.endswith(".tmp") and (p.name.startswith(TMP_PREFIX) or _LEGACY_TMP.match(p.name))
                ]
        return sorted(out)

    def remove_temporaries(self, under: Path | None = None) -> list[Path]:
        """Delete the temporary files and directories that writers killed mid-write left in sparring's
        own directories under `under` (default: the whole run). Only for a process that owns that part
        of the run (holding the lock): a live writer's temporary would go too."""
        stale = self.leftover_temporaries(under)
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return stale


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__} {entry!r:.40}, not an object"
    if entry.get("status") not in ("done", "running"):
        return f"has status {entry.get('status')!r} (expected 'done' or 'running')"
    outputs = entry.get("outputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in outputs.items()):
        return f"has outputs {outputs!r:.60} (expected a mapping of file names to sha256 digests)"
    if entry.get("status") == "done" and "outputs" not in entry:
        return "is done but records no outputs"
    for name in ("seconds", "started_at", "finished_at"):
        if name in entry and (isinstance(entry[name], bool) or not isinstance(entry[name], (int, float))):
            return f"has {name} = {entry[name]!r:.40} (expected a number)"
    if "metrics" in entry and not isinstance(entry["metrics"], dict):
        return f"has metrics {entry['metrics']!r:.40} (expected an object)"
    return None


def command_line() -> str:
    return " ".join(["sparring", *sys.argv[1:]])[:200]
