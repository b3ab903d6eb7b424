"""`sparring report`: the page of a run (finished, killed, of an earlier version, damaged) and of a game,
checked by parsing its HTML and in a real headless browser (Chromium through selenium)."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_loop import run_config, tiny_config
from tiny import make_tiny_model

from sparring.errors import UserError
from sparring.report import build_report, game_report
from sparring.report.run import fmt_value

SECTIONS = ("status", "evaluation", "lengths", "training", "judge", "samples", "timings")
PNG = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>alert("x")</script><img src=nowhere onerror=alert(1)> & "quotes"'


# ------------------------------------------------------------------ a tiny run, built once


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """Two SPPO iterations of a tiny random model on prompts it sometimes satisfies ("fewer than 2
    words", "no comma"), so the judge tells samples apart, training takes steps and the verdicts vary.
    Sampled evaluation: the tiny model's greedy responses are all empty, which would make every
    held-out verdict a tie."""
    tmp = tmp_path_factory.mktemp("report")
    model = make_tiny_model(tmp / "model")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {
                    "key": i,
                    "prompt": f"Say {i}.",
                    "instruction_id_list": ["length_constraints:number_words", "punctuation:no_comma"],
                    "kwargs": [{"num_words": 2, "relation": "less than"}, {}],
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    cfg = tiny_config(
        model,
        tmp / "runs",
        **{
            "prompts.train": str(prompts),
            "prompts.heldout": str(prompts),
            "prompts.per_iteration": 8,
            "eval.limit": None,
            "eval.max_new_tokens": 8,
            "eval.greedy": False,
        },
    )
    rd, _ = run_config(cfg)
    return rd.root


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.html"))
    return dst


# ------------------------------------------------------------------ reading the page


class Page(HTMLParser):
    """Every element with its attributes and its text (the text of the elements inside it included)."""

    VOID = {"img", "br", "meta", "link", "input", "hr"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(el)
        if tag not in self.VOID:
            self._open.append(el)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self._open:
            el["text"] += data

    def find(self, tag=None, **attrs) -> list[dict]:
        def ok(el):
            return (tag is None or el["tag"] == tag) and all(
                (k.replace("_", "-") in el["attrs"]) if v is True else el["attrs"].get(k.replace("_", "-")) == v
                for k, v in attrs.items()
            )

        return [el for el in self.elements if ok(el)]

    def section(self, sid: str) -> str:
        (el,) = self.find("section", id=sid)
        return el["text"]


def eval_cells(page: Page) -> dict[tuple[int, str], dict]:
    (table,) = page.find("table", id="eval-table")
    start = page.elements.index(table)
    cells = {}
    for el in page.elements[start:]:
        if el["tag"] == "td" and "data-metric" in el["attrs"]:
            cells[(int(el["attrs"]["data-iteration"]), el["attrs"]["data-metric"])] = el
        if el["tag"] == "section":
            break
    return cells


def check_eval_numbers(page: Page, rows: list[dict]) -> None:
    """Every metric of every iteration on the page is the one in `rows` (summary.json's layout): the
    full value in data-value, the rounded one as text, and the interval and the difference from the base."""
    cells = eval_cells(page)
    metrics = {k for r in rows for k, v in r.items() if k in METRICS and v is not None}
    assert {(r["iteration"], m) for r in rows for m in metrics} == set(cells)
    for r in rows:
        for m in metrics:
            el, v = cells[(r["iteration"], m)], r[m]
            if v is None:
                assert el["attrs"]["data-value"] == "" and "—" in el["text"]
                continue
            assert float(el["attrs"]["data-value"]) == v
            assert fmt_value(m, v) in el["text"]
            iv = (r.get("intervals") or {}).get(m)
            if iv:
                assert [float(el["attrs"]["data-ci-lo"]), float(el["attrs"]["data-ci-hi"])] == iv["ci95"]
                if "delta" in iv:
                    assert float(el["attrs"]["data-delta"]) == iv["delta"]
                    assert el["attrs"]["data-significant"] == str(iv["significant"]).lower()


METRICS = (
    "prompt_strict",
    "instruction_strict",
    "prompt_loose",
    "instruction_loose",
    "win_rate_vs_base",
    "length_controlled_win_rate",
    "win_rate_vs_reference",
    "mean_response_tokens",
)


def check_self_contained(html: str, page: Page) -> None:
    assert "<script" not in html.lower()
    for img in page.find("img"):
        src = img["attrs"]["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    for el in page.find("link"):
        assert el["attrs"]["href"].startswith("data:")
    assert not page.find(data_section_error=True), [el["text"] for el in page.find(data_section_error=True)]


# ------------------------------------------------------------------ a finished run


def test_summary_metrics_are_the_loops():
    """The loop's summary, the report and `share` read one definition of the metrics."""
    from sparring import metrics
    from sparring.report import analysis

    assert analysis.SUMMARY_METRICS is metrics.SUMMARY_METRICS
    assert metrics.SUMMARY_METRICS == METRICS
    assert list(metrics.summary_row({})) == [*METRICS, "intervals"]  # the loop's and share's rows


def test_finished_run_report_has_every_section_and_the_summary_numbers(finished_run):
    out = build_report(finished_run)
    assert out == finished_run / "report.html"
    html = out.read_text()
    page = Page(html)
    check_self_contained(html, page)
    for sid in SECTIONS:
        assert len(page.find("section", id=sid)) == 1, sid
    for sid in ("evaluation", "lengths", "training", "judge", "timings"):
        start = page.elements.index(page.find("section", id=sid)[0])
        nxt = next(
            (i for i, el in enumerate(page.elements[start + 1 :], start + 1) if el["tag"] == "section"),
            len(page.elements),
        )
        assert any(el["tag"] == "img" for el in page.elements[start:nxt]), f"section {sid} has no figure"
    assert page.find("div", data_complete="true")
    summary = json.loads((finished_run / "summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == [0, 1, 2]
    check_eval_numbers(page, summary["iterations"])
    # the run's own intervals are shown, none recomputed
    assert not page.find(data_interval_source="report")
    manifest = json.loads((finished_run / "manifest.json").read_text())["stages"]
    for key, e in manifest.items():
        (cell,) = page.find("td", data_stage=key)
        assert float(cell["attrs"]["data-seconds"]) == e["seconds"] and cell["attrs"]["data-status"] == "done"
    steps = page.find("td", data_steps=True)
    ties, computed = page.find("td", data_diag="tie_rate"), page.find("td", data_diag="tie_rate_computed")
    for t in range(2):
        assert int(steps[t]["attrs"]["data-steps"]) == manifest[f"iter_{t}/train"]["metrics"]["steps"]
        recorded = manifest[f"iter_{t}/judge"]["metrics"]["tie_rate"]
        assert float(ties[t]["attrs"]["data-value"]) == recorded
        # the tie rate the report computes from preferences.parquet is the judge stage's own
        assert float(computed[t]["attrs"]["data-value"]) == pytest.approx(recorded)
    assert sum(manifest[f"iter_{t}/train"]["metrics"]["steps"] for t in range(2)) > 0, "the run should train"
    # the samples: six held-out prompts (of 8), base and final side by side, with IFEval verdicts and P(final > base)
    examples = page.find("div", data_prompt_index=True)
    assert len(examples) == 6
    final = pq.read_table(finished_run / "iter_1" / "eval" / "scores.parquet").to_pydict()
    for ex in examples:
        i = int(ex["attrs"]["data-prompt-index"])
        assert float(ex["attrs"]["data-win"]) == final["win_vs_base"][i]
    checks = page.find("li", data_check=True)
    assert checks and {c["attrs"]["data-check"] for c in checks} == {
        "length_constraints:number_words",
        "punctuation:no_comma",
    }
    assert page.find("div", data_train_iteration="0") and page.find("div", data_train_iteration="1")
    assert "config.yaml" in page.section("timings") and "per_iteration: 8" in page.section("timings")
    assert page.find("tr", data_kind="length_constraints:number_words")


def test_recomputed_ifeval_results_equal_the_runs(finished_run):
    """The report's per-instruction IFEval results (recomputed from responses.jsonl) give exactly the
    per-prompt columns the evaluation stored in scores.parquet."""
    from sparring.report import analysis, rundata

    ev = analysis.load_evaluation(rundata.load(finished_run))
    assert [p.t for p in ev.policies] == [0, 1, 2]
    for p in ev.policies:
        mine = analysis.ifeval_columns(p.ifeval)
        for k, v in mine.items():
            assert np.array_equal(v, np.asarray(p.scores[k])), (p.key, k)


def test_summary_recomputes_intervals_for_a_run_of_an_earlier_version(finished_run, tmp_path):
    """A run made before scores.parquet, alpaca_eval.json, intervals and judge diagnostics existed: the
    report recomputes the intervals (paired bootstrap, 1000 resamples, seed 0) and they are the ones
    the current evaluation records for the same responses."""
    root = copy_run(finished_run, tmp_path / "old")
    recorded = json.loads((root / "summary.json").read_text())
    for d in [root / "base" / "eval", root / "iter_0" / "eval", root / "iter_1" / "eval"]:
        (d / "scores.parquet").unlink()
        (d / "alpaca_eval.json").unlink()
        m = json.loads((d / "metrics.json").read_text())
        m.pop("intervals")
        (d / "metrics.json").write_text(json.dumps(m))
    man = json.loads((root / "manifest.json").read_text())
    for key, e in man["stages"].items():
        e.get("metrics", {}).pop("intervals", None)
        for k in ("tie_rate", "length_spearman"):
            e.get("metrics", {}).pop(k, None)
        e["outputs"] = {rel: h for rel, h in e["outputs"].items() if (root / rel).exists()}
    (root / "manifest.json").write_text(json.dumps(man))
    old = json.loads(json.dumps(recorded))
    old.pop("metrics")
    for r in old["iterations"]:
        r.pop("intervals")
    (root / "summary.json").write_text(json.dumps(old))

    html = build_report(root).read_text()
    page = Page(html)
    check_self_contained(html, page)
    check_eval_numbers(page, old["iterations"])
    cells = eval_cells(page)
    for r in recorded["iterations"]:
        for m, iv in r["intervals"].items():
            el = cells[(r["iteration"], m)]
            assert el["attrs"]["data-interval-source"] == "report"
            assert [float(el["attrs"]["data-ci-lo"]), float(el["attrs"]["data-ci-hi"])] == pytest.approx(iv["ci95"])
            if "delta" in iv:
                assert float(el["attrs"]["data-delta-lo"]) == pytest.approx(iv["delta_ci95"][0])
                assert float(el["attrs"]["data-delta-hi"]) == pytest.approx(iv["delta_ci95"][1])
    assert "computed by the report" in page.section("evaluation")
    assert "no judge diagnostics" in page.section("judge")
    assert "in characters" in page.section("lengths")
    # the per-prompt verdicts against the base, recomputed with the IFEval judge, are shown with the examples
    assert page.find("div", data_win=True)


def test_chat_run_with_a_python_judge(tmp_path, monkeypatch):
    """A run without IFEval (chat prompts, a judge preferring longer responses): win rates only, no
    instruction checks, and the judge's length bias in its diagnostics."""
    (tmp_path / "lenjudge.py").write_text(
        "def by_length(messages, responses):\n    return [len(r) for r in responses]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = make_tiny_model(tmp_path / "model")
    judge = {"name": "python", "function": "lenjudge:by_length"}
    cfg = tiny_config(
        model,
        tmp_path / "runs",
        iterations=1,
        judge=judge,
        **{
            "prompts.train": "shipped:chat-train",
            "prompts.heldout": "shipped:chat-heldout",
            "eval.greedy": False,
            "eval.max_new_tokens": 8,
        },
    )
    rd, _ = run_config(cfg)
    html = build_report(rd.root).read_text()
    page = Page(html)
    check_self_contained(html, page)
    summary = json.loads((rd.root / "summary.json").read_text())
    assert summary["metrics"] == ["win_rate", "length_controlled"]
    check_eval_numbers(page, summary["iterations"])
    assert {m for _, m in eval_cells(page)} == {
        "win_rate_vs_base",
        "length_controlled_win_rate",
        "mean_response_tokens",
    }
    assert not page.find("li", data_check=True) and not page.find("table", id="kind-table")
    wins = pq.read_table(rd.root / "iter_0" / "eval" / "scores.parquet").column("win_vs_base").to_pylist()
    shown = page.find("div", data_prompt_index=True)
    assert len(shown) == 4  # eval.limit: 4 held-out prompts, all shown
    # the prompts shown are those the judge split most: |P - 1/2| never grows down the page
    gaps = [abs(float(ex["attrs"]["data-win"]) - 0.5) for ex in shown]
    assert gaps == sorted(gaps, reverse=True) and sorted(gaps) == sorted(abs(w - 0.5) for w in wins)
    (spearman,) = page.find("td", data_diag="length_spearman")
    assert (
        float(spearman["attrs"]["data-value"]) == rd.manifest()["stages"]["iter_0/judge"]["metrics"]["length_spearman"]
    )


# ------------------------------------------------------------------ a killed run


def test_killed_run_renders_and_names_the_missing_stages(finished_run, tmp_path):
    root = copy_run(finished_run, tmp_path / "killed")
    # killed while training iteration 1: its eval never ran, its train stage is recorded as running
    shutil.rmtree(root / "iter_1" / "eval")
    shutil.rmtree(root / "iter_1" / "policy")
    (root / "summary.json").unlink()
    man = json.loads((root / "manifest.json").read_text())
    del man["stages"]["iter_1/eval"]
    man["stages"]["iter_1/train"] = {"status": "running", "started_at": 1.7e9}
    (root / "manifest.json").write_text(json.dumps(man))
    lines = (root / "metrics.jsonl").read_text().splitlines()
    keep = [
        ln
        for ln in lines
        if json.loads(ln)["stage"] not in ("iter_1/eval",)
        and not (json.loads(ln)["stage"] == "iter_1/train" and "step" not in json.loads(ln))
    ]
    (root / "metrics.jsonl").write_text("\n".join(keep) + '\n{"time": 1.7e9, "stage": "iter_1/tr')  # a cut line

    html = build_report(root).read_text()
    page = Page(html)
    check_self_contained(html, page)
    assert page.find("div", data_complete="false")
    missing = {el["attrs"]["data-stage"]: el["attrs"]["data-status"] for el in page.find("li", data_stage=True)}
    assert missing == {"iter_1/train": "running", "iter_1/eval": "missing"}
    assert "iter_1/train" in page.section("status") and "iter_1/eval" in page.section("status")
    # the evaluated policies' numbers come from the manifest, as no summary.json was written
    rows = [
        {
            "iteration": t,
            **{k: man["stages"][key]["metrics"].get(k) for k in METRICS},
            "intervals": man["stages"][key]["metrics"]["intervals"],
        }
        for t, key in ((0, "base/eval"), (1, "iter_0/eval"))
    ]
    rows[0]["win_rate_vs_base"] = 0.5
    check_eval_numbers(page, rows)
    assert "metrics.jsonl" in page.section("status") and "line" in page.section("status")
    timing = {el["attrs"]["data-stage"]: el["attrs"]["data-status"] for el in page.find("td", data_stage=True)}
    assert timing["iter_1/train"] == "running" and timing["iter_1/eval"] == "missing"
    assert timing["iter_1/judge"] == "done"


def test_restarted_training_keeps_its_last_attempt(finished_run, tmp_path):
    from sparring.report import analysis, rundata

    root = copy_run(finished_run, tmp_path / "restarted")
    lines = (root / "metrics.jsonl").read_text().splitlines()
    steps0 = [ln for ln in lines if json.loads(ln).get("stage") == "iter_0/train" and "step" in json.loads(ln)]
    first = lines.index(steps0[0])
    # an attempt killed after two steps, logged before the attempt that finished
    killed = [json.dumps({**json.loads(ln), "loss": 99.0}) for ln in steps0[:2]]
    (root / "metrics.jsonl").write_text("\n".join(lines[:first] + killed + lines[first:]) + "\n")
    segs = analysis.train_segments(rundata.load(root))
    seg0 = next(s for s in segs if s.t == 0)
    assert seg0.restarted and len(seg0.steps) == len(steps0) and 99.0 not in seg0.loss
    assert "restarted" in Page(build_report(root).read_text()).section("training")


# ------------------------------------------------------------------ bad input


def cli(argv: list[str], monkeypatch) -> int:
    """`sparring ARGV` through the real CLI entry, with the report subcommand registered."""
    import sparring.cli

    monkeypatch.setattr(
        sparring.cli, "COMMAND_MODULES", list(dict.fromkeys([*sparring.cli.COMMAND_MODULES, "sparring.report.cli"]))
    )
    return sparring.cli.main(argv)


def test_not_a_run_directory_is_a_user_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    for path, words in (
        (tmp_path, "not a sparring run directory"),
        (tmp_path / "nope", "no such run directory"),
        (tmp_path / "notes.txt", "not a directory"),
    ):
        with pytest.raises(UserError, match=words):
            build_report(path)
        assert cli(["report", str(path)], monkeypatch) == 2
        err = capsys.readouterr().err
        assert words in err and str(path) in err and "Traceback" not in err
    from sparring.report.cli import main

    assert main([str(tmp_path)]) == 2
    assert "not a sparring run directory" in capsys.readouterr().err


def test_corrupted_manifest_renders_and_says_so(finished_run, tmp_path, monkeypatch, capsys):
    root = copy_run(finished_run, tmp_path / "corrupt")
    (root / "manifest.json").write_text('{"format": 1, "stages": {"base/ev')
    assert cli(["report", str(root), "--out", str(tmp_path / "r.html")], monkeypatch) == 0
    assert "report:" in capsys.readouterr().out
    html = (tmp_path / "r.html").read_text()
    page = Page(html)
    check_self_contained(html, page)
    status = page.section("status")
    assert "manifest.json is corrupted" in status and "Stage status unknown" in status
    # the stages metrics.jsonl logs as finished are still shown, with the summary's numbers
    check_eval_numbers(page, json.loads((root / "summary.json").read_text())["iterations"])


def test_missing_metrics_log_and_damaged_files_are_named(finished_run, tmp_path):
    root = copy_run(finished_run, tmp_path / "damaged")
    (root / "metrics.jsonl").unlink()
    (root / "summary.json").write_text("[1, 2")
    (root / "iter_0" / "preferences.parquet").write_bytes(b"not parquet")
    (root / "config.yaml").write_text("name: [unclosed\n")
    html = build_report(root).read_text()
    page = Page(html)
    check_self_contained(html, page)
    status, training = page.section("status"), page.section("training")
    assert "metrics.jsonl is missing" in status and "metrics.jsonl" in training
    assert "summary.json" in status and "preferences.parquet" in status and "config.yaml" in status
    # without summary.json the numbers are the manifest's
    man = json.loads((root / "manifest.json").read_text())["stages"]
    assert (
        float(eval_cells(page)[(2, "prompt_strict")]["attrs"]["data-value"])
        == man["iter_1/eval"]["metrics"]["prompt_strict"]
    )
    # a config that does not parse is still shown as it is (the problems above say it does not parse)
    assert "name: [unclosed" in page.section("timings")


def test_a_section_that_fails_is_named_and_the_others_render(finished_run, tmp_path, monkeypatch):
    import sparring.report.run as report_run

    def broken(*args):
        raise RuntimeError("preferences in a shape nobody foresaw")

    monkeypatch.setattr(report_run, "section_judge", broken)
    page = Page(build_report(finished_run, tmp_path / "r.html").read_text())
    (err,) = page.find(data_section_error=True)
    assert "RuntimeError: preferences in a shape nobody foresaw" in err["text"]
    assert err in [el for el in page.elements[page.elements.index(page.find("section", id="judge")[0]) :]]
    check_eval_numbers(page, json.loads((finished_run / "summary.json").read_text())["iterations"])
    assert page.find("table", id="timing-table")


def test_every_text_from_the_run_is_escaped(finished_run, tmp_path):
    root = copy_run(finished_run, tmp_path / "evil")
    path = root / "base" / "eval" / "responses.jsonl"
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    lines = [{"prompt": p["prompt"], "response": EVIL} for p in lines]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    scores = pq.read_table(root / "base" / "eval" / "scores.parquet").to_pydict()
    scores["response"] = [EVIL] * len(scores["response"])
    pq.write_table(pa.table(scores), root / "base" / "eval" / "scores.parquet")
    (root / "config.yaml").write_text((root / "config.yaml").read_text() + "# </pre><script>bad()</script>\n")
    html = build_report(root).read_text()
    assert "<script" not in html and "onerror=alert(1)>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;/pre&gt;&lt;script&gt;bad()" in html
    page = Page(html)
    assert any(EVIL in el["text"] for el in page.find("pre"))


def test_report_out_path_and_unwritable_destination(finished_run, tmp_path):
    out = build_report(finished_run, tmp_path / "deep" / "dir" / "page.html")
    assert out == tmp_path / "deep" / "dir" / "page.html" and out.stat().st_size > 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="could not write"):
        build_report(finished_run, blocker / "page.html")
    with pytest.raises(UserError, match="it is a directory"):
        build_report(finished_run, tmp_path)


# ------------------------------------------------------------------ the game laboratory


@pytest.fixture(scope="module")
def game_results(tmp_path_factory) -> tuple[Path, Path]:
    from sparring.cli import main

    tmp = tmp_path_factory.mktemp("game")
    assert (
        main(
            [
                "game",
                "--matrix",
                "rps",
                "--compare",
                "sppo,omwu,nash-md",
                "--beta",
                "0.1",
                "--iters",
                "60",
                "--eta",
                "0.5",
                "--out",
                str(tmp / "cmp.json"),
                "--plot",
                str(tmp / "cmp.png"),
            ]
        )
        == 0
    )
    return tmp / "cmp.json", tmp / "cmp.png"


def test_game_report_shows_the_results_numbers(game_results, tmp_path):
    results, plot = game_results
    out = game_report(results, [plot])
    assert out == results.with_suffix(".html")
    html = out.read_text()
    page = Page(html)
    check_self_contained(html, page)
    data = json.loads(results.read_text())
    for algo, r in data["runs"].items():
        (row,) = page.find("tr", data_algo=algo)
        i = page.elements.index(row)
        cells = {el["attrs"]["data-key"]: el for el in page.elements[i : i + 6] if "data-key" in el["attrs"]}
        for key in ("exploitability", "avg_exploitability"):
            assert float(cells[key]["attrs"]["data-value"]) == r[key]
            assert f"{r[key]:.3e}" in cells[key]["text"]
        if "regularized_gap" in r:
            assert float(cells["regularized_gap"]["attrs"]["data-value"]) == r["regularized_gap"]
    (nash,) = page.find("td", data_key="nash_exploitability")
    assert float(nash["attrs"]["data-value"]) == data["nash_exploitability"]
    assert [float(el["attrs"]["data-nash"]) for el in page.find("td", data_nash=True)] == data["nash"]
    # our three figures and the command's plot, embedded byte for byte
    srcs = [el["attrs"]["src"] for el in page.find("img")]
    assert len(srcs) == 4 and "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode() in srcs
    # from the dict the command holds, to a path it names
    single = game_report(
        {**data["runs"]["sppo"], "matrix": data["matrix"], "nash": data["nash"]}, out=tmp_path / "one.html"
    )
    assert page.find("section", id="settings") and single.is_file()


def test_game_report_embeds_svg_plots(game_results, tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "plot.svg")
    page = Page(game_report(game_results[0], [tmp_path / "plot.svg"], tmp_path / "g.html").read_text())
    srcs = [el["attrs"]["src"] for el in page.find("img")]
    assert sum(s.startswith("data:image/svg+xml;base64,") for s in srcs) == 1


def test_game_report_bad_input(game_results, tmp_path):
    results, plot = game_results
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "other.json").write_text(json.dumps({"matrix": [[0.5]]}))
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "plot.pdf").write_bytes(b"%PDF-1.4\n%...")
    cases = [
        (lambda: game_report(tmp_path / "absent.json"), "no such results file"),
        (lambda: game_report(tmp_path / "bad.json"), "cannot be read as JSON"),
        (lambda: game_report(tmp_path / "other.json"), "not a `sparring game` results file"),
        (lambda: game_report(results, [tmp_path / "fake.png"]), "not a PNG, JPEG or SVG image"),
        (lambda: game_report(results, [tmp_path / "plot.pdf"]), "not a PNG, JPEG or SVG image"),
        (lambda: game_report(results, [tmp_path / "gone.png"]), "cannot read the plot"),
        (lambda: game_report(json.loads(results.read_text())), "give `out`"),
    ]
    for fn, words in cases:
        with pytest.raises(UserError, match=words):
            fn()


# ------------------------------------------------------------------ in a real browser


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium); the report's browser check needs it")
    if not chromium or not driver:
        pytest.skip(
            "no headless Chromium here: apt-get install -y chromium chromium-driver "
            "(the report's browser check drives it through selenium)"
        )
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
    ):
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver and the browser are given: selenium's manager must not look for (or download) either
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    yield drv
    drv.quit()


def open_page(drv, path: Path, shot: Path) -> dict:
    """Load `path` from disk; its console messages, its images' natural widths, and a full-page screenshot."""
    drv.get(path.resolve().as_uri())
    drv.get_log("browser")  # nothing before this page
    drv.refresh()
    ready = drv.execute_script("return document.readyState")
    widths = drv.execute_script("return Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
    height = drv.execute_script("return document.documentElement.scrollHeight")
    png = drv.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
        },
    )
    shot.write_bytes(base64.b64decode(png["data"]))
    return {"ready": ready, "widths": widths, "log": drv.get_log("browser"), "height": height}


def check_screenshot(path: Path, min_height: int) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(PNG)
    with Image.open(path) as im:
        w, h = im.size
        assert w == 1280 and h >= min_height
        px = np.asarray(im.convert("L"))
    # a rendered page: a white background with text and figures on it (many grey levels, some ink)
    ink = (px < 200).mean()
    assert px.std() > 10 and len(np.unique(px)) > 50 and 0.01 < ink < 0.5, (px.std(), ink)


def test_report_in_a_headless_browser(browser, finished_run, game_results, tmp_path):
    out = build_report(finished_run, tmp_path / "report.html")
    n_img = len(Page(out.read_text()).find("img"))
    got = open_page(browser, out, tmp_path / "report.png")
    assert got["ready"] == "complete"
    assert len(got["widths"]) == n_img >= 5 and all(w > 0 for w in got["widths"]), got["widths"]
    assert [e for e in got["log"] if e["level"] in ("SEVERE", "ERROR")] == []
    check_screenshot(tmp_path / "report.png", min_height=2000)
    # the numbers as the browser reads them from the rendered page
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('#eval-table td[data-metric]'), td => "
        "[+td.dataset.iteration, td.dataset.metric, td.dataset.value, td.querySelector('.value').innerText])"
    )
    summary = json.loads((finished_run / "summary.json").read_text())
    expected = {
        (r["iteration"], m): r[m]
        for r in summary["iterations"]
        for m in METRICS
        if any(x[m] is not None for x in summary["iterations"])
    }
    assert {(t, m) for t, m, _, _ in cells} == set(expected)
    for t, m, value, text in cells:
        v = expected[(t, m)]
        assert (value == "" and v is None and text == "—") or (float(value) == v and text == fmt_value(m, v))
    sections = browser.execute_script("return Array.from(document.querySelectorAll('section'), s => s.id)")
    assert sections == list(SECTIONS)

    g = game_report(game_results[0], [game_results[1]], tmp_path / "game.html")
    got = open_page(browser, g, tmp_path / "game.png")
    assert got["widths"] and all(w > 0 for w in got["widths"])
    assert [e for e in got["log"] if e["level"] in ("SEVERE", "ERROR")] == []
    check_screenshot(tmp_path / "game.png", min_height=1000)


def test_killed_run_in_a_headless_browser(browser, finished_run, tmp_path):
    root = copy_run(finished_run, tmp_path / "killed")
    shutil.rmtree(root / "iter_1")
    (root / "summary.json").unlink()
    man = json.loads((root / "manifest.json").read_text())
    man["stages"] = {k: v for k, v in man["stages"].items() if not k.startswith("iter_1/")}
    (root / "manifest.json").write_text(json.dumps(man))
    got = open_page(browser, build_report(root), tmp_path / "killed.png")
    assert got["widths"] and all(w > 0 for w in got["widths"])
    assert [e for e in got["log"] if e["level"] in ("SEVERE", "ERROR")] == []
    missing = browser.execute_script(
        "return Array.from(document.querySelectorAll('#missing-stages li'), li => li.dataset.stage)"
    )
    assert missing == [f"iter_1/{s}" for s in ("generate", "judge", "rows", "train", "eval")]
    check_screenshot(tmp_path / "killed.png", min_height=1000)
