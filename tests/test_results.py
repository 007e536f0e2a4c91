"""The Parquet store and the leaderboard's selection rule."""

import json
import math
from datetime import datetime, timezone

import pandas as pd
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
    assert "| pc | 91.00 | 1 | 90.00 | tau=0.1235 |" in markdown
    assert "<table" in paths[2].read_text()


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
