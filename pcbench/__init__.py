"""pcbench: benchmark and hyperparameter search for representation-transfer methods."""

from importlib.resources import files
from pathlib import Path

__version__ = "0.1.0"


def bundled(folder: str) -> Path:
    """A folder shipped inside the package: `search_spaces` or `suites`. They live at the top of
    the repository and are linked into pcbench/, so a checkout and an installed wheel alike find
    them here, never through a repository root."""
    # pcbench runs from files on disk (Ray's workers import it), so the resource is a real path
    return Path(str(files(__name__) / folder))


# The Python API (pcbench/api.py), loaded on first use: `import pcbench` stays light.
_API = ("search", "run", "benchmark", "report", "read_trials", "read_leaderboard")


def __getattr__(name: str):
    if name in _API:
        from pcbench import api
        return getattr(api, name)
    raise AttributeError(f"module 'pcbench' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
