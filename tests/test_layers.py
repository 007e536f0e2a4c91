"""Layers only look down (docs/architecture.md): the import contracts in pyproject.toml, checked
by import-linter on the package's real import graph."""

import os
from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    status = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True)
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    assert "3 kept, 0 broken" in out
    assert not os.path.exists(REPO / ".import_linter_cache")  # nothing written into the checkout
