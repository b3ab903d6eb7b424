"""The run directory: atomic writes and the manifest of completed stages.

Every file is written to a temporary name in the same directory and renamed when complete, so a
killed run never leaves a half file that a later stage would trust. `manifest.json` records each
stage's status, timings and the sha256 of its outputs; a stage is done only once its manifest entry
says so, and a resumed run starts at the first stage that is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparring.errors import UserError

MANIFEST_FORMAT = 1


_UMASK = os.umask(0)
os.umask(_UMASK)


def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make every run file private
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(sha256_of(f).encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"

    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    # ------------------------------------------------------------ manifest
    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"format": MANIFEST_FORMAT, "stages": {}}
        try:
            data = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(
                f"{self.manifest_path} is corrupted ({exc}); refusing to guess which stages are done. "
                "Repair or delete it (deleting restarts the run from scratch)."
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or data.get("format") != MANIFEST_FORMAT:
            raise UserError(
                f"{self.manifest_path} is not a sparring manifest (format {MANIFEST_FORMAT} with a 'stages' mapping); "
                "refusing to guess which stages are done."
            )
        return data

    def _save_manifest(self, data: dict) -> None:
        write_json(self.manifest_path, data)

    def stage(self, key: str) -> dict | None:
        return self.manifest()["stages"].get(key)

    def is_done(self, key: str) -> bool:
        entry = self.stage(key)
        if not entry or entry.get("status") != "done":
            return False
        for rel in entry.get("outputs", {}):
            if not (self.root / rel).exists():
                raise UserError(
                    f"{self.manifest_path}: stage {key} is recorded as done but its output {self.root / rel} is missing"
                )
        return True

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

    def leftover_temporaries(self) -> list[Path]:
        return [p for p in self.root.rglob(".*.tmp")]

    def remove_temporaries(self, under: Path | None = None) -> list[Path]:
        """Delete the temporary files and directories that writers killed mid-write left under
        `under` (default: the whole run). Only for a process that owns that part of the run: a
        live writer's temporary would go too."""
        base = self.root if under is None else Path(under)
        if not base.is_dir():
            return []
        stale = sorted(base.rglob(".*.tmp"))  # a directory sorts before what is inside it
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return stale
