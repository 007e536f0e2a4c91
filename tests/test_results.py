"""The Parquet store and the leaderboard's selection rule."""

import json
import math
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pcbench.results import ResultsStore, leaderboard, write_report
from pcbench.results.store import TRIALS_SCHEMA


def _row(trial, method, val, test, status="completed", rule="last_epoch"):
    return {**{f.name: None for f in TRIALS_SCHEMA}, "search_id": "s", "trial_id": trial, "method": method,
            "dataset": "digits", "teacher": "cnn_large", "student": "cnn_small", "seed": 0,
            "knobs": json.dumps({"method.tau": 0.123456}), "val_acc": val, "test_acc": test,
            "status": status, "wall_seconds": 36.0, "scoring_rule": rule,
            "selection_split": "val", "epochs_planned": 20,
            "finished_at": datetime.now(timezone.utc)}


def test_store_writes_parts_with_one_schema_and_reads_them_back(tmp_path):
    store = ResultsStore(tmp_path)
    store.write("trials", [_row("a", "pc", 0.9, 0.91)], "part1")
    store.write("trials", [_row("b", "ot", 0.8, None, status="stopped")], "part2")
    trials = store.read("trials")
    assert sorted(trials["trial_id"]) == ["a", "b"]
    assert pq.read_schema(tmp_path / "trials" / "part2.parquet").field("test_acc").type == "double"
    assert not list((tmp_path / "trials").glob("*.tmp"))


def test_parts_written_before_cohorts_read_as_trials_alone(tmp_path):
    store = ResultsStore(tmp_path)
    older = TRIALS_SCHEMA.remove(TRIALS_SCHEMA.get_field_index("cohort_size"))
    row = _row("a", "pc", 0.9, 0.91)
    (tmp_path / "trials").mkdir()
    pq.write_table(pa.table({f.name: [row[f.name]] for f in older}, schema=older),
                   tmp_path / "trials" / "old.parquet")
    store.write("trials", [{**_row("b", "pc", 0.8, 0.8), "cohort_size": 4}], "new")
    trials = store.read("trials").set_index("trial_id")
    assert trials.cohort_size.to_dict() == {"a": 1, "b": 4}


def test_leaderboard_selects_on_validation_never_on_test():
    trials = pd.DataFrame([
        _row("high-test", "pc", 0.90, 0.99),
        _row("high-val", "pc", 0.95, 0.93),
        _row("stopped", "pc", 0.99, None, status="stopped"),  # ran fewer epochs: not eligible
        _row("kd", "kd", 0.92, 0.94),
        _row("other-rule", "kd", 0.99, 0.99, rule="best_epoch"),
    ])
    board = leaderboard(trials)
    pc = board[(board.method == "pc")].iloc[0]
    assert (pc.trial_id, pc.trials, pc.completed) == ("high-val", 3, 2)
    assert pc.compute_hours == 3 * 36.0 / 3600
    rules = board.groupby("scoring_rule").size().to_dict()
    assert rules == {"best_epoch": 1, "last_epoch": 2}  # never ranked together


def test_report_files_are_written(tmp_path):
    board = leaderboard(pd.DataFrame([_row("a", "pc", 0.9, 0.91)]))
    paths = write_report(board, tmp_path)
    assert pd.read_parquet(paths[0]).trial_id.tolist() == ["a"]
    markdown = paths[1].read_text()
    # a search's row: ranked on its validation accuracy; this test accuracy is the trial's own
    assert "| method | val acc (chosen trial) | test acc (one run) |" in markdown
    assert "| pc | **90.00** | 91.00 | tau=0.1235 |" in markdown
    assert "<table" in paths[2].read_text()
    assert "\\toprule" in paths[3].read_text() and paths[3].name == "leaderboard.tex"


def _finals(method, accs, seeds=(1, 2, 3)):
    return [_row(f"{method}-s", method, 0.9, 0.9)] + [
        {**_row(f"{method}-f{seed}", method, None, acc), "phase": "final", "seed": seed,
         "selected_trial": f"{method}-s"} for seed, acc in zip(seeds, accs)]


def test_the_board_marks_methods_not_separated_from_the_best_and_gives_intervals(tmp_path):
    trials = pd.DataFrame(_finals("fcfd", (0.760, 0.770, 0.765))  # best
                          + _finals("ot", (0.758, 0.771, 0.760))  # within noise: not separated
                          + _finals("kd", (0.700, 0.702, 0.704)))  # clearly worse
    board = leaderboard(trials).set_index("method")
    assert board.loc["fcfd", "tied_with_best"] and board.loc["fcfd", "p_vs_best"] == 1.0
    assert board.loc["ot", "tied_with_best"] and board.loc["ot", "p_vs_best"] > 0.05
    assert not board.loc["kd", "tied_with_best"] and board.loc["kd", "p_vs_best"] < 0.05
    from scipy import stats
    raw = stats.ttest_rel([0.700, 0.702, 0.704], [0.760, 0.770, 0.765]).pvalue  # same seeds: paired
    assert board.loc["kd", "p_raw"] == pytest.approx(raw)
    assert board.loc["kd", "p_vs_best"] == pytest.approx(2 * raw)  # Holm: the smaller of two p's, doubled
    low, high = board.loc["kd", ["ci95_low", "ci95_high"]]
    assert low == pytest.approx(0.702 - stats.t.ppf(0.975, 2) * 0.002 / 3 ** 0.5) and high > 0.702
    paths = write_report(leaderboard(trials), tmp_path)
    saved = pd.read_parquet(paths[0])
    assert {"ci95_low", "ci95_high", "p_raw", "p_vs_best", "tied_with_best",
            "detectable_diff"} <= set(saved.columns)
    markdown, tex = paths[1].read_text(), paths[3].read_text()
    assert "| fcfd | **76.50 ± 0.50** |" in markdown and "| ot | 76.30 ± 0.70 |" in markdown
    assert "| not separated (n = 3; could detect ≥ 1.0 pts; p=0.37) |" in markdown
    assert "| worse (p=0.0032) |" in markdown
    assert "Welch" in markdown and "paired" in markdown and "Holm" in markdown  # the test is stated
    assert "\\textbf{76.50 $\\pm$ 0.50}" in tex and "76.30 $\\pm$ 0.70$^{\\dagger}$" in tex
    assert "70.20 $\\pm$ 0.20 &" in tex  # worse: neither bold nor marked


def test_runs_on_different_seeds_are_compared_with_welchs_test():
    trials = pd.DataFrame(_finals("a", (0.80, 0.82, 0.81)) + _finals("b", (0.70, 0.74, 0.72), (4, 5, 6)))
    board = leaderboard(trials).set_index("method")
    from scipy import stats
    assert board.loc["b", "p_vs_best"] == pytest.approx(
        stats.ttest_ind([0.70, 0.74, 0.72], [0.80, 0.82, 0.81], equal_var=False).pvalue)


def test_benchmark_rows_are_their_final_runs_and_never_ranked_with_plain_searches():
    search = [_row("s1", "kd", 0.90, 0.70), _row("s2", "kd", 0.95, 0.71)]
    finals = [{**_row(f"f{i}", "kd", None, acc), "phase": "final", "selected_trial": "s2"}
              for i, acc in enumerate((0.72, 0.74, 0.76))]
    board = leaderboard(pd.DataFrame(search + finals))
    [row] = board.itertuples()
    assert (row.protocol, row.trial_id, row.seeds) == ("final", "s2", 3)
    assert row.test_acc_mean == pytest.approx(0.74) and row.test_acc_std == pytest.approx(0.02)
    later_search = {**_row("p1", "kd", 0.99, 0.99), "search_id": "later"}
    board = leaderboard(pd.DataFrame(search + finals + [later_search]))
    assert sorted(board.protocol) == ["final", "search"]  # side by side, in separate groups
    failed = [{**f, "status": "error", "test_acc": None} for f in finals]
    [row] = leaderboard(pd.DataFrame(search + failed)).itertuples()
    assert row.seeds == 0 and math.isnan(row.test_acc_mean)  # not the search trial's number


def test_diverged_runs_are_never_ranked_and_an_all_diverged_method_says_so():
    trials = pd.DataFrame(_finals("kd", (0.70, 0.71, 0.72))
                          + [_row("pc-1", "pc", None, None, status="diverged"),
                             _row("pc-2", "pc", None, None, status="diverged")])
    board = leaderboard(trials).set_index("method")
    assert list(board.index) == ["kd", "pc"] and board.loc["pc", "diverged"] == 2
    assert pd.isna(board.loc["pc", "test_acc_mean"]) and pd.isna(board.loc["pc", "tied_with_best"])
    assert board.loc["pc", "protocol"] == "final"  # shown in the benchmark's group, beside kd
    from pcbench.results.render import to_markdown
    assert "| pc | diverged (2 runs) |" in to_markdown(leaderboard(trials))
