"""The final-run selection over a table of trials, by pcbench.selection's rule (the one the
searches use): the last epoch's validation accuracy. Test accuracy is never used to choose."""

import pandas as pd

from pcbench.selection import METRIC, SCORING_RULE, SELECTION_SPLIT

__all__ = ["METRIC", "SCORING_RULE", "SELECTION_SPLIT", "best_trial"]


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The completed trial with the best last-epoch validation accuracy (the earliest finished
    on a tie). Stopped, failed and diverged trials are never chosen."""
    done = trials[(trials["status"] == "completed") & trials[METRIC].notna()]
    if done.empty:
        return None
    return done.sort_values([METRIC, "finished_at"], ascending=[False, True]).iloc[0]
