"""Sharing a run and finding one's way around sparring (the `sparring share` commands): model cards
(sparring.report.cards), push up to the upload call (.hub), the TRL export (.export), the config
reference (.configdoc), key suggestions (sparring.keyhints) and recipes by name (sparring.recipebook),
on tiny runs built here."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from tiny import make_tiny_model, tiny_run_config

from sparring import cli, config, keyhints, recipebook
from sparring.config import config_from_dict, load_config
from sparring.errors import UserError
from sparring.loop import make_context, open_run, run
from sparring.prompts import load_prompts
from sparring.report import cards, configdoc, export, hub
from sparring.winrates import win_rates

ROOT = Path(__file__).resolve().parents[1]
KEYS = [k for k, *_ in config.config_keys()]  # every valid dotted key, as config.py hands them to keyhints


def judge_scores(messages, responses):
    """The runs' judge (judge.function: test_share:judge_scores): a score from each response's characters,
    and a tie among all samples of every prompt whose text length is a multiple of 3, so that some
    prompts of every iteration carry no preference."""
    if len(messages[-1]["content"]) % 3 == 0:
        return [0.0] * len(responses)
    return [float(sum(map(ord, r)) % 5) for r in responses]


def _config(model: Path, runs_dir: Path, name: str, **over) -> dict:
    return tiny_run_config(
        model,
        runs_dir,
        name,
        **{"judge.name": "python", "judge.function": "test_share:judge_scores", "generation.shard_size": 6},
        **over,
    )


def _run(cfg_dict: dict) -> Path:
    cfg = config_from_dict(cfg_dict)
    rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
    run(make_context(cfg, rd, progress=False, log=lambda line: None))
    return rd.root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three finished runs of a tiny model: sppo (2 iterations), sppo-all and spin (1 iteration each)."""
    base = tmp_path_factory.mktemp("share")
    model = make_tiny_model(base / "model")
    return {
        "sppo": _run(_config(model, base / "runs", "sppo")),
        "sppo-all": _run(
            _config(model, base / "runs", "all", iterations=1, **{"method.name": "sppo-all", "eval.base": False})
        ),
        "spin": _run(
            _config(model, base / "runs", "spin", iterations=1, **{"method.name": "spin", "eval.base": False})
        ),
    }


def _win_rates(run_dir: Path, t: int) -> dict[str, np.ndarray]:
    """P̂ of every prompt's samples, recomputed from preferences.parquet."""
    prefs = pq.read_table(run_dir / f"iter_{t}" / "preferences.parquet").to_pylist()
    k = max(p["i"] for p in prefs) + 1
    mats: dict[str, np.ndarray] = {}
    for p in prefs:
        mats.setdefault(p["prompt_id"], np.full((k, k), np.nan))[p["i"], p["j"]] = p["p"]
    return {pid: win_rates(m[None])[0] for pid, m in mats.items()}


def _samples(run_dir: Path, t: int) -> dict[tuple[str, int], dict]:
    rows = pq.read_table(run_dir / f"iter_{t}" / "samples.parquet").to_pylist()
    return {(r["prompt_id"], r["sample_index"]): r for r in rows}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ export


def test_export_sppo_holds_each_iterations_training_pairs(runs, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "export"
    report = export.export_trl(runs["sppo"], out)
    dd = load_from_disk(str(out))
    shipped = {p.id: p for p in load_prompts("shipped:train")}
    for t in range(2):
        split = f"iter_{t}"
        train = [r for r in pq.read_table(runs["sppo"] / split / "train.parquet").to_pylist()]
        samples, p_hat = _samples(runs["sppo"], t), _win_rates(runs["sppo"], t)
        rows = dd[split].to_list() if split in dd else []
        assert [r["prompt_id"] for r in rows] == [r["prompt_id"] for r in train]
        for row, tr in zip(rows, train):
            pid = tr["prompt_id"]
            assert row["prompt"] == [dict(m) for m in shipped[pid].messages]
            assert row["chosen"] == [{"role": "assistant", "content": samples[(pid, tr["w_index"])]["response"]}]
            assert row["rejected"] == [{"role": "assistant", "content": samples[(pid, tr["l_index"])]["response"]}]
            assert row["score_chosen"] == pytest.approx(tr["p_w"]) and row["score_rejected"] == pytest.approx(tr["p_l"])
            assert row["score_chosen"] > row["score_rejected"]
            assert row["p_chosen_beats_rejected"] == pytest.approx(tr["p"])
            assert (row["chosen_index"], row["rejected_index"], row["iteration"]) == (tr["w_index"], tr["l_index"], t)
        # every other prompt of the iteration is one whose samples all tie, and is counted
        tied = [pid for pid, p in p_hat.items() if p.max() == p.min()]
        stats = report["splits"][split]
        assert stats["prompts"] == 6 and stats["pairs"] == len(train) == 6 - len(tied)
        assert stats["skipped_tied"] == len(tied) and stats["skipped_incomplete"] == stats["skipped_other"] == 0
        assert _jsonl(out / f"{split}.jsonl") == rows
    assert sum(s["skipped_tied"] for s in report["splits"].values()) > 0  # the judge's ties were exercised
    assert "train.parquet" in dd["iter_0"].info.description
    assert json.loads((out / "export.json").read_text()) == report


def test_export_of_a_method_without_pairs_takes_best_and_worst_by_win_rate(runs, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "export"
    report = export.export_trl(runs["sppo-all"], out)
    rows = load_from_disk(str(out))["iter_0"].to_list()
    samples, p_hat = _samples(runs["sppo-all"], 0), _win_rates(runs["sppo-all"], 0)
    assert rows and report["selection"] == "best and worst sample by win rate"
    for row in rows:
        p = p_hat[row["prompt_id"]]
        assert row["score_chosen"] == pytest.approx(p.max()) and row["score_rejected"] == pytest.approx(p.min())
        assert row["chosen_index"] == int(np.flatnonzero(p == p.max())[0])  # ties to the lower index
        assert row["rejected_index"] == int(np.flatnonzero(p == p.min())[0])
        assert row["chosen"][0]["content"] == samples[(row["prompt_id"], row["chosen_index"])]["response"]
    tied = sum(p.max() == p.min() for p in p_hat.values())
    assert report["splits"]["iter_0"]["pairs"] == len(rows) == 6 - tied
    assert "best and worst sample" in load_from_disk(str(out))["iter_0"].info.description


def test_best_worst_selection_agrees_with_the_sppo_rows(runs):
    """The export's own best/worst (for methods without pairs) picks the pairs SPPO trained on."""
    cfg = yaml.safe_load((runs["sppo"] / "config.yaml").read_text())
    for t in range(2):
        from_rows, _ = export._export_iteration(runs["sppo"], t, cfg, {}, uses_pairs=True)
        own, _ = export._export_iteration(runs["sppo"], t, cfg, {}, uses_pairs=False)
        assert own == from_rows


def test_export_spin_prefers_the_ground_truth(runs, tmp_path):
    report = export.export_trl(runs["spin"], tmp_path / "export")
    rows = _jsonl(tmp_path / "export" / "iter_0.jsonl")
    shipped = {p.id: p for p in load_prompts("shipped:train")}
    samples = _samples(runs["spin"], 0)
    assert len(rows) == 6 and report["splits"]["iter_0"]["skipped_tied"] == 0  # SPIN keeps tied prompts
    for row in rows:
        assert row["chosen"][0]["content"] == shipped[row["prompt_id"]].reference
        assert row["rejected"][0]["content"] == samples[(row["prompt_id"], 0)]["response"]
        assert row["chosen_index"] == -1 and row["score_chosen"] is None and row["p_chosen_beats_rejected"] is None


def test_export_reads_a_run_of_an_earlier_version(runs, tmp_path):
    """No opponent/mu_logp columns, a config key this version does not know, a judge function that no
    longer imports and a prompt file that is gone: the export still works from what the run holds."""
    old = tmp_path / "old"
    shutil.copytree(runs["sppo"], old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["removed_key"] = 1
    cfg["judge"]["function"] = "gone_module:fn"
    cfg["prompts"]["train"] = str(tmp_path / "moved.jsonl")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    for t in range(2):
        path = old / f"iter_{t}" / "samples.parquet"
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["opponent", "mu_logp"]), path)
    report = export.export_trl(old, tmp_path / "export")
    new = export.export_trl(runs["sppo"], tmp_path / "new")
    assert report["splits"] == new["splits"]
    rows = _jsonl(tmp_path / "export" / "iter_0.jsonl")
    samples = _samples(runs["sppo"], 0)
    for row in rows:  # the prompt is the asked text from samples.parquet, as one user turn
        assert row["prompt"] == [{"role": "user", "content": samples[(row["prompt_id"], 0)]["prompt"]}]
    assert any("moved.jsonl" in n and "could not be read" in n for n in report["notes"])


def test_export_refuses_what_it_should_not_touch(runs, tmp_path):
    with pytest.raises(UserError, match="not a sparring run directory"):
        export.export_trl(tmp_path, tmp_path / "out")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier sparring export"):
        export.export_trl(runs["sppo"], mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="format 'csv' is not supported"):
        export.export_trl(runs["sppo"], tmp_path / "out", format="csv")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text("name: fresh\n")
    (fresh / "iter_0").mkdir()
    with pytest.raises(UserError, match="no iteration has samples and preferences yet"):
        export.export_trl(fresh, tmp_path / "out")
    # an earlier export is replaced as a whole
    export.export_trl(runs["sppo-all"], tmp_path / "again")
    (tmp_path / "again" / "stale.txt").write_text("x")
    export.export_trl(runs["sppo-all"], tmp_path / "again")
    assert not (tmp_path / "again" / "stale.txt").exists() and (tmp_path / "again" / "export.json").is_file()


def test_an_iteration_without_pairs_keeps_its_empty_jsonl(runs, tmp_path):
    """datasets cannot reload an empty split: the iteration is counted and has an empty JSONL."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir)
    path = run_dir / "iter_1" / "train.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    report = export.export_trl(run_dir, tmp_path / "export")
    from datasets import load_from_disk

    assert list(load_from_disk(str(tmp_path / "export"))) == ["iter_0"]
    assert (tmp_path / "export" / "iter_1.jsonl").read_text() == ""
    assert report["splits"]["iter_1"]["pairs"] == 0 and report["splits"]["iter_1"]["in_dataset"] is False


def test_the_export_trains_in_trls_dpo_trainer(runs, tmp_path):
    """The docs' DPOTrainer example on the export of the tiny run (with TRL installed: the bench extra)."""
    pytest.importorskip("trl")
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    export.export_trl(runs["sppo"], tmp_path / "export")
    train = load_from_disk(str(tmp_path / "export"))["iter_0"].select_columns(["prompt", "chosen", "rejected"])
    policy = str(runs["sppo"] / "iter_0" / "policy")
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        beta=0.1,
        learning_rate=5e-6,
        per_device_train_batch_size=2,
        max_steps=2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy),
        args=args,
        train_dataset=train,
        processing_class=AutoTokenizer.from_pretrained(policy),
    )
    result = trainer.train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)


# ------------------------------------------------------------------ model cards


def _front_matter(text: str) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "the card starts with a YAML front matter"
    return yaml.safe_load(m.group(1))


def _yaml_block(text: str) -> dict:
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))


def test_card_before_the_evaluation_says_not_evaluated_yet(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir, ignore=shutil.ignore_patterns("eval", "summary.json"))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    path = cards.write_model_card(run_dir / "iter_1" / "policy", run_dir=run_dir, iteration=1, cfg=cfg, summary=None)
    text = path.read_text()
    front = _front_matter(text)
    assert front["library_name"] == "transformers" and front["tags"][:2] == ["sparring", "sppo"]
    assert "base_model" not in front  # a local directory is no hub id
    assert "Not evaluated yet" in text and "| metric |" not in text
    assert "π_2, iteration 2 of 2" in text and "β" in text
    assert _yaml_block(text) == {k: v for k, v in cfg.items() if k != "runs_dir"}  # where the run lived is no setting
    assert not list(path.parent.glob(".*.tmp"))


def test_refreshed_card_shows_the_metrics_with_intervals(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir)
    written = cards.refresh_model_cards(run_dir)
    assert written == [run_dir / "iter_0" / "policy" / "README.md", run_dir / "iter_1" / "policy" / "README.md"]
    summary = json.loads((run_dir / "summary.json").read_text())
    text = written[1].read_text()
    row = summary["iterations"][2]
    iv = row["intervals"]["prompt_strict"]
    lo, hi = iv["ci95"]
    dlo, dhi = iv["delta_ci95"]
    base = summary["iterations"][0]["prompt_strict"]
    assert (
        f"| IFEval prompt-level strict accuracy | {100 * row['prompt_strict']:.1f}% [{100 * lo:.1f}%, "
        f"{100 * hi:.1f}%] | {100 * base:.1f}% | {100 * iv['delta']:+.1f} [{100 * dlo:+.1f}, "
        f"{100 * dhi:+.1f}] points"
    ) in text
    assert "win rate vs the base model" in text and "4 held-out prompts" in text
    assert "Not evaluated yet" not in text
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    n_rows, steps = stages["iter_1/rows"]["metrics"]["rows"], stages["iter_1/train"]["metrics"]["steps"]
    assert f"- **This iteration**: {n_rows} training rows from 6 prompts, {steps} optimizer steps" in text
    # a card that already says this is not rewritten (a finished run may sit on a read-only disk)
    inode = written[1].stat().st_ino
    cards.refresh_model_cards(run_dir)
    assert written[1].stat().st_ino == inode
    # before summary.json is rewritten, an evaluated policy's card reads its eval/metrics.json
    (run_dir / "summary.json").unlink()
    assert cards.refresh_model_cards(run_dir)[1].read_text() == text
    # a card edited by hand (its mark line removed) is left alone
    written[0].write_text("# my own card\n")
    assert cards.refresh_model_cards(run_dir) == [written[1]]
    assert written[0].read_text() == "# my own card\n"


def test_refreshing_a_card_keeps_the_run_verifiable(runs, tmp_path):
    """The card lives in iter_t/policy, whose sha256 the train stage recorded; it is left out of that hash
    (it changes as metrics arrive, no stage reads it), so resuming (heal) or `status --verify` does not take
    the refreshed card for damage, and the record does not change."""
    from sparring.rundir import RunDir, sha256_of

    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir)
    rd = RunDir(run_dir)
    old = rd.stage("iter_1/train")["outputs"]["iter_1/policy"]
    card = run_dir / "iter_1" / "policy" / "README.md"
    card.write_text("# stale card\n" + cards.CARD_MARK + "\n")
    cards.refresh_model_cards(run_dir)
    assert "| metric |" in card.read_text()
    assert rd.stage("iter_1/train")["outputs"]["iter_1/policy"] == old == sha256_of(run_dir / "iter_1" / "policy")
    assert rd.verify("iter_0/train") == [] and rd.verify("iter_1/train") == []
    assert not (run_dir / ".sparring.lock").exists() or rd.lock.holder() is None  # given back


def test_a_damaged_policy_keeps_its_card_and_its_record(runs, tmp_path):
    from sparring.rundir import RunDir

    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir)
    weights = run_dir / "iter_0" / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    readme = run_dir / "iter_0" / "policy" / "README.md"
    card0 = readme.read_text() if readme.exists() else None
    recorded = RunDir(run_dir).stage("iter_0/train")["outputs"]["iter_0/policy"]
    with pytest.raises(UserError, match=r"iter_0/policy no longer matches the sha256 that iter_0/train recorded"):
        cards.refresh_model_cards(run_dir)
    assert (readme.read_text() if readme.exists() else None) == card0
    assert RunDir(run_dir).stage("iter_0/train")["outputs"]["iter_0/policy"] == recorded
    assert "| metric |" in (run_dir / "iter_1" / "policy" / "README.md").read_text()  # the others still refresh


def test_a_card_is_not_rewritten_under_a_live_run(runs, tmp_path):
    import fcntl

    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir)
    readme = run_dir / "iter_1" / "policy" / "README.md"
    before = readme.read_text() if readme.exists() else None
    with open(run_dir / ".sparring.lock", "a+") as fh:  # what another process's RunLock holds
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write("pid 4242 on elsewhere (sparring run)")
        fh.flush()
        with pytest.raises(UserError, match="in use by pid 4242 on elsewhere") as info:
            cards.refresh_model_cards(run_dir)
    assert str(info.value).count("in use by") == 1
    assert (readme.read_text() if readme.exists() else None) == before


def test_card_names_the_hub_base_model_and_never_a_secret(runs, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-very-secret")
    cfg = yaml.safe_load((runs["sppo"] / "config.yaml").read_text())
    cfg["model"] = "smollm2-135m"
    cfg["judge"] = {
        "name": "openai",
        "model": "served",
        "base_url": "https://bob:hunter2@judge.example/v1",
        "api_key_env": "MY_JUDGE_KEY",
        "cache": True,
    }
    cfg["hub_token"] = "hf_abcdef"  # a key of some later version that holds a credential
    text = cards.render_model_card(run_dir=runs["sppo"], iteration=0, cfg=cfg, summary=None)
    assert _front_matter(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "MY_JUDGE_KEY" in text  # the variable's name is a setting; its value is never read
    for secret in ("sk-very-secret", "hunter2", "hf_abcdef"):
        assert secret not in text
    assert "`judge.max_concurrency`: `8`" in text  # the judge's defaults, as it ran


def test_the_cards_snippet_loads_the_policy(runs, tmp_path):
    """The "How to use" code runs as written against the saved policy."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir)
    (card,) = [p for p in cards.refresh_model_cards(run_dir) if "iter_0" in str(p)]
    code = (
        re.search(r"```python\n(.*?)```", card.read_text(), re.S)
        .group(1)
        .replace("max_new_tokens=128", "max_new_tokens=4")
    )
    namespace: dict = {}
    here = os.getcwd()
    os.chdir(run_dir.parent)  # the card names the policy relative to where the run directory sits
    try:
        exec(compile(code, "card", "exec"), namespace)
    finally:
        os.chdir(here)
    assert namespace["output"].shape[1] > namespace["inputs"]["input_ids"].shape[1]


# ------------------------------------------------------------------ push


class FakeApi:
    """Records the hub calls push makes; `fail` raises from create_repo."""

    endpoint = "https://hub.example"

    def __init__(self, fail: BaseException | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.fail is not None:
            raise self.fail

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))

    def upload_file(self, **kwargs):
        self.calls.append(("upload_file", kwargs))


@pytest.fixture
def policy(runs, tmp_path) -> Path:
    """iter_0/policy of a copy of the sppo run (the shared fixture stays as the runs left it)."""
    shutil.copytree(runs["sppo"], tmp_path / "pushed")
    return tmp_path / "pushed" / "iter_0" / "policy"


def test_push_creates_the_repo_and_uploads_the_policy_with_a_fresh_card(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["sppo"], run_dir)
    policy = run_dir / "iter_1" / "policy"
    before = {p.name: p.read_bytes() for p in policy.iterdir()}
    manifest = (run_dir / "manifest.json").read_text()
    api = FakeApi()
    url = hub.push(policy, "alice/tiny-sppo", private=True, token="hf_tok", api=api)
    assert url == "https://hub.example/alice/tiny-sppo"
    (c_name, create), (u_name, upload), (f_name, card) = api.calls
    assert c_name == "create_repo" and create == {
        "repo_id": "alice/tiny-sppo",
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
        "token": "hf_tok",
    }
    assert u_name == "upload_folder" and upload["folder_path"] == str(policy)
    assert upload["repo_id"] == "alice/tiny-sppo" and upload["repo_type"] == "model" and upload["token"] == "hf_tok"
    assert "README.md" in upload["ignore_patterns"]  # the card goes up on its own, rendered for the repo
    assert f_name == "upload_file" and card["path_in_repo"] == "README.md" and card["repo_id"] == "alice/tiny-sppo"
    text = card["path_or_fileobj"].decode("utf-8")
    assert 'from_pretrained("alice/tiny-sppo")' in text and "| IFEval prompt-level strict accuracy |" in text
    assert str(run_dir) not in text.split("## Configuration")[0]  # no local path before the config block
    # push writes nothing in the run: the policy's files and the manifest are as they were
    assert {p.name: p.read_bytes() for p in policy.iterdir()} == before
    assert (run_dir / "manifest.json").read_text() == manifest


def test_push_uploads_a_hand_written_card_as_it_is(policy):
    (policy / "README.md").write_text("# my card\n")
    api = FakeApi()
    hub.push(policy, "alice/tiny", api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert "README.md" not in api.calls[1][1]["ignore_patterns"]


@pytest.mark.parametrize(
    "repo_id",
    ["tiny-sppo", "alice/tiny/sppo", "-alice/x", "alice/x--y", "alice/x.", "/x", "alice/" + "x" * 97, "al ice/x"],
)
def test_push_rejects_a_bad_repo_id_before_any_call(runs, repo_id):
    api = FakeApi()
    with pytest.raises(UserError, match="repo id"):
        hub.push(runs["sppo"] / "iter_0" / "policy", repo_id, api=api)
    assert api.calls == []


def test_push_rejects_a_directory_that_is_no_saved_model(tmp_path):
    api = FakeApi()
    with pytest.raises(UserError, match="no such directory"):
        hub.push(tmp_path / "nope", "alice/x", api=api)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="has no weights"):
        hub.push(tmp_path, "alice/x", api=api)
    assert api.calls == []


def _http_error(status: int):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx2.Request("POST", "https://hub.example/api/repos/create")
    return HfHubHTTPError(f"{status} error (token hf_tok)", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    "status, expected",
    [(401, "rejected the token.*hf auth login"), (403, "may not write to 'alice'"), (404, "no such repository")],
)
def test_push_turns_hub_errors_into_user_errors_without_the_token(policy, status, expected):
    with pytest.raises(UserError, match=expected) as info:
        hub.push(policy, "alice/tiny", token="hf_tok", api=FakeApi(_http_error(status)))
    assert "alice/tiny" in str(info.value) and "hf_tok" not in str(info.value)


def test_push_network_and_login_failures(policy):
    import httpx2
    from huggingface_hub.errors import LocalTokenNotFoundError

    with pytest.raises(UserError, match="could not reach the Hugging Face Hub"):
        hub.push(policy, "alice/tiny", api=FakeApi(httpx2.ConnectError("connection refused")))
    with pytest.raises(UserError, match="could not reach the Hugging Face Hub"):
        hub.push(policy, "alice/tiny", api=FakeApi(ConnectionError("no route to host")))
    with pytest.raises(UserError, match="no Hugging Face token found.*hf auth login"):
        hub.push(policy, "alice/tiny", api=FakeApi(LocalTokenNotFoundError("no token")))


def test_push_with_the_real_client_offline(policy, monkeypatch):
    """huggingface_hub's own HfApi, stopped by offline mode before any request leaves (tests never reach
    a hub): its error becomes a UserError too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set") as info:
        hub.push(policy, "alice/tiny", token="hf_secret_value")
    assert "hf_secret_value" not in str(info.value)


# ------------------------------------------------------------------ config reference


def test_docs_config_md_is_up_to_date():
    text = configdoc.config_reference()
    assert (ROOT / "docs" / "config.md").read_text() == text, (
        "docs/config.md is stale: regenerate it with `python -m sparring.share config-reference --out docs/config.md`"
    )


def test_config_reference_lists_every_key_with_its_meaning():
    text = configdoc.config_reference().split("## Coming from TRL")[0]  # the key tables, not TRL's names
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.]+)` \|.*\|$", text, re.M)}
    keys = [k for k, *_ in config.config_keys() if not k.startswith("eval.judge.")]
    assert set(keys) <= set(rows)
    for key in keys:
        meaning = rows[key].rstrip("|").rsplit("|", 1)[1].strip()
        assert meaning, f"{key} has no meaning: give its field a comment in config.py"
    assert rows["method.gamma"] == "| `method.gamma` | number | ≥ 0 | `1.4` | SimPO margin |"
    assert "| `method.label_smoothing` | number | [0, 0.5) | `0.0` |" in rows["method.label_smoothing"]
    assert "| `generation.backend` | one of `hf`, `vllm` |  | `hf` |" in rows["generation.backend"]
    assert "default ifeval `0.1`, reward_model `1.0`, python `1.0`" in rows["judge.tau"]


def test_fallback_meanings_are_only_for_fields_without_a_comment():
    docs, comments = configdoc._field_comments()
    by_key = {k: (cls.__name__, f.name) for k, cls, f, _ in config.config_keys()}
    for key in configdoc._MEANINGS:
        assert key in by_key, f"_MEANINGS names {key!r}, which is no config key"
        cls, name = by_key[key]
        assert name not in comments.get(cls, {}), f"{key} has a comment in config.py now; drop it from _MEANINGS"


# ------------------------------------------------------------------ key suggestions and recipes


@pytest.mark.parametrize(
    "key, expected",
    [
        ("lr", "train.lr"),
        ("train.learning_rate", "train.lr"),
        ("beta", "method.beta"),
        ("temperature", "generation.temperature"),
        ("learning_rate", "train.lr"),
        ("num_train_epochs", "train.epochs"),
        ("per_device_train_batch_size", "train.micro_batch_size"),
        ("gradient_accumulation_steps", "train.batch_size"),
        ("loss_type", "method.name"),
        ("max_new_tokens", "generation.max_new_tokens"),
        ("max_completion_length", "generation.max_new_tokens"),
        ("train.seed", "seed"),
        ("warmup_ratio", "train.warmup_ratio"),
        ("weight_decay", "train.weight_decay"),
        ("max_grad_norm", "train.max_grad_norm"),
        ("bf16", "train.precision"),
        ("train.lrr", "train.lr"),
        ("trian", "train"),
        ("generations", "generation"),
        ("train.gamma", "train.mars.gamma"),
        ("eval.max_length", "eval.max_new_tokens"),
        ("method.temprature", "generation.temperature"),
        ("k", "generation.k"),
        ("Learning-Rate", "train.lr"),
        ("eval.tau", "eval.judge.tau"),
    ],
)
def test_suggest_key(key, expected):
    assert keyhints.suggest_key(key, KEYS) == expected


def test_suggest_key_has_nothing_for_far_or_valid_keys():
    assert keyhints.suggest_key("xyzzy", KEYS) is None
    assert keyhints.suggest_key("train.lr", KEYS) is None


def test_key_hint_reads_as_the_tail_of_the_unknown_key_error():
    assert keyhints.key_hint("train.lrr", KEYS) == "; did you mean train.lr?"  # the message config.py gives today
    assert keyhints.key_hint("beta", KEYS) == "; did you mean method.beta?"
    assert keyhints.key_hint("learning_rate", KEYS) == "; did you mean train.lr? (TRL's learning_rate)"
    hint = keyhints.key_hint("gradient_accumulation_steps", KEYS)
    assert hint.startswith("; did you mean train.batch_size? (TRL's gradient_accumulation_steps: ")
    assert "rows of one optimizer step" in hint
    assert keyhints.key_hint("batch_size", KEYS) == (
        "; did you mean generation.batch_size, judge.batch_size, train.batch_size or eval.batch_size?"
    )
    assert keyhints.key_hint("xyzzy", KEYS) == ""


def test_every_trl_name_maps_to_a_valid_key():
    valid = {k for k, *_ in config.config_keys()}
    assert {key for key, _ in keyhints.TRL_KEYS.values()} <= valid


def test_find_recipe(tmp_path, monkeypatch):
    shipped = recipebook.find_recipe("sppo")
    assert shipped == ROOT / "src" / "sparring" / "recipes" / "sppo.yaml"
    assert load_config(shipped).method.name == "sppo"
    monkeypatch.chdir(tmp_path)  # outside the repository, as after `pip install sparring`
    assert recipebook.find_recipe("recipes/dpo.yaml") == shipped.parent / "dpo.yaml"
    assert recipebook.find_recipe("sppo-all").name == "sppo-all.yaml"
    mine = tmp_path / "sppo"
    mine.write_text("name: mine\n")
    assert recipebook.find_recipe("sppo") is None  # a file of that name here wins
    assert recipebook.find_recipe("elsewhere/sppo.yaml") is None
    assert recipebook.find_recipe("train.lr=1e-5") is None
    with pytest.raises(UserError, match=r"'spo' is neither a recipe file nor a shipped recipe; did you mean 'sppo'\?"):
        recipebook.find_recipe("spo")


# ------------------------------------------------------------------ commands


@pytest.fixture
def main(monkeypatch):
    return cli.main


def test_export_command(main, runs, tmp_path, capsys):
    assert main(["export", "--run", str(runs["sppo-all"]), "--out", str(tmp_path / "e")]) == 0
    assert "iter_0: " in capsys.readouterr().out and (tmp_path / "e" / "iter_0.jsonl").is_file()
    assert main(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "e2")]) == 2
    assert "is not a sparring run directory" in capsys.readouterr().err


def test_push_command_errors_exit_2(main, runs, tmp_path, capsys):
    assert main(["push", str(runs["sppo"]), "alice/x", "--iter", "5"]) == 2
    assert "iteration 5 has no trained policy (trained: 0, 1)" in capsys.readouterr().err
    assert main(["push", str(runs["sppo"]), "not-a-repo-id"]) == 2
    assert "must be ORG/NAME" in capsys.readouterr().err


def test_card_recipes_and_reference_commands(main, runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["spin"], run_dir)
    assert main(["card", "--run", str(run_dir)]) == 0
    assert "iter_0/policy/README.md" in capsys.readouterr().out
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^sppo +SPPO \(Wu et al\. 2024\)", listed, re.M)
    assert re.search(r"^sparring train-judge NAME:\ntrain-judge +Train a Bradley–Terry reward model", listed, re.M)
    assert main(["config-reference", "--out", str(tmp_path / "config.md")]) == 0
    assert (tmp_path / "config.md").read_text() == configdoc.config_reference()


def test_card_names_the_loss_modifiers_when_they_are_on(runs):
    cfg = yaml.safe_load((runs["sppo"] / "config.yaml").read_text())
    plain = cards.render_model_card(run_dir=runs["sppo"], iteration=0, cfg=cfg, summary=None)
    assert "LD-DPO" not in plain and "MADPO" not in plain
    cfg["method"] = {**cfg["method"], "ld_alpha": 0.5, "madpo": True, "madpo_c_max": 3.0}
    text = cards.render_model_card(run_dir=runs["sppo"], iteration=0, cfg=cfg, summary=None)
    assert "- **LD-DPO**: α = `0.5`:" in text
    assert "`madpo_c_max` = `3.0`, `madpo_c_min` = `0.5`" in text.split("- **MADPO**:")[1].splitlines()[0]
