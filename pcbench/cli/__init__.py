"""The pcbench command line (commands.py): each command parses its options and calls one
function of the API. Input is validated before Ray starts; a user error prints one line naming
the fix and exits with code 2."""

from pcbench.cli.commands import app

__all__ = ["app"]
