"""Final runs packed onto the trial slots. A seed's final runs train in cohorts (one data stream
and one teacher forward for several methods), and a member ends the same in any cohort, so how
the methods are grouped only decides when the runs end. Cut into too few cohorts, the last
seed's runs train while other slots idle; into too many, the teacher's forward is repeated. The
grouping is chosen from what each method's search trials cost per epoch."""

import math
from collections.abc import Sequence

# Of two groupings whose runs end within this share of each other, the one with fewer cohorts
# (each cohort computes the teacher's forward again, which the costs do not show).
_CLOSE = 0.02


def final_cohorts(costs: Sequence[float], size: int, seeds: int, slots: int) -> list[list[int]]:
    """The members (indices into `costs`, each member's estimated seconds per epoch) grouped
    into cohorts of at most `size`, the costliest cohort first. Every count of cohorts per seed
    is tried, from the fewest up; the one whose runs (the cohorts of every seed, the longest
    first onto the slot free first) end soonest wins, fewer cohorts where the ends are close."""
    count = len(costs)
    best, best_end = [list(range(count))], math.inf
    for groups in range(max(1, math.ceil(count / size)), count + 1):
        grouping = _balanced(costs, groups, size)
        loads = [sum(costs[i] for i in group) for group in grouping]
        end = _makespan(loads * seeds, slots)
        if end < best_end * (1 - _CLOSE):
            best, best_end = grouping, end
    return best


def _balanced(costs: Sequence[float], groups: int, size: int) -> list[list[int]]:
    """The costliest member first into the lightest group with room; members keep their order
    within a group, and the groups go costliest first."""
    bins: list[list[int]] = [[] for _ in range(groups)]
    loads = [0.0] * groups
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        target = min((b for b in range(groups) if len(bins[b]) < size), key=lambda b: (loads[b], b))
        bins[target].append(i)
        loads[target] += costs[i]
    order = sorted((b for b in range(groups) if bins[b]), key=lambda b: (-loads[b], min(bins[b])))
    return [sorted(bins[b]) for b in order]


def _makespan(jobs: list[float], slots: int) -> float:
    """When the last job ends, each started (longest first) on the slot that frees first."""
    ends = [0.0] * max(1, slots)
    for job in sorted(jobs, reverse=True):
        ends[ends.index(min(ends))] += job
    return max(ends)
