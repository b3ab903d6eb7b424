"""train: π_{t+1} from π_t and the iteration's rows -> iter_t/policy (+ iter_t/adapter with LoRA).

Full fine-tuning trains every weight; with LoRA (lora.r > 0) a fresh adapter is trained on π_t and
merged into it, so iter_t/policy is a plain model either way, and the adapter is kept in iter_t/adapter/.
The method's post-training hooks (APO) change the trained weights before they are saved. The policy
carries a fingerprint of its trained weights (sparring.models.FINGERPRINT_FILE), which the next sampler
that loads it checks. With train.checkpoint_every the training state is saved in iter_t/train_checkpoint/
as it goes, and a killed stage resumes from there; the checkpoints are deleted once the policy is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from sparring.rundir import atomic_dir, rel, sha256_of, stage_key, write_json
from sparring.stages.context import Context, stage_seed
from sparring.tables import read_rows


def train(ctx: Context, t: int) -> tuple[list[Path], dict]:
    from sparring.models import load_model, load_tokenizer
    from sparring.train import train as train_rows

    cfg, rd = ctx.cfg, ctx.rd
    rows = read_rows(rd.rows(t))
    policy = ctx.policy_at(t)
    tok = load_tokenizer(policy)
    seed = stage_seed(cfg.seed, "train", t) % (2**31)

    def fresh(device):
        """π_t, with a fresh adapter when LoRA is on (the same adapter for the same seed)."""
        model = load_model(policy, "float32").to(device)
        if cfg.lora.r > 0:
            from sparring.lora import attach

            model = attach(model, cfg.lora, seed)
        return model

    model = fresh(ctx.dist.device)
    if rows and "prompt_ids" in rows[0]:
        result = train_rows(
            model,
            rows,
            ctx.method,
            cfg.method,
            cfg.train,
            pad_id=tok.pad_token_id,
            seed=seed,
            on_step=lambda r: ctx.metrics({"stage": stage_key(t, "train"), **r}),
            progress=ctx.progress,
            dist=ctx.dist,
            checkpoint_dir=rd.train_checkpoints(t),
            identity=training_identity(ctx, t, policy),
            log=lambda line: ctx.log(f"[iter_{t}/train] {line}"),
        )
    else:
        result = {"steps": 0, "rows": 0}
        ctx.log(f"[iter_{t}/train] no training rows (every prompt's samples tied): π_{t + 1} = π_{t}")
    if ctx.dist.fsdp:
        ctx.log(f"[iter_{t}/train] FSDP: the training model was sharded over {ctx.dist.world} ranks")
        # the trained weights are spread over the ranks (training sharded them): gather them, and rank 0
        # puts them into an unsharded copy to save (the gather is a collective: every rank calls it)
        state = ctx.dist.full_state_dict(model)
        del model
        if ctx.dist.is_main:
            model = fresh("cpu")
            model.load_state_dict(state)
    if not ctx.dist.is_main:  # every rank holds the same weights after the last step; rank 0 saves them
        return [], {}
    outputs = save_policy(ctx, t, model, tok)
    del model
    shutil.rmtree(rd.train_checkpoints(t), ignore_errors=True)  # the policy is written: nothing to resume
    return outputs, result


def save_policy(ctx: Context, t: int, model, tok) -> list[Path]:
    """Write iter_t/policy (and the LoRA adapter, and what the hooks write): the outputs, policy first."""
    from sparring.models import FINGERPRINT_FILE, fingerprint_record
    from sparring.report.cards import write_model_card

    cfg, rd = ctx.cfg, ctx.rd
    outputs = []
    if cfg.lora.r > 0:
        from sparring.lora import merge, save_adapter, targeted_weights

        with atomic_dir(rd.adapter(t)) as tmp:
            # π_t named relative to the run directory (iter_<t-1>/policy), or the run's model for t = 0
            save_adapter(model, tmp, base=cfg.model if t == 0 else rel(t - 1, "policy"))
        changed = targeted_weights(model)
        model = merge(model)
        outputs.append(rd.adapter(t))
    else:
        changed = [name for name, _ in model.named_parameters()]
    model.config.use_cache = True
    for hook in ctx.method.hooks(cfg.method):  # APO: the saved policy is the extrapolated one
        outputs += hook.after_training(rd, t, model, tok, cfg.model)
    with atomic_dir(rd.policy(t)) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # what the next sampler must hold: checked when generate / eval load this policy
        write_json(tmp / FINGERPRINT_FILE, fingerprint_record(model, changed))
        # the card says what this policy is; its held-out metrics are added once they exist (loop.run)
        write_model_card(tmp, run_dir=rd.root, iteration=t, cfg=cfg.to_dict(), summary=None)
    return [rd.policy(t), *outputs]


def training_identity(ctx: Context, t: int, policy: str) -> str:
    """What a training stage computes from, as one digest: a checkpoint of iter_t/train is resumed only
    by a stage with the same rows, π_t and settings (a healed or --force'd stage starts over)."""
    rd = ctx.rd
    entry = rd.stage(stage_key(t - 1, "train")) if t > 0 else None
    pi_t = (entry or {}).get("outputs", {}).get(rel(t - 1, "policy"), policy)
    cfg = ctx.cfg.to_dict()
    # FSDP's checkpoints hold the optimizer state by parameter name, a plain run's by position: a
    # checkpoint is resumed only by the same kind of launch (the number of ranks may differ)
    what = {
        "rows": sha256_of(rd.rows(t)),
        "policy": pi_t,
        "seed": cfg["seed"],
        "train": cfg["train"],
        "method": cfg["method"],
        "lora": cfg["lora"],
        "fsdp": ctx.dist.fsdp,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
