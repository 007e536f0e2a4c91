"""Leaderboard: per (data set, teacher, student, epochs, scoring rule), one row per method.

A benchmark's row is its final runs: the configuration that won the search on the validation
split, re-run with several seeds on the full training set, test accuracy as mean +- std over
the seeds. A plain search's row is its best trial by validation accuracy. Test accuracy is
shown, never used to choose, and results of different scoring rules or training lengths are
never ranked together."""

import math

import pandas as pd

from pcbench.results.published import published

# protocol: "final" (mean over seed runs on all the training data) or "search" (a search's
# chosen trial); the two are never ranked together.
GROUP = ["dataset", "teacher", "student", "epochs_planned", "scoring_rule", "protocol"]

COLUMNS = ["dataset", "teacher", "student", "epochs_planned", "protocol", "method", "test_acc_mean",
           "test_acc_std", "seeds", "val_acc", "knobs", "trials", "completed", "compute_hours", "gpu_hours",
           "published_acc", "published_rule", "suite", "search_id", "config_hash", "teacher_sha256",
           "trial_id", "mlflow_run_id", "scoring_rule", "selection_split"]


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The completed trial with the best last-epoch validation accuracy (earliest on a tie)."""
    done = trials[(trials["status"] == "completed") & trials["val_acc"].notna()]
    if done.empty:
        return None
    return done.sort_values(["val_acc", "finished_at"], ascending=[False, True]).iloc[0]


def _gpu_hours(rows: pd.DataFrame) -> float:
    """From training time: a DDP trial's wall time includes waiting for its GPUs."""
    return float((rows["train_seconds"].fillna(0.0) * rows["gpus"].fillna(0.0)).sum() / 3600.0)


def _row(search: pd.DataFrame, finals: pd.DataFrame) -> dict | None:
    best = best_trial(search)
    if best is None:
        return None
    row = best.to_dict()
    spent = pd.concat([search, finals])
    if len(finals):  # a benchmark: its final runs are the result, even when they all failed
        accs = finals.loc[finals["status"] == "completed", "test_acc"].dropna()
        row.update(test_acc_mean=accs.mean() if len(accs) else math.nan,
                   test_acc_std=accs.std(ddof=1) if len(accs) > 1 else math.nan, seeds=len(accs),
                   epochs_planned=int(finals["epochs_planned"].iloc[0]), protocol="final")
    else:
        row.update(test_acc_mean=best["test_acc"], test_acc_std=math.nan, seeds=1, protocol="search")
    row.update(trials=len(search), completed=int((search["status"] == "completed").sum()),
               compute_hours=spent["wall_seconds"].sum() / 3600.0, gpu_hours=_gpu_hours(spent))
    reference = published(row["dataset"], row["teacher"], row["student"], row["method"])
    row.update(published_acc=reference[0] / 100 if reference else math.nan,
               published_rule=reference[1] if reference else None)
    return row


def leaderboard(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    trials = trials.assign(phase=trials["phase"].fillna("search"))
    rows = []
    # one row per (search, pair, method); a method searched again keeps only its latest
    keys = ["search_id", "dataset", "teacher", "student", "scoring_rule", "method"]
    for _, runs in trials.groupby(keys, sort=False, dropna=False):
        row = _row(runs[runs["phase"] != "final"], runs[runs["phase"] == "final"])
        if row is not None:
            row["_finished"] = runs["finished_at"].max()
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    board = pd.DataFrame(rows).sort_values("_finished").drop_duplicates(GROUP + ["method"], keep="last")
    board = board.sort_values(GROUP + ["test_acc_mean"], ascending=[True] * len(GROUP) + [False])
    return board[COLUMNS].reset_index(drop=True)
