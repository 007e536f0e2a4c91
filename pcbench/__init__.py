"""pcbench: benchmark and hyperparameter search for representation-transfer methods."""

from pathlib import Path

__version__ = "0.1.0"

# search_spaces/ and suites/ live beside the package in the repository (editable install).
REPO_ROOT = Path(__file__).resolve().parents[1]
