"""`judge.name=gpm`, the General Preference Model: its formulas against hand-computed values, the judge
against a hand computation on a tiny Llama (float64, 1e-12), one forward pass per response, the released
checkpoint layout (sharded too), its refusals, and a rock–paper–scissors set that a GPM head fits and a
Bradley–Terry head cannot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import make_tokenizer

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.judges import build_judge
from sparring.judges.cache import CachedJudge
from sparring.judges.gpm import GPMJudge, embed, pair_scores, preference_matrix, prompt_weights
from sparring.records import user_prompt

HIDDEN = 32


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def write_gpm(path: Path, *, k: int = 2, prompt_head: bool = True, seed: int = 0, shards: bool = False, drop=()):
    """A tiny GPM checkpoint in the released layout: config.json, tokenizer, and the weights `model.*`
    (backbone), `lm_head.weight`, `value_head.weight` [2k, H], optionally `prompt_head.weight` [k, H]
    (one model.safetensors, or two shards and an index). Returns (the backbone in memory, the tensors)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(config)
    tensors = {name: t.detach().clone().contiguous() for name, t in lm.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 100)
    tensors["value_head.weight"] = torch.randn(2 * k, HIDDEN, generator=g)
    if prompt_head:
        tensors["prompt_head.weight"] = torch.randn(k, HIDDEN, generator=g)
    for name in drop:
        tensors.pop(name)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    tok.save_pretrained(path)
    if shards:
        names = sorted(tensors)
        files = {n: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, n in enumerate(names)}
        for file in sorted(set(files.values())):
            save_file({n: tensors[n] for n in names if files[n] == file}, str(path / file), metadata={"format": "pt"})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))
    else:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return lm.model, tensors


PROMPTS = [user_prompt("p0", "Name a colour."), user_prompt("p1", "What is two plus two?")]
RESPONSES = [["Red.", "Blue, the colour of the sky.", "I do not know."], ["Four.", "4", "Five, surely."]]


def hand_matrix(backbone, tensors, prompt, responses, tau: float, c: float, prompt_head: bool) -> np.ndarray:
    """The GPM's P computed by hand in float64 from the spec: each response's own forward pass (unpadded),
    λ from a forward pass of the prompt alone, the sums written out."""
    tok = make_tokenizer()
    W = tensors["value_head.weight"].double()
    k = W.shape[0] // 2

    def ids_of(messages):
        return tok(tok.apply_chat_template(messages, tokenize=False))["input_ids"]

    def last_state(ids):
        with torch.no_grad():
            return backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].double()

    vs = []
    for r in responses:
        ids = ids_of([*prompt.messages, {"role": "assistant", "content": r}])
        ids[-1] = tok.eos_token_id
        raw = [float(x) for x in W @ last_state(ids)]
        norm = math.sqrt(sum(x * x for x in raw))
        vs.append([x / norm for x in raw])
    if prompt_head:
        z = [float(x) for x in tensors["prompt_head.weight"].double() @ last_state(ids_of(list(prompt.messages)))]
        lam = [math.exp(x) / sum(math.exp(y) for y in z) for x in z]
    else:
        lam = [1.0] * k
    K = len(responses)
    P = np.full((K, K), 0.5)
    for i in range(K):
        for j in range(K):
            if i != j:
                s = sum(lam[m] * (vs[i][2 * m] * vs[j][2 * m + 1] - vs[i][2 * m + 1] * vs[j][2 * m]) for m in range(k))
                P[i, j] = sigmoid(c * s / tau)
    return P


def count_forwards(judge) -> list[int]:
    """Rows passed through the judge's backbone, one entry per forward call."""
    rows: list[int] = []
    judge.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return rows


# ------------------------------------------------------------------ the formulas


def test_the_formulas_against_hand_computed_values():
    assert embed(torch.tensor([[3.0, 4.0]], dtype=torch.float64)).tolist() == [[0.6, 0.8]]
    assert prompt_weights(None, 3).tolist() == [1.0, 1.0, 1.0]
    lam = prompt_weights(torch.tensor([0.0, math.log(3.0)], dtype=torch.float64), 2)
    assert lam.tolist() == pytest.approx([0.25, 0.75], abs=1e-15)
    # v1 = (1, 0, 0, 1), v2 = (0, 1, 1, 0): s = 0.25·(1·1 − 0·0) + 0.75·(0·0 − 1·1) = −0.5
    V = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    S = pair_scores(V, lam)
    assert np.allclose(S.numpy(), [[0.0, -0.5], [0.5, 0.0]], rtol=0, atol=1e-15)
    P = preference_matrix(S.numpy(), 0.1, "model")
    assert P[0, 1] == pytest.approx(sigmoid(-5.0), abs=1e-15) and P[1, 0] == 1.0 - P[0, 1]
    assert preference_matrix(S.numpy(), 0.1, "gpo")[0, 1] == pytest.approx(sigmoid(-10.0), abs=1e-15)
    # antisymmetric bit for bit on arbitrary rows, zero diagonal
    g = torch.Generator().manual_seed(0)
    V, lam = torch.randn(7, 6, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64)
    S = pair_scores(V, lam)
    assert torch.equal(S, -S.T) and torch.all(S.diagonal() == 0)
    P = preference_matrix(S.numpy(), 0.1, "model")
    assert np.array_equal(P + P.T, np.ones((7, 7)))


# ------------------------------------------------------------------ the judge on a tiny model


@pytest.mark.parametrize("prompt_head", [True, False])
def test_P_equals_a_hand_computation_in_float64(tmp_path, prompt_head):
    backbone, tensors = write_gpm(tmp_path / "gpm", k=2, prompt_head=prompt_head)
    judge = GPMJudge(model=str(tmp_path / "gpm"), dtype="float32", batch_size=2)
    judge.backbone.to(torch.float64)
    assert (judge.k, judge.prompt_head is not None) == (2, prompt_head)
    mats = judge.preferences_many(PROMPTS, RESPONSES)
    backbone.to(torch.float64)
    for prompt, responses, P in zip(PROMPTS, RESPONSES, mats):
        hand = hand_matrix(backbone, tensors, prompt, responses, tau=0.1, c=1.0, prompt_head=prompt_head)
        assert np.max(np.abs(P - hand)) < 1e-12
        assert np.array_equal(P + P.T, np.ones_like(P)) and np.all(np.diag(P) == 0.5)
        assert np.max(np.abs(P - 0.5)) > 0.05  # the tiny model expresses preferences: the check is not vacuous


def test_the_gpo_link_doubles_the_log_odds_and_changes_the_id(tmp_path):
    write_gpm(tmp_path / "gpm")
    model = GPMJudge(model=str(tmp_path / "gpm"), dtype="float32")
    gpo = GPMJudge(model=str(tmp_path / "gpm"), dtype="float32", link="gpo")
    for P, Q in zip(model.preferences_many(PROMPTS, RESPONSES), gpo.preferences_many(PROMPTS, RESPONSES)):
        off = ~np.eye(len(P), dtype=bool)
        assert np.allclose(np.log(Q / (1 - Q))[off], 2 * np.log(P / (1 - P))[off], atol=1e-6)
    assert model.id != gpo.id and ":link=gpo" in gpo.id and ":tau=0.1" in model.id


def test_one_forward_pass_per_distinct_response_and_the_cache_asks_nothing_twice(tmp_path):
    write_gpm(tmp_path / "gpm")
    judge = GPMJudge(model=str(tmp_path / "gpm"), dtype="float32", batch_size=3)
    rows = count_forwards(judge)
    prompts = [*PROMPTS, user_prompt("p2", "Say hi.")]
    lists = [[*RESPONSES[0], "Green."], [*RESPONSES[1], "Four."], ["hi", "hello", "hey", "yo"]]  # "Four." twice
    mats = judge.preferences_many(prompts, lists)
    assert sum(rows) == 4 + 3 + 4 == judge.stats["calls"]  # K forwards per prompt, the repeat embedded once
    assert len(rows) == math.ceil(11 / 3)  # batched across prompts
    assert mats[1][0, 3] == mats[1][3, 0] == 0.5  # identical responses: exactly ½
    cached = CachedJudge(judge, tmp_path / "cache.sqlite")
    first = cached.preferences_many(prompts, lists)
    before = sum(rows)
    again = cached.preferences_many(prompts, lists)
    assert sum(rows) == before and all(np.array_equal(a, b) for a, b in zip(first, again))
    # the cache's chunks batch other prompts together: the same values up to float32 rounding
    assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(first, mats))


def test_a_checkpoint_in_the_released_layout_loads_through_the_config_and_scores(tmp_path):
    """Sharded safetensors with an index, lm_head present, no prompt head, k = 3 read from the shapes;
    the same weights in one file give the same matrices."""
    write_gpm(tmp_path / "sharded", k=3, prompt_head=False, seed=1, shards=True)
    write_gpm(tmp_path / "single", k=3, prompt_head=False, seed=1)
    cfg = config_from_dict({"judge": {"name": "gpm", "model": str(tmp_path / "sharded"), "dtype": "float32"}})
    assert (cfg.judge.tau, cfg.judge.link, cfg.judge.max_length) == (0.1, "model", 4096)
    judge = build_judge(cfg.judge, device="cpu")
    assert judge.k == 3 and judge.prompt_head is None and judge.id.startswith("gpm-v1:model=sharded#")
    single = GPMJudge(model=str(tmp_path / "single"), dtype="float32")
    for P, Q in zip(judge.preferences_many(PROMPTS, RESPONSES), single.preferences_many(PROMPTS, RESPONSES)):
        assert np.array_equal(P, Q) and np.array_equal(P + P.T, np.ones_like(P))


@pytest.mark.parametrize(
    ("drop", "change", "message"),
    [
        (("value_head.weight",), None, "no value_head.weight"),
        ((), {"value_head.weight": torch.zeros(1, HIDDEN)}, "Bradley–Terry"),
        ((), {"value_head.weight": torch.zeros(3, HIDDEN)}, "[2k, hidden_size]"),
        ((), {"prompt_head.weight": torch.zeros(3, HIDDEN)}, "must be [2, 32]"),
        (("model.norm.weight",), None, "lack 1 backbone tensor"),
    ],
)
def test_a_checkpoint_that_is_not_a_gpm_is_refused_naming_what_is_wrong(tmp_path, drop, change, message):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "bad"
    write_gpm(path, drop=drop)
    if change:
        tensors = load_file(str(path / "model.safetensors"))
        save_file({**tensors, **change}, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="judge.model") as err:
        GPMJudge(model=str(path), dtype="float32")
    assert message in str(err.value)


def test_the_settings_are_checked_like_any_judge(tmp_path):
    with pytest.raises(UserError, match="judge.model .*not a directory"):
        config_from_dict({"judge": {"name": "gpm", "model": str(tmp_path / "nowhere")}})
    write_gpm(tmp_path / "gpm")
    with pytest.raises(UserError, match="judge.link"):
        config_from_dict({"judge": {"name": "gpm", "model": str(tmp_path / "gpm"), "link": "bt"}})
    with pytest.raises(UserError, match="judge.tau"):
        config_from_dict({"judge": {"name": "gpm", "model": str(tmp_path / "gpm"), "tau": 0}})


# ------------------------------------------------------------------ intransitive preferences


def test_a_gpm_head_fits_rock_paper_scissors_and_a_bradley_terry_head_cannot():
    """Fixed features of rock, paper, scissors; the data: paper ≻ rock, scissors ≻ paper, rock ≻ scissors.
    A GPM head (2k = 4, λ = 1) trained on −log σ(s(w, l)/τ) puts every winner ahead, from each of five
    random starts; a scalar head trained on −log σ(r_w − r_l) orders three items, so at most two of the
    three pairs can come out right. (With 2k = 2 a start can also end collapsed, all three embeddings
    equal and P = ½: that configuration is a local minimum of the cycle's loss, which 2k = 4 escapes.)"""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 8, generator=g, dtype=torch.float64)  # rock, paper, scissors
    pairs = [(1, 0), (2, 1), (0, 2)]  # (winner, loser)
    w, lo = [a for a, _ in pairs], [b for _, b in pairs]

    def fit(head: torch.nn.Linear, loss_of, seed: int) -> None:  # 300 Adam steps from a seeded start
        torch.manual_seed(seed)
        torch.nn.init.normal_(head.weight)
        opt = torch.optim.Adam(head.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss_of().backward()
            opt.step()

    for seed in range(5):
        gpm = torch.nn.Linear(8, 4, bias=False, dtype=torch.float64)  # value head, 2k = 4

        def gpm_scores(gpm=gpm):
            return pair_scores(embed(gpm(X)), prompt_weights(None, 2))

        fit(gpm, lambda: -torch.nn.functional.logsigmoid(gpm_scores()[w, lo] / 0.1).mean(), seed)
        P = preference_matrix(gpm_scores().detach().numpy(), 0.1, "model")
        assert all(P[a, b] > 0.99 for a, b in pairs), seed  # all three cycle pairs fitted

        bt = torch.nn.Linear(8, 1, bias=False, dtype=torch.float64)  # a scalar reward
        fit(bt, lambda bt=bt: -torch.nn.functional.logsigmoid(bt(X)[w, 0] - bt(X)[lo, 0]).mean(), seed)
        r = bt(X)[:, 0].detach()
        assert sum(bool(r[a] > r[b]) for a, b in pairs) <= 2, seed  # ≤ 2/3: three scalars make no cycle
        Pbt = [sigmoid(float(r[a] - r[b])) for a, b in pairs]
        assert max(Pbt) < 0.6, seed  # its best fit of a balanced cycle is near indifference


# in the loop: tests/test_judges.py::test_two_iteration_sppo_loop_with_each_judge[gpm]
