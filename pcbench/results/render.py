"""Leaderboard files: Parquet for tools, Markdown for READMEs, HTML for browsers."""

import html
import json
from pathlib import Path

import pandas as pd

from pcbench.atomic import write_atomic
from pcbench.results.leaderboard import GROUP

SHOWN = {"method": "method", "test_acc": "test acc", "val_acc": "val acc", "knobs": "chosen knobs",
         "trials": "trials", "completed": "completed", "compute_hours": "compute (h)"}


def _knobs(text: str) -> str:
    """{"method.tau": 0.18315...} -> tau=0.1832 (method knobs unprefixed, 4 significant digits)."""
    knobs = json.loads(text) if text else {}
    return ", ".join(f"{k.removeprefix('method.')}={v:.4g}" if isinstance(v, float)
                     else f"{k.removeprefix('method.')}={v}" for k, v in sorted(knobs.items()))


def _tables(board: pd.DataFrame):
    for (dataset, teacher, student, epochs, rule), rows in board.groupby(GROUP, sort=True):
        shown = rows[list(SHOWN)].rename(columns=SHOWN).copy()
        for column in ("test acc", "val acc"):
            shown[column] = shown[column].map(lambda v: f"{100 * v:.2f}")
        shown["chosen knobs"] = shown["chosen knobs"].map(_knobs)
        shown["compute (h)"] = shown["compute (h)"].map(lambda v: f"{v:.3f}")
        title = f"{dataset}: {teacher} -> {student}, {epochs} epochs"
        note = (f"Scoring: test accuracy at the {rule.replace('_', ' ')}; configuration chosen "
                f"by accuracy on the validation split (never on test).")
        yield title, note, shown


def to_markdown(board: pd.DataFrame) -> str:
    parts = ["# pcbench leaderboard\n"]
    for title, note, shown in _tables(board):
        header = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
                for row in shown.itertuples(index=False)]
        parts.append("\n".join([f"## {title}\n", note + "\n", header, rule, *body, ""]))
    if len(parts) == 1:
        parts.append("No completed trials yet.\n")
    return "\n".join(parts)


def to_html(board: pd.DataFrame) -> str:
    sections = [f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>"
                + shown.to_html(index=False, border=0, classes="board")
                for title, note, shown in _tables(board)] or ["<p>No completed trials yet.</p>"]
    style = ("body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
             "table.board{border-collapse:collapse}th,td{padding:.3rem .8rem;text-align:left;"
             "border-bottom:1px solid #ddd}th{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pcbench leaderboard</title>"
            f"<style>{style}</style></head><body><h1>pcbench leaderboard</h1>"
            f"{''.join(sections)}</body></html>\n")


def write_report(board: pd.DataFrame, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.parquet", out / "leaderboard.md", out / "leaderboard.html"]
    write_atomic(paths[0], lambda p: board.to_parquet(p, index=False))
    write_atomic(paths[1], lambda p: p.write_text(to_markdown(board)))
    write_atomic(paths[2], lambda p: p.write_text(to_html(board)))
    return paths
