"""Figures of the leaderboard, as inline SVG: per group, each method's accuracy (a benchmark's
test accuracy, a search's validation accuracy), that accuracy against its CKA with the
teacher, and the search's progress (every trial's validation accuracy in finish order, with
the running best).

Drawn with matplotlib's object API (no pyplot, no display). The SVG keeps its text as <text>
(searchable, small; the browser's sans-serif font), carries no date and uses hash salts fixed
per figure, so the same results give the same bytes."""

import io
import re

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

STYLE = {
    "svg.fonttype": "none",  # text stays text; no embedded glyphs, no external font files
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
}
WIDTH_IN = 6.4
# matplotlib names every group <g id="axes_1"> etc.; nothing refers to these ids, and inline in
# one HTML page they would repeat across figures, so they are dropped.
_AUTO_ID = re.compile(r' id="[A-Za-z][\w.]*_\d+"')


def colours(methods) -> dict[str, str]:
    """One colour per method, the same in every figure of a group (sorted names, tab20)."""
    palette = mpl.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: mpl.colors.to_hex(palette(i % palette.N)) for i, m in enumerate(sorted(methods))}


def _svg(figure: Figure, salt: str) -> str:
    buffer = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": salt, "svg.id": None}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "pcbench"},
                       bbox_inches="tight", pad_inches=0.05)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # no XML declaration or DOCTYPE inside HTML
    return _AUTO_ID.sub("", text).strip()


def _accuracy(rows: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Accuracy in % per row (NaN where a method has none), the std over seeds where there is
    one, and the axis label: a benchmark's test accuracy, or a search's validation accuracy of
    the chosen trial (search trials have no test accuracy)."""
    mean = rows[column].astype(float).to_numpy() * 100
    if column == "val_acc":
        return mean, None, "validation accuracy (%) of the chosen trial"
    std = rows["test_acc_std"].astype(float)
    seeds = sorted(set(rows["seeds"].astype(int)))
    over = f"over {seeds[0]} seeds" if len(seeds) == 1 else "over seeds"
    if std.notna().any():
        return mean, std.fillna(0.0).to_numpy() * 100, f"test accuracy (%), mean ± std {over}"
    return mean, None, "test accuracy (%)"


def accuracy_bars_svg(rows: pd.DataFrame, salt: str, palette: dict[str, str] | None = None,
                      column: str = "test_acc_mean") -> str:
    """Horizontal bars of `column`, best method on top; error bars are the std over seeds when
    present; a method without a number (diverged) gets no bar."""
    rows = rows.reset_index(drop=True)
    acc, std, label = _accuracy(rows, column)
    order = np.argsort(-np.nan_to_num(acc, nan=-np.inf), kind="stable")
    methods = rows["method"].astype(str).to_numpy()[order]
    acc = acc[order]
    std = std[order] if std is not None else None
    palette = palette or colours(methods)
    with mpl.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH_IN, 0.8 + 0.32 * len(methods)))
        ax = figure.add_subplot()
        y = np.arange(len(methods))
        ax.barh(y, np.nan_to_num(acc), xerr=std, color=[palette[m] for m in methods], height=0.65,
                error_kw={"ecolor": "#333", "capsize": 3, "elinewidth": 1})
        ax.set_yticks(y, methods)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        reach = acc + (std if std is not None else 0)  # where each bar's error bar ends
        finite = np.isfinite(acc)
        low = max(0.0, np.floor((acc[finite].min() - 5) / 5) * 5) if finite.any() else 0.0
        high = min(100.0, reach[finite].max() + 1) if finite.any() else 100.0
        ax.set_xlim(low, max(high, low + 1))
        for yi, value, end in zip(y, acc, reach):
            if np.isfinite(value):  # the value just right of its bar (or error bar)
                ax.annotate(f"{value:.2f}", (end, yi), xytext=(3, 0), textcoords="offset points",
                            va="center", ha="left", fontsize=8, color="#333")
        ax.set_xlabel(label)
        return _svg(figure, salt)


def accuracy_cka_svg(rows: pd.DataFrame, salt: str, palette: dict[str, str] | None = None,
                     column: str = "test_acc_mean") -> str:
    """One point per method: CKA with the teacher's embedding across, accuracy (`column`) up
    (with its std over seeds); does the method that copies the representation best also
    classify best?"""
    rows = rows[rows["cka"].notna()].reset_index(drop=True)
    acc, std, label = _accuracy(rows, column)
    methods = rows["method"].astype(str).to_numpy()
    palette = palette or colours(methods)
    with mpl.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH_IN, 3.2))
        ax = figure.add_subplot()
        cka = rows["cka"].astype(float).to_numpy()
        for i, method in enumerate(methods):
            ax.errorbar(cka[i], acc[i], yerr=None if std is None else std[i], fmt="o", markersize=5,
                        color=palette[method], ecolor=palette[method], capsize=3, elinewidth=1)
            ax.annotate(method, (cka[i], acc[i]), xytext=(5, 3), textcoords="offset points",
                        fontsize=8, color="#333")
        ax.set_xlabel("linear CKA with the teacher's embedding")
        ax.set_ylabel(label)
        return _svg(figure, salt)


def search_progress_svg(trials: pd.DataFrame, salt: str, palette: dict[str, str] | None = None) -> str:
    """Validation accuracy of every trial against its place in finish order, one colour per
    method; filled: completed, hollow: stopped early; the line is each method's best completed
    trial so far (what the leaderboard would choose at that point)."""
    trials = trials[trials["val_acc"].notna()]
    trials = trials.sort_values(["finished_at", "trial_id"], na_position="last", kind="stable")
    trials = trials.assign(_x=np.arange(1, len(trials) + 1), method=trials["method"].astype(str))
    methods = sorted(trials["method"].unique())
    palette = {m: (palette or colours(methods))[m] for m in methods}
    with mpl.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH_IN, 3.2))
        ax = figure.add_subplot()
        for method in sorted(palette):
            mine = trials[trials["method"] == method]
            colour = palette[method]
            x = mine["_x"].to_numpy()
            val = mine["val_acc"].astype(float).to_numpy() * 100
            done = (mine["status"] == "completed").to_numpy()
            ax.scatter(x[done], val[done], s=22, color=colour, zorder=3)
            ax.scatter(x[~done], val[~done], s=22, facecolors="none", edgecolors=colour, zorder=3)
            best = pd.Series(np.where(done, val, np.nan)).cummax().to_numpy()
            seen = np.isfinite(best)
            if seen.any():
                xs = np.append(x[seen], trials["_x"].max())  # carried to the last trial
                ax.step(xs, np.append(best[seen], best[seen][-1]), where="post", color=colour,
                        linewidth=1.4, zorder=2)
        ax.set_xlim(0.5, trials["_x"].max() + 0.5)
        ax.set_xlabel("trial, in finish order")
        ax.set_ylabel("validation accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        handles = [Line2D([], [], color=palette[m], marker="o", markersize=4.5, linewidth=1.4, label=m)
                   for m in sorted(palette)]
        handles.append(Line2D([], [], color="#777", marker="o", markersize=4.5, linestyle="none",
                              markerfacecolor="none", label="stopped early"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False, title="method", title_fontsize=8, ncol=1 + len(handles) // 14)
        return _svg(figure, salt)
