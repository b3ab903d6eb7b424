"""A run directory read leniently, for its model cards, its export and `sparring push`.

Run directories are read leniently (the raw config.yaml, not `load_config`): a run of an earlier
version may hold keys this version dropped, and validating its judge would need the judge's model and
API key variable present, which neither a card nor an export needs. A setting the run's config lacks
reads as this version's default.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from sparring import config as config_module
from sparring.errors import UserError
from sparring.tables import read_yaml_mapping


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a sparring run directory (no config.yaml)")
    return read_yaml_mapping(path)


def setting(cfg: dict, dotted: str) -> Any:
    """cfg's value of a dotted key, or this version's default when the run's config lacks it."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _default(dotted)
        node = node[part]
    return node


def _default(dotted: str) -> Any:
    node: Any = config_module.RunConfig()
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def iterations_on_disk(run_dir: Path) -> list[int]:
    out = []
    for p in Path(run_dir).glob("iter_*"):
        m = re.fullmatch(r"iter_(\d+)", p.name)
        if m and p.is_dir():
            out.append(int(m.group(1)))
    return sorted(out)


def value_text(value: Any) -> str:
    """A config value as inline markdown code (`null`, `true`, JSON for a list or mapping); "" for a section."""
    if dataclasses.is_dataclass(value):
        return ""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"
