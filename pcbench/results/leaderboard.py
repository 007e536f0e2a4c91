"""Leaderboard: per (data set, teacher, student, epochs), one row per method, its configuration
chosen by validation accuracy among the trials that ran the full schedule; test accuracy is
shown, never used to choose. Results of different scoring rules or training lengths are never
ranked together."""

import pandas as pd

GROUP = ["dataset", "teacher", "student", "epochs_planned", "scoring_rule"]

COLUMNS = ["dataset", "teacher", "student", "epochs_planned", "method", "test_acc", "val_acc", "knobs",
           "trials", "completed", "compute_hours", "seed", "config_hash", "teacher_sha256",
           "trial_id", "mlflow_run_id", "scoring_rule", "selection_split"]


def leaderboard(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    keys = GROUP + ["method"]
    budget = trials.groupby(keys).agg(
        trials=("trial_id", "size"),
        completed=("status", lambda s: int((s == "completed").sum())),
        compute_hours=("wall_seconds", lambda s: s.sum() / 3600.0),
    )
    done = trials[trials["status"] == "completed"].sort_values(
        ["val_acc", "finished_at"], ascending=[False, True])
    best = done.drop_duplicates(keys).set_index(keys)
    board = best.join(budget[["trials", "completed", "compute_hours"]]).reset_index()
    board = board.sort_values(GROUP + ["test_acc"], ascending=[True] * len(GROUP) + [False])
    return board[COLUMNS].reset_index(drop=True)
