"""Final runs packed into cohorts. A seed's final runs train in cohorts of at most K methods
(one data stream, one teacher forward per cohort), and a member ends the same in any cohort, so
which methods share a cohort only decides when the cohorts end. Cut in list order, one cohort
can hold the costly methods and run long after the others; balanced by what each method's
search trials cost per epoch, they end closer together. The number of cohorts stays the
fewest that hold every method: each more would compute the teacher's forward again."""

import math
from collections.abc import Sequence


def final_cohorts(costs: Sequence[float], size: int) -> list[list[int]]:
    """The members (indices into `costs`, each member's estimated seconds per epoch) in the
    fewest cohorts of at most `size`, the costliest member first into the lightest cohort with
    room; members keep their order within a cohort, and the cohorts go costliest first."""
    groups = max(1, math.ceil(len(costs) / size))
    bins: list[list[int]] = [[] for _ in range(groups)]
    loads = [0.0] * groups
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        target = min((b for b in range(groups) if len(bins[b]) < size), key=lambda b: (loads[b], b))
        bins[target].append(i)
        loads[target] += costs[i]
    order = sorted((b for b in range(groups) if bins[b]), key=lambda b: (-loads[b], min(bins[b])))
    return [sorted(bins[b]) for b in order]
