"""The leaderboard page's figures: inline SVG per group (test accuracy per method, the search's
progress), self-contained, deterministic."""

import json
import re
from datetime import datetime, timedelta, timezone

import pandas as pd

from pcbench.results import leaderboard, write_report
from pcbench.results.render import to_html
from pcbench.results.store import TRIALS_SCHEMA

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


def _trial(n, method, val, test, status="completed", dataset="digits", search="s1"):
    return {**{f.name: None for f in TRIALS_SCHEMA}, "search_id": search, "trial_id": f"t{n}",
            "method": method, "dataset": dataset, "teacher": "cnn_large", "student": "cnn_small",
            "seed": 0, "knobs": json.dumps({"method.weight": 1.5}), "val_acc": val,
            "test_acc": test if status == "completed" else None, "status": status,
            "wall_seconds": 10.0, "scoring_rule": "last_epoch", "selection_split": "val",
            "epochs_planned": 3, "epochs_run": 3, "finished_at": T0 + timedelta(seconds=n)}


def _trials() -> pd.DataFrame:
    return pd.DataFrame([
        _trial(1, "pc", 0.90, 0.91), _trial(2, "pc", 0.93, 0.92), _trial(3, "pc", 0.80, None, "stopped"),
        _trial(4, "kd", 0.88, 0.87), _trial(5, "kd", 0.91, 0.90),
        _trial(6, "ce", 0.70, 0.69, dataset="other", search="s2"),
        _trial(7, "ot", 0.75, 0.76, dataset="other", search="s2"),
    ])


def _board(**extra) -> pd.DataFrame:
    """A board as the renderer reads it, by hand (one search table, two methods)."""
    nan = float("nan")
    rows = pd.DataFrame({"dataset": "digits", "teacher": "cnn_large", "student": "cnn_small",
                         "teacher_dataset": "digits", "student_init": "scratch", "teacher_sha256": "f" * 64,
                         "teacher_test_acc": 0.975, "recipe": None, "precision": "fp32", "epochs_planned": 3,
                         "scoring_rule": "last_epoch", "protocol": "search", "benchmark_id": None,
                         "method": ["pc", "kd"], "test_acc_mean": nan, "test_acc_std": nan, "seeds": 1,
                         "seeds_ok": 1, "seeds_planned": 1, "failed_seeds": None,
                         "val_acc": [0.93, 0.91], "knobs": "{}", "trials": [3, 2], "completed": [2, 2],
                         "compute_hours": 0.01, "gpu_hours": 0.0, "published_acc": nan,
                         "published_epochs": None, "published_test_selected": None, "published_rule": None,
                         "published_source": None, "published_teacher_acc": nan, "published_elsewhere": None,
                         "diverged": 0, "ci95_low": nan, "ci95_high": nan, "comparison": None, "p_raw": nan,
                         "p_vs_best": nan, "tied_with_best": None, "detectable_diff": nan,
                         "selection_split": "val", "search_id": "s1"})
    return rows.assign(**extra)


def _final_board(**extra) -> pd.DataFrame:
    """The same two methods as a benchmark's final runs over three seeds."""
    return _board(**{"protocol": "final", "benchmark_id": "s1", "seeds": 3, "seeds_ok": 3, "seeds_planned": 3,
                     "comparison": ["best", None], **extra})


def _figures(page: str, kind: str) -> list[str]:
    return re.findall(rf'<figure class="plot" data-plot="{kind}" id="[^"]+">.*?</figure>', page, re.DOTALL)


def _labels(figure: str) -> set[str]:
    return {t.strip() for t in re.findall(r"<text\b[^>]*>([^<]*)</text>", figure)}


def test_each_group_has_both_figures_naming_its_methods(tmp_path):
    trials = _trials()
    board = leaderboard(trials)
    page = write_report(board, tmp_path, trials=trials)[2].read_text()
    sections = re.findall(r'<section class="group".*?</section>', page, re.DOTALL)
    assert len(sections) == 2 and page.count("<svg") == 4
    for section, methods in zip(sections, ({"kd", "pc"}, {"ce", "ot"})):  # groups sorted by data set
        [bars] = _figures(section, "val-acc")  # searches: the chosen trial's validation accuracy
        [progress] = _figures(section, "search-progress")
        assert section.index("</table>") < section.index("<figure")  # below the group's table
        assert "<figcaption>" in bars and "<figcaption>" in progress
        assert methods <= _labels(bars) and methods <= _labels(progress)
        assert not ({"kd", "pc", "ce", "ot"} - methods) & (_labels(bars) | _labels(progress))


def test_svg_is_self_contained_small_and_the_same_every_time():
    trials = _trials()
    page = to_html(_board(), trials)
    assert page == to_html(_board(), trials)
    svgs = re.findall(r"<svg\b.*?</svg>", page, re.DOTALL)
    assert len(svgs) == 2
    for svg in svgs:
        assert len(svg) < 60_000
        assert "<script" not in svg and "@font-face" not in svg and "<dc:date" not in svg
        assert not re.search(r'(href|src)="(?!#)', svg)  # references stay inside the figure
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # unique across the page's figures


def test_bars_use_the_mean_over_seeds_with_its_std_when_the_board_has_it():
    board = _final_board(test_acc_mean=[0.95, 0.85], test_acc_std=[0.01, 0.02])
    page = to_html(board)
    [bars] = _figures(page, "test-acc")
    assert "mean ± std over 3 seeds" in bars and "std over seeds" in bars.split("<figcaption>")[1]
    assert {"95.00", "85.00"} <= _labels(bars)  # the mean, printed beside each bar
    assert "95.00 ± 1.00" in page  # the table says the same
    assert not _figures(page, "search-progress")  # no trials given: no progress figure


def test_a_search_table_plots_validation_accuracy_and_says_so():
    page = to_html(_board())  # no test accuracy at all
    [bars] = _figures(page, "val-acc")
    assert {"93.00", "91.00", "validation accuracy (%) of the chosen trial"} <= _labels(bars)
    assert "search trials have no test accuracy" in bars.split("<figcaption>")[1]
    assert not _figures(page, "test-acc")


def test_a_method_without_accuracy_gets_no_bar_and_breaks_nothing():
    board = _final_board(test_acc_mean=[0.95, float("nan")], test_acc_std=[0.01, float("nan")],
                         seeds_ok=[3, 0], diverged=[0, 3], cka=[0.8, float("nan")], rank_agreement=0.5)
    page = to_html(board)
    [bars] = _figures(page, "test-acc")
    assert "95.00" in _labels(bars) and "nan" not in bars.lower().split("<figcaption>")[0]
    assert "diverged (3 runs)" in page and _figures(page, "accuracy-cka")


def test_progress_follows_the_searches_that_chose_the_rows_and_leaves_final_runs_out():
    from pcbench.results.render import _searched

    old = _trial(8, "pc", 0.10, 0.10, search="old")  # an earlier search the board did not keep
    final = {**_trial(9, "pc", 0.99, 0.99), "phase": "final"}  # a seed run of the chosen one
    trials = pd.DataFrame([*_trials().to_dict("records"), old, final])
    assert sorted(_searched(_board(), trials).trial_id) == ["t1", "t2", "t3", "t4", "t5"]


def test_a_group_with_diagnostics_plots_accuracy_against_cka_and_shows_both_columns():
    page = to_html(_board(cka=[0.81, 0.64], rank_agreement=[0.72, 0.55]), _trials())
    [figure] = _figures(page, "accuracy-cka")
    assert {"pc", "kd", "linear CKA with the teacher's embedding"} <= _labels(figure)
    assert "<th>CKA</th>" in page and "0.810" in page and "0.720" in page
    assert _figures(to_html(_board(), _trials()), "accuracy-cka") == []  # none without diagnostics
