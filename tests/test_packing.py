"""How a benchmark's final runs are grouped into cohorts (packing.py): every member once, in
the fewest cohorts of at most the cohort size, balanced by cost."""

from pcbench.packing import final_cohorts

# the demo's five methods' search costs (seconds per epoch, this 2-core machine): ce, kd, pc, ot, fcfd
DEMO = [0.19, 0.28, 0.37, 0.54, 0.68]


def _loads(costs, groups):
    return [sum(costs[i] for i in g) for g in groups]


def test_every_member_lands_once_in_the_fewest_cohorts_no_larger_than_the_size():
    for size in (1, 2, 3, 4, 5, 8):
        groups = final_cohorts(DEMO, size)
        assert sorted(i for g in groups for i in g) == list(range(5))
        assert all(1 <= len(g) <= size for g in groups) and len(groups) == -(-5 // size)
    assert final_cohorts(DEMO, 5) == [[0, 1, 2, 3, 4]]


def test_cohorts_are_balanced_by_cost_where_list_order_would_leave_one_running_alone():
    groups = final_cohorts(DEMO, 4)
    chunked = [[0, 1, 2, 3], [4]]  # what cutting the list into cohorts of 4 gives: 1.38 against 0.68
    assert max(_loads(DEMO, groups)) < 0.85 * max(_loads(DEMO, chunked))
    assert groups == [[0, 2, 3], [1, 4]]  # 1.10 and 0.96, the costlier first
    # one method costlier than all the others together: it is a cohort of its own
    assert final_cohorts([0.1, 0.1, 0.1, 2.0], 3) == [[3], [0, 1, 2]]
