"""Leaderboard: per (data set, teacher, student, epochs, scoring rule), one row per method.

A benchmark's row is its final runs: the configuration that won the search on the validation
split, re-run with several seeds on the full training set, test accuracy as mean +- std over
the seeds. A plain search's row is its best trial by validation accuracy. `cka` and
`rank_agreement` are the diagnostics (pcbench.diagnostics) of the same runs' last epochs.
Test accuracy is shown, never used to choose, and results of different scoring rules or training lengths are
never ranked together. Each group marks the methods tied with its best (significance.py)."""

import math

import pandas as pd

from pcbench.results.published import published
from pcbench.results.selection import best_trial
from pcbench.results.significance import ALPHA, ci95, p_value

# protocol: "final" (mean over seed runs on all the training data) or "search" (a search's
# chosen trial); the two are never ranked together.
# A pair is its teacher (and the data set it learnt), its student (and how it starts).
PAIR = ["dataset", "teacher", "teacher_dataset", "student", "student_init"]
GROUP = [*PAIR, "epochs_planned", "scoring_rule", "protocol"]

COLUMNS = [*PAIR, "epochs_planned", "protocol", "method", "test_acc_mean",
           "test_acc_std", "seeds", "ci95_low", "ci95_high", "p_vs_best", "tied_with_best", "val_acc",
           "cka", "rank_agreement",
           "knobs", "trials", "completed", "diverged", "compute_hours", "gpu_hours", "published_acc",
           "published_rule", "published_source", "suite", "search_id", "config_hash", "teacher_sha256",
           "trial_id", "mlflow_run_id", "scoring_rule", "selection_split"]


def _gpu_hours(rows: pd.DataFrame) -> float:
    """From training time: a DDP trial's wall time includes waiting for its GPUs."""
    return float((rows["train_seconds"].fillna(0.0) * rows["gpus"].fillna(0.0)).sum() / 3600.0)


def _diverged_row(search: pd.DataFrame, final_epochs: int | None) -> dict:
    """A method none of whose trials completed, some diverged: shown as such, never ranked."""
    row = search.iloc[-1].to_dict()
    row.update(val_acc=math.nan, cka=math.nan, rank_agreement=math.nan, knobs="", test_acc_mean=math.nan, test_acc_std=math.nan, seeds=0,
               protocol="final" if final_epochs else "search", _runs=[], trial_id=None,
               mlflow_run_id=None, config_hash=None)
    if final_epochs:
        row["epochs_planned"] = final_epochs
    return row


def _row(search: pd.DataFrame, finals: pd.DataFrame, final_epochs: int | None) -> dict | None:
    best = best_trial(search)
    if best is None and not (search["status"] == "diverged").any():
        return None  # nothing completed and nothing to say about it
    row = best.to_dict() if best is not None else _diverged_row(search, final_epochs)
    spent = pd.concat([search, finals])
    if len(finals):  # a benchmark: its final runs are the result, even when they all failed
        done = finals[(finals["status"] == "completed") & finals["test_acc"].notna()]
        accs = done["test_acc"]
        row["_runs"] = list(zip(done["seed"].fillna(-1).astype(int), accs.astype(float)))
        row.update(test_acc_mean=accs.mean() if len(accs) else math.nan,
                   test_acc_std=accs.std(ddof=1) if len(accs) > 1 else math.nan, seeds=len(accs),
                   # the representation where the accuracy was measured: the final runs' last epochs
                   cka=done["cka"].astype(float).mean(), rank_agreement=done["rank_agreement"].astype(float).mean(),
                   epochs_planned=int(finals["epochs_planned"].iloc[0]), protocol="final")
    elif best is not None:
        row.update(test_acc_mean=best["test_acc"], test_acc_std=math.nan, seeds=1, protocol="search",
                   _runs=[])
    row.update(trials=len(search), completed=int((search["status"] == "completed").sum()),
               diverged=int((spent["status"] == "diverged").sum()),
               compute_hours=spent["wall_seconds"].sum() / 3600.0, gpu_hours=_gpu_hours(spent))
    reference = (published(row["dataset"], row["teacher"], row["student"], row["method"])
                 if row["teacher_dataset"] == row["dataset"] and row["student_init"] == "scratch" else None)
    row.update(published_acc=reference.accuracy / 100 if reference else math.nan,
               published_rule=reference.rule if reference else None,
               published_source=reference.source if reference else None)
    return row


def _mark_ties(group: pd.DataFrame) -> pd.DataFrame:
    """CI per method; p against the group's best (highest mean) and whether it is tied."""
    group = group.copy()
    best = group["test_acc_mean"].idxmax() if group["test_acc_mean"].notna().any() else None
    # accuracies: the t interval is clipped to [0, 1]
    intervals = [tuple(v if math.isnan(v) else min(1.0, max(0.0, v)) for v in ci95([a for _, a in runs]))
                 for runs in group["_runs"]]
    group["ci95_low"], group["ci95_high"] = [i[0] for i in intervals], [i[1] for i in intervals]
    p = [math.nan if best is None else (1.0 if index == best else p_value(runs, group.at[best, "_runs"]))
         for index, runs in group["_runs"].items()]
    group["p_vs_best"] = p
    group["tied_with_best"] = pd.array([None if math.isnan(v) else bool(v >= ALPHA) for v in p],
                                       dtype="boolean")
    return group


def leaderboard(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    trials = trials.assign(phase=trials["phase"].fillna("search"))
    for diagnostic in ("cka", "rank_agreement"):  # rows from before the diagnostics
        if diagnostic not in trials:
            trials[diagnostic] = math.nan
    trials = with_pair_columns(trials)
    rows = []
    # one row per (search, pair, method); a method searched again keeps only its latest
    keys = ["search_id", *PAIR, "scoring_rule", "method"]
    # a benchmark's final length per pair: where a method that never completed is shown
    final_epochs = trials[trials["phase"] == "final"].groupby(
        ["search_id", *PAIR])["epochs_planned"].max().to_dict()
    for key, runs in trials.groupby(keys, sort=False, dropna=False):
        row = _row(runs[runs["phase"] != "final"], runs[runs["phase"] == "final"],
                   final_epochs.get(key[:1 + len(PAIR)]))
        if row is not None:
            row["_finished"] = runs["finished_at"].max()
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    board = pd.DataFrame(rows).sort_values("_finished").drop_duplicates(GROUP + ["method"], keep="last")
    board = pd.concat([_mark_ties(group) for _, group in board.groupby(GROUP, sort=False, dropna=False)])
    board = board.sort_values(GROUP + ["test_acc_mean"], ascending=[True] * len(GROUP) + [False])
    return board[COLUMNS].reset_index(drop=True)


def with_pair_columns(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with every PAIR column filled: rows from before transfer (or a table without the
    columns) had the student's own data set's teacher and a student from scratch."""
    empty = pd.Series(None, index=trials.index, dtype=object)
    return trials.assign(
        teacher_dataset=trials.get("teacher_dataset", empty).fillna(trials["dataset"]),
        student_init=trials.get("student_init", empty).fillna("scratch"))


def pair_label(row) -> str:
    """`teacher -> student`, naming the teacher's data set where it is another task's and the
    student's start where it is the teacher's weights."""
    teacher = row["teacher"] if row["teacher_dataset"] == row["dataset"] else \
        f"{row['teacher']} ({row['teacher_dataset']})"
    start = ", from the teacher's weights" if row["student_init"] == "teacher" else ""
    return f"{teacher} -> {row['student']}{start}"
