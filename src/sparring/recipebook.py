"""The shipped recipes by name: `sparring run sppo` finds recipes/sppo.yaml; `sparring recipes` lists them."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from sparring.errors import UserError


def recipes_dir() -> Path:
    return Path(__file__).parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def judge_recipes() -> dict[str, Path]:
    """`sparring train-judge`'s shipped recipes (recipes/judges/NAME.yaml) by name."""
    return {p.stem: p for p in sorted((recipes_dir() / "judges").glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """The first sentence of a recipe's leading comment (what it runs)."""
    text = ""
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = f"{text} {line.lstrip('#').strip()}".strip()
        if text.endswith("."):
            break
        # a sentence ends at a full stop before a capital ("Wu et al. 2024" does not end one)
        end = re.search(r"(?<!\bal)\.\s+(?=[A-Z])", text)
        if end:
            return text[: end.start() + 1]
    return text


def find_recipe(name: str) -> Path | None:
    """The shipped recipe for `sparring run NAME` (also `recipes/NAME.yaml` when no such file is here, as
    the README writes it); None when `name` is an existing file or another path, left to load_config.
    A bare name that is no shipped recipe is a UserError naming the nearest one."""
    name = str(name)
    path = Path(name).expanduser()
    if path.exists() or "=" in name:
        return None
    recipes = shipped_recipes()
    if path.suffix in (".yaml", ".yml"):
        if path.parent.name == "recipes" and path.stem in recipes:
            return recipes[path.stem]
        return None
    if "/" in name or os.sep in name:
        return None
    if name in recipes:
        return recipes[name]
    near = difflib.get_close_matches(name, list(recipes), n=1)
    raise UserError(
        f"{name!r} is neither a recipe file nor a shipped recipe"
        + (f"; did you mean {near[0]!r}?" if near else "")
        + f" (shipped: {', '.join(recipes)}; `sparring recipes` lists them)"
    )
