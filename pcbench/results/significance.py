"""Which differences on a leaderboard are real: a 95% confidence interval per method and, per
table, a test of every method against the table's best.

The test is two-sided over the final runs' test accuracies. When two methods ran the same
seeds it is a paired t-test: a seed fixes the initial student, the data order and the
augmentation of pcbench's device-side pipelines (digits, CIFAR), so the runs of one seed share
their randomness and the pairing removes it (a benchmark with cohorts trains a seed's final
runs of every method as one cohort on literally one data stream). Otherwise it is Welch's
t-test. The p values of one table are one family, corrected with Holm's step-down method.

A method is *not separated* from the best when the corrected p is >= 0.05; that is no proof
of equality, so it comes with the smallest difference those seeds could have detected (80%
power). Without any spread a t statistic divides by zero: such pairs are "identical" (equal
seed for seed, or equal means) or "not testable", never given a p. With fewer than two runs
on either side nothing is tested.
"""

import math
import statistics
import warnings
from collections.abc import Sequence
from typing import NamedTuple

ALPHA = 0.05
POWER = 0.8
# accuracies are fractions of a test set: spreads below this are rounding, not spread
_NO_SPREAD = 1e-9

# the kinds of comparison (the board's `comparison` column)
BEST, PAIRED, WELCH, IDENTICAL, NO_SPREAD = "best", "paired", "welch", "identical", "no spread"


def comparison_note(comparisons: int) -> str:
    """What a table's "vs best" column means, for its footnote."""
    return ("vs best: two-sided t-test of each method against the table's best over the seed runs "
            "(paired by seed where both ran the same seeds, which share data order and "
            "augmentation, in a benchmark with cohorts as one data stream; Welch's otherwise), p "
            f"Holm-corrected over the table's {comparisons} comparison{'s' * (comparisons != 1)}; "
            "worse: corrected p < 0.05; not separated: corrected p >= 0.05, where n is the seeds "
            "compared and could detect is the smallest difference those seeds find with 80% power "
            "(two-sided, alpha 0.05): a smaller real difference may hide there; identical: equal "
            "seed for seed (or equal means, no spread); not testable (no spread): no spread to "
            "test with, so no p")


class Comparison(NamedTuple):
    kind: str  # PAIRED | WELCH (tested), IDENTICAL | NO_SPREAD (untested)
    p: float  # raw two-sided p; NaN when untested
    detectable: float  # smallest difference with 80% power at these seeds; NaN when untested


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Student's t interval of the mean; NaN with fewer than two values."""
    from scipy import stats  # SciPy loads when a board is made, not with the CLI

    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = sum(values) / n
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)  # no warning at 0
    return mean - half, mean + half


def compare(runs: Sequence[tuple[int, float]], best: Sequence[tuple[int, float]]) -> Comparison | None:
    """`runs` against `best` ((seed, accuracy) each); None when either has fewer than two runs.
    Paired when both ran the same distinct seeds, Welch's otherwise."""
    if len(runs) < 2 or len(best) < 2:
        return None
    mine, theirs = dict(runs), dict(best)
    if len(mine) == len(runs) and len(theirs) == len(best) and set(mine) == set(theirs):
        return _paired([mine[s] - theirs[s] for s in sorted(mine)])
    return _welch([acc for _, acc in runs], [acc for _, acc in best])


def _paired(differences: list[float]) -> Comparison:
    from scipy import stats

    n, mean, sd = len(differences), statistics.fmean(differences), statistics.stdev(differences)
    if sd < _NO_SPREAD:
        return Comparison(IDENTICAL if abs(mean) < _NO_SPREAD else NO_SPREAD, math.nan, math.nan)
    p = 2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)
    return Comparison(PAIRED, float(p), detectable_difference(sd / math.sqrt(n), n - 1))


def _welch(a: list[float], b: list[float]) -> Comparison:
    from scipy import stats

    va, vb = statistics.variance(a), statistics.variance(b)
    if max(va, vb) < _NO_SPREAD ** 2:
        same = abs(statistics.fmean(a) - statistics.fmean(b)) < _NO_SPREAD
        return Comparison(IDENTICAL if same else NO_SPREAD, math.nan, math.nan)
    with warnings.catch_warnings():  # one constant sample: scipy warns, the p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(a, b, equal_var=False).pvalue
    sa, sb = va / len(a), vb / len(b)
    df = (sa + sb) ** 2 / (sa ** 2 / (len(a) - 1) + sb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    return Comparison(WELCH, float(p), detectable_difference(math.sqrt(sa + sb), df))


def detectable_difference(standard_error: float, df: float) -> float:
    """The smallest true difference a two-sided t-test at ALPHA finds with POWER: the
    noncentrality at which the noncentral t crosses the critical value that often, times the
    standard error of the difference."""
    from scipy import optimize, stats

    critical = stats.t.ppf(1 - ALPHA / 2, df)

    def shortfall(noncentrality: float) -> float:
        # both tails; sf at -noncentrality is the lower one (cdf there is NaN far out)
        return (stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality)
                - POWER)

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return optimize.brentq(shortfall, 0.0, high, xtol=1e-10) * standard_error


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of one family; a NaN (no test) is no member and stays NaN."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # never below an earlier one
        adjusted[i] = running
    return adjusted
