"""DisCO (Li et al. 2025): the loss against hand-computed values, the positive/negative labels from a
judge's matrix, the rows, and a tiny-model 2-iteration run."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny import make_tiny_model, tiny_run_config

from sparring.config import MethodConfig, config_from_dict
from sparring.errors import UserError
from sparring.losses import LOSSES, disco
from sparring.methods import METHODS, PromptGroup, SeqLogp
from sparring.methods.disco import SLOTS, labels


def t(values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# question 0: positives a, b; negatives c, d, e.  question 1: all fail (skipped).  question 2: one of each.
# one padding entry (label −1) in question 2.
LOGP = [-4.0, -9.0, -6.0, -2.0, -10.0, -3.0, -5.0, -8.0, -1.0, -7.0]
REF = [-4.5, -8.0, -6.0, -2.5, -9.0, -3.0, -5.0, -8.2, -1.5, 0.0]
TOKENS = [2.0, 3.0, 2.0, 1.0, 5.0, 1.0, 1.0, 4.0, 1.0, 0.0]
LABEL = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0]
GROUP = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2]


def hand(beta, tau, delta):
    """The per-question losses and per-sample shares, written out from the formula."""
    s = [lp / max(n, 1.0) for lp, n in zip(LOGP, TOKENS)]  # −2, −3, −3, −2, −2, −3, −5, −2, −1, −∞·0
    out = [0.0] * len(LOGP)
    totals = {}
    for q in (0, 2):
        idx = [i for i, g in enumerate(GROUP) if g == q]
        pos = [i for i in idx if LABEL[i] == 1.0]
        neg = [i for i in idx if LABEL[i] == 0.0]
        lse = tau * math.log(sum(math.exp(s[i] / tau) for i in neg) / len(neg))
        kl = sum(REF[i] - LOGP[i] for i in pos + neg) / sum(TOKENS[i] for i in pos + neg)
        pen = beta * max(kl - delta, 0.0) ** 2
        for i in pos:
            out[i] = -s[i] / len(pos) + pen / (len(pos) + len(neg))
        for i in neg:
            out[i] = lse / len(neg) + pen / (len(pos) + len(neg))
        totals[q] = -sum(s[i] for i in pos) / len(pos) + lse + pen
    return out, totals


@pytest.mark.parametrize("beta,tau,delta", [(1000.0, 10.0, 1e-4), (2.0, 0.5, 0.0), (1.0, 1.0, 5.0)])
def test_disco_matches_hand_computation(beta, tau, delta):
    out = disco(t(LOGP), t(REF), t(TOKENS), t(LABEL), torch.tensor(GROUP), beta, tau, delta)
    expected, totals = hand(beta, tau, delta)
    torch.testing.assert_close(out, t(expected), rtol=1e-12, atol=1e-12)
    assert out[5:7].tolist() == [0.0, 0.0] and out[9] == 0.0  # the all-fail question and the padding
    assert float(out[:5].sum()) == pytest.approx(totals[0], rel=1e-12)
    assert float(out[7:].sum()) == pytest.approx(totals[2], rel=1e-12)


def test_disco_one_question_written_out():
    """One question, positive s = −1, negatives s = −2 and −4 (one token each), τ = 1, π_θ = π_old:
    loss = 1 + log((e^−2 + e^−4)/2), no penalty."""
    out = disco(
        t([-1.0, -2.0, -4.0]),
        t([-1.0, -2.0, -4.0]),
        t([1.0, 1.0, 1.0]),
        t([1.0, 0.0, 0.0]),
        t([7, 7, 7]),
        5.0,
        1.0,
        0.0,
    )
    assert float(out.sum()) == pytest.approx(1.0 + math.log((math.exp(-2) + math.exp(-4)) / 2), rel=1e-14)
    # the KL penalty: ref − logp = 0.1 per token, 0.3 nats over 3 tokens → KL = 0.1; β [0.1 − 0.02]² = 5 × 0.0064
    moved = disco(
        t([-1.0, -2.0, -4.0]),
        t([-0.9, -1.9, -3.9]),
        t([1.0, 1.0, 1.0]),
        t([1.0, 0.0, 0.0]),
        t([7, 7, 7]),
        5.0,
        1.0,
        0.02,
    )
    assert float(moved.sum()) == pytest.approx(
        1.0 + math.log((math.exp(-2) + math.exp(-4)) / 2) + 5 * 0.08**2, rel=1e-12
    )


def test_disco_gradient_raises_positives_and_lowers_the_negatives_by_their_softmax():
    logp = t([-2.0, -3.0, -6.0], grad=True)  # one token each: s = logp
    out = disco(logp, logp.detach().clone(), t([1.0, 1.0, 1.0]), t([1.0, 0.0, 0.0]), t([0, 0, 0]), 1.0, 2.0, 0.0)
    out.sum().backward()
    w = torch.softmax(t([-3.0, -6.0]) / 2.0, 0)  # ∂/∂s τ log mean exp(s/τ) = softmax(s/τ)
    torch.testing.assert_close(logp.grad, torch.cat([t([-1.0]), w]), rtol=1e-12, atol=1e-12)


def test_disco_is_finite_at_extreme_scores_and_in_float32():
    big = disco(
        t([-5000.0, -1.0, -9000.0]),
        t([-5000.0, -1.0, -9000.0]),
        t([1.0, 1.0, 1.0]),
        t([1.0, 0.0, 0.0]),
        t([0, 0, 0]),
        1.0,
        0.1,
        0.0,
    )
    assert torch.isfinite(big).all()
    args = (LOGP, REF, TOKENS, LABEL)
    out32 = disco(*(t(a, torch.float32) for a in args), torch.tensor(GROUP), 3.0, 2.0, 1e-3)
    out64 = disco(*(t(a) for a in args), torch.tensor(GROUP), 3.0, 2.0, 1e-3)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-6)


def test_disco_gradcheck():
    inputs = (t([-4.0, -9.0, -6.0, -2.0], grad=True), t([-4.5, -8.0, -6.2, -2.5], grad=True))

    def f(lp, ref):
        return disco(lp, ref, t([2.0, 3.0, 2.0, 1.0]), t([1.0, 0.0, 0.0, 1.0]), t([0, 0, 0, 0]), 0.7, 1.5, 0.01)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_disco_checks_its_arguments():
    ok = dict(
        logp=t([-1.0, -2.0]),
        ref_logp=t([-1.0, -2.0]),
        n_tokens=t([1.0, 1.0]),
        label=t([1.0, 0.0]),
        group=t([0, 0]),
        beta=1.0,
        tau=1.0,
        delta=0.0,
    )
    for key, bad, msg in [
        ("tau", 0.0, "tau must be a finite number > 0"),
        ("delta", -1.0, "delta must be a finite number >= 0"),
        ("beta", -1.0, "beta"),
        ("group", [0, 0], "group must be a torch.Tensor"),
        ("group", t([0, 0, 0]), "logp and group must have the same length, got logp: 2, group: 3"),
        ("label", t([[1.0, 0.0]]), "label must be 1-D"),
    ]:
        with pytest.raises(ValueError, match=msg):
            disco(**{**ok, key: bad})
    assert LOSSES["disco"] is disco


# ---------------------------------------------------------------------------------- the method


def bt(scores, tau=0.1):
    s = np.asarray(scores, dtype=float)
    return 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :]) / tau))


def test_labels_are_pass_and_fail_for_a_binary_judge_and_best_vs_rest_for_a_graded_one():
    assert labels(bt([1, 0, 1, 0])).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert labels(bt([0.5, 1.0, 0.0, 1.0])).tolist() == [0.0, 1.0, 0.0, 1.0]  # graded: the best score
    assert labels(np.full((3, 3), 0.5)).tolist() == [1.0, 1.0, 1.0]  # all tied


def group(prefs, pid="p"):
    k = len(prefs)
    return PromptGroup(pid, [1, 2], [[10 + i] * (i + 1) for i in range(k)], -np.arange(1.0, k + 1), prefs)


def test_rows_hold_a_group_in_slots_and_skip_all_pass_and_all_fail():
    m = METHODS["disco"]
    rows = m.rows(
        [group(bt([1, 0, 1, 0]), "a"), group(bt([1, 1, 1, 1]), "pass"), group(bt([0, 0, 0, 0]), "fail")],
        MethodConfig(name="disco"),
    )
    (row,) = rows
    assert row["prompt_id"] == "a" and (row["positives"], row["negatives"]) == (2, 2)
    assert [row[f"y{s}_ids"] for s in range(5)] == [[10], [11, 11], [12, 12, 12], [13, 13, 13, 13], []]
    assert [row[f"label_y{s}"] for s in range(5)] == [1.0, 0.0, 1.0, 0.0, -1.0]
    assert all(math.isnan(row[f"ref_logp_y{s}"]) for s in range(4)) and row["ref_logp_y4"] == 0.0
    assert [name for name, _ in m.columns][:4] == ["prompt_id", "prompt_ids", "positives", "negatives"]
    assert len(m.sequences) == SLOTS
    with pytest.raises(UserError, match=f"generation.k = {SLOTS + 1}: method 'disco' holds at most {SLOTS}"):
        m.rows([group(bt([1] + [0] * SLOTS))], MethodConfig(name="disco"))
    assert [d.k for d in m.draws(SLOTS, MethodConfig(name="disco"))] == [SLOTS]


def test_more_samples_than_a_row_holds_is_refused_with_the_config():
    """Before any sampling: the config check names the file, the key and the limit."""
    from sparring.config import config_from_dict

    with pytest.raises(UserError, match=rf"^my.yaml: generation.k = {SLOTS + 1}: method 'disco' holds at most {SLOTS}"):
        config_from_dict({"method": {"name": "disco"}, "generation": {"k": SLOTS + 1}}, "my.yaml")
    assert config_from_dict({"method": {"name": "disco"}, "generation": {"k": SLOTS}}).generation.k == SLOTS


def test_the_method_loss_is_the_sum_of_a_rows_shares():
    m = METHODS["disco"]
    cfg = MethodConfig(name="disco", beta=1000.0, disco_tau=10.0, disco_delta=1e-4)
    logp = torch.tensor([[-4.0, -9.0, -6.0] + [0.0] * (SLOTS - 3), [-1.0, -2.0, -3.0] + [0.0] * (SLOTS - 3)])
    n = torch.tensor([[2, 3, 2] + [0] * (SLOTS - 3), [1, 1, 1] + [0] * (SLOTS - 3)])
    ref = logp - 0.01 * n
    lab = torch.tensor([[1.0, 0.0, 0.0] + [-1.0] * (SLOTS - 3), [0.0, 1.0, 0.0] + [-1.0] * (SLOTS - 3)])
    lps = {f"y{s}": SeqLogp(logp[:, s], n[:, s]) for s in range(SLOTS)}
    batch = {**{f"ref_logp_y{s}": ref[:, s] for s in range(SLOTS)}, **{f"label_y{s}": lab[:, s] for s in range(SLOTS)}}
    got = m.loss(lps, batch, cfg)
    assert got.shape == (2,)
    for b in range(2):
        one = disco(logp[b, :3], ref[b, :3], n[b, :3].float(), lab[b, :3], torch.zeros(3), 1000.0, 10.0, 1e-4)
        assert float(got[b]) == pytest.approx(float(one.sum()), rel=1e-6)


def test_disco_takes_no_pair_modifiers():
    for over in ({"pairs": "all"}, {"madpo": True}, {"ld_alpha": 0.5}):
        with pytest.raises(UserError, match="disco"):
            config_from_dict({"method": {"name": "disco", **over}})


def test_a_tiny_two_iteration_disco_run(tmp_path):
    """Judged by length (tests/lengthjudge.py): with K = 4 samples of different lengths the longest one is
    the positive; every other prompt (ties aside) has a row, and training moves the policy."""
    from sparring.loop import make_context, open_run, run

    model = make_tiny_model(tmp_path / "model", seed=2)
    raw = tiny_run_config(
        model,
        tmp_path / "runs",
        "disco",
        **{
            "method": {"name": "disco", "beta": 1000.0, "disco_tau": 10.0, "disco_delta": 1e-4},
            "judge": {"name": "python", "function": "lengthjudge:by_length"},
            "generation.k": 4,
        },
    )
    cfg = config_from_dict(raw)
    rd = open_run(cfg, tmp_path / "runs" / "disco")
    summary = run(make_context(cfg, rd, progress=False))
    assert [r["iteration"] for r in summary["iterations"]] == [0, 1, 2]
    for it in range(2):
        rows = pq.read_table(rd.root / f"iter_{it}" / "train.parquet").to_pylist()
        samples = pq.read_table(rd.root / f"iter_{it}" / "samples.parquet").to_pylist()
        assert rows, "no DisCO rows"
        for r in rows:
            mine = sorted((s for s in samples if s["prompt_id"] == r["prompt_id"]), key=lambda s: s["sample_index"])
            longest = max(len(s["response"]) for s in mine)
            assert [r[f"label_y{k}"] for k in range(4)] == [float(len(s["response"]) == longest) for s in mine]
            assert [r[f"y{k}_ids"] for k in range(4)] == [s["response_ids"] for s in mine]
    losses = [
        m for m in map(__import__("json").loads, (rd.root / "metrics.jsonl").read_text().splitlines()) if "loss" in m
    ]
    assert losses and all(math.isfinite(m["loss"]) for m in losses)
    assert (rd.root / "iter_1" / "policy" / "model.safetensors").is_file()

    # the first optimizer step, before any update (π_θ = π_0, KL = 0): the mean over its rows of
    # −mean_P s + τ log mean_N exp(s/τ), computed here from π_0's own log-probs of each slot's response
    from sparring.models import load_model
    from sparring.stages.context import stage_seed
    from sparring.train import _batches, sequence_logps

    rows = pq.read_table(rd.root / "iter_0" / "train.parquet").to_pylist()
    first = next(_batches(len(rows), cfg.train.batch_size, cfg.train.epochs, stage_seed(cfg.seed, "train", 0) % 2**31))
    pi0 = load_model(str(model), "float32").eval()
    expected = []
    for r in (rows[i] for i in first):
        k = sum(r[f"label_y{s}"] >= 0 for s in range(SLOTS))
        with torch.no_grad():
            out = sequence_logps(pi0, [r["prompt_ids"]] * k, [r[f"y{s}_ids"] for s in range(k)], 0)
        s = (out.logp.double() / out.n_tokens.double()).tolist()
        pos = [x for x, s_ in zip(s, range(k)) if r[f"label_y{s_}"] == 1.0]
        neg = [x for x, s_ in zip(s, range(k)) if r[f"label_y{s_}"] == 0.0]
        expected.append(-sum(pos) / len(pos) + 10.0 * math.log(sum(math.exp(x / 10.0) for x in neg) / len(neg)))
    step0 = next(m for m in losses if m.get("stage") == "iter_0/train" and m.get("step") == 0)
    assert step0["loss"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
