"""The pcbench command line (commands.py): each command parses its options and calls one
function of the API. Input is validated before Ray starts; a user error prints one line naming
the fix and exits with code 2."""

import atexit
import contextlib
import os
import sys
import threading

from pcbench.cli.commands import app

__all__ = ["app", "exit_now", "main"]


def main() -> None:
    """The `pcbench` executable: the command, then `exit_now`. `app` itself, which tests call
    in-process, exits normally."""
    try:
        app(prog_name="pcbench")
        code = 0
    except SystemExit as done:
        code = done.code
    exit_now(code)


def exit_now(code: int | str | None = 0) -> None:
    """End the process once its work is done (files written, a local Ray instance stopped).
    Python would spend seconds tearing down the modules torch, Ray and MLflow loaded; this does
    what that teardown must (joins the threads still working, runs the exit handlers, flushes
    the output) and leaves the rest to the operating system. `code` as sys.exit takes it."""
    # the interpreter's own first steps at exit: the threading module's exit hooks (idle thread
    # pools told to stop), then every non-daemon thread joined
    threading._shutdown()
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone (`| head`), or closed
            stream.flush()
    os._exit(code or 0)
