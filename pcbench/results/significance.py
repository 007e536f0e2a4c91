"""Which differences on a leaderboard are real: a 95% confidence interval per method and, per
group, a test of every method against the group's best.

The test is two-sided at p < 0.05 over the final runs' test accuracies. When two methods ran
the same seeds it is a paired t-test: a seed fixes the initial student, the data order and
the augmentation of pcbench's device-side pipelines (digits, CIFAR), so the runs of one seed
share their randomness and the pairing removes it (a benchmark with cohorts trains a seed's
final runs of every method as one cohort on literally one data stream). Otherwise it is Welch's t-test. A method
is *tied with the best* when the test cannot tell it from the best (p >= 0.05); with fewer
than two runs on either side nothing can be told, and the tie is unknown.
"""

import math
import statistics
import warnings
from collections.abc import Sequence

ALPHA = 0.05
TEST_NOTE = ("tied: not significantly different from the group's best, two-sided t-test over "
             "the seed runs at p < 0.05 (paired by seed where both methods ran the same seeds, "
             "which share data order and augmentation, in a benchmark with cohorts as one data "
             "stream; Welch's otherwise)")


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Student's t interval of the mean; NaN with fewer than two values."""
    from scipy import stats  # SciPy loads when a board is made, not with the CLI

    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = sum(values) / n
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)  # no warning at 0
    return mean - half, mean + half


def p_value(runs: Sequence[tuple[int, float]], best: Sequence[tuple[int, float]]) -> float:
    """Two-sided p of `runs` against `best` ((seed, accuracy) each); NaN when either has fewer
    than two runs. Paired when both ran the same distinct seeds, Welch's otherwise. Without
    any spread (scipy's NaN) equal means are a tie and unequal ones a difference."""
    from scipy import stats

    if len(runs) < 2 or len(best) < 2:
        return math.nan
    mine, theirs = dict(runs), dict(best)
    paired = len(mine) == len(runs) and len(theirs) == len(best) and set(mine) == set(theirs)
    if paired:
        a, b = [mine[s] for s in sorted(mine)], [theirs[s] for s in sorted(mine)]
    else:
        a, b = [acc for _, acc in runs], [acc for _, acc in best]
    with warnings.catch_warnings():  # near-identical samples: scipy warns, the p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = (stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)).pvalue
    if math.isnan(p):
        return 1.0 if math.isclose(sum(a) / len(a), sum(b) / len(b)) else 0.0
    return float(p)
