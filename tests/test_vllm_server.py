"""The `openai` judge against a real OpenAI-compatible server: vLLM's own (`vllm serve`, started here on
127.0.0.1 with the embedded SmolLM2 as the judge model, stopped after). One two-iteration SPPO loop of
the tiny test policy is judged through it.

Skipped where vLLM is not installed (the default test venv); `make test-vllm` runs it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'sparring[vllm]'; make test-vllm)")
pytestmark = pytest.mark.vllm

from tiny import make_tiny_model  # noqa: E402
from vllm_server import vllm_server  # noqa: E402

from sparring.config import config_from_dict  # noqa: E402
from sparring.loop import make_context, open_run, run  # noqa: E402
from sparring.models import resolve_model  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with vllm_server(resolve_model("smollm2-135m"), name="smollm2", log=log) as url:
        yield url


def test_sppo_loop_judged_through_vllm_serve(server, tmp_path):
    policy = make_tiny_model(tmp_path / "policy")
    cfg = config_from_dict(
        {
            "name": "served",
            "seed": 3,
            "iterations": 2,
            "model": str(policy),
            "runs_dir": str(tmp_path / "runs"),
            "judge": {"name": "openai", "base_url": server, "model": "smollm2", "max_concurrency": 4},
            "prompts": {"train": "shipped:chat-train", "heldout": "shipped:chat-heldout", "per_iteration": 4},
            "generation": {"k": 3, "max_new_tokens": 8, "batch_size": 6, "dtype": "float32", "shard_size": 2},
            "train": {"lr": 1e-3, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
            "eval": {"max_new_tokens": 6, "limit": 4, "batch_size": 4, "bootstrap": 200},
        }
    )
    rd = open_run(cfg, tmp_path / "runs" / "served")
    summary = run(make_context(cfg, rd, progress=False, log=lambda line: None))
    stages = rd.manifest()["stages"]
    assert all(e["status"] == "done" for e in stages.values()) and len(stages) == 11
    for t in range(2):
        m = stages[f"iter_{t}/judge"]["metrics"]
        # vLLM returns the top log-probs: soft labels, never parsed text
        assert "parsed_verdicts" not in m and 0 <= m["position_consistency"] <= 1
        ev = json.loads((rd.root / f"iter_{t}" / "eval" / "metrics.json").read_text())
        assert ev["judge"].startswith("openai-v1:model=smollm2") and 0 <= ev["win_rate_vs_base"] <= 1
    assert [r["iteration"] for r in summary["iterations"]] == [0, 1, 2]
    # a rerun of a judge stage asks the server nothing: every ordered query is in the cache
    import pyarrow.parquet as pq

    from sparring.loop import STAGE_FUNCS, run_stage

    before = pq.read_table(rd.root / "iter_1" / "preferences.parquet")
    rd.forget("iter_1/judge")
    ctx = make_context(cfg, rd, progress=False, log=lambda line: None)
    run_stage(ctx, "iter_1/judge", lambda: STAGE_FUNCS["judge"](ctx, 1))
    again = rd.stage("iter_1/judge")["metrics"]
    assert again["cache_hits"] > 0 and "abstention_rate" not in again  # no query was sent
    assert pq.read_table(rd.root / "iter_1" / "preferences.parquet").equals(before)
