"""How a trial is chosen, in one place: the searcher and the early stopper (Optuna, ASHA) and
the final-run selection all rank trials by the last epoch's accuracy on the validation split.
Test accuracy is reported, never used to choose."""

import pandas as pd

METRIC, MODE = "val_acc", "max"  # what Tune's searcher and scheduler optimise
SCORING_RULE = "last_epoch"  # the epoch whose METRIC counts (recorded on every trial row)
SELECTION_SPLIT = "val"


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The completed trial with the best last-epoch validation accuracy (the earliest finished
    on a tie). Stopped, failed and diverged trials are never chosen."""
    done = trials[(trials["status"] == "completed") & trials[METRIC].notna()]
    if done.empty:
        return None
    return done.sort_values([METRIC, "finished_at"], ascending=[False, True]).iloc[0]
