"""A fork server for the kill tests (tests/test_resume.py).

Importing torch + transformers takes most of ten seconds on a small machine, and the kill test starts
the `sparring` command a dozen times. So this process imports everything once and then, for each
request, forks a child that runs `sparring.cli.main(argv)` — a fresh process with its own memory and
files, exactly what a re-run of the command would be, minus the import time. The parent has run no
torch op before forking (no thread pool exists yet), so the children start clean.

Protocol (one JSON object per line):
  stdin  {"argv": [...], "log": PATH, "root": RUN_DIR, "kill": POINT or null, "kill_after": SECONDS or null}
  stdout {"pid": PID}                     as soon as the child is forked (the test may SIGKILL it)
         {"pid": PID, "code": C, "signal": S, "external": E, "point": R, "seconds": T}   when it has ended (S: the
                                                 signal that ended it or null; E: whether the server's kill
                                                 ended it; R: whether the kill point fired)

A kill POINT makes the child SIGKILL *itself* when it reaches a chosen moment of the run, so kills
land deterministically inside every stage (including the nastiest moments: a temporary file fully
written but not yet renamed, an output renamed but not yet recorded in the manifest). SIGKILL cannot
be caught: no `finally`, no `atexit`, no flush runs — the same as a kill from outside.

  {"before_replace": REL}   when a temporary file/dir is about to be renamed onto ROOT/REL
  {"after_replace": REL}    right after that rename
  {"after_running": KEY}    right after the manifest records stage KEY as running
  {"before_done": KEY}      when stage KEY has finished its work, before the manifest says so
  {"train_step": [KEY, N]}  after optimizer step N of training stage KEY (or the first one after N that
                            runs, when the stage resumed from a checkpoint past N)
  {"after_cache_put": N}    after the N-th judge-cache write transaction of this process

`kill_after` makes the server SIGKILL the child from outside that many seconds after forking it
(if it is still running then): a kill at a moment nobody chose.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow.parquet  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: E402,F401

import sparring.cli  # noqa: E402
import sparring.commands  # noqa: E402,F401
import sparring.generation.hf  # noqa: E402,F401
import sparring.judges.cache  # noqa: E402,F401
import sparring.loop  # noqa: E402
import sparring.methods  # noqa: E402,F401
import sparring.models  # noqa: E402,F401
import sparring.rundir  # noqa: E402
import sparring.tasks.ifeval  # noqa: E402,F401
import sparring.train  # noqa: E402,F401

try:  # the LoRA runs' adapter library, imported once here too
    import peft  # noqa: F401
except ImportError:
    pass

_POINT_MARKER: str | None = None  # file the child creates when its kill point fires


def _die() -> None:
    # Leave a trace first: the server cannot tell from the exit status alone whether its own kill or
    # the point's ended a child that died just before the server's deadline.
    if _POINT_MARKER:
        os.close(os.open(_POINT_MARKER, os.O_WRONLY | os.O_CREAT, 0o644))
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_point(point: dict, root: Path) -> None:
    """Monkeypatch this (child) process so that it kills itself at `point`."""
    ((kind, arg),) = point.items()
    root = root.resolve()

    if kind in ("before_replace", "after_replace"):
        real_replace = os.replace

        def replace(src, dst, *a, **kw):
            hit = Path(dst).resolve() == root / arg
            if hit and kind == "before_replace":
                _die()
            real_replace(src, dst, *a, **kw)
            if hit:
                _die()

        os.replace = replace
    elif kind in ("after_running", "before_done"):
        cls = sparring.rundir.RunDir
        name = "mark_running" if kind == "after_running" else "mark_done"
        real = getattr(cls, name)

        def wrapped(self, key, *a, **kw):
            if key == arg and kind == "before_done":
                _die()
            real(self, key, *a, **kw)
            if key == arg:
                _die()

        setattr(cls, name, wrapped)
    elif kind == "train_step":
        key, step = arg
        real_metrics = sparring.loop.Context.metrics

        def metrics(self, record):
            real_metrics(self, record)
            # at step N or the first step after it: a stage resumed from a checkpoint past N (an earlier
            # kill landed later in the stage) starts after N and must still be killed in the stage
            if record.get("stage") == key and isinstance(record.get("step"), int) and record["step"] >= step:
                _die()

        sparring.loop.Context.metrics = metrics
    elif kind == "after_cache_put":
        cls = sparring.judges.cache.JudgeCache
        real_put = cls.put_many
        count = [0]

        def put_many(self, items):
            n = real_put(self, items)
            count[0] += 1
            if count[0] == arg:
                _die()
            return n

        cls.put_many = put_many
    else:
        raise ValueError(f"unknown kill point {point}")


def child(req: dict) -> int:
    global _POINT_MARKER
    _POINT_MARKER = req["log"] + ".point"
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdin.close()
    if req.get("kill"):
        install_kill_point(req["kill"], Path(req["root"]))
    return sparring.cli.main(req["argv"])


def main() -> None:
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(req)
            except BaseException as exc:  # report, never fall back into the server loop
                import traceback

                traceback.print_exc()
                code = 3 if not isinstance(exc, SystemExit) else (exc.code if isinstance(exc.code, int) else 1)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), file=out, flush=True)
        status, external = None, False
        if req.get("kill_after") is not None:
            # a kill from outside at a given moment; only while the child is unreaped, so the pid
            # cannot belong to anyone else
            deadline = time.monotonic() + req["kill_after"]
            while time.monotonic() < deadline:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = st
                    break
                time.sleep(0.01)
            else:
                os.kill(pid, signal.SIGKILL)
                external = True
        if status is None:
            _, status = os.waitpid(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        point = os.path.exists(req["log"] + ".point")
        print(
            json.dumps(
                {
                    "pid": pid,
                    "code": code,
                    "signal": sig,
                    "external": external and not point,
                    "point": point,
                    "seconds": round(time.monotonic() - started, 3),
                }
            ),
            file=out,
            flush=True,
        )


if __name__ == "__main__":
    main()
