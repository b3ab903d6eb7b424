"""`sparring train-judge`: the losses against hand values (and TRL's RewardTrainer where installed), bt and
gpm judges trained on separable synthetic pairs and loaded as is by judge.name=reward_model / gpm, an
export in TRL's format as input, LoRA and full modes, resuming after a kill with the bits of an
uninterrupted run, and bad input named."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import make_tiny_model

from sparring.cli import main
from sparring.errors import UserError
from sparring.judges import build_judge
from sparring.judgetrain import train as T
from sparring.judgetrain.model import bt_loss, gpm_loss, preference_loss
from sparring.judgetrain.settings import load_settings, settings_from_dict
from sparring.records import Prompt

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "orbit"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def separable_pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs whose chosen response ends in "yes yes yes" and whose rejected one ends in "no no no"."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = " ".join(rng.choice(WORDS) for _ in range(3)) + " yes yes yes"
        bad = " ".join(rng.choice(WORDS) for _ in range(3)) + " no no no"
        rows.append(
            {"prompt": f"Question {i}: say something about {rng.choice(WORDS)}.", "chosen": good, "rejected": bad}
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings(tiny: Path, out: Path, train: list[str], **extra):
    data = {
        "kind": "bt",
        "model": str(tiny),
        "output": str(out),
        "dtype": "float32",
        "data": {"train": train, "heldout_fraction": 0.25},
        "train": {"epochs": 4, "lr": 3e-2, "batch_size": 16},
    }
    for key, value in extra.items():  # "train.lr" style keys
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return settings_from_dict(data, "test")


def judge_on(out: Path, kind: str, pairs: list[dict], tau: float):
    """(accuracy, mean −log P(chosen ≻ rejected)) of the judge loaded from `out` through build_judge."""
    spec = {"name": "reward_model" if kind == "bt" else "gpm", "model": str(out), "dtype": "float32", "tau": tau}
    judge = build_judge(spec, device="cpu")
    prompts = [Prompt(id=str(i), messages=({"role": "user", "content": r["prompt"]},)) for i, r in enumerate(pairs)]
    mats = judge.preferences_many(prompts, [[r["chosen"], r["rejected"]] for r in pairs])
    p = [float(m[0, 1]) for m in mats]
    return sum(x > 0.5 for x in p) / len(p), sum(-math.log(x) for x in p) / len(p)


# ------------------------------------------------------------------ the losses


def test_the_losses_equal_their_hand_values():
    r_w, r_l = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64)
    # hard labels: −log σ(r_w − r_l) = log(1 + e^{−(r_w − r_l)})
    assert torch.allclose(
        bt_loss(r_w, r_l),
        torch.tensor([math.log1p(math.exp(-1.5)), math.log1p(math.exp(1.0))], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    # a soft label p = 0.75 and a margin 0.5 on the second pair: x = 0 − 1 − 0.5 = −1.5,
    # −[0.75 log σ(−1.5) + 0.25 log σ(1.5)] = 0.75 log(1 + e^{1.5}) + 0.25 log(1 + e^{−1.5})
    p, m = torch.tensor([1.0, 0.75], dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64)
    want = [math.log1p(math.exp(-1.5)), 0.75 * math.log1p(math.exp(1.5)) + 0.25 * math.log1p(math.exp(-1.5))]
    assert torch.allclose(bt_loss(r_w, r_l, p, m), torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    # GPM: −log σ(s/τ), s = 0.05, τ = 0.1 -> log(1 + e^{−0.5}); a label of ½ gives log 2 + z/2 at z = −0.5... per pair
    s = torch.tensor([0.05, -0.05], dtype=torch.float64)
    assert torch.allclose(
        gpm_loss(s, 0.1),
        torch.tensor([math.log1p(math.exp(-0.5)), math.log1p(math.exp(0.5))], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    half = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert torch.allclose(
        preference_loss(s / 0.1, half),
        torch.tensor([math.log(2 * math.cosh(0.25))] * 2, dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )


def test_the_bt_loss_equals_trls_reward_trainer_loss():
    trl = pytest.importorskip("trl")
    g = torch.Generator().manual_seed(0)
    r_w, r_l, m = torch.randn(8, generator=g), torch.randn(8, generator=g), torch.rand(8, generator=g)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False),
        args=SimpleNamespace(center_rewards_coefficient=None),
        accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
        _metrics={"eval": defaultdict(list)},
        _total_train_tokens=0,
    )

    def model(**inputs):  # chosen rows first, then rejected ones, as TRL's collator stacks them
        return SimpleNamespace(logits=torch.cat([r_w, r_l])[:, None])

    for margin in (None, m):
        inputs = {"input_ids": torch.zeros(16, 3, dtype=torch.long), "attention_mask": torch.ones(16, 3)}
        if margin is not None:
            inputs["margin"] = margin
        theirs = trl.RewardTrainer.compute_loss(trainer, model, inputs)
        assert abs(float(bt_loss(r_w, r_l, margin=margin).mean()) - float(theirs)) < 1e-6


# ------------------------------------------------------------------ training, the output, loading it


@pytest.mark.parametrize("kind", ["bt", "gpm"])
def test_separable_pairs_are_learned_and_the_judge_loads_as_is(kind, tiny, tmp_path):
    rows = separable_pairs(80)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:60])
    held = write_jsonl(tmp_path / "held.jsonl", rows[60:])
    out = tmp_path / "judge"
    cfg = settings(
        tiny,
        out,
        [str(train)],
        kind=kind,
        **{"data.heldout": [str(held)], "train.lr": 3e-2 if kind == "bt" else 1e-2, "train.epochs": 6},
    )
    info = T.train_judge(cfg, progress=False, log=lambda _: None)
    assert info["pairs"] == {"train": 60, "heldout": 20}
    assert info["heldout_accuracy"] >= 0.95
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "train_judge.json", "tokenizer.json"} <= files
    assert not T.work_dir(out).exists()
    card = (out / "README.md").read_text()
    assert f"| held-out | 20 | {info['heldout_accuracy']:.4f} |" in card and str(held) in card
    # the judge sparring runs with reads the same numbers the training measured
    tau = 1.0 if kind == "bt" else cfg.gpm.tau
    acc, loss = judge_on(out, kind, rows[60:], tau)
    assert acc == info["heldout_accuracy"]
    assert loss == pytest.approx(info["heldout_loss"], abs=1e-4)
    if kind == "bt":
        assert json.loads((out / "config.json").read_text())["architectures"][0].endswith("ForSequenceClassification")


def test_a_file_in_the_export_format_trains_with_its_soft_labels(tiny, tmp_path):
    """Rows with exactly `sparring export --format trl`'s features (a DatasetDict saved to disk and its JSONL),
    p_chosen_beats_rejected as the soft label (null on one row: a hard label)."""
    from datasets import Dataset, DatasetDict

    from sparring.report.export import _conversation_features

    rows = []
    for i, r in enumerate(separable_pairs(40, seed=3)):
        rows.append(
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
                "prompt_id": str(i),
                "score_chosen": 0.9,
                "score_rejected": 0.1,
                "p_chosen_beats_rejected": None if i == 0 else 0.9,
                "chosen_index": 0,
                "rejected_index": 1,
                "iteration": 0,
            }
        )
    features = _conversation_features()
    export = tmp_path / "export"
    DatasetDict(
        {"iter_0": Dataset.from_dict({c: [r[c] for r in rows] for c in features}, features=features)}
    ).save_to_disk(str(export))
    write_jsonl(tmp_path / "iter_0.jsonl", rows)
    for source in (f"{export}@iter_0", str(tmp_path / "iter_0.jsonl")):
        out = tmp_path / f"judge-{len(source)}"
        cfg = settings(tiny, out, [source], **{"data.fields": {"label": "p_chosen_beats_rejected"}})
        info = T.train_judge(cfg, progress=False, log=lambda _: None)
        assert info["pairs"] == {"train": 30, "heldout": 10} and info["heldout_accuracy"] >= 0.95


def by_length(messages, responses):
    """A python judge for the tiny run below: longer is better (rarely a tie, so pairs are exported)."""
    return [float(len(r)) for r in responses]


def test_the_export_of_a_tiny_run_trains(tiny, tmp_path):
    """`sparring export --format trl` of a real one-iteration run, as it is: its saved dataset's split and its
    JSONL file, with the run judge's probabilities as soft labels."""
    from tiny import tiny_run_config

    from sparring.config import config_from_dict
    from sparring.loop import make_context, open_run, run
    from sparring.report.export import export_trl

    over = {"iterations": 1, "eval.base": False, "judge.name": "python", "judge.function": "test_train_judge:by_length"}
    cfg = config_from_dict(tiny_run_config(tiny, tmp_path / "runs", "r", **over))
    rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
    run(make_context(cfg, rd, progress=False, log=lambda line: None))
    report = export_trl(rd.root, tmp_path / "export")
    pairs = report["splits"]["iter_0"]["pairs"]
    assert pairs >= 2
    for n, source in enumerate((f"{tmp_path / 'export'}@iter_0", str(tmp_path / "export" / "iter_0.jsonl"))):
        extra = {"data.fields": {"label": "p_chosen_beats_rejected"}, "data.heldout_fraction": 0.0, "train.epochs": 2}
        info = T.train_judge(settings(tiny, tmp_path / f"j{n}", [source], **extra), progress=False, log=lambda _: None)
        assert info["pairs"] == {"train": pairs, "heldout": 0} and info["heldout_accuracy"] is None
        assert math.isfinite(info["train_loss"]) and (tmp_path / f"j{n}" / "model.safetensors").is_file()


@pytest.mark.parametrize(("kind", "mode"), [("bt", "lora"), ("gpm", "full")])
def test_lora_and_full_modes_train_the_backbone_and_load(kind, mode, tiny, tmp_path):
    rows = separable_pairs(24)
    out = tmp_path / "judge"
    cfg = settings(
        tiny,
        out,
        [str(write_jsonl(tmp_path / "p.jsonl", rows))],
        kind=kind,
        mode=mode,
        **{"train.epochs": 2, "train.lr": 1e-3, "train.batch_size": 8, "lora.r": 4},
    )
    info = T.train_judge(cfg, progress=False, log=lambda _: None)
    from safetensors.torch import load_file

    before = load_file(str(tiny / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[name], after[name])  # the backbone trained (LoRA merged into it)
    # the judge reads the weights as trained: its mean −log P over every pair is the training's own figure
    acc, loss = judge_on(out, kind, rows, 1.0 if kind == "bt" else cfg.gpm.tau)
    n = info["pairs"]["train"] + info["pairs"]["heldout"]
    mixed = (info["train_loss"] * info["pairs"]["train"] + info["heldout_loss"] * info["pairs"]["heldout"]) / n
    assert loss == pytest.approx(mixed, abs=1e-4) and info["history"][-1]["epoch"] == 2


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize(("kind", "mode"), [("gpm", "head"), ("bt", "lora")])
def test_a_killed_training_resumes_with_the_bits_of_an_uninterrupted_one(kind, mode, tiny, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    train = write_jsonl(tmp_path / "p.jsonl", separable_pairs(40))
    # LoRA with dropout: its RNG is seeded per epoch too
    over = {"kind": kind, "mode": mode, "train.epochs": 3, "train.lr": 1e-2, "lora.r": 2, "lora.dropout": 0.1}
    whole = settings(tiny, tmp_path / "whole", [str(train)], **over)
    T.train_judge(whole, progress=False, log=lambda _: None)

    killed = settings(tiny, tmp_path / "killed", [str(train)], **over)
    real, calls = T._step, []

    def dies_in_epoch_2(*args, **kwargs):  # 30 train pairs, batch 16: two steps an epoch; die at step 4
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "_step", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        T.train_judge(killed, progress=False, log=lambda _: None)
    work = T.work_dir(tmp_path / "killed")
    assert torch.load(work / T.CHECKPOINT, weights_only=True)["epoch"] == 1 and not (tmp_path / "killed").exists()
    monkeypatch.setattr(T, "_step", real)
    said = []
    info = T.train_judge(killed, progress=False, log=said.append)
    assert any("resuming after epoch 1 of 3" in s for s in said)
    a, b = (
        load_file(str(tmp_path / "whole" / "model.safetensors")),
        load_file(str(tmp_path / "killed" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert info["history"] == json.loads((tmp_path / "whole" / "train_judge.json").read_text())["history"]
    # started again when done: nothing to do; with other settings, the output is not replaced
    said.clear()
    T.train_judge(killed, progress=False, log=said.append)
    assert "already trained" in said[0]
    other = settings(tiny, tmp_path / "killed", [str(train)], **{**over, "train.epochs": 4})
    with pytest.raises(UserError, match="killed: it exists"):
        T.train_judge(other, progress=False, log=lambda _: None)


def test_a_kill_while_caching_features_keeps_the_chunks_already_written(tiny, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    train = write_jsonl(tmp_path / "p.jsonl", separable_pairs(20))  # 40 texts: chunks of 16, 16 and 8
    monkeypatch.setattr(T, "CHUNK", 16)
    T.train_judge(settings(tiny, tmp_path / "whole", [str(train)]), progress=False, log=lambda _: None)
    real, calls = T.hidden_states, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "hidden_states", counted)
    with pytest.raises(KeyboardInterrupt):
        T.train_judge(settings(tiny, tmp_path / "killed", [str(train)]), progress=False, log=lambda _: None)
    features = T.work_dir(tmp_path / "killed") / "features"
    assert sorted(p.name for p in features.iterdir()) == ["00000.safetensors", "00001.safetensors"]
    calls.clear()
    monkeypatch.setattr(T, "hidden_states", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    T.train_judge(settings(tiny, tmp_path / "killed", [str(train)]), progress=False, log=lambda _: None)
    assert len(calls) == 1  # only the third chunk was computed
    a, b = (
        load_file(str(tmp_path / "whole" / "model.safetensors")),
        load_file(str(tmp_path / "killed" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_with_other_settings_is_refused(tiny, tmp_path, monkeypatch):
    train = write_jsonl(tmp_path / "p.jsonl", separable_pairs(20))
    monkeypatch.setattr(T, "_step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        T.train_judge(settings(tiny, tmp_path / "j", [str(train)]), progress=False, log=lambda _: None)
    with pytest.raises(
        UserError, match=r"j\.train-judge: an unfinished training with other settings or data \(settings\.train\.lr"
    ):
        T.train_judge(
            settings(tiny, tmp_path / "j", [str(train)], **{"train.lr": 0.5}), progress=False, log=lambda _: None
        )


# ------------------------------------------------------------------ the command line, the recipe, bad input


def test_the_command_line_with_the_shipped_recipe(tiny, tmp_path, capsys):
    train = write_jsonl(tmp_path / "p.jsonl", separable_pairs(40))
    shipped = load_settings("train-judge")
    assert (shipped.kind, shipped.mode, shipped.model) == ("bt", "head", "smollm2-135m")
    out = tmp_path / "judge"
    code = main(
        [
            "train-judge",
            "train-judge",
            f"model={tiny}",
            f"data.train={train}",
            f"output={out}",
            "dtype=float32",
            "train.lr=3e-2",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "held-out accuracy" in printed and f"judge.name=reward_model judge.model={out}" in printed
    assert (out / "model.safetensors").is_file()


def test_bad_input_is_named(tiny, tmp_path, capsys):
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"prompt": "Hi?", "chosen": "Hello."}])
    with pytest.raises(UserError, match=r"missing\.jsonl: no 'rejected' column \(columns: prompt, chosen\)"):
        T.train_judge(settings(tiny, tmp_path / "o", [str(missing)]), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match=r"empty\.jsonl: empty file"):
        T.train_judge(settings(tiny, tmp_path / "o", [str(empty)]), progress=False)
    bad_p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": "a", "rejected": "b", "p": 1.5}])
    with pytest.raises(UserError, match=r"p\.jsonl:1: column 'p' = 1\.5 must be in \[0\.0, 1\.0\]"):
        T.train_judge(settings(tiny, tmp_path / "o", [str(bad_p)]), progress=False)
    with pytest.raises(UserError, match=r"test: kind = 'rm' is not allowed; choose one of 'bt', 'gpm'"):
        settings(tiny, tmp_path / "o", ["x.jsonl"], kind="rm")
    with pytest.raises(UserError, match=r"test: unknown key 'train\.lrr'"):
        settings(tiny, tmp_path / "o", ["x.jsonl"], **{"train.lrr": 1})
    with pytest.raises(UserError, match=r"test: data\.fields\.chosn: unknown field"):
        settings(tiny, tmp_path / "o", ["x.jsonl"], **{"data.fields": {"chosn": "a"}})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\noutput: o\ndata: {train: [x.jsonl]}\n")
    assert main(["train-judge", str(recipe)]) == 2
    assert "r.yaml: the config needs kind" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ the rows


def test_rows_in_every_preference_shape_read_as_pairs():
    from sparring.judgetrain.data import pairs_from_rows, split_heldout

    system = {"role": "system", "content": "Be brief."}
    rows = [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "label": 0.8, "p": 0.1, "margin": 0.5},
        {  # conversational, two turns before the reply
            "prompt": [system, {"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        },
        {  # TRL's implicit prompt: whole conversations, the prompt is what precedes the last turn
            "chosen": [{"role": "user", "content": "Red?"}, {"role": "assistant", "content": "A colour."}],
            "rejected": [{"role": "user", "content": "Red?"}, {"role": "assistant", "content": "A fruit."}],
        },
    ]
    where = [f"f.jsonl:{n}" for n in (1, 2, 3)]
    a, b, c = (pairs_from_rows([r], "f.jsonl", [w], {})[0] for r, w in zip(rows, where))
    assert (a.messages, a.chosen, a.rejected, a.p, a.margin) == (
        ({"role": "user", "content": "Hi?"},),
        "Hello.",
        "Go away.",
        0.8,
        0.5,
    )  # `label` wins over `p`
    assert b.messages == (system, {"role": "user", "content": "2+2?"}) and (b.p, b.margin) == (1.0, 0.0)
    assert c.messages == ({"role": "user", "content": "Red?"},) and (c.chosen, c.rejected) == ("A colour.", "A fruit.")
    assert pairs_from_rows([rows[0]], "f.jsonl", where[:1], {"label": "p"})[0].p == 0.1
    different = {**rows[2], "rejected": [{"role": "user", "content": "Blue?"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(
        UserError, match=r"f\.jsonl:3: columns 'chosen' and 'rejected' continue different conversations"
    ):
        pairs_from_rows([different], "f.jsonl", where[2:], {})
    ends_with_user = {"prompt": "Hi?", "chosen": [{"role": "user", "content": "x"}], "rejected": "y"}
    with pytest.raises(UserError, match=r"f\.jsonl:1: column 'chosen': its last turn is the user's"):
        pairs_from_rows([ends_with_user], "f.jsonl", where[:1], {})
    # the held-out split takes whole prompts, seeded
    many = pairs_from_rows(
        [{"prompt": f"q{i // 2}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(20)],
        "g",
        [str(i) for i in range(20)],
        {},
    )
    train, held = split_heldout(many, 0.2, seed=3)
    assert len(held) == 4 and not {p.key() for p in train} & {p.key() for p in held}
    assert split_heldout(many, 0.2, seed=3) == (train, held) and split_heldout(many, 0.2, seed=4) != (train, held)


def test_a_model_that_cannot_load_leaves_nothing_and_blocks_no_retry(tiny, tmp_path):
    train = write_jsonl(tmp_path / "p.jsonl", separable_pairs(20))
    bad = settings(tiny, tmp_path / "j", [str(train)])
    bad.model = str(tmp_path / "no-such-model")
    with pytest.raises(UserError, match="no-such-model"):
        T.train_judge(bad, progress=False, log=lambda _: None)
    assert not T.work_dir(tmp_path / "j").exists()
    # a work directory holding settings but nothing computed yet does not block other settings
    T.work_dir(tmp_path / "j").mkdir()
    (T.work_dir(tmp_path / "j") / T.RECORD).write_text(json.dumps({"settings": {"model": "elsewhere"}}))
    info = T.train_judge(settings(tiny, tmp_path / "j", [str(train)]), progress=False, log=lambda _: None)
    assert info["heldout_accuracy"] is not None and not T.work_dir(tmp_path / "j").exists()


# ------------------------------------------------------------------ the shared feature cache


def test_a_shared_feature_cache_computes_each_text_once_and_changes_no_bit(tiny, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    train = write_jsonl(tmp_path / "p.jsonl", separable_pairs(20))  # 40 texts: chunks of 16, 16 and 8
    cache = tmp_path / "features"
    monkeypatch.setattr(T, "CHUNK", 16)
    real, texts = T.hidden_states, []

    def counted(backbone, rows, *args, **kwargs):  # counts the texts the backbone embeds
        texts.append(len(rows))
        return real(backbone, rows, *args, **kwargs)

    def dies_at_the_second_forward(backbone, rows, *args, **kwargs):
        if texts:
            raise KeyboardInterrupt
        return counted(backbone, rows, *args, **kwargs)

    def run(name, **extra):
        texts.clear()
        cfg = settings(tiny, tmp_path / name, [str(train)], **{"train.feature_batch_size": 16, **extra})
        return T.train_judge(cfg, progress=False, log=lambda _: None)

    # killed while computing: the one chunk written is whole, and the rerun computes only the others
    monkeypatch.setattr(T, "hidden_states", dies_at_the_second_forward)
    with pytest.raises(KeyboardInterrupt):
        run("first", features_cache=str(cache))
    (space,) = [p for p in cache.iterdir() if p.is_dir()]
    assert len(list(space.glob("*.safetensors"))) == 1 and not list(space.glob("*.tmp"))
    (space / "junk.safetensors").write_bytes(b"not a safetensors file")  # unreadable: skipped, never fatal
    monkeypatch.setattr(T, "hidden_states", counted)
    first = run("first", features_cache=str(cache))
    assert sum(texts) == first["texts"] - 16 == 24
    assert first["feature_texts"] == {"computed": 24, "read": 16, "cache": str(space)}

    # another seed on the same cache: no forward pass at all, and the bits of a run without the cache
    again = run("again", features_cache=str(cache), seed=1)
    assert texts == [] and again["feature_texts"] == {"computed": 0, "read": 40, "cache": str(space)}
    assert "(0 computed, 40 read from the feature cache" in (tmp_path / "again" / "README.md").read_text()
    plain = run("plain", seed=1)
    assert sum(texts) == 40 and plain["feature_texts"] == {"computed": 40, "read": 0, "cache": None}
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("again", "plain"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["history"] == plain["history"]
    assert "features_cache" not in again["record"]["settings"]  # a resume may add or drop it: it changes no bit

    # gpm tokenizes its texts otherwise: none of bt's keys fit, every text is computed, into the same namespace
    gpm = run("gpm", features_cache=str(cache), kind="gpm")
    assert sum(texts) == gpm["texts"] == 40 and gpm["feature_texts"]["read"] == 0
    assert [p for p in cache.iterdir() if p.is_dir()] == [space]


def test_the_feature_cache_key_names_the_backbone_its_dtype_and_the_tokens(tiny):
    from transformers import AutoConfig

    from sparring.judgetrain.features import FeatureCache

    config = AutoConfig.from_pretrained(str(tiny))
    base = FeatureCache.open("c", str(tiny), config, "float32", "cpu")
    same = FeatureCache.open("c", str(tiny), AutoConfig.from_pretrained(str(tiny)), "float32", "cpu")
    assert base.dir == same.dir and base.key(((1, 2, 3), 2)) == same.key(((1, 2, 3), 2))
    other_config = AutoConfig.from_pretrained(str(tiny), num_hidden_layers=3)
    others = [
        FeatureCache.open("c", str(tiny), config, "bfloat16", "cpu"),
        FeatureCache.open("c", "another-model", config, "float32", "cpu"),
        FeatureCache.open("c", str(tiny), other_config, "float32", "cpu"),
        FeatureCache.open("c", str(tiny), config, "float32", "cuda"),
    ]
    assert len({base.dir, *(c.dir for c in others)}) == 5
    row = ((1, 2, 3), 2)
    assert len({base.key(row), *(c.key(row) for c in others)}) == 5
    # the token ids and the read position are part of the key
    assert len({base.key(row), base.key(((1, 2, 3), 1)), base.key(((1, 2, 4), 2)), base.key(((1, 2), 2))}) == 4
    with pytest.raises(UserError, match="features_cache = 'x' is for mode head"):
        settings(tiny, Path("o"), ["x.jsonl"], mode="lora", features_cache="x")


# ------------------------------------------------------------------ bagging


def test_bootstrap_resamples_whole_train_prompts_seeded_and_leaves_the_held_out_pairs(tiny, tmp_path):
    from collections import Counter

    from sparring.judgetrain.data import bootstrap, pairs_from_rows

    rows = [{"prompt": f"q{i // 2}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(40)]  # 20 prompts
    pairs = pairs_from_rows(rows, "g", [str(i) for i in range(40)], {})
    out, drawn = bootstrap(pairs, seed=0)
    assert bootstrap(pairs, seed=0) == (out, drawn) and bootstrap(pairs, seed=1)[0] != out
    times = Counter(p.key() for p in out)
    assert sum(times.values()) == 2 * 20  # 20 draws of a prompt, 2 pairs each
    by_pair = Counter(p.where for p in out)  # `where` names the row: one per pair here
    # a prompt drawn m times brings each of its pairs m times
    assert all(by_pair[p.where] == times[p.key()] // 2 for p in pairs)
    assert drawn == {
        "prompts": len(times),
        "of_prompts": 20,
        "distinct_pairs": len(by_pair),
        "of_pairs": 40,
        "pairs": 40,
    }
    assert 1 < drawn["prompts"] < 20  # with replacement: some prompt is missing (p = 1 − 20!/20^20)

    # in a training: after the held-out split, which it does not touch; off, the pairs are those read
    train = write_jsonl(tmp_path / "p.jsonl", separable_pairs(40))
    infos = {}
    for name, extra in {
        "plain": {},
        "bag0": {"data.bootstrap": True},
        "bag1": {"data.bootstrap": True, "seed": 1},
    }.items():
        cfg = settings(tiny, tmp_path / name, [str(train)], **{"train.epochs": 1, **extra})
        whole, held = T._read_data(cfg)
        resampled, drawn = T._resample(cfg, whole)
        if name == "plain":
            assert resampled is whole and drawn is None
        else:
            assert (resampled, drawn) == bootstrap(whole, cfg.seed) and drawn["of_pairs"] == len(whole)
        infos[name] = T.train_judge(cfg, progress=False, log=lambda _: None)
        assert infos[name]["pairs"] == {"train": len(resampled), "heldout": len(held)}
        assert infos[name]["bootstrap"] == drawn
    assert infos["plain"]["record"]["heldout_data"] == infos["bag0"]["record"]["heldout_data"]
    assert infos["plain"]["pairs"]["heldout"] == infos["bag0"]["pairs"]["heldout"] == 10
    card = (tmp_path / "bag0" / "README.md").read_text()
    drawn = infos["bag0"]["bootstrap"]
    assert f"drew {drawn['prompts']} distinct prompts ({drawn['distinct_pairs']} of the 30 pairs)" in card


# ------------------------------------------------------------------ gpm's prompt head


def prompt_dependent_pairs(n: int, seed: int = 0) -> list[dict]:
    """The prompt ends in "yes yes yes" (7 in 10) or "no no no", and the chosen reply is the one that agrees
    with it: the same two replies swap places from one prompt to the next, so no reward of the reply alone
    orders them all (the best gets the majority's 70% or so)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        want = "yes" if rng.random() < 0.7 else "no"
        other = "no" if want == "yes" else "yes"
        a = rng.choice(WORDS)
        prompt = f"{rng.choice(WORDS)} {rng.choice(WORDS)}? {want} {want} {want}"
        rows.append({"prompt": prompt, "chosen": f"{a} {want}", "rejected": f"{a} {other}"})
    return rows


def test_paired_scores_are_the_judges_pair_scores_with_one_lambda_per_pair():
    from sparring.judges.gpm import embed, pair_scores
    from sparring.judgetrain.model import paired_scores

    g = torch.Generator().manual_seed(0)
    v_w, v_l = embed(torch.randn(5, 6, generator=g, dtype=torch.float64)), embed(torch.randn(5, 6, generator=g))
    lam = torch.softmax(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    got = paired_scores(v_w, v_l.double(), lam)
    want = [float(pair_scores(torch.stack([v_w[b], v_l[b].double()]), lam[b])[0, 1]) for b in range(5)]
    assert got.tolist() == pytest.approx(want, abs=1e-15)


def test_a_gpm_prompt_head_fits_what_a_prompt_decides_and_the_judge_reads_it_as_trained(tiny, tmp_path):
    from safetensors.torch import load_file

    rows = prompt_dependent_pairs(120)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:80])
    held = write_jsonl(tmp_path / "held.jsonl", rows[80:])
    infos = {}
    for prompt_head in (False, True):
        out = tmp_path / f"judge-{prompt_head}"
        extra = {
            "kind": "gpm",
            "gpm.prompt_head": prompt_head,
            "data.heldout": [str(held)],
            # a low rate, many steps: both heads start near a saddle (h's large shared component makes every
            # v alike), which a larger rate leaves less reliably
            "train.epochs": 100,
            "train.lr": 5e-3,
            "train.batch_size": 8,
            "features_cache": str(tmp_path / "features"),  # the second computes only its prompt rows
        }
        infos[prompt_head] = T.train_judge(
            settings(tiny, out, [str(train)], **extra), progress=False, log=lambda _: None
        )
        heads = load_file(str(out / "model.safetensors"))
        assert ("prompt_head.weight" in heads) == prompt_head
    with_head, without = infos[True], infos[False]
    assert with_head["feature_texts"]["read"] == without["texts"]  # the response rows, from the cache
    assert with_head["texts"] > without["texts"]  # and the prompt rows, one per prompt here
    # the prompt decides which reply wins: the prompt head fits it, λ = 1 does not as well
    assert with_head["train_accuracy"] > without["train_accuracy"]
    assert with_head["heldout_accuracy"] > without["heldout_accuracy"]
    assert with_head["train_loss"] < without["train_loss"]
    # the last one written (prompt_head true): W_p is [k, H] = [gpm.dim / 2, the tiny model's 32]
    assert heads["prompt_head.weight"].shape == (2, 32) and heads["value_head.weight"].shape == (4, 32)
    assert "prompt_head.weight (λ(x) = softmax(W_p h_x)" in (tmp_path / "judge-True" / "README.md").read_text()
    # the judge reads λ where the training read it: its held-out figures are the training's
    acc, loss = judge_on(tmp_path / "judge-True", "gpm", rows[80:], 0.1)
    assert acc == with_head["heldout_accuracy"]
    assert loss == pytest.approx(with_head["heldout_loss"], abs=1e-4)
    with pytest.raises(UserError, match="gpm.prompt_head is for kind gpm"):
        settings(tiny, tmp_path / "o", ["x.jsonl"], **{"gpm.prompt_head": True})
