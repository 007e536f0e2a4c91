"""How a benchmark's final runs are grouped into cohorts (packing.py): every member once, in
cohorts of at most the cohort size, as many per seed as keep the slots busy."""

from pcbench.packing import _makespan, final_cohorts

# the demo's five methods' search costs (seconds per epoch, this 2-core machine): ce, kd, pc, ot, fcfd
DEMO = [0.19, 0.28, 0.37, 0.54, 0.68]


def _loads(costs, groups):
    return [sum(costs[i] for i in g) for g in groups]


def test_every_member_lands_once_in_a_cohort_no_larger_than_the_size():
    for slots in (1, 2, 3, 8):
        groups = final_cohorts(DEMO, 4, 3, slots)
        assert sorted(i for g in groups for i in g) == list(range(5))
        assert all(1 <= len(g) <= 4 for g in groups)


def test_three_seeds_on_two_slots_end_sooner_than_cohorts_cut_in_list_order():
    groups = final_cohorts(DEMO, 4, 3, 2)
    chunked = [[0, 1, 2, 3], [4]]  # what cutting the list into cohorts of 4 gives
    assert _makespan(_loads(DEMO, groups) * 3, 2) < 0.95 * _makespan(_loads(DEMO, chunked) * 3, 2)
    # two cohorts a seed, the costliest first, balanced: six runs fill both slots to the end
    assert len(groups) == 2 and _loads(DEMO, groups)[0] >= _loads(DEMO, groups)[1]
    assert max(_loads(DEMO, groups)) < 1.15 * sum(DEMO) / 2


def test_fewest_cohorts_where_more_would_not_end_sooner():
    # one slot: the runs end at the total cost whatever the grouping, so the teacher's forward is shared most
    assert len(final_cohorts(DEMO, 4, 3, 1)) == 2
    assert final_cohorts(DEMO, 5, 3, 1) == [[0, 1, 2, 3, 4]]
    # as many slots as seeds: one cohort of every method per seed already fills them
    assert final_cohorts(DEMO, 5, 2, 2) == [[0, 1, 2, 3, 4]]
    # many slots: the costliest method alone bounds the end; cheaper ones still share
    wide = final_cohorts(DEMO, 4, 3, 16)
    assert [4] in wide and len(wide) < 5
