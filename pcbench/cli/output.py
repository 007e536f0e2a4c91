"""What the commands print: a dry run's plan, the lines a search or benchmark ends with, the
leaderboard. Messages go to stderr (the console), a plan asked for as JSON to stdout."""

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def show_plan(entries: list[dict[str, Any]], missing: list[str], as_json: bool) -> None:
    """A dry run's output: the plan on stdout (text or JSON), what is missing on stderr."""
    import json

    from pcbench.api import pair_label
    if as_json:
        typer.echo(json.dumps(entries, indent=1))
    else:
        for e in entries:
            budget = e["budget"]
            line = (f"{pair_label(e)}  {e['method']}: "
                    f"{budget['trials']} trials x {budget['epochs']} epochs")
            if "final" in e:
                line += f", then {len(e['final']['seeds'])} seeds x {e['final']['epochs']} epochs"
            typer.echo(line)
            if "cohort_note" in e:
                typer.echo(f"    searched {e['cohort_note']}")
            for key, spec in e["knobs"].items():
                if spec["type"] == "categorical":
                    domain = "{" + ", ".join(map(str, spec["choices"])) + "}"
                else:
                    domain = (f"{spec['type']} {spec['low']:.4g}..{spec['high']:.4g}"
                              + (" log" if spec["log"] else ""))
                typer.echo(f"    {key:<24} {domain:<52} first {e['first_point'][key]}")
    for line in dict.fromkeys(missing):
        console.print(f"[yellow]missing:[/yellow] {line}", highlight=False, soft_wrap=True)
    console.print("dry run: nothing started, nothing written", highlight=False)


def show(result, as_json: bool = False) -> None:
    """A dry run's plan, or the lines every command ends with; exit code 1 if trials failed."""
    from pcbench.api import Plan
    if isinstance(result, Plan):
        show_plan(result.entries, result.missing, as_json)
        return
    if result.diverged:
        console.print(f"[yellow]{result.diverged} of {result.trials} trials diverged[/yellow] "
                      f"(non-finite loss; status 'diverged', never ranked)")
    what = f"benchmark {result.suite} ({result.search_id})" if result.suite else f"search {result.search_id}"
    console.print(f"{what}: {result.trials} trials; MLflow at {result.tracking_uri}, Parquet in "
                  f"{result.results}/trials and /epochs", highlight=False, soft_wrap=True)
    if result.report is not None:
        show_report(result.report)
    if result.failed:
        console.print(f"[red]{result.failed} of {result.trials} trials failed[/red] "
                      f"(errors above and in MLflow)")
        raise typer.Exit(1)


def show_report(report) -> None:
    """The leaderboard as a table, and the files written."""
    import pandas as pd

    from pcbench.api import pair_label
    for part, reason in report.skipped:
        console.print(f"[yellow]warning:[/yellow] skipped {part} ({reason})", highlight=False, soft_wrap=True)
    table = Table("data set", "pair", "method", "test acc (final runs)", "seeds", "val acc", "trials")
    for row in report.board.itertuples():
        spread = f" ± {100 * row.test_acc_std:.2f}" if row.seeds > 1 else ""
        # a plain search's row has no test accuracy: searches never evaluate the test split
        test = "" if pd.isna(row.test_acc_mean) else f"{100 * row.test_acc_mean:.2f}{spread}"
        seeds = f"{row.seeds_ok}/{row.seeds_planned}" if row.protocol == "final" else ""
        table.add_row(row.dataset, pair_label(row._asdict()), row.method, test, seeds,
                      "" if pd.isna(row.val_acc) else f"{100 * row.val_acc:.2f}", str(row.trials))
    Console().print(table)
    console.print("wrote " + ", ".join(str(p) for p in report.paths))
