"""`train_judge`: read the pairs, train the head (and the backbone's adapter or weights), write the judge.

Resumable: the work lives in `OUTPUT.train-judge/` next to the output — the settings and the data's
fingerprint (a resume with others is refused), the cached features (mode head; one file per chunk of
texts, so a kill loses at most one chunk) and a checkpoint after each epoch (the trainable weights, the
optimizer, the history). A killed run started again continues after its last completed epoch and ends
with the bits an uninterrupted one gives: each epoch's order of pairs and its RNG are seeded from
(seed, epoch), and the constant learning rate needs no schedule state. The output directory is written
as a whole (sparring.rundir.atomic_dir) and the work directory removed after it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from sparring.errors import UserError
from sparring.judgetrain import data as D
from sparring.judgetrain.model import Texts, hidden_states, load_backbone, make_head, save_judge
from sparring.judgetrain.settings import TrainJudgeSettings

CHUNK = 512  # texts per feature file (mode head)
INFO = "train_judge.json"  # the output's record: settings, data, history, accuracy
RECORD = "record.json"
CHECKPOINT = "checkpoint.pt"


def work_dir(output: Path) -> Path:
    return output.with_name(output.name + ".train-judge")


def _step(loss, params, optimizer, max_grad_norm: float) -> float:
    """One optimizer step on a batch's mean loss (a seam: the tests stop a run here, as a kill would)."""
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _tqdm(progress: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kw)


def _read_data(cfg: TrainJudgeSettings):
    train = D.read_pairs(cfg.data.train, cfg.data.fields)
    if cfg.data.limit:
        train = train[: cfg.data.limit]
    if cfg.data.heldout:
        held = D.read_pairs(cfg.data.heldout, cfg.data.fields)
    else:
        train, held = D.split_heldout(train, cfg.data.heldout_fraction, cfg.seed)
    return train, held


def _resample(cfg: TrainJudgeSettings, train):
    """(the pairs trained on, what data.bootstrap drew or None): bagging after the held-out split."""
    if not cfg.data.bootstrap:
        return train, None
    return D.bootstrap(train, cfg.seed)


def _check_record(work: Path, record: dict) -> None:
    from sparring.config import diff_configs

    path = work / RECORD
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    done = (work / CHECKPOINT).is_file() or any((work / "features").glob("*.safetensors"))
    if old != record and not done:  # nothing computed yet (it stopped at a bad model, say): start afresh
        shutil.rmtree(work)
    elif old != record:
        diffs = diff_configs(old, record)
        raise UserError(
            f"{work}: an unfinished training with other settings or data ({'; '.join(diffs[:5])}); "
            f"resume it with its own settings, or delete {work} to start over"
        )


def train_judge(cfg: TrainJudgeSettings, *, progress: bool = True, log=print) -> dict:
    """Train the judge `cfg` describes and write it to cfg.output; returns its record (INFO)."""
    from sparring.rundir import atomic_dir, atomic_path, write_json

    t0 = time.monotonic()
    out = Path(cfg.output).expanduser()
    train, held = _read_data(cfg)  # every data problem before any work
    if not train:
        raise UserError("data.train: no train pairs left after the held-out split")
    record = {"settings": _recorded(cfg), "train_data": D.fingerprint(train), "heldout_data": D.fingerprint(held)}
    data_train = train  # the data as read (the record's fingerprint, the card's count)
    train, drawn = _resample(cfg, train)
    if out.exists():
        info = out / INFO
        if info.is_file() and json.loads(info.read_text()).get("record") == record:
            log(f"{out}: already trained with these settings and data; nothing to do")
            return json.loads(info.read_text())
        raise UserError(f"output = {out}: it exists; choose another output directory or remove it")
    work = work_dir(out)
    _check_record(work, record)

    from sparring.dist import current
    from sparring.hardware import model_dtype

    device = current().device
    dtype = model_dtype(cfg.dtype, device, "dtype")
    head_only = cfg.mode == "head"
    # lora / full train float32 weights (bf16 autocast where the dtype is bf16); head keeps the frozen
    # backbone in its dtype
    tok, backbone, config, prefix = load_backbone(cfg.model, dtype if head_only else "float32")
    autocast = not head_only and dtype == "bfloat16"
    backbone.to(device)
    work.mkdir(parents=True, exist_ok=True)  # after the model loaded: a bad one leaves nothing behind
    write_json(work / RECORD, record)
    texts = Texts(tok, cfg.kind, cfg.max_length)
    index: dict[tuple, int] = {}
    rows: list[tuple] = []

    prompt_head = cfg.kind == "gpm" and cfg.gpm.prompt_head

    def row_index(row) -> int:
        if row not in index:
            index[row] = len(rows)
            rows.append(row)
        return index[row]

    def text_index(messages, response) -> tuple[int, int | None]:
        """(the response's row, its prompt row with gpm.prompt_head, else None)."""
        row = texts.row(messages, response)
        return row_index(row), (row_index(texts.prompt_row(messages, row[0])) if prompt_head else None)

    def indices(pairs) -> dict:
        """The pairs as tensors: w, l (rows), p, m, and with a prompt head xw, xl (their prompt rows)."""
        w = [text_index(p.messages, p.chosen) for p in pairs]  # every chosen row first: the rows' order
        l = [text_index(p.messages, p.rejected) for p in pairs]  # (and so the feature batches) as before
        out = {
            "w": torch.tensor([i for i, _ in w], dtype=torch.long),
            "l": torch.tensor([i for i, _ in l], dtype=torch.long),
            "p": torch.tensor([p.p for p in pairs], dtype=torch.float32),
            "m": torch.tensor([p.margin for p in pairs], dtype=torch.float32),
        }
        if prompt_head:
            out["xw"] = torch.tensor([x for _, x in w], dtype=torch.long)
            out["xl"] = torch.tensor([x for _, x in l], dtype=torch.long)
        return out

    train_t, held_t = indices(train), indices(held)
    head = make_head(cfg, config.get_text_config().hidden_size).to(device)
    fbs = cfg.train.feature_batch_size

    feature_seconds = feature_texts = None
    if head_only:
        backbone.eval().requires_grad_(False)
        t_features = time.monotonic()
        if cfg.features_cache:
            from sparring.judgetrain.features import FeatureCache

            cache = FeatureCache.open(cfg.features_cache, cfg.model, config, dtype, device.type)
            features, feature_texts = _shared_features(backbone, rows, cache, device, tok.pad_token_id, fbs, progress)
        else:
            features, feature_texts = _cached_features(backbone, rows, work, device, tok.pad_token_id, fbs, progress)
        feature_seconds = round(time.monotonic() - t_features, 1)
        if cfg.features_cache:
            log(
                f"features: {feature_texts['computed']} texts computed, {feature_texts['read']} read from "
                f"{feature_texts['cache']} in {feature_seconds} s"
            )

        def feats(idx):
            return features[idx]

        model = torch.nn.ModuleDict({"head": head})
    else:
        if cfg.mode == "lora":
            backbone = _with_lora(backbone, cfg)
        backbone.train()

        def feats(idx):
            return hidden_states(backbone, [rows[i] for i in idx.tolist()], device, tok.pad_token_id, autocast)

        model = torch.nn.ModuleDict({"head": head, "backbone": backbone})

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start, history = 0, []
    ckpt = work / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        with torch.no_grad():
            for n, p in named:
                p.copy_(state["trainable"][n])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]
        log(f"resuming after epoch {start} of {cfg.train.epochs} ({ckpt})")

    def features_of(batch: dict):
        """(h_w, h_l, h_x): h_x the prompt rows' (h_xw, h_xl) with a prompt head, else None."""
        h_x = (feats(batch["xw"]), feats(batch["xl"])) if "xw" in batch else None
        return feats(batch["w"]), feats(batch["l"]), h_x

    def evaluate(t: dict) -> dict:
        if not len(t["w"]):
            return {"accuracy": None, "loss": None}
        model.eval()
        z, losses = [], []
        with torch.no_grad():
            for s in range(0, len(t["w"]), fbs):
                batch = {k: v[s : s + fbs] for k, v in t.items()}
                hw, hl, hx = features_of(batch)
                z.append(head.logits(hw, hl, hx).double().cpu())
                losses.append(head.loss(hw, hl, batch["p"].to(device), batch["m"].to(device), hx).double().cpu())
        model.train()
        return {"accuracy": accuracy(torch.cat(z), t["p"]), "loss": float(torch.cat(losses).mean())}

    n = len(train_t["w"])
    steps = math.ceil(n / cfg.train.batch_size)
    for epoch in range(start, cfg.train.epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout (lora, full): the same bits after a resume
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(n))
        bar = _tqdm(progress, total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="step")
        total = 0.0
        for s in range(steps):
            b = order[s * cfg.train.batch_size : (s + 1) * cfg.train.batch_size]
            batch = {k: v[b] for k, v in train_t.items()}
            hw, hl, hx = features_of(batch)
            loss = head.loss(hw, hl, batch["p"].to(device), batch["m"].to(device), hx).mean()
            value = _step(loss, params, opt, cfg.train.max_grad_norm)
            total += value * len(b)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()
        entry = {
            "epoch": epoch + 1,
            "train_loss": total / n,
            **{f"heldout_{k}": v for k, v in evaluate(held_t).items()},
        }
        history.append(entry)
        log(
            f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f}"
            + (f", held-out accuracy {entry['heldout_accuracy']:.3f}" if entry["heldout_accuracy"] is not None else "")
        )
        state = {
            "epoch": epoch + 1,
            "trainable": {k: v.detach() for k, v in named},
            "optimizer": opt.state_dict(),
            "history": history,
        }
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    final_train, final_held = evaluate(train_t), evaluate(held_t)
    if cfg.mode == "lora":
        backbone = backbone.merge_and_unload()
    info = {
        "record": record,
        "kind": cfg.kind,
        "mode": cfg.mode,
        "model": cfg.model,
        "pairs": {"train": len(train), "heldout": len(held)},  # train: with data.bootstrap, repeats counted
        "bootstrap": drawn,  # data.bootstrap: prompts and pairs drawn (None: off)
        "texts": len(rows),
        "truncated": texts.truncated,
        "heldout_accuracy": final_held["accuracy"],
        "heldout_loss": final_held["loss"],
        "train_accuracy": final_train["accuracy"],
        "train_loss": final_train["loss"],
        "history": history,
        "seconds": round(time.monotonic() - t0, 1),
        "feature_seconds": feature_seconds,  # mode head: embedding the texts (or reading the cached ones)
        # mode head: how many texts were computed and how many read (from features_cache, or from the work
        # directory's chunks on a resume)
        "feature_texts": feature_texts,
        "device": str(device),
        "dtype": dtype,
    }
    from sparring.judgetrain.card import model_card
    from sparring.models import quiet_loading

    with atomic_dir(out) as tmp, quiet_loading():  # quiet: transformers' bar for writing one shard
        save_judge(tmp, cfg.kind, backbone, config, prefix, head, tok)
        write_json(tmp / INFO, info)
        (tmp / "README.md").write_text(model_card(cfg, info, data_train, held))
    shutil.rmtree(work, ignore_errors=True)
    return info


def accuracy(z, p) -> float | None:
    """The fraction of pairs the judge orders as their label does: z > 0 where p > ½, z < 0 where p < ½
    (a tie z = 0 counts ½; pairs labelled exactly ½ have no order and are left out)."""
    p = p.double()
    keep = p != 0.5
    if not bool(keep.any()):
        return None
    sign = torch.where(p[keep] > 0.5, 1.0, -1.0).double()
    zz = z[keep] * sign
    return float(((zz > 0).double() + 0.5 * (zz == 0).double()).mean())


def _recorded(cfg: TrainJudgeSettings) -> dict:
    """The settings a resume and a finished output are compared on: all but features_cache, which changes
    where features are read from, never their bits."""
    settings = cfg.to_dict()
    del settings["features_cache"]
    return settings


def _embed(backbone, rows, part: list[int], device, pad_id: int, batch_size: int):
    """h [len(part), H] (float32, on the CPU) of rows[part], in forward passes of batch_size texts."""
    with torch.inference_mode():
        return torch.cat(
            [
                hidden_states(backbone, [rows[i] for i in part[s : s + batch_size]], device, pad_id).cpu()
                for s in range(0, len(part), batch_size)
            ]
        )


def _shared_features(backbone, rows, cache, device, pad_id: int, batch_size: int, progress: bool):
    """(h [N, H] float32 of every text, counts): the texts in `cache` (a features.FeatureCache) read, the
    others computed longest first in chunks of CHUNK texts (so the batches are those of _cached_features
    when nothing is cached) and each chunk written to the cache as soon as it is computed."""
    keys = [cache.key(r) for r in rows]
    found = cache.read(keys)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    missing = [i for i in order if keys[i] not in found]
    out = None
    if found:
        first = next(iter(found.values()))
        out = torch.zeros((len(rows), first.shape[0]), dtype=torch.float32)
        for i, key in enumerate(keys):
            if key in found:
                out[i] = found[key]
    bar = _tqdm(progress, total=len(missing), desc="features", unit="text")
    for start in range(0, len(missing), CHUNK):
        part = missing[start : start + CHUNK]
        h = _embed(backbone, rows, part, device, pad_id, batch_size)
        cache.write([keys[i] for i in part], h)
        if out is None:
            out = torch.zeros((len(rows), h.shape[1]), dtype=torch.float32)
        out[part] = h
        bar.update(len(part))
    bar.close()
    counts = {"computed": len(missing), "read": len(rows) - len(missing), "cache": str(cache.dir)}
    return out.to(device), counts


def _cached_features(backbone, rows, work: Path, device, pad_id: int, batch_size: int, progress: bool):
    """(h [N, H] (float32) of every text, counts), cached under work/features/ one chunk of CHUNK texts per
    file: longest first, so a batch pads little; a chunk already on disk is read, not recomputed."""
    from safetensors.torch import load_file, save_file

    from sparring.rundir import atomic_path

    folder = work / "features"
    folder.mkdir(exist_ok=True)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out = None
    read = 0
    bar = _tqdm(progress, total=len(rows), desc="features", unit="text")
    for c, start in enumerate(range(0, len(order), CHUNK)):
        part = order[start : start + CHUNK]
        path = folder / f"{c:05d}.safetensors"
        if path.is_file():
            h = load_file(str(path))["h"]
            read += len(part)
        else:
            h = _embed(backbone, rows, part, device, pad_id, batch_size)
            with atomic_path(path) as tmp:
                save_file({"h": h.contiguous()}, str(tmp))
        if out is None:
            out = torch.zeros((len(rows), h.shape[1]), dtype=torch.float32)
        out[part] = h
        bar.update(len(part))
    bar.close()
    return out.to(device), {"computed": len(rows) - read, "read": read, "cache": None}


def _with_lora(backbone, cfg: TrainJudgeSettings):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules
    )
    torch.manual_seed(cfg.seed)  # the adapter's initialisation (peft draws lora_A from the global RNG)
    try:
        return get_peft_model(backbone, lora)
    except ValueError as exc:
        raise UserError(f"lora.target_modules = {cfg.lora.target_modules}: {str(exc).splitlines()[0]}") from None
