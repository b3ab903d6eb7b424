"""`features_cache`: a directory of frozen-backbone features h that trainings in mode head share.

Training several heads on the same pairs (an ensemble, a sweep of settings) embeds the same texts with the
same frozen backbone each time, and that forward pass is almost all of a head-only training's cost. With
`features_cache = DIR`, each text's h (float32) is stored once under DIR and every later training that
needs it reads it instead.

What a key is. A text's key is the sha256 of its namespace and its token row (the token ids and the
position h is read at). So rows that tokenize differently (bt keeps the end of a text without special
tokens, gpm its start with them and its last token set to EOS; another max_length; a prompt row of
gpm.prompt_head) get different keys by themselves. The namespace is the sha256 of what the backbone is:
the `model` string as given, a hash of its resolved config (the config.json it loaded, transformers'
version included), the dtype it ran in, and the device type (cpu / cuda: their kernels round
differently). The cache trusts the model's name and config: it does not fingerprint the weights, so a
directory whose weights changed in place under the same name and config would be served stale features.
Use another cache directory (or delete it) after changing a model's weights in place.

The layout: DIR/<namespace>/backbone.json says in words which backbone the namespace is, and each
DIR/<namespace>/<sha256 of its keys>.safetensors holds one chunk of texts: the tensor `h` [n, H] and, in
its header's metadata, the n keys in row order. A chunk is written to a temporary file and renamed onto
its name (sparring.rundir.atomic_path) after an fsync, so a kill leaves either a whole chunk or none, and
a reader never sees a partial one; two trainings that compute the same chunk at once write the same name
and one rename wins. A reader lists the chunk files once, reads their headers for the keys (not their
tensors), and loads only the chunks holding texts it needs. A file it cannot read is skipped, and its
texts are computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

SUFFIX = ".safetensors"
KEYS = "keys"  # the chunk header's metadata entry: the keys, space-separated, in row order


def config_hash(config) -> str:
    """sha256 of a transformers config's resolved dict (sorted JSON; transformers_version included)."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def namespace(model: str, config, dtype: str, device_type: str) -> tuple[str, dict]:
    """(sha256 naming the backbone, the description it hashes)."""
    about = {"model": model, "config_sha256": config_hash(config), "dtype": dtype, "device": device_type}
    return hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest(), about


def text_key(space: str, ids, at: int) -> str:
    """The key of one token row (ids, the position h is read at) under a backbone's namespace."""
    h = hashlib.sha256(space.encode())
    h.update(f"|{at}|".encode())
    h.update(",".join(map(str, ids)).encode())
    return h.hexdigest()


class FeatureCache:
    """One backbone's namespace of a features_cache directory."""

    def __init__(self, root: Path, space: str, about: dict):
        self.dir = Path(root).expanduser() / space
        self.about = about
        self._index: dict[str, tuple[Path, int]] | None = None

    @classmethod
    def open(cls, root: str | Path, model: str, config, dtype: str, device_type: str) -> FeatureCache:
        space, about = namespace(model, config, dtype, device_type)
        return cls(Path(root), space, about)

    def key(self, row) -> str:
        ids, at = row
        return text_key(self.dir.name, ids, at)

    def index(self) -> dict[str, tuple[Path, int]]:
        """{key: (chunk file, row)} of every readable chunk now in the namespace (read once)."""
        if self._index is None:
            from safetensors import safe_open

            self._index = {}
            for path in sorted(self.dir.glob(f"*{SUFFIX}")) if self.dir.is_dir() else []:
                try:
                    with safe_open(str(path), framework="pt") as fh:
                        keys = (fh.metadata() or {}).get(KEYS, "").split()
                except Exception:  # unreadable (a foreign or damaged file): its texts are computed again
                    continue
                for row, key in enumerate(keys):
                    self._index.setdefault(key, (path, row))
        return self._index

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """{key: h} for those of `keys` the cache holds."""
        from safetensors.torch import load_file

        index = self.index()
        by_file: dict[Path, list[str]] = {}
        for key in dict.fromkeys(keys):
            if key in index:
                by_file.setdefault(index[key][0], []).append(key)
        out = {}
        for path, wanted in by_file.items():
            try:
                h = load_file(str(path))["h"]
            except Exception:  # removed or damaged since it was listed: computed again
                continue
            for key in wanted:
                out[key] = h[index[key][1]].clone()
        return out

    def write(self, keys: list[str], h: torch.Tensor) -> None:
        """Store one chunk (h [n, H] for `keys`), atomically."""
        from safetensors.torch import save_file

        from sparring.rundir import atomic_path, write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        about = self.dir / "backbone.json"
        if not about.is_file():
            write_json(about, self.about)
        name = hashlib.sha256(" ".join(keys).encode()).hexdigest()
        path = self.dir / f"{name}{SUFFIX}"
        with atomic_path(path) as tmp:
            tensor = h.detach().to("cpu", torch.float32).contiguous()
            save_file({"h": tensor}, str(tmp), metadata={KEYS: " ".join(keys)})
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename must not land before the bytes (a crash, not only a kill)
            finally:
                os.close(fd)
        if self._index is not None:
            for row, key in enumerate(keys):
                self._index.setdefault(key, (path, row))
