"""How a trial is chosen, in one place below everything that chooses: the searcher and the
early stopper (Optuna, ASHA, a cohort's halving, in launch/) and the final-run selection (in
results/) all rank trials by the last epoch's accuracy on the validation split. Test accuracy
is reported, never used to choose. How a finished trial ended is judged here too."""

METRIC, MODE = "val_acc", "max"  # what Tune's searcher and scheduler optimise
SCORING_RULE = "last_epoch"  # the epoch whose METRIC counts (recorded on every trial row)
SELECTION_SPLIT = "val"


def trial_status(error: str | None, diverged: bool, last_epoch: float | None, planned: int) -> str:
    """How a finished trial ended: the one rule the Parquet rows, MLflow tags and the progress
    lines share. A trial stopped early by the scheduler has fewer epochs than planned."""
    if diverged:
        return "diverged"
    if error:
        return "error"
    return "completed" if last_epoch == planned else "stopped"
