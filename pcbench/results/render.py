"""Leaderboard files: Parquet for tools, Markdown for READMEs, HTML (with figures) for browsers,
LaTeX for papers. One table per protocol (leaderboard.GROUP), its notes below it."""

import html
import json
import re
from pathlib import Path

import pandas as pd

from pcbench.atomic import write_atomic
from pcbench.results.leaderboard import GROUP, PAIR, TEST_SELECTED, pair_label, ranked_on, with_defaults
from pcbench.results.significance import BEST, IDENTICAL, NO_SPREAD, PAIRED, WELCH, comparison_note

# methods whose losses pcbench rebuilt from the papers' text (docs/methods.md says how)
_RECONSTRUCTED = ("pc", "ot")
_KD_SUFFIX = "+kd"  # pcbench.methods.KD_SUFFIX (not imported: it brings torch)
VAL_COLUMN = "val acc (chosen trial)"


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.2f}"


def _mean_std(mean, std) -> str:
    """mean ± std over the final seeds (one run: no std)."""
    return _pct(mean) + ("" if pd.isna(std) else f" ± {100 * std:.2f}")


def _true(flag) -> bool:
    """A nullable flag that is set (null: unknown, not set)."""
    return bool(pd.notna(flag) and flag)


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def _verdict(row, best) -> str:
    """What the test against the table's best found; blank where nothing could be tested."""
    kind = row["comparison"]
    if kind in (PAIRED, WELCH):
        if not _true(row["tied_with_best"]):
            return f"worse ({_p(row['p_vs_best'])})"
        n = f"{row['seeds']} vs {best['seeds']}" if kind == WELCH else f"{row['seeds']}"
        return (f"not separated (n = {n}; could detect ≥ {100 * row['detectable_diff']:.1f} pts; "
                f"{_p(row['p_vs_best'])})")
    return {BEST: "best", IDENTICAL: "identical", NO_SPREAD: "not testable (no spread)"}.get(kind, "")


def _leader(rows: pd.DataFrame):
    """The row the table ranks first (its bold), if any has a number to rank by: a benchmark's
    best as tested (one of equal means), a search's highest validation accuracy."""
    if rows["protocol"].iloc[0] == "final":
        best = rows.index[rows["comparison"] == BEST]
        return best[0] if len(best) else None
    column = rows[ranked_on("search")].astype(float)
    return column.idxmax() if column.notna().any() else None


def _sources(rows: pd.DataFrame) -> list[str]:
    """The distinct sources of the table's published numbers, in order of appearance."""
    return list(dict.fromkeys(s for s in rows["published_source"] if isinstance(s, str)))


def _accuracy_cells(rows: pd.DataFrame, column: str) -> list[str]:
    """An accuracy per row, or how many runs diverged where a method has none."""
    std = rows["test_acc_std"] if column == "test_acc_mean" else pd.Series(float("nan"), rows.index)
    return [f"diverged ({d} runs)" if pd.isna(v) and d else _mean_std(v, s)
            for v, s, d in zip(rows[column], std, rows["diverged"])]


def _method_label(method: str, student_init: str) -> str:
    """ce started from the teacher's weights is plain fine-tuning, the baseline of that setting."""
    return "ce (fine-tuning)" if method == "ce" and student_init == "teacher" else str(method)


def _table(rows: pd.DataFrame) -> pd.DataFrame:
    """The group's rows as shown: a benchmark's test accuracy over seeds with its test against
    the best, or a search's chosen trial's validation accuracy; `published` only where there
    is a published number of the table's protocol."""
    shown = pd.DataFrame({"method": [_method_label(method, start)
                                     for method, start in zip(rows["method"], rows["student_init"])]})
    if rows["protocol"].iloc[0] == "final":
        leader = _leader(rows)
        best = rows.loc[leader] if leader is not None else None
        shown["test acc"] = _accuracy_cells(rows, "test_acc_mean")
        shown["95% CI"] = ["" if pd.isna(lo) else f"[{_pct(lo)}, {_pct(hi)}]"
                           for lo, hi in zip(rows["ci95_low"], rows["ci95_high"])]
        shown["vs best"] = [_verdict(row, best) for _, row in rows.iterrows()]
        shown["seeds"] = [f"{ok}/{planned}" if planned else "0"
                          for ok, planned in zip(rows["seeds_ok"], rows["seeds_planned"])]
        shown["val acc (search)"] = rows["val_acc"].map(_pct)
    else:
        shown[VAL_COLUMN] = _accuracy_cells(rows, "val_acc")
        if rows["test_acc_mean"].notna().any():  # single runs, and search trials of older parts
            shown["test acc (one run)"] = rows["test_acc_mean"].map(_pct)
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
        marks = [TEST_SELECTED if _true(on_test) else "" for on_test in rows["published_test_selected"]]
        shown["published"] = ["" if pd.isna(acc) else f"{_pct(acc)}{mark} [{sources.index(src) + 1}]"
                              for acc, mark, src in zip(rows["published_acc"], marks,
                                                        rows["published_source"])]
    return shown


def _diagnosed(rows: pd.DataFrame) -> bool:
    return "cka" in rows and rows["cka"].notna().any()


def _knobs(text: str) -> str:
    """{"method.tau": 0.18315...} -> tau=0.1832 (method knobs unprefixed, 4 significant digits)."""
    knobs = json.loads(text) if text else {}
    return ", ".join(f"{k.removeprefix('method.')}={v:.4g}" if isinstance(v, float)
                     else f"{k.removeprefix('method.')}={v}" for k, v in sorted(knobs.items()))


def _title(first) -> str:
    """What makes the table one protocol, so that two tables never read the same."""
    epochs = int(first["epochs_planned"])
    parts = [f"{first['dataset']}: {pair_label(first)}", f"{epochs} epoch{'s' * (epochs != 1)}"]
    if isinstance(first["recipe"], str):
        parts.append(f"recipe {first['recipe']}")
    parts.append(str(first["precision"]))
    parts.append(f"benchmark {first['benchmark_id']}" if first["protocol"] == "final" else "search")
    sha = first["teacher_sha256"]
    parts.append(f"teacher {sha[:12]}" if isinstance(sha, str) and sha else "no teacher weights")
    return ", ".join(parts)


def _teacher_note(rows: pd.DataFrame) -> str:
    """The teacher's own test accuracy (its store record) and, beside published numbers, the
    published teacher's."""
    measured = rows["teacher_test_acc"].dropna()
    note = (f"teacher: {_pct(measured.iloc[0])}% test" if len(measured) else
            "teacher: test accuracy not recorded (trials from before pcbench recorded it)"
            if rows["teacher_sha256"].notna().any() else
            "teacher: no weights loaded (no method here needed them)")
    sources = _sources(rows)
    published = [f"{_pct(acc)}% [{sources.index(src) + 1}]" for src, acc in
                 dict(zip(rows["published_source"], rows["published_teacher_acc"])).items()
                 if isinstance(src, str) and pd.notna(acc)]
    return note + (f"; published teacher: {', '.join(published)}" if published else "") + "."


def _scoring_note(rows: pd.DataFrame, rule: str) -> str:
    if rows["protocol"].iloc[0] == "final":
        return (f"Scoring: test accuracy at the {rule}, mean ± std over the final runs that "
                "completed, one per seed, on all the training data; configuration chosen by "
                "accuracy on the validation split (never on test).")
    note = (f"Search only: {VAL_COLUMN} is the chosen trial's validation accuracy at the {rule}, "
            "which ranks the table; search trials never evaluate the test split, so there is no "
            "test accuracy and no significance test here: test accuracy comes from the final "
            "runs of pcbench benchmark.")
    if rows["test_acc_mean"].notna().any():
        note += " test acc (one run): single runs and older search trials, one run each, not ranked."
    return note


def _statistics_notes(rows: pd.DataFrame) -> list[str]:
    """The test, its correction and the seeds behind each mean; a mean over fewer seeds than
    planned says which failed."""
    family = int(rows["comparison"].isin([PAIRED, WELCH]).sum())
    notes = [f"95% CI: Student's t interval of the mean over seeds; {comparison_note(family)}. seeds: "
             "final runs that completed / final runs planned."]
    for _, row in rows.iterrows():
        if row["seeds_ok"] < row["seeds_planned"]:
            notes.append(f"{row['method']}: {row['seeds_ok']}/{row['seeds_planned']} seeds completed; its "
                         f"mean is over the survivors only (failed seeds: {row['failed_seeds']}).")
    return notes


def _published_notes(rows: pd.DataFrame) -> list[str]:
    """The sources of the table's published numbers; the numbers of another protocol named
    below the table instead of in it; what the test-selection mark means."""
    notes = [f"[{i}] {source}; {int(row['published_epochs'])} epochs; its number: {row['published_rule']}."
             for i, source in enumerate(_sources(rows), start=1)
             for row in [rows[rows["published_source"] == source].iloc[0]]]
    elsewhere = [f"{method} {text}" for method, text in zip(rows["method"], rows["published_elsewhere"])
                 if isinstance(text, str)]
    if elsewhere:
        notes.append(f"published: {'; '.join(elsewhere)}, not comparable with this "
                     f"{int(rows['epochs_planned'].iloc[0])}-epoch table.")
    if any(map(_true, rows["published_test_selected"])) or any(TEST_SELECTED in e for e in elsewhere):
        notes.append(f"{TEST_SELECTED} selected by its source on the test set (best test epoch); "
                     "pcbench selects on validation.")
    return notes


def _method_notes(rows: pd.DataFrame) -> list[str]:
    rebuilt = sorted({m for m in rows["method"] if m.removesuffix(_KD_SUFFIX) in _RECONSTRUCTED})
    return [f"{', '.join(rebuilt)}: losses are pcbench's reconstructions from the papers' descriptions "
            "(the authors' code was not available); see docs/methods.md."] if rebuilt else []


def _groups(board: pd.DataFrame):
    """(group key, that group's board rows, title, notes, the table as shown)."""
    for key, rows in board.groupby(GROUP, sort=True, dropna=False):
        first = rows.iloc[0]
        notes = [_teacher_note(rows), _scoring_note(rows, first["scoring_rule"].replace("_", " "))]
        if first["protocol"] == "final":
            notes += _statistics_notes(rows)
        notes += _published_notes(rows) + _method_notes(rows)
        yield key, rows, _title(first), notes, _table(rows)


def to_markdown(board: pd.DataFrame) -> str:
    parts = ["# pcbench leaderboard\n"]
    for _, rows, title, notes, shown in _groups(board):
        header = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        leader = _leader(rows)
        body = []
        for index, row in zip(rows.index, shown.itertuples(index=False)):
            cells = [str(v).replace("|", "\\|") for v in row]
            if index == leader:
                cells[1] = f"**{cells[1]}**"
            body.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join([f"## {title}\n", header, rule, *body, "",
                                *(note + "\n" for note in notes)]))
    if len(parts) == 1:
        parts.append("No completed trials yet.\n")
    return "\n".join(parts)


_TEX_TEXT = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
             "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
# in LaTeX's default text font "<" and ">" print as inverted marks, and the rest are not there
_TEX_MATH = {"->": r"\rightarrow", ">=": r"\geq", "<=": r"\leq", "≥": r"\geq", "≤": r"\leq",
             "<": "<", ">": ">", "±": r"\pm", TEST_SELECTED: r"^{\ddagger}", "†": r"^{\dagger}"}
_TEX_TOKEN = re.compile("|".join(map(re.escape, sorted([*_TEX_MATH, *_TEX_TEXT], key=len, reverse=True))))


def _tex(text) -> str:
    """Plain text as LaTeX: specials escaped, every symbol in math mode."""
    return _TEX_TOKEN.sub(lambda m: f"${_TEX_MATH[m[0]]}$" if m[0] in _TEX_MATH else _TEX_TEXT[m[0]],
                          str(text))


# the shown columns a paper's table keeps
_TEX_COLUMNS = ("method", "test acc", VAL_COLUMN, "test acc (one run)", "95% CI", "vs best", "seeds",
                "published")


def to_latex(board: pd.DataFrame) -> str:
    """One booktabs table per group, ready for a paper (needs \\usepackage{booktabs}): the
    leader in bold, methods not separated from it marked with a dagger."""
    tables = ["% pcbench leaderboard; needs \\usepackage{booktabs}"]
    for _, rows, title, notes, shown in _groups(board):
        shown = shown[[c for c in _TEX_COLUMNS if c in shown]]
        leader = _leader(rows)
        body = []
        for (index, row), cells in zip(rows.iterrows(), shown.itertuples(index=False)):
            cells = [_tex(c) for c in cells]
            if index == leader:
                cells[1] = f"\\textbf{{{cells[1]}}}"
            elif _true(row["tied_with_best"]):
                cells[1] += "$^{\\dagger}$"
            body.append(" & ".join(cells) + " \\\\")
        caption = (f"{_tex(title)}. Best in bold; $^\\dagger$: not separated from the best. "
                   + _tex(" ".join(notes)))
        tables.append("\n".join([
            "\\begin{table}[t]", "\\centering", f"\\caption{{{caption}}}",
            f"\\begin{{tabular}}{{l{'r' * (len(shown.columns) - 1)}}}", "\\toprule",
            " & ".join(_tex(c) for c in shown.columns) + " \\\\", "\\midrule", *body, "\\bottomrule",
            "\\end{tabular}", "\\end{table}"]))
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
    trials = with_defaults(trials)
    mine = trials[pd.MultiIndex.from_frame(trials[keys]).isin(pd.MultiIndex.from_frame(rows[keys]))]
    return mine[mine["val_acc"].notna()]


def _accuracy_figure(index: int, rows: pd.DataFrame, salt: str, palette: dict[str, str]) -> str:
    """A benchmark's test accuracy per method; a search's validation accuracy (it has no test)."""
    from pcbench.results import plots

    if rows["protocol"].iloc[0] == "final":
        spread = " (error bars: std over seeds)" if rows["test_acc_std"].notna().any() else ""
        return _figure("test-acc", index, plots.accuracy_bars_svg(rows, f"{salt}-test-acc", palette),
                       f"Test accuracy of each method's final runs, mean over the seeds that "
                       f"completed{spread}.")
    return _figure("val-acc", index,
                   plots.accuracy_bars_svg(rows, f"{salt}-val-acc", palette, column="val_acc"),
                   "Validation accuracy of each method's chosen search trial: search trials have no "
                   "test accuracy (pcbench benchmark's final runs measure it).")


def _plots(index: int, rows: pd.DataFrame, trials: pd.DataFrame | None) -> str:
    """The group's figures: accuracy per method and, when the trials are given, the progress of
    the searches that chose the group's configurations."""
    from pcbench.results import plots  # matplotlib only where a report is drawn

    salt = f"pcbench-{index}"
    mine = _searched(rows, trials)
    # one colour per method across the group's figures
    palette = plots.colours(set(rows["method"]) | (set(mine["method"]) if mine is not None else set()))
    parts = [_accuracy_figure(index, rows, salt, palette)]
    if _diagnosed(rows):
        measured = "test" if rows["protocol"].iloc[0] == "final" else "validation"
        parts.append(_figure(
            "accuracy-cka", index,
            plots.accuracy_cka_svg(rows, f"{salt}-cka", palette, column=ranked_on(rows["protocol"].iloc[0])),
            f"{measured.capitalize()} accuracy against linear CKA between the teacher's and the student's "
            "embeddings (held-out images, last epoch): how close each method brought the representation."))
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
