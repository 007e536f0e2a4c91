"""The pcbench command line (commands.py): each command parses its options and calls one
function of the API. Input is validated before Ray starts; a user error prints one line naming
the fix and exits with code 2."""

import atexit
import os
import sys
import threading

from pcbench.cli.commands import app

__all__ = ["app", "main"]


def main() -> None:
    """The `pcbench` executable: the command, then a quick exit. Once the command has returned
    (its files written, its local Ray instance stopped), Python would spend seconds tearing down
    the modules torch, Ray and MLflow loaded; the exit does what that teardown must (joins the
    threads still working, runs the exit handlers, flushes the output) and leaves the rest to
    the operating system. `app` itself, which tests call in-process, exits normally."""
    try:
        app(prog_name="pcbench")
        code = 0
    except SystemExit as done:
        code = done.code
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
