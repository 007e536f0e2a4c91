"""How a trial is chosen, in one place below everything that chooses: the searcher and the
early stopper (Optuna, ASHA, a cohort's halving, in launch/) and the final-run selection (in
results/) all rank trials by the last epoch's accuracy on the validation split. Test accuracy
is reported, never used to choose."""

METRIC, MODE = "val_acc", "max"  # what Tune's searcher and scheduler optimise
SCORING_RULE = "last_epoch"  # the epoch whose METRIC counts (recorded on every trial row)
SELECTION_SPLIT = "val"
