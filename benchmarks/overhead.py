"""Where a command's wall time goes: `pcbench demo` and a small search, each in a fresh Python
process as a user would run them, split into the fixed costs and the training.

    python benchmarks/overhead.py [--commands demo search ray] [--label after]

Each command runs through the Python API (the CLI is one call into it) in a child process that
times the stages it passes through: imports, Ray start, the teacher's training on first use,
each method's Tune experiment (from its set-up to its first trial, the trials, and from its
last trial to its end), the report, and the process's exit (Ray stopped, then ended as the
`pcbench` executable ends). Inside the trials it sums what the engine reports per epoch
(training, evaluation, diagnostics, loading data and teacher) and the driver's recording of
each trial event (MLflow, Parquet). `ray` is a bare `ray.init();
ray.shutdown()` in a fresh process, the floor every Ray command pays; `search-cli` is
`pcbench search --method ce --samples 16 --epochs 1 --concurrent 2` as typed, its wall time
only (`search` is the same search through the API, timed by stage). `trial-imports` times, in a
fresh process, what each new trial process imports before its first epoch, module by module:
with a bare Ray start it is the floor under any Ray command that trains.

Writes reports/perf/overhead-<label>.json and prints a Markdown table. Needs Ray and MLflow.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "reports" / "perf"
SEARCH = {"method": ["ce"], "samples": 16, "epochs": 1, "concurrent": 2}
COMMANDS = ("ray", "trial-imports", "search-cli", "search", "demo")
SEARCH_ARGS = ["--method", "ce", "--samples", "16", "--epochs", "1", "--concurrent", "2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=COMMANDS)
    parser.add_argument("--label", default="now", help="names the output file: overhead-<label>.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, Path(args.scratch))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="pcbench-overhead-") as scratch:
        for command in args.commands:
            rows.append(_measure(command, Path(scratch) / command))
            print(_table([rows[-1]]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"overhead-{args.label}.json"
    path.write_text(json.dumps({"machine": _machine(), "rows": rows}, indent=1))
    print(f"\n{_table(rows)}\n\nwrote {path}")


def _measure(command: str, scratch: Path) -> dict:
    """The command in a fresh process; its stages as the child recorded them."""
    scratch.mkdir(parents=True)
    timeline = scratch / "timeline.json"
    started = time.time()
    if command == "search-cli":  # the command itself, as typed: its wall time only
        subprocess.run([sys.executable, "-m", "pcbench", "search", *SEARCH_ARGS], check=True, cwd=scratch,
                       capture_output=True)
        return {"command": command, "wall": time.time() - started}
    subprocess.run([sys.executable, __file__, "--child", command, "--scratch", str(scratch)],
                   check=True, cwd=scratch, env={**os.environ, "OVERHEAD_STARTED": repr(started)})
    wall = time.time() - started
    row = {"command": command, "wall": wall}
    if timeline.exists():
        row.update(json.loads(timeline.read_text()))
        if "api_returned" in row:
            row["exit"] = started + wall - row.pop("api_returned")
    return row


# --- the child: one command, timed --------------------------------------------------------------

class _Clock:
    """Spans (start, end) by stage, and sums of seconds by name."""

    def __init__(self):
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self.sums: dict[str, float] = {}

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            began = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans.setdefault(stage, []).append((began, time.time()))
        setattr(owner, name, timed)

    def add(self, name: str, seconds: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + seconds


class _Trials:
    """A progress listener: when each trial started, first reported and ended, and what its
    epochs say of where the trial's own time went."""

    def __init__(self, clock: _Clock):
        self.clock = clock
        self.events: list[tuple[str, float]] = []  # ("start" | "first" | "end", time)
        self.first_seen: set[str] = set()

    def say(self, line):
        pass

    def on_search(self, item, trials):
        pass

    def trial_started(self, trial_id, config, knobs, stage):
        self.events.append(("start", time.time()))

    def trial_epoch(self, trial_id, metrics):
        process = trial_id.split("-m")[0]  # a cohort's members ("<trial>-m0", ...) load once
        if process not in self.first_seen:
            self.first_seen.add(process)
            self.events.append(("first", time.time() - metrics.get("epoch_seconds", 0.0)))
            self.clock.add("trials: data and teacher loading", metrics.get("setup_seconds", 0.0))
        epoch, evaluation = metrics.get("epoch_seconds", 0.0), metrics.get("eval_seconds", 0.0)
        diagnostics = metrics.get("diagnostics_seconds", 0.0)
        self.clock.add("trials: evaluation", evaluation)
        self.clock.add("trials: diagnostics", diagnostics)
        self.clock.add("trials: training", epoch - evaluation - diagnostics)
        self.clock.add("trials: epochs", 1)

    def trial_finished(self, trial_id, error):
        self.events.append(("end", time.time()))


def _child(command: str, scratch: Path) -> None:
    started = float(os.environ["OVERHEAD_STARTED"])
    if command == "ray":
        import ray
        imported = time.time()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        up = time.time()
        ray.shutdown()
        down = time.time()
        print(f"ray: import {imported - started:.1f} s, init {up - imported:.1f} s, "
              f"shutdown {down - up:.1f} s")
        return
    if command == "trial-imports":
        _time_imports(scratch)
        return
    import pcbench.api as api
    import pcbench.launch.cluster as cluster
    import pcbench.launch.search as search
    import pcbench.recording as recording
    import pcbench.teachers as teachers
    from pcbench.cli import exit_now
    imported = time.time()
    clock = _Clock()
    clock.wrap(cluster, "start_ray", "Ray start")
    clock.wrap(teachers.TeacherStore, "train", "teacher training (first use)")
    clock.wrap(search, "run_search", "experiment")
    clock.wrap(api, "report", "report")
    for event in ("trial_started", "trial_epoch", "trial_finished"):
        clock.wrap(recording.SearchRecorder, event, "recording")
    trials = _Trials(clock)
    stores = {"results": str(scratch / "results"), "teachers": str(scratch / "teachers"),
              "tracking_uri": f"sqlite:///{scratch / 'mlflow.db'}"}
    if command == "demo":
        result = api.benchmark("demo", progress=trials, **stores)
        board = result.report.board
        quality = {"worst_test_acc": float(board["test_acc_mean"].min()),
                   "test_acc": {m: float(a) for m, a in zip(board["method"], board["test_acc_mean"])}}
    else:
        result = api.search(SEARCH["method"], samples=SEARCH["samples"], epochs=SEARCH["epochs"],
                            concurrent=SEARCH["concurrent"], progress=trials, **stores)
        quality = {}
    returned = time.time()
    (scratch / "timeline.json").write_text(json.dumps({
        "imports": imported - started, "api_returned": returned, "trials": result.trials,
        **quality, **_stages(clock, trials, imported, returned)}))
    api.stop_ray()  # then ends as the pcbench executable does
    exit_now(0)


# What a Tune trial process of pcbench imports before it trains, in the order it does: Ray (the
# worker), Tune's function trainable, then pcbench's trial code with what it needs.
TRIAL_IMPORTS = (("import: Ray", "ray"),
                 ("import: Ray Tune's trainable", "ray.tune.trainable.function_trainable"),
                 ("import: PyTorch", "torch"),
                 ("import: torchvision (feature extraction)", "torchvision.models.feature_extraction"),
                 ("import: pcbench's trial code", "pcbench.launch.cohort"),
                 ("import: scikit-learn (digits' splits)", "sklearn.model_selection"))


def _time_imports(scratch: Path) -> None:
    seconds = {}
    for label, module in TRIAL_IMPORTS:
        began = time.time()
        importlib.import_module(module)
        seconds[label] = time.time() - began
    (scratch / "timeline.json").write_text(json.dumps(seconds))


def _stages(clock: _Clock, trials: _Trials, imported: float, returned: float) -> dict:
    """Wall-clock stages (they add up to the command's time) and trial-seconds (summed over
    trials that ran side by side)."""
    spans, events = clock.spans, sorted(trials.events, key=lambda e: e[1])
    out = {name: sum(b - a for a, b in spans.get(name, [])) for name in
           ("Ray start", "teacher training (first use)", "report")}
    setup = first = running = tail = 0.0
    measured = 0
    for began, ended in spans.get("experiment", []):
        inside = [(kind, t) for kind, t in events if began <= t <= ended]
        starts = [t for kind, t in inside if kind == "start"]
        firsts = [t for kind, t in inside if kind == "first"]
        ends = [t for kind, t in inside if kind == "end"]
        if not (starts and firsts and ends):
            continue  # the teacher's one-trial plan (counted as teacher training)
        measured += 1
        setup += starts[0] - began  # Tune experiment, searcher, actors asked for
        first += firsts[0] - starts[0]  # trial process start and imports, data, teacher
        running += ends[-1] - firsts[0]  # trials training, side by side
        tail += ended - ends[-1]  # after the last trial: Tune's end of the experiment
    out.update({"experiments": measured, "experiment set-up": setup,
                "until the first trial reports": first, "trials running": running,
                "after the last trial": tail})
    accounted = sum(out[k] for k in ("Ray start", "teacher training (first use)", "report",
                                     "experiment set-up", "until the first trial reports",
                                     "trials running", "after the last trial"))
    out["driver, between stages"] = returned - imported - accounted
    out["recording (driver)"] = sum(b - a for a, b in spans.get("recording", []))
    out.update(clock.sums)
    return out


# --- output ----------------------------------------------------------------------------------------

WALL = ("imports", "Ray start", "teacher training (first use)", "experiment set-up",
        "until the first trial reports", "trials running", "after the last trial",
        "driver, between stages", "report", "exit")
INSIDE = ("trials: training", "trials: evaluation", "trials: diagnostics",
          "trials: data and teacher loading", "recording (driver)")


def _table(rows: list[dict]) -> str:
    head = "| stage | " + " | ".join(r["command"] for r in rows) + " |"
    lines = [head, "|---" * (len(rows) + 1) + "|",
             "| **wall time** | " + " | ".join(f"**{r['wall']:.1f} s**" for r in rows) + " |"]
    for name in WALL + INSIDE + tuple(label for label, _ in TRIAL_IMPORTS):
        if any(name in r for r in rows):
            label = name if name not in INSIDE else f"&nbsp;&nbsp;{name} (trial-s)"
            lines.append(f"| {label} | " + " | ".join(
                f"{r[name]:.1f} s" if name in r else "" for r in rows) + " |")
    for name in ("experiments", "trials", "trials: epochs", "worst_test_acc"):
        if any(name in r for r in rows):
            lines.append(f"| {name} | " + " | ".join(
                (f"{r[name]:.3f}" if isinstance(r[name], float) else str(r[name])) if name in r else ""
                for r in rows) + " |")
    return "\n".join(lines)


def _machine() -> dict:
    import platform
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


if __name__ == "__main__":
    main()
