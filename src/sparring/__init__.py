"""sparring: self-play preference optimization for language models.

From Python (docs/python.md): `sparring.run(recipe_or_config, **settings)` runs or resumes what
`sparring run` runs and returns its summary; `sparring.open_run(run_dir)` reads a run as pandas and
numpy objects. Importing sparring stays light: both import the training stack only when called.
"""

__version__ = "0.1.0"

from sparring.api import RunView, open_run, run  # noqa: E402  (after __version__, which the CLI imports)

__all__ = ["RunView", "__version__", "open_run", "run"]
