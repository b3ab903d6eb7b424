"""A judge answer is paid for once (issue 27): a run judged by the `openai` judge is SIGKILLed inside its judge
stage, and the resume asks the endpoint again for at most the requests that were in flight.

The endpoint is tests/test_judges.py's FakeJudgeServer, wrapped to remember every request and to hold
requests from the N-th on unanswered; the killed run is a subprocess (`sparring run`). Local judges put at
most one batch at risk: their answers are committed batch by batch, before the next batch is computed."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from test_judges import FakeJudgeServer
from tiny import make_tiny_model, make_tiny_reward_model

from sparring.cli import main
from sparring.judges import build_judge
from sparring.judges.base import PairwiseJudge
from sparring.judges.cache import CachedJudge, JudgeCache
from sparring.prompts import load_prompts
from sparring.records import user_prompt
from sparring.tables import read_samples

CONCURRENCY = 4
HOLD_FROM = 30  # requests from the 30th on are held unanswered until the run is killed
PROMPT = user_prompt("p1", "Tell me about cats.")


class RecordingServer(FakeJudgeServer):
    """FakeJudgeServer that records each request's judging text (`received`, in arrival order; `answered`,
    those it replied to) and, while `hold_from` is set, keeps the hold_from-th request and every later one
    waiting without an answer (`held` counts them) until `release()`."""

    def __init__(self, hold_from: int | None = None):
        super().__init__("soft")
        self.hold_from = hold_from
        self.received: list[str] = []
        self.answered: list[str] = []
        self.held = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        answer = self.httpd.RequestHandlerClass
        server = self

        class Recording(answer):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                text = json.loads(raw)["messages"][-1]["content"]
                with server.lock:
                    server.received.append(text)
                    hold = server.hold_from is not None and len(server.received) >= server.hold_from
                    server.held += hold
                if hold:  # in flight until the client is gone: never answered
                    server.released.wait(120)
                    self.close_connection = True
                    return
                self.rfile = io.BytesIO(raw)  # the helper reads the body itself
                super().do_POST()
                with server.lock:
                    server.answered.append(text)

        self.httpd.RequestHandlerClass = Recording

    def release(self) -> None:
        self.hold_from = None
        self.released.set()


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def cached_rows(path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM judge_prefs").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


@pytest.fixture
def recording_server():
    started = []

    def start(**kw):
        started.append(RecordingServer(**kw))
        return started[-1]

    yield start
    for s in started:
        s.release()
        s.close()


def test_a_kill_inside_the_judge_stage_pays_at_most_the_requests_in_flight_twice(tmp_path, recording_server):
    srv = recording_server(hold_from=HOLD_FROM)
    model = make_tiny_model(tmp_path / "policy")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "paid",
                "seed": 1,
                "iterations": 1,
                "model": str(model),
                "runs_dir": str(tmp_path / "runs"),
                "method": {"name": "sppo", "beta": 0.1},
                "judge": {"name": "openai", "model": "m", "base_url": srv.url, "max_concurrency": CONCURRENCY},
                "prompts": {"train": "shipped:chat-train", "heldout": "shipped:chat-heldout", "per_iteration": 8},
                "generation": {"k": 4, "max_new_tokens": 8, "batch_size": 8, "dtype": "float32"},
                "train": {"lr": 1e-3, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
                "eval": {"base": False, "max_new_tokens": 4, "limit": 2, "batch_size": 2, "bootstrap": 100},
            }
        )
    )
    run_dir = tmp_path / "runs" / "paid"
    cache = run_dir / "judge_cache.sqlite"
    code = "import sys; from sparring.cli import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.Popen(
        [sys.executable, "-c", code, "run", str(recipe), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        # every worker is now waiting on a held request, so each answer it got before is in the client's hands
        reached = wait_for(lambda: srv.held >= CONCURRENCY or child.poll() is not None, 600)
        assert reached and child.poll() is None, (
            f"the run ended before its judge stage was held:\n{child.stdout.read()}"
        )
        # give the client the chance to keep what it received (an implementation that commits per chunk
        # never does, and the resume below pays for all of it again)
        wait_for(lambda: cached_rows(cache) >= len(srv.answered), 10)
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    first_received, first_answered = list(srv.received), list(srv.answered)
    srv.release()
    assert len(first_answered) == HOLD_FROM - 1 and len(first_received) == HOLD_FROM - 1 + CONCURRENCY
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["iter_0/judge"]["status"] == "running"  # killed inside it

    # the resume: only the judge stage, in this process
    assert main(["judge", "--run", str(run_dir), "--iter", "0", "--no-progress"]) == 0
    again = srv.received[len(first_received) :]
    paid_twice = set(again) & set(first_received)
    answered_twice = set(again) & set(first_answered)
    groups = read_samples(run_dir / "iter_0" / "samples.parquet", {p.id: p for p in load_prompts("shipped:chat-train")})
    queries = sum(len(set(g.responses)) * (len(set(g.responses)) - 1) for g in groups)
    print(
        f"queries {queries}; first run: answered {len(first_answered)}, in flight at the kill "
        f"{len(first_received) - len(first_answered)}; resume asked {len(again)}, of which paid twice "
        f"{len(paid_twice)} (answered twice {len(answered_twice)})"
    )
    assert len(paid_twice) <= CONCURRENCY and not answered_twice
    assert len(again) == queries - len(first_answered) and len(set(again)) == len(again)
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["iter_0/judge"]["status"] == "done"

    # and the verdicts are those of a judge that was never interrupted
    judge = build_judge({"name": "openai", "model": "m", "base_url": srv.url})
    fresh = judge.preferences_many([g.prompt for g in groups], [g.responses for g in groups])
    prefs = pq.read_table(run_dir / "iter_0" / "preferences.parquet").to_pylist()
    got = {(r["prompt_id"], r["i"], r["j"]): r["p"] for r in prefs}
    for g, P in zip(groups, fresh):
        k = len(g.responses)
        stored = np.array([[got.get((g.prompt.id, i, j), 0.5) for j in range(k)] for i in range(k)])
        np.testing.assert_array_equal(stored, P)


# ------------------------------------------------------------------ local judges: one batch at risk


class RecordingCache(JudgeCache):
    """A judge cache that records, for each write transaction, how many items it held and `mark()`."""

    def __init__(self, path, mark=lambda: None):
        super().__init__(path)
        self.mark, self.writes = mark, []

    def put_many(self, items):
        n = super().put_many(items)
        self.writes.append((n, self.mark()))
        return n


class EndReporter(PairwiseJudge):
    """A pairwise judge that, like pairrm, computes a whole call before it reports (streams = False);
    it has a batch size, so the cache should hand it one batch per call."""

    def __init__(self, batch_size):
        super().__init__()
        self.id, self.batch_size, self.calls = "end-reporter-v1", batch_size, []

    def compare_many(self, queries, on_result=None):
        self.calls.append(len(queries))
        out = [1 / (1 + np.exp(len(b) - len(a))) for _, a, b in queries]
        for n, q in enumerate(out):
            on_result(n, q)
        return out


def test_a_judge_that_reports_at_the_end_of_a_call_is_handed_one_batch_per_call(tmp_path):
    judge = EndReporter(batch_size=5)
    responses = ["a", "bb", "ccc", "dddd"]  # 12 ordered queries: calls of 5, 5 and 2
    with RecordingCache(tmp_path / "c.sqlite", mark=lambda: len(judge.calls)) as cache:
        CachedJudge(judge, cache).preferences_many([PROMPT], [responses])
    assert judge.calls == [5, 5, 2]
    # each answer is its own transaction, written before the next call started
    assert [n for n, _ in cache.writes] == [1] * 12 and [m for _, m in cache.writes] == [1] * 5 + [2] * 5 + [3] * 2


def test_the_llm_judge_commits_each_batch_before_computing_the_next(tmp_path):
    model = make_tiny_model(tmp_path / "judge", seed=5)
    judge = build_judge({"name": "llm", "model": str(model), "dtype": "float32", "batch_size": 2})
    forwards = []
    judge.model.register_forward_hook(lambda *args: forwards.append(1))
    responses = ["a", "bb", "ccc"]  # 6 ordered queries: 3 batches of 2
    with RecordingCache(tmp_path / "c.sqlite", mark=lambda: len(forwards)) as cache:
        CachedJudge(judge, cache).preferences_many([PROMPT], [responses])
    assert len(forwards) == 3
    assert [m for _, m in cache.writes] == [1, 1, 2, 2, 3, 3]  # a batch's answers, before the next forward


def test_a_reward_model_is_called_about_one_batch_at_a_time(tmp_path):
    rm = make_tiny_reward_model(tmp_path / "rm")
    judge = build_judge({"name": "reward_model", "model": str(rm), "dtype": "float32", "batch_size": 4})
    calls = []
    real = judge.preferences_many
    judge.preferences_many = lambda prompts, lists: calls.append(len(prompts)) or real(prompts, lists)
    prompts = [user_prompt(f"p{n}", f"Question {n}?") for n in range(5)]
    lists = [[f"answer {n}", f"reply {n}!"] for n in range(5)]  # 2 responses each: 2 prompts fill a batch of 4
    with RecordingCache(tmp_path / "c.sqlite") as cache:
        mats = CachedJudge(judge, cache).preferences_many(prompts, lists)
    assert calls == [2, 2, 1] and [n for n, _ in cache.writes] == [4, 4, 2]  # both orientations of each pair
    fresh = [judge.preferences_many([p], [r])[0] for p, r in zip(prompts, lists)]
    for got, want in zip(mats, fresh):
        np.testing.assert_allclose(got, want, atol=1e-6)
