"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the command stops, and exits with 143 instead of 130."""


class Interrupted(Exception):
    """A search or benchmark stopped by a signal, after recording what had finished."""

    def __init__(self, search_id: str, exit_code: int):
        super().__init__(search_id)
        self.search_id, self.exit_code = search_id, exit_code
