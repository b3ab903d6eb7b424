"""LoRA, the sampler's weight check, gradient checkpointing, checkpoints inside a training stage and
keep_policies (bigger models on the hardware people have).

- `lora:` is a top-level section; `model.lora.r=16` is refused naming `lora.r`; a target that names no
  linear layer is refused before the run directory exists;
- a LoRA run keeps each iteration's adapter and the merged policy: π_{t+1} is exactly π_t with the
  adapter merged (peft's own loading of the saved adapter gives the same bits), the weights the adapter
  does not touch are π_t's, and the samples of iteration 1 carry log π_1 of the merged weights;
- the sampler's weights are checked against the fingerprint training recorded: a loader that hands
  back π_t for π_{t+1} (either backend) fails the stage instead of sampling the old policy;
- gradient checkpointing gives the gradients of the plain pass (float tolerance), full and LoRA;
- a training stage killed mid-way resumes from its last checkpoint with the bits of an uninterrupted
  one (here in-process; tests/test_resume.py kills the real command);
- keep_policies: old policy directories go once a newer one is recorded; verification does not call
  them damaged, and a rerun that needs one rebuilds it with the same bits.

Every run here uses one intra-op thread (bitwise comparisons need the same thread count).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

HERE = Path(__file__).parent
from tiny import make_tiny_model, tiny_run_config  # noqa: E402

from sparring.cli import main  # noqa: E402
from sparring.config import LoRAConfig, config_from_dict, load_config  # noqa: E402
from sparring.errors import UserError  # noqa: E402
from sparring.loop import load_run, make_context, open_run, run  # noqa: E402
from sparring.models import FINGERPRINT_FILE, load_model, load_tokenizer  # noqa: E402
from sparring.rundir import RunDir, sha256_of, write_json  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread, bit-for-bit comparable runs


def lora_config(model: Path, runs_dir: Path, name: str = "l", **extra) -> dict:
    """Two SPPO iterations on the tiny model, rows in both (the length judge), several optimizer steps."""
    cfg = tiny_run_config(
        model,
        runs_dir,
        name,
        **{
            "judge.name": "python",
            "judge.function": "lengthjudge:by_length",
            "prompts.per_iteration": 8,
            "generation.k": 4,
            "generation.max_new_tokens": 8,
            "generation.batch_size": 8,
            "generation.shard_size": 4,
            "train.lr": 1e-2,
            "train.micro_batch_size": 1,
            "train.epochs": 2,
            "lora.r": 4,
            "lora.alpha": 8,
        },
    )
    for key, value in extra.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    return cfg


def run_in_process(cfg_dict: dict, log=lambda line: None) -> RunDir:
    cfg = config_from_dict(cfg_dict)
    rd = open_run(cfg, Path(cfg.runs_dir) / cfg.name)
    run(make_context(cfg, rd, progress=False, log=log))
    rd.lock.release()
    return rd


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory) -> RunDir:
    return run_in_process(lora_config(tiny_model, tmp_path_factory.mktemp("lora")))


# ------------------------------------------------------------------ config


def test_lora_is_a_top_level_section_and_model_lora_is_refused_with_a_hint(tiny_model, tmp_path, capsys):
    cfg = load_config(None, ["lora.r=16", "lora.alpha=32", "lora.target_modules=[q_proj, v_proj]"])
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (16, 32.0, ["q_proj", "v_proj"])
    default = load_config(None)
    assert default.lora == LoRAConfig() and default.lora.r == 0 and default.lora.target_modules == TARGETS
    assert default.train.gradient_checkpointing is False and default.train.checkpoint_every == 0
    assert default.keep_policies == 0

    with pytest.raises(UserError, match=r"model\.lora\.r: model is the model's name .* write lora\.r$"):
        load_config(None, ["model.lora.r=16"])
    with pytest.raises(UserError, match="write lora.r, lora.alpha"):
        config_from_dict({"model": {"lora": {"r": 16, "alpha": 32}}})
    for bad, key in (
        (["lora.r=-1"], "lora.r"),
        (["lora.dropout=1"], "lora.dropout"),
        (["lora.alpha=0"], "lora.alpha"),
        (["lora.r=4", "lora.target_modules=[]"], "lora.target_modules"),
        (["train.checkpoint_every=-2"], "train.checkpoint_every"),
        (["keep_policies=-1"], "keep_policies"),
        (["train.gradient_checkpointing=maybe"], "train.gradient_checkpointing"),
    ):
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            load_config(None, bad)

    # on the command line: exit 2, one line naming the key, nothing written
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(lora_config(tiny_model, tmp_path / "runs")))
    assert main(["run", str(recipe), "model.lora.r=16", "--no-progress"]) == 2
    assert "write lora.r" in capsys.readouterr().err
    assert main(["run", str(recipe), "lora.target_modules=[q_proj, qkv_proj]", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lora.target_modules: 'qkv_proj' names no module" in err and "down_proj" in err
    assert main(["run", str(recipe), "lora.target_modules=[norm]", "--no-progress"]) == 2
    assert "not a linear layer" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ what a LoRA run stores


def test_lora_run_keeps_the_adapter_and_the_merged_policy(lora_run, tiny_model):
    from safetensors.torch import load_file

    from sparring.lora import load_merged

    root = lora_run.root
    for t in range(2):
        entry = lora_run.stage(f"iter_{t}/train")
        assert sorted(entry["outputs"]) == [f"iter_{t}/adapter", f"iter_{t}/policy"]
        adapter = root / f"iter_{t}" / "adapter"
        assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["lora_alpha"] == 8 and config["target_modules"] == sorted(TARGETS)
        assert config["base_model_name_or_path"] == (str(tiny_model) if t == 0 else "iter_0/policy")
        # π_{t+1} = π_t with the adapter merged, to the bit, through peft's own loading of the saved files
        base = str(tiny_model) if t == 0 else str(root / "iter_0" / "policy")
        merged = load_merged(base, str(adapter)).state_dict()
        saved = load_file(root / f"iter_{t}" / "policy" / "model.safetensors")
        before = load_file(Path(base) / "model.safetensors")
        assert saved.keys() == before.keys()
        targeted = [k for k in saved if k.split(".")[-2] in TARGETS]
        assert len(targeted) == 2 * 7  # 2 layers x 7 projections
        for k in saved:
            assert torch.equal(saved[k], merged[k]), k
            if k in targeted:
                assert not torch.equal(saved[k], before[k]), f"{k} did not train"
            else:  # embeddings, norms: never touched by the adapter
                assert torch.equal(saved[k], before[k]), k
        assert (adapter / "adapter_model.safetensors").stat().st_size < (
            root / f"iter_{t}" / "policy" / "model.safetensors"
        ).stat().st_size


def test_samples_after_a_lora_iteration_carry_log_probs_of_the_merged_weights(lora_run):
    """Sampling reads π_1 as plain weights (no adapter at sampling time), and the reference log-probs
    recorded then are log π_1 of the merged model."""
    from sparring.train import sequence_logps

    rows = pq.read_table(lora_run.root / "iter_1" / "samples.parquet").to_pylist()[:8]
    policy = str(lora_run.root / "iter_0" / "policy")
    model, tok = load_model(policy, "float32").eval(), load_tokenizer(policy)
    with torch.no_grad():
        logp = sequence_logps(
            model, [r["prompt_ids"] for r in rows], [r["response_ids"] for r in rows], tok.pad_token_id
        ).logp
    assert torch.allclose(logp.double(), torch.tensor([r["logp"] for r in rows], dtype=torch.float64), atol=1e-4)


# ------------------------------------------------------------------ the sampler's weights are checked


def test_a_stale_sampler_fails_loudly_on_both_backends(lora_run, tiny_model, tmp_path, monkeypatch, capsys):
    import sparring.generation.vllm as vllm_backend
    import sparring.models as models
    from sparring.generation import load_sampler

    policy = str(lora_run.root / "iter_0" / "policy")
    record = json.loads((Path(policy) / FINGERPRINT_FILE).read_text())
    assert record["tensors"] and all(name.split(".")[-2] in TARGETS for name in record["tensors"])
    for dtype in ("float32", "bfloat16"):  # the real loader passes, in either sampler dtype
        load_sampler(policy, "hf", dtype)

    real_load = models.load_model

    def stale_load(name, dtype="float32"):  # the bug: the loader hands back π_0 for π_1 (in any run directory)
        return real_load(str(tiny_model) if Path(name).parts[-2:] == ("iter_0", "policy") else name, dtype)

    monkeypatch.setattr(models, "load_model", stale_load)
    for dtype in ("float32", "bfloat16"):
        with pytest.raises(
            UserError,
            match=r"the hf sampler's model are not the weights training recorded .* "
            f"compared in {dtype}",
        ):
            load_sampler(policy, "hf", dtype)

    # the same bug inside a run: iteration 1's generate stage stops, exit 2, nothing recorded
    root = tmp_path / "run"
    shutil.copytree(lora_run.root, root)
    data = json.loads((root / "manifest.json").read_text())
    for key in ("iter_1/generate", "iter_1/judge", "iter_1/rows", "iter_1/train", "iter_1/eval"):
        del data["stages"][key]
    write_json(root / "manifest.json", data)
    assert main(["generate", "--run", str(root), "--iter", "1", "--no-progress"]) == 2
    assert "stale" in capsys.readouterr().err
    assert not RunDir(root).is_done("iter_1/generate")
    monkeypatch.undo()

    # vLLM: the engine must say it holds this policy, and the weights there must be the trained ones
    class Engine:
        def __init__(self, path):
            self.policy = str(path)

    monkeypatch.setattr(vllm_backend, "engine_for", lambda p, **kw: Engine(p))
    load_sampler(policy, "vllm", "bfloat16")  # the right directory: passes
    monkeypatch.setattr(vllm_backend, "engine_for", lambda p, **kw: Engine(tiny_model))
    with pytest.raises(UserError, match="the vLLM engine holds .* instead"):
        load_sampler(policy, "vllm", "bfloat16")
    stale = tmp_path / "stale_policy"  # the right name, π_0's weights in it (a reload that wrote nothing new)
    shutil.copytree(policy, stale)
    shutil.copy(tiny_model / "model.safetensors", stale / "model.safetensors")
    monkeypatch.setattr(vllm_backend, "engine_for", lambda p, **kw: Engine(p))
    with pytest.raises(UserError, match="the weights the vLLM engine loaded from .* are not the weights training"):
        load_sampler(str(stale), "vllm", "bfloat16")


# ------------------------------------------------------------------ gradient checkpointing


def _rows(run: RunDir, t: int = 0) -> list[dict]:
    return pq.read_table(run.root / f"iter_{t}" / "train.parquet").to_pylist()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_gradients_of_the_plain_pass(lora_run, tiny_model, lora):
    from sparring.lora import attach
    from sparring.methods import get_method
    from sparring.train import _micro_batch_loss, set_gradient_checkpointing

    cfg = config_from_dict(lora_config(tiny_model, Path("unused")))
    rows = _rows(lora_run)[:4]
    pad = load_tokenizer(str(tiny_model)).pad_token_id
    grads = []
    for checkpointing in (False, True):
        model = load_model(str(tiny_model), "float32")
        if lora:
            model = attach(model, cfg.lora, seed=1)
            with torch.no_grad():  # B = 0 at the start would make most adapter gradients trivially zero
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        if checkpointing:
            set_gradient_checkpointing(model, True)  # what train.gradient_checkpointing: true calls
        model.train()
        model.config.use_cache = False
        loss = _micro_batch_loss(model, rows, get_method("sppo"), cfg.method, pad, torch.autocast("cpu", enabled=False))
        loss.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        if checkpointing:  # checkpointing really ran: the decoder layers recompute in the backward pass
            layers = model.get_decoder().layers
            assert all(layer.gradient_checkpointing for layer in layers)
    plain, ckpt = grads
    assert plain.keys() == ckpt.keys() and len(plain) == (28 if lora else 20)
    assert any(g.abs().max() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


# ------------------------------------------------------------------ checkpoints inside a training stage


class Killed(Exception):
    pass


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_training_stage_resumes_from_its_checkpoint_with_the_same_bits(lora_run, tiny_model, tmp_path, lora):
    from sparring.lora import attach
    from sparring.methods import get_method
    from sparring.train import train

    cfg = config_from_dict(lora_config(tiny_model, Path("unused"), train={"optimizer": "adamw", "checkpoint_every": 2}))
    pad = load_tokenizer(str(tiny_model)).pad_token_id
    ckpt = tmp_path / "train_checkpoint"

    def fresh():
        model = load_model(str(tiny_model), "float32")
        # with dropout on the adapter's input, the resumed run must also draw the same dropout masks
        return attach(model, dataclasses.replace(cfg.lora, dropout=0.2), seed=1) if lora else model

    def trained(train_cfg, kill_at=None, identity="a", logs=None) -> tuple[dict, dict, list]:
        model = fresh()
        steps = []

        def on_step(record):
            steps.append(record["step"])
            if record["step"] == kill_at:
                raise Killed

        result = train(
            model,
            _rows(lora_run),
            get_method("sppo"),
            cfg.method,
            train_cfg,
            pad_id=pad,
            seed=11,
            on_step=on_step,
            progress=False,
            checkpoint_dir=ckpt,
            identity=identity,
            log=(logs.append if logs is not None else None),
        )
        return {n: p.detach().clone() for n, p in model.named_parameters()}, result, steps

    plain_cfg = dataclasses.replace(cfg.train, checkpoint_every=0)
    uninterrupted, result, _ = trained(plain_cfg)  # no checkpoints at all
    assert result["steps"] == 8 and not ckpt.exists()
    with_ckpt, result_ckpt, _ = trained(cfg.train)
    assert all(torch.equal(with_ckpt[n], uninterrupted[n]) for n in uninterrupted)  # saving changes nothing
    assert result_ckpt == result
    shutil.rmtree(ckpt)

    with pytest.raises(Killed):
        trained(cfg.train, kill_at=4)  # steps 0..4 done; the checkpoint after step 4 (steps 1-4 done) is there
    assert [p.name for p in ckpt.iterdir()] == ["step_00000004"]
    logs: list[str] = []
    resumed, result_resumed, steps = trained(cfg.train, logs=logs)
    assert logs == ["resuming from the checkpoint after optimizer step 4 of 8 (step_00000004)"]
    assert steps == [4, 5, 6, 7]  # step 4 again (it was done after the checkpoint), then the rest
    assert all(torch.equal(resumed[n], uninterrupted[n]) for n in uninterrupted), "resumed weights differ"
    assert result_resumed == result  # the losses of the steps before the checkpoint came back with it

    # a checkpoint of other inputs (another identity) is not resumed from: deleted, training starts over
    shutil.rmtree(ckpt)
    with pytest.raises(Killed):
        trained(cfg.train, kill_at=2, identity="old")
    logs = []
    again, _, steps = trained(cfg.train, identity="new", logs=logs)
    assert logs == [] and steps == list(range(8))
    assert all(torch.equal(again[n], uninterrupted[n]) for n in uninterrupted)
    assert [p.name for p in ckpt.iterdir()] == ["step_00000008"]  # the last one; the stage deletes it


def test_checkpointed_lora_run_gives_the_bits_of_a_plain_one_and_leaves_no_checkpoint(lora_run, tiny_model, tmp_path):
    rd = run_in_process(
        lora_config(tiny_model, tmp_path, train={"checkpoint_every": 1, "gradient_checkpointing": True})
    )
    hashes = {k: e["outputs"] for k, e in rd.manifest()["stages"].items()}
    assert hashes == {k: e["outputs"] for k, e in lora_run.manifest()["stages"].items()}
    assert not list(rd.root.rglob("train_checkpoint"))


# ------------------------------------------------------------------ keep_policies


def test_keep_policies_deletes_old_policies_and_a_rerun_rebuilds_them(tiny_model, tmp_path, capsys):
    cfg = lora_config(
        tiny_model, tmp_path / "all", iterations=3, lora={"r": 0}, method={"name": "sppo", "apo_alpha": 0.3}
    )
    full = run_in_process(cfg)
    lines: list[str] = []
    kept = run_in_process({**cfg, "runs_dir": str(tmp_path / "kept"), "keep_policies": 1}, log=lines.append)
    root = kept.root
    on_disk = sorted(str(p.relative_to(root)) for p in root.glob("iter_*/policy*"))
    assert on_disk == ["iter_2/policy", "iter_2/policy_trained"]
    assert "[keep_policies] deleted iter_0/policy, iter_0/policy_trained (keep_policies = 1)" in lines
    stages = kept.manifest()["stages"]
    # the same computation: every hash is the full run's, the deleted ones moved to `pruned`
    for key, entry in full.manifest()["stages"].items():
        mine = stages[key]
        assert {**mine["outputs"], **mine.get("pruned", {})} == entry["outputs"], key
    assert sorted(stages["iter_0/train"]["pruned"]) == ["iter_0/policy", "iter_0/policy_trained"]
    assert main(["status", str(root), "--verify"]) == 0  # deleted on purpose is not damaged
    assert "verified" in capsys.readouterr().out

    # π_3 is damaged: its training stage reruns and needs π_2 (deleted), whose stage needs π_1 (deleted)...
    (root / "iter_2" / "policy" / "model.safetensors").write_bytes(b"bit rot")
    data = json.loads((root / "manifest.json").read_text())
    del data["stages"]["iter_2/eval"]  # a stage still to run that reads π_3
    write_json(root / "manifest.json", data)
    lines.clear()
    rd, saved = load_run(root)
    run(make_context(saved, rd, progress=False, log=lines.append))
    rd.lock.release()
    rebuilt = [line for line in lines if "deleted by keep_policies and is needed again" in line]
    assert rebuilt == [
        f"[iter_{t}/train] iter_{t}/policy was deleted by keep_policies and is needed again; running "
        f"iter_{t}/train again to rebuild it"
        for t in (1, 0)
    ], lines
    assert sorted(str(p.relative_to(root)) for p in root.glob("iter_*/policy*")) == on_disk
    for key, entry in full.manifest()["stages"].items():
        mine = rd.stage(key)
        assert {**mine["outputs"], **mine.get("pruned", {})} == entry["outputs"], key
    assert sha256_of(root / "iter_2" / "policy") == full.stage("iter_2/train")["outputs"]["iter_2/policy"]


@pytest.mark.vllm
def test_the_vllm_engine_is_checked_after_it_reloads(tmp_path):
    """A real vLLM engine (skipped where vLLM is not installed: run under .venv-vllm with -m vllm): a
    two-iteration run reloads π_1 into the running engine and passes the check; the same run with a
    reload that forgets to move the engine (it keeps π_0's weights and says so) stops before sampling."""
    pytest.importorskip("vllm", reason="vLLM is not installed (make setup-vllm)")
    import subprocess

    model = make_tiny_model(tmp_path / "model", seed=1, hidden=128)  # vLLM's CPU attention: head_dim 32
    cfg = lora_config(
        model,
        tmp_path / "runs",
        lora={"r": 0},
        eval={"max_new_tokens": 4, "limit": 2, "batch_size": 2},
        generation={
            "backend": "vllm",
            "k": 4,
            "max_new_tokens": 8,
            "batch_size": 8,
            "dtype": "float32",
            "shard_size": 8,
        },
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    stale = (
        "import sys; sys.path.insert(0, {tests!r}); import sparring.generation.vllm as v\n"
        "def reload(self, policy_dir):  # the bug: the engine is not moved, and keeps saying what it holds\n"
        "    pass\n"
        "v.VLLMEngine.reload = reload\n"
        "import sparring.cli\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(sparring.cli.main(sys.argv[1:]))\n"
    ).format(tests=str(HERE))
    (tmp_path / "stale_run.py").write_text(stale)
    (tmp_path / "good_run.py").write_text(stale.replace("v.VLLMEngine.reload = reload\n", ""))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    good = subprocess.run(
        [sys.executable, str(tmp_path / "good_run.py"), "run", str(recipe), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert good.returncode == 0, good.stderr[-4000:]
    bad = subprocess.run(
        [sys.executable, str(tmp_path / "stale_run.py"), "run", str(recipe), "--no-progress", "--name", "stale"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert bad.returncode == 2, bad.stderr[-4000:]
    assert "the vLLM engine holds" in bad.stderr and "stale" in bad.stderr
    assert RunDir(tmp_path / "runs" / "stale").is_done("iter_0/train")
    assert not RunDir(tmp_path / "runs" / "stale").is_done("iter_0/eval")  # π_1's eval never sampled π_0


# ------------------------------------------------------------------ the LM head in chunks (HEAD_CHUNK)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_the_chunked_lm_head_gives_the_log_probs_and_gradients_of_the_whole_head(
    lora_run, tiny_model, monkeypatch, bf16
):
    """sparring.train.HEAD_CHUNK > 0 computes the head and the log-softmax a chunk of response positions
    at a time and recomputes them in the backward pass: the same log-probs and gradients as the whole
    head at once (float rounding; in bf16, the rounding of bf16 matmuls)."""
    import sparring.train as st
    from sparring.methods import get_method

    cfg = config_from_dict(lora_config(tiny_model, Path("unused")))
    rows = _rows(lora_run)[:4]
    pad = load_tokenizer(str(tiny_model)).pad_token_id
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    results = []
    for chunk in (0, 7):  # 7: several chunks and a short last one
        monkeypatch.setattr(st, "HEAD_CHUNK", chunk)
        model = load_model(str(tiny_model), "float32")
        model.train()
        with autocast:
            out = st.packed_logps(
                model, [r["prompt_ids"] for r in rows], [[r["w_ids"] for r in rows], [r["l_ids"] for r in rows]], pad
            )
        loss = get_method("sppo").loss(
            dict(zip(("w", "l"), out)),
            {
                k: torch.tensor([r[k] for r in rows], dtype=torch.float32)
                for k in rows[0]
                if isinstance(rows[0][k], float)
            },
            cfg.method,
        )
        loss.sum().backward()
        results.append(([o.logp.detach() for o in out], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (whole, whole_grads), (chunked, chunked_grads) = results
    tol = {"rtol": 2e-2, "atol": 2e-3} if bf16 else {"rtol": 1e-4, "atol": 1e-5}  # fp32: summation order only
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, **tol)
    assert whole_grads.keys() == chunked_grads.keys()
    for name in whole_grads:
        scale = float(whole_grads[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(
            chunked_grads[name] / scale, whole_grads[name] / scale, **tol, msg=lambda m, n=name: f"{n}: {m}"
        )
