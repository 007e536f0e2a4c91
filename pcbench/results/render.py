"""Leaderboard files: Parquet for tools, Markdown for READMEs, HTML (with figures) for browsers."""

import html
import json
from pathlib import Path

import pandas as pd

from pcbench.atomic import write_atomic
from pcbench.results.leaderboard import GROUP, PAIR, pair_label, with_pair_columns
from pcbench.results.significance import TEST_NOTE


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.2f}"


def _test_acc(mean, std) -> str:
    """mean ± std over the final seeds (a plain search's row has one run: no std)."""
    return _pct(mean) + ("" if pd.isna(std) else f" ± {100 * std:.2f}")


def _verdict(rows: pd.DataFrame) -> list[str]:
    """best / tied (p) / worse (p) per row; blank where no test could be made."""
    best = rows["test_acc_mean"].idxmax() if rows["test_acc_mean"].notna().any() else None
    out = []
    for index, p, tied in zip(rows.index, rows["p_vs_best"], rows["tied_with_best"]):
        if index == best:
            out.append("best")
        elif pd.isna(tied):
            out.append("")
        else:
            out.append(f"{'tied' if tied else 'worse'} ({'p<0.001' if p < 0.001 else f'p={p:.2g}'})")
    return out


def _sources(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """The distinct (source, rule) of the group's published numbers, in order of appearance."""
    pairs = zip(rows["published_source"], rows["published_rule"])
    return list(dict.fromkeys((s, r) for s, r in pairs if isinstance(s, str)))


def _table(rows: pd.DataFrame) -> pd.DataFrame:
    """The group's rows as shown; `published` only where there is a published number."""
    shown = pd.DataFrame({"method": rows["method"].astype(str)})
    shown["test acc"] = [f"diverged ({d} runs)" if pd.isna(m) and d else _test_acc(m, s)
                         for m, s, d, t in zip(rows["test_acc_mean"], rows["test_acc_std"],
                                               rows["diverged"], rows["trials"])]
    shown["95% CI"] = ["" if pd.isna(lo) else f"[{_pct(lo)}, {_pct(hi)}]"
                       for lo, hi in zip(rows["ci95_low"], rows["ci95_high"])]
    shown["vs best"] = _verdict(rows)
    shown["seeds"] = rows["seeds"].astype(int)
    shown["val acc"] = rows["val_acc"].map(_pct)
    if _diagnosed(rows):  # how close the student came to the teacher
        shown["CKA"] = rows["cka"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        shown["rank agr."] = rows["rank_agreement"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    shown["chosen knobs"] = rows["knobs"].map(_knobs)
    shown["trials"] = rows["trials"]
    shown["completed"] = rows["completed"]
    shown["compute (h)"] = rows["compute_hours"].map(lambda v: f"{v:.3f}")
    shown["GPU-hours"] = rows["gpu_hours"].map(lambda v: f"{v:.3f}")
    if rows["published_acc"].notna().any():
        sources = _sources(rows)
        shown["published"] = ["" if pd.isna(acc) else f"{_pct(acc)} [{sources.index((src, rule)) + 1}]"
                              for acc, src, rule in zip(rows["published_acc"], rows["published_source"],
                                                        rows["published_rule"])]
    return shown


def _diagnosed(rows: pd.DataFrame) -> bool:
    return "cka" in rows and rows["cka"].notna().any()


def _knobs(text: str) -> str:
    """{"method.tau": 0.18315...} -> tau=0.1832 (method knobs unprefixed, 4 significant digits)."""
    knobs = json.loads(text) if text else {}
    return ", ".join(f"{k.removeprefix('method.')}={v:.4g}" if isinstance(v, float)
                     else f"{k.removeprefix('method.')}={v}" for k, v in sorted(knobs.items()))


def _groups(board: pd.DataFrame):
    """(group key, that group's board rows, title, notes, the table as shown)."""
    for key, rows in board.groupby(GROUP, sort=True):
        first = rows.iloc[0]
        dataset, epochs, rule, protocol = (first[k] for k in ("dataset", "epochs_planned", "scoring_rule",
                                                              "protocol"))
        shown = _table(rows)
        title = f"{dataset}: {pair_label(first)}, {epochs} epochs"
        runs = ("mean ± std over the final runs, one per seed, on all the training data"
                if protocol == "final" else "the chosen search trial")
        notes = [f"Scoring: test accuracy at the {rule.replace('_', ' ')}, {runs}; configuration "
                 f"chosen by accuracy on the validation split (never on test)."]
        if protocol == "final":
            notes.append(f"95% CI: Student's t interval of the mean over seeds; {TEST_NOTE}.")
        notes += [f"[{i}] {source}; scoring: {rule}." for i, (source, rule) in
                  enumerate(_sources(rows), start=1)]
        yield key, rows, title, notes, shown


def to_markdown(board: pd.DataFrame) -> str:
    parts = ["# pcbench leaderboard\n"]
    for _, _, title, notes, shown in _groups(board):
        header = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        body = []
        for row in shown.itertuples(index=False):
            cells = [str(v).replace("|", "\\|") for v in row]
            if row[shown.columns.get_loc("vs best")] == "best":
                cells[1] = f"**{cells[1]}**"
            body.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join([f"## {title}\n", header, rule, *body, "",
                                *(note + "\n" for note in notes)]))
    if len(parts) == 1:
        parts.append("No completed trials yet.\n")
    return "\n".join(parts)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(text: str) -> str:
    """Plain text as LaTeX: specials escaped, and the arrow and plus-minus as math (">" alone
    prints as an inverted question mark in LaTeX's default text font)."""
    parts = str(text).split("->")
    escaped = ["".join(_TEX_ESCAPES.get(c, c) for c in part).replace("±", "$\\pm$") for part in parts]
    return "$\\rightarrow$".join(escaped)


def _tex_acc(mean, std) -> str:
    return _pct(mean) + ("" if pd.isna(std) else f" $\\pm$ {100 * std:.2f}")


def to_latex(board: pd.DataFrame) -> str:
    """One booktabs table per group, ready for a paper (needs \\usepackage{booktabs}): the best
    mean in bold, methods tied with it marked with a dagger."""
    tables = ["% pcbench leaderboard; needs \\usepackage{booktabs}"]
    for _, rows, title, notes, _shown in _groups(board):
        verdicts = _verdict(rows)
        sources = _sources(rows)
        with_published = bool(sources)
        header = ["Method", "Test acc. (\\%)", "95\\% CI", "Seeds"]
        header += ["Published"] if with_published else []
        body = []
        for (_, row), verdict in zip(rows.iterrows(), verdicts):
            acc = _tex_acc(row["test_acc_mean"], row["test_acc_std"])
            if verdict == "best":
                acc = f"\\textbf{{{acc}}}"
            elif verdict.startswith("tied"):
                acc += "$^{\\dagger}$"
            ci = "" if pd.isna(row["ci95_low"]) else f"[{_pct(row['ci95_low'])}, {_pct(row['ci95_high'])}]"
            cells = [_tex(row["method"]), acc, ci, str(int(row["seeds"]))]
            if with_published:
                source = (row["published_source"], row["published_rule"])
                cells.append("" if pd.isna(row["published_acc"]) else
                             f"{_pct(row['published_acc'])}$^{{{sources.index(source) + 1}}}$")
            body.append(" & ".join(cells) + " \\\\")
        caption = (f"{_tex(title)}. Best mean in bold; $^\\dagger$: not significantly different "
                   f"from the best. " + _tex(" ".join(notes)))
        tables.append("\n".join([
            "\\begin{table}[t]", "\\centering", f"\\caption{{{caption}}}",
            f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule",
            " & ".join(header) + " \\\\", "\\midrule", *body, "\\bottomrule", "\\end{tabular}",
            "\\end{table}"]))
    return "\n\n".join(tables) + "\n"


def _figure(kind: str, index: int, svg: str, caption: str) -> str:
    return (f'<figure class="plot" data-plot="{kind}" id="plot-{index}-{kind}">{svg}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _searched(rows: pd.DataFrame, trials: pd.DataFrame | None) -> pd.DataFrame | None:
    """The search trials behind a group's rows: those of each row's search, pair and method
    (final seed runs left out)."""
    if trials is None or trials.empty:
        return None
    if "phase" in trials:
        trials = trials[trials["phase"].fillna("search") != "final"]
    keys = ["search_id", *PAIR, "method"]
    trials = with_pair_columns(trials)
    mine = trials[pd.MultiIndex.from_frame(trials[keys]).isin(pd.MultiIndex.from_frame(rows[keys]))]
    return mine[mine["val_acc"].notna()]


def _plots(index: int, rows: pd.DataFrame, trials: pd.DataFrame | None) -> str:
    """The group's figures: test accuracy per method and, when the trials are given, the
    progress of the searches that chose the group's configurations."""
    from pcbench.results import plots  # matplotlib only where a report is drawn

    salt = f"pcbench-{index}"
    mine = _searched(rows, trials)
    # one colour per method across the group's figures
    palette = plots.colours(set(rows["method"]) | (set(mine["method"]) if mine is not None else set()))
    parts = [_figure("test-acc", index, plots.accuracy_bars_svg(rows, f"{salt}-test-acc", palette),
                     "Test accuracy of each method's chosen configuration"
                     + (" (error bars: std over seeds)." if "test_acc_std" in rows
                        and rows["test_acc_std"].notna().any() else "."))]
    if _diagnosed(rows):
        parts.append(_figure(
            "accuracy-cka", index, plots.accuracy_cka_svg(rows, f"{salt}-cka", palette),
            "Test accuracy against linear CKA between the teacher's and the student's embeddings "
            "(held-out images, last epoch): how close each method brought the representation."))
    if mine is not None and not mine.empty:
        parts.append(_figure(
            "search-progress", index, plots.search_progress_svg(mine, f"{salt}-search", palette),
            "Search progress: validation accuracy of every trial in finish order (filled: "
            "completed, hollow: stopped early); the line is each method's best completed "
            "trial so far."))
    return "".join(parts)


def to_html(board: pd.DataFrame, trials: pd.DataFrame | None = None) -> str:
    sections = [f'<section class="group" id="group-{i}"><h2>{html.escape(title)}</h2>'
                + shown.to_html(index=False, border=0, classes="board")
                + "".join(f'<p class="note">{html.escape(note)}</p>' for note in notes)
                + _plots(i, rows, trials) + "</section>"
                for i, (_, rows, title, notes, shown) in enumerate(_groups(board), start=1)]
    sections = sections or ["<p>No completed trials yet.</p>"]
    style = ("body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
             "table.board{border-collapse:collapse}th,td{padding:.3rem .8rem;text-align:left;"
             "border-bottom:1px solid #ddd}th{background:#f4f4f4}"
             "figure.plot{margin:1.5rem 0}figure.plot svg{max-width:100%;height:auto}"
             "figcaption{color:#555;font-size:.9rem;max-width:46rem}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pcbench leaderboard</title>"
            f"<style>{style}</style></head><body><h1>pcbench leaderboard</h1>"
            f"{''.join(sections)}</body></html>\n")


def write_report(board: pd.DataFrame, out: str | Path, trials: pd.DataFrame | None = None) -> list[Path]:
    """leaderboard.parquet, .md, .html and .tex; `trials` (the store's trials table) adds the
    search-progress figure to the HTML."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.parquet", out / "leaderboard.md", out / "leaderboard.html",
             out / "leaderboard.tex"]
    write_atomic(paths[0], lambda p: board.to_parquet(p, index=False))
    write_atomic(paths[1], lambda p: p.write_text(to_markdown(board)))
    write_atomic(paths[2], lambda p: p.write_text(to_html(board, trials)))
    write_atomic(paths[3], lambda p: p.write_text(to_latex(board)))
    return paths
