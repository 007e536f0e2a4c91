"""What a running search shows. In a terminal: rich progress bars, one per method search, with
the best validation accuracy so far. Elsewhere (`ray job submit`, output piped to a file),
where live bars print nothing until the end: one plain line per finished trial, and a summary
of the search every few minutes. Light: rich only."""

import contextlib
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pcbench.selection import trial_status

SUMMARY_EVERY_S = 180.0


def _percent(value) -> str:
    return "" if value is None or value != value else f"{100 * value:.2f}%"


def _key(config) -> str:
    return f"{config.method.name:>6} {config.teacher}->{config.student}"


def _restarted(key: str, trial_id: str, reason: str) -> str:
    return f"{key.strip()} trial {trial_id} lost its process ({reason}); it goes on from its last checkpoint"


class ProgressBars:
    """One bar per method search (the trials of its search and final runs)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.best: dict[str, float] = {}
        self.trial_key: dict[str, str] = {}

    def say(self, line: str) -> None:
        self.progress.console.print(line, highlight=False)

    def on_search(self, item, trials: int) -> None:
        key = _key(item.template)
        self.tasks[key] = self.progress.add_task(key, total=trials)

    def trial_started(self, trial_id, config, knobs, stage):
        self.trial_key[trial_id] = _key(config)

    def trial_epoch(self, trial_id, metrics):
        key = self.trial_key[trial_id]
        if "val_acc" not in metrics or "diverged" in metrics:  # a final run has no validation split
            return
        self.best[key] = max(self.best.get(key, 0.0), metrics["val_acc"])
        self.progress.update(self.tasks[key], description=f"{key}  best val {100 * self.best[key]:.1f}%")

    def trial_restarted(self, trial_id, reason):
        self.say(_restarted(self.trial_key.get(trial_id, ""), trial_id, reason))

    def trial_finished(self, trial_id, error):
        key = self.trial_key.pop(trial_id)
        if key in self.tasks:
            self.progress.advance(self.tasks[key])
        if error:
            self.progress.console.print(f"[yellow]{key.strip()} trial {trial_id} failed:[/yellow] {error}")


class PlainLog:
    """A line per finished trial (method, pair, trial, stage, epochs, validation accuracy, test
    accuracy where the trial reports it, status, elapsed) and every few minutes a line summing
    up the search so far."""

    def __init__(self, console: Console, clock=time.monotonic):
        self.console, self.clock = console, clock
        self.started = self.last_summary = clock()
        self.running: dict[str, dict[str, Any]] = {}
        self.finished: dict[str, int] = {}
        self.best: dict[str, float] = {}

    def say(self, line: str) -> None:
        self.console.print(line, highlight=False, soft_wrap=True)

    def on_search(self, item, trials: int) -> None:
        self.say(f"{_key(item.template).strip()}: starting")

    def trial_started(self, trial_id, config, knobs, stage):
        self.running[trial_id] = {"key": _key(config).strip(), "stage": stage.phase,
                                  "planned": config.train.epochs, "since": self.clock(), "last": {}}

    def trial_epoch(self, trial_id, metrics):
        self.running[trial_id]["last"] = metrics

    def trial_restarted(self, trial_id, reason):
        self.say(_restarted(self.running.get(trial_id, {}).get("key", ""), trial_id, reason))

    def trial_finished(self, trial_id, error):
        trial = self.running.pop(trial_id)
        last = trial["last"]
        status = trial_status(error, "diverged" in last, last.get("epoch"), trial["planned"])
        val = last.get("val_acc")
        shown, test = _percent(val), _percent(last.get("test_acc"))
        # a search trial has validation accuracy only; a final run (no validation split) test only
        self.say(f"{trial['key']} trial {trial_id} {trial['stage']}: {status}, epochs "
                 f"{int(last.get('epoch', 0))}/{trial['planned']}, val acc {shown or '-'}"
                 + (f", test acc {test}" if test else "")
                 + f", {self.clock() - trial['since']:.0f} s" + (f" ({error})" if error else ""))
        self.finished[status] = self.finished.get(status, 0) + 1
        if shown:
            self.best[trial["key"]] = max(self.best.get(trial["key"], 0.0), val)
        if self.clock() - self.last_summary >= SUMMARY_EVERY_S:
            self.summary()

    def summary(self) -> None:
        self.last_summary = self.clock()
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.finished.items())) or "none yet"
        best = "; ".join(f"{key} best val {100 * v:.2f}%" for key, v in sorted(self.best.items()))
        self.say(f"after {(self.last_summary - self.started) / 60:.0f} min: trials finished: {counts}; "
                 f"{len(self.running)} running" + (f"; {best}" if best else ""))


@contextlib.contextmanager
def showing_progress(console: Console):
    """Bars in a terminal, plain lines elsewhere; yields the listener (with `say` and
    `on_search`)."""
    if not console.is_terminal:
        yield PlainLog(console)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        yield ProgressBars(progress)
