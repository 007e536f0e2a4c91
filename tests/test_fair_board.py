"""A fair leaderboard: one table per protocol (teacher by content, length, recipe, precision,
benchmark), published numbers only beside their own protocol, search tables on validation
accuracy, Holm-corrected tests that say what they could not see, every failed seed counted,
and LaTeX that prints what it says."""

import json
import math
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import integrate, stats

from pcbench.results import ResultsStore, leaderboard, write_report
from pcbench.results.leaderboard import with_defaults
from pcbench.results.render import to_html, to_latex, to_markdown
from pcbench.results.significance import holm
from pcbench.results.store import TRIALS_SCHEMA

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
SHA_A, SHA_B = "a" * 12 + "1" * 52, "b" * 12 + "2" * 52
_finished = iter(range(10 ** 6))  # rows finish in the order they are made


def _row(trial, method, *, val=0.9, test=None, phase="search", seed=0, search="s", status="completed",
         epochs=1, **fields):
    return {**{f.name: None for f in TRIALS_SCHEMA}, "search_id": search, "trial_id": trial,
            "method": method, "phase": phase, "dataset": "cifar100", "teacher": "resnet56",
            "student": "resnet20", "teacher_sha256": SHA_A, "teacher_test_acc": 0.7234, "seed": seed,
            "knobs": json.dumps({"method.tau": 4.0}), "val_acc": val, "test_acc": test, "status": status,
            "wall_seconds": 36.0, "scoring_rule": "last_epoch", "selection_split": "val",
            "epochs_planned": epochs, "recipe": "cifar100-crd", "precision": "fp32",
            "finished_at": T0 + timedelta(seconds=next(_finished)), **fields}


def _benchmark(method, accs, seeds=(1, 2, 3), **fields):
    """A method's search trial and its final runs, one per seed (None: the run diverged)."""
    return [_row(f"{method}-s", method, **fields)] + [
        _row(f"{method}-f{seed}", method, val=None, test=acc, phase="final", seed=seed,
             status="completed" if acc is not None else "diverged", selected_trial=f"{method}-s", **fields)
        for seed, acc in zip(seeds, accs)]


def _tables(markdown: str) -> dict[str, str]:
    """Each markdown table's title -> its section."""
    sections = re.split(r"^## ", markdown, flags=re.MULTILINE)[1:]
    return {s.splitlines()[0]: s for s in sections}


class _Tracker:
    """What SearchRecorder calls on MLflow, doing nothing."""

    def start_run(self, *args, **kwargs):
        return "run-1"

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_a_trial_row_records_its_teachers_accuracy_recipe_and_precision(tmp_path):
    from pcbench.config import TrialConfig
    from pcbench.launch.plan import Stage
    from pcbench.recording import SearchRecorder

    config = TrialConfig.parse({"method": "kd", "teacher_sha256": SHA_A, "teacher_test_acc": 0.975,
                                "train": {"recipe": "digits", "precision": "bf16", "epochs": 1}})
    recorder = SearchRecorder(_Tracker(), "parent", ResultsStore(tmp_path), "s")
    recorder.trial_started("t1", config, {}, Stage("search"))
    recorder.trial_epoch("t1", {"epoch": 1, "val_acc": 0.5})
    recorder.trial_finished("t1", None)
    [row] = ResultsStore(tmp_path).read("trials").to_dict("records")
    assert (row["teacher_test_acc"], row["recipe"], row["precision"]) == (0.975, "digits", "bf16")


def test_the_plain_log_shows_a_final_runs_test_accuracy_and_a_search_trials_validation_only():
    import io

    from rich.console import Console

    from pcbench.config import TrialConfig
    from pcbench.launch.plan import Stage
    from pcbench.progress import PlainLog

    out = io.StringIO()
    log = PlainLog(Console(file=out, width=300))
    config = TrialConfig.parse({"method": "kd", "train": {"epochs": 1}})
    for trial, stage, metrics in (("s1", "search", {"epoch": 1, "val_acc": 0.5}),
                                  ("f1", "final", {"epoch": 1, "test_acc": 0.61})):
        log.trial_started(trial, config, {}, Stage(stage))
        log.trial_epoch(trial, metrics)
        log.trial_finished(trial, None)
    search, final = out.getvalue().splitlines()
    assert "val acc 50.00%" in search and "test acc" not in search
    assert "val acc -, test acc 61.00%" in final


def test_older_parts_take_recipe_and_precision_from_their_configs(tmp_path):
    added = ("teacher_test_acc", "recipe", "precision", "seeds_planned")
    older = pa.schema([f for f in TRIALS_SCHEMA if f.name not in added])
    rows = [{**_row("a", "kd", test=0.7), "config": json.dumps({"train": {"recipe": "digits",
                                                                          "precision": "bf16"}})},
            {**_row("b", "kd", test=0.7), "config": json.dumps({"train": {}})}]
    (tmp_path / "trials").mkdir()
    pq.write_table(pa.table({f.name: [r[f.name] for r in rows] for f in older}, schema=older),
                   tmp_path / "trials" / "old.parquet")
    read = with_defaults(ResultsStore(tmp_path).read("trials"))
    assert read["teacher_test_acc"].isna().all()
    assert read["recipe"][0] == "digits" and pd.isna(read["recipe"][1])
    assert list(read["precision"]) == ["bf16", "fp32"]


def test_two_teachers_of_one_name_are_two_tables_each_with_its_own_accuracy():
    trials = pd.DataFrame([_row("a1", "kd", val=0.80), _row("a2", "dkd", val=0.82),
                           _row("b1", "kd", val=0.70, teacher_sha256=SHA_B, teacher_test_acc=0.9610),
                           _row("c1", "ce", val=0.60, teacher_sha256=None, teacher_test_acc=None)])
    board = leaderboard(trials)
    assert len(board) == 4 and sorted(board.method) == ["ce", "dkd", "kd", "kd"]  # kd kept per teacher
    tables = _tables(to_markdown(board))
    assert len(tables) == 3
    [a] = [t for title, t in tables.items() if "teacher aaaaaaaaaaaa" in title]
    [b] = [t for title, t in tables.items() if "teacher bbbbbbbbbbbb" in title]
    [none] = [t for title, t in tables.items() if "no teacher weights" in title]
    assert "teacher: 72.34% test" in a and "| dkd |" in a and "| kd |" in a
    assert "teacher: 96.10% test" in b and "| dkd |" not in b
    assert "| ce |" in none and "teacher: no weights loaded" in none


def test_each_benchmark_is_a_table_and_plain_searches_share_one_unless_their_protocol_differs():
    trials = pd.DataFrame(
        _benchmark("kd", (0.70, 0.71, 0.72), search="b1") + _benchmark("kd", (0.60, 0.61, 0.62), search="b2")
        + [_row("p1", "kd", search="p1"), _row("p2", "dkd", search="p2"),  # one table
           _row("p3", "dkd", search="p3", precision="bf16"), _row("p4", "dkd", search="p4", recipe=None)])
    board = leaderboard(trials)
    finals = board[board.protocol == "final"]
    assert sorted(finals.benchmark_id) == ["b1", "b2"]  # never deduplicated across benchmarks
    assert (finals.p_vs_best == 1.0).all()  # each the best of its own table: seeds paired within it
    titles = list(_tables(to_markdown(board)))
    assert len(titles) == 5
    assert sum("benchmark b1" in t for t in titles) == sum("benchmark b2" in t for t in titles) == 1
    shared = board[(board.protocol == "search") & (board.precision == "fp32") & board.recipe.notna()]
    assert sorted(shared.method) == ["dkd", "kd"] and shared.benchmark_id.isna().all()


def test_a_one_epoch_table_names_published_numbers_only_below_it():
    trials = pd.DataFrame(_benchmark("kd", (0.10, 0.11, 0.12)) + _benchmark("dkd", (0.12, 0.13, 0.11)))
    board = leaderboard(trials)
    assert board.published_acc.isna().all()
    markdown = to_markdown(board)
    assert "| published |" not in markdown
    assert ("published: dkd 71.97‡ at 240 epochs, recipe cifar100-crd, test-scored final runs (mdistiller); "
            "kd 70.66 at 240 epochs, recipe cifar100-crd, test-scored final runs (RepDistiller), "
            "not comparable with this 1-epoch table.") in markdown
    assert "‡ selected by its source on the test set (best test epoch); pcbench selects on validation." \
        in markdown


def test_a_240_epoch_table_shows_them_dkds_marked_as_selected_on_test_and_abs_not_at_all():
    trials = pd.DataFrame(_benchmark("kd", (0.70, 0.715, 0.72), epochs=240)
                          + _benchmark("dkd", (0.71, 0.72, 0.73), epochs=240)
                          + _benchmark("ab", (0.69, 0.70, 0.71), epochs=240)
                          + _benchmark("pc+kd", (0.69, 0.70, 0.72), epochs=240))
    board = leaderboard(trials).set_index("method")
    assert board.loc["kd", "published_acc"] == pytest.approx(0.7066)
    assert board.loc["dkd", "published_acc"] == pytest.approx(0.7197)
    assert board.loc["dkd", "published_test_selected"]
    assert board.loc["kd", "published_teacher_acc"] == pytest.approx(0.7234)
    assert math.isnan(board.loc["ab", "published_acc"])  # RepDistiller's AB ran 30 + 240 epochs
    assert board.loc["ab", "published_elsewhere"] == \
        "69.47 at 270 epochs, recipe cifar100-crd, test-scored final runs (RepDistiller)"
    assert pd.isna(board.loc["pc+kd", ["published_acc", "published_elsewhere"]]).all()  # nobody's
    markdown = to_markdown(leaderboard(trials))
    # sources numbered in the order the table shows them
    assert re.search(r"\| dkd \| \*\*72\.00 ± 1\.00\*\* \|.*\| 71\.97‡ \[1\] \|", markdown)
    assert re.search(r"\| kd \| 71\.17 ± 1\.04 \|.*\| 70\.66 \[2\] \|", markdown)
    assert "teacher: 72.34% test; published teacher: 72.34% [2]." in markdown
    assert "[1] megvii-research/mdistiller, README.md (CIFAR-100 table); 240 epochs; its number: best test" \
        in markdown
    assert ("published: ab 69.47 at 270 epochs, recipe cifar100-crd, test-scored final runs (RepDistiller), "
            "not comparable with this 240-epoch table.") in markdown
    assert "pc+kd: losses are pcbench's reconstructions from the papers' descriptions" in markdown


def _paired_p(a, b):
    return stats.ttest_rel(a, b).pvalue


def test_p_values_are_holm_corrected_within_the_table():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    best = (0.760, 0.770, 0.765)
    others = {"kd": (0.700, 0.706, 0.704), "at": (0.740, 0.752, 0.741), "sp": (0.755, 0.771, 0.760)}
    trials = pd.DataFrame([r for m, accs in {"dkd": best, **others}.items() for r in _benchmark(m, accs)])
    board = leaderboard(trials).set_index("method")
    raw = {m: _paired_p(accs, best) for m, accs in others.items()}
    ranked = sorted(raw, key=raw.get)  # Holm by hand: 3, 2, 1 times the p, never decreasing
    expected, running = {}, 0.0
    for factor, method in zip((3, 2, 1), ranked):
        running = max(running, min(1.0, factor * raw[method]))
        expected[method] = running
    for method in others:
        assert board.loc[method, "p_raw"] == pytest.approx(raw[method])
        assert board.loc[method, "p_vs_best"] == pytest.approx(expected[method])
    assert board.loc["dkd", "p_vs_best"] == 1.0 and board.loc["dkd", "tied_with_best"]
    markdown = to_markdown(leaderboard(trials))
    assert f"| worse (p={expected['kd']:.2g}) |" in markdown
    assert "Holm-corrected over the table's 3 comparisons" in markdown


def test_without_spread_there_is_no_t_test():
    best = (0.760, 0.770, 0.765)
    trials = pd.DataFrame(_benchmark("dkd", best)
                          + _benchmark("kd", tuple(a - 0.01 for a in best))  # the same gap every seed
                          + _benchmark("at", (0.70, 0.70, 0.70), seeds=(4, 5, 6)))
    board = leaderboard(trials).set_index("method")
    assert board.loc["kd", "comparison"] == "no spread" and math.isnan(board.loc["kd", "p_vs_best"])
    assert pd.isna(board.loc["kd", "tied_with_best"]) and math.isnan(board.loc["kd", "detectable_diff"])
    assert board.loc["at", "comparison"] == "welch"  # one side has spread: Welch's test is defined
    markdown = to_markdown(leaderboard(trials))
    assert "| kd | 75.50 ± 0.50 | [74.26, 76.74] | not testable (no spread) |" in markdown
    # Welch's test of constant samples: equal means are identical, unequal ones not testable
    constant = pd.DataFrame(_benchmark("kd", (0.70, 0.70)) + _benchmark("at", (0.70, 0.70), seeds=(3, 4))
                            + _benchmark("sp", (0.60, 0.60), seeds=(5, 6)))
    board = leaderboard(constant).set_index("method")
    [best] = board.index[board.comparison == "best"]
    other = ({"kd", "at"} - {best}).pop()
    assert board.loc[other, "comparison"] == "identical" and board.loc[other, "tied_with_best"]
    assert math.isnan(board.loc[other, "p_vs_best"])
    assert board.loc["sp", "comparison"] == "no spread" and math.isnan(board.loc["sp", "p_vs_best"])
    markdown = to_markdown(leaderboard(constant))
    assert "| identical |" in markdown and "| not testable (no spread) |" in markdown
    same = pd.DataFrame(_benchmark("kd", (0.70, 0.71, 0.72)) + _benchmark("at", (0.70, 0.71, 0.72)))
    assert sorted(leaderboard(same).comparison) == ["best", "identical"]  # equal seed for seed


def _power(noncentrality: float, df: float) -> float:
    """Two-sided power of a t-test at 0.05, by integrating over the chi-square of the variance."""
    critical = stats.t.ppf(0.975, df)

    def at(v):
        scale = critical * math.sqrt(v / df)
        rejected = stats.norm.sf(scale - noncentrality) + stats.norm.cdf(-scale - noncentrality)
        return rejected * stats.chi2.pdf(v, df)
    return integrate.quad(at, 0, math.inf)[0]


def test_not_separated_says_how_many_seeds_and_what_they_could_have_detected():
    best, close = (0.760, 0.770, 0.765), (0.758, 0.771, 0.760)
    trials = pd.DataFrame(_benchmark("dkd", best) + _benchmark("kd", close)
                          + _benchmark("at", (0.750, 0.775, 0.770), seeds=(4, 5, 6)))
    board = leaderboard(trials).set_index("method")
    differences = [c - b for c, b in zip(close, best)]
    se = stats.tstd(differences) / math.sqrt(3)
    detectable = board.loc["kd", "detectable_diff"]
    assert _power(detectable / se, 2) == pytest.approx(0.8, abs=1e-4)
    assert board.loc["kd", "tied_with_best"] and board.loc["kd", "p_vs_best"] >= 0.05
    a, b = stats.tvar([0.750, 0.775, 0.770]) / 3, stats.tvar(best) / 3  # Welch's
    df = (a + b) ** 2 / (a ** 2 / 2 + b ** 2 / 2)
    assert _power(board.loc["at", "detectable_diff"] / math.sqrt(a + b), df) == pytest.approx(0.8, abs=1e-4)
    markdown = to_markdown(leaderboard(trials))
    assert f"| not separated (n = 3; could detect ≥ {100 * detectable:.1f} pts; p=" in markdown
    assert "not separated (n = 3 vs 3;" in markdown  # Welch: the two sides' seeds
    assert "80% power" in markdown and "tied" not in markdown


def test_failed_final_seeds_are_counted_and_named():
    trials = pd.DataFrame(_benchmark("kd", (0.70, 0.72, None)) + _benchmark("dkd", (0.71, 0.73, 0.72)))
    board = leaderboard(trials).set_index("method")
    assert (board.loc["kd", "seeds_ok"], board.loc["kd", "seeds_planned"]) == (2, 3)
    assert board.loc["kd", "test_acc_mean"] == pytest.approx(0.71)  # the survivors'
    assert board.loc["kd", "failed_seeds"] == "3 (diverged)"
    markdown = to_markdown(leaderboard(trials))
    assert re.search(r"\| kd \| 71\.00 ± 1\.41 \|[^\n]*\| 2/3 \|", markdown)
    assert re.search(r"\| dkd \|[^\n]*\| 3/3 \|", markdown)
    assert ("kd: 2/3 seeds completed; its mean is over the survivors only (failed seeds: 3 (diverged))."
            in markdown)
    assert "seeds: final runs that completed / final runs planned." in markdown


def test_a_search_table_ranks_by_validation_accuracy_and_runs_no_test(tmp_path):
    trials = pd.DataFrame([_row("k", "kd", val=0.80), _row("d", "dkd", val=0.85),
                           _row("x", "at", val=None, status="diverged")])
    board = leaderboard(trials)
    assert list(board.method) == ["dkd", "kd", "at"]
    assert board.test_acc_mean.isna().all() and board.p_vs_best.isna().all() and board.comparison.isna().all()
    markdown = to_markdown(board)
    assert "| method | val acc (chosen trial) | chosen knobs |" in markdown
    assert "| dkd | **85.00** |" in markdown and "| at | diverged (1 runs) |" in markdown
    assert "vs best" not in markdown and "test acc" not in markdown.split("|---")[0]
    assert "test accuracy comes from the final runs of pcbench benchmark" in markdown
    page = to_html(board, trials)
    assert 'data-plot="val-acc"' in page and 'data-plot="test-acc"' not in page
    assert "Validation accuracy of each method&#x27;s chosen search trial" in page
    assert "validation accuracy (%) of the chosen trial" in page  # the axis
    older = pd.DataFrame([_row("k", "kd", val=0.80, test=0.79), _row("d", "dkd", val=0.85)])
    assert "| kd | 80.00 | 79.00 |" in to_markdown(leaderboard(older))  # an older part's own test


def _text_mode(tex: str) -> str:
    """What LaTeX typesets outside math: every other piece between unescaped dollars."""
    return "".join(re.split(r"(?<!\\)\$", tex)[::2])


def _every_kind_of_table() -> pd.DataFrame:
    best = (0.720, 0.730, 0.725)
    benchmark = (_benchmark("dkd", best, epochs=240)
                 + _benchmark("kd", (0.718, 0.731, 0.716), epochs=240)  # not separated
                 + _benchmark("fitnet", (0.600, 0.602, 0.604), epochs=240)  # worse
                 + _benchmark("at", best, epochs=240)  # identical
                 + _benchmark("pc", tuple(a - 0.01 for a in best), epochs=240)  # not testable
                 + _benchmark("ab", (0.70, 0.71, 0.69), epochs=240)  # published at 270 epochs
                 + _benchmark("crd", (0.71, 0.72, None), epochs=240))  # a diverged seed: Welch's
    search = [_row("s1", "ot+kd", val=0.5, search="p"), _row("s2", "kd", val=0.4, search="p", test=0.41)]
    transfer = [_row("t1", "kd", val=0.5, search="t", teacher_dataset="imagenet", student_init="teacher")]
    return pd.DataFrame(benchmark + search + transfer)


def test_latex_prints_every_symbol_in_math_mode_and_compiles(tmp_path):
    board = leaderboard(_every_kind_of_table())
    assert {"best", "paired", "welch", "identical", "no spread"} <= set(board.comparison.dropna())
    tex = to_latex(board)
    text = _text_mode(tex)
    assert not re.search(r"[<>]", text), re.findall(r".{30}[<>].{10}", text)
    assert text.isascii(), sorted({c for c in text if not c.isascii()})
    for symbol in (r"$\geq$", r"$\pm$", r"$^{\ddagger}$", r"$\rightarrow$", r"$<$"):
        assert symbol in tex
    assert "Holm-corrected" in tex and "could detect" in tex and "not comparable with this 240-epoch" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex to compile the tables with")
    document = tmp_path / "board.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                        + tex + "\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Missing character" not in (tmp_path / "board.log").read_text()


def test_the_markdown_and_html_notes_name_the_correction_the_detectable_difference_and_the_seeds(tmp_path):
    trials = _every_kind_of_table()
    paths = write_report(leaderboard(trials), tmp_path, trials=trials)
    for text in (paths[1].read_text(), paths[2].read_text()):
        assert "Holm-corrected" in text and "80% power" in text
        assert "final runs that completed / final runs planned" in text and "2/3" in text
    saved = pd.read_parquet(paths[0])
    assert {"seeds_ok", "seeds_planned", "failed_seeds", "p_raw", "p_vs_best", "tied_with_best",
            "detectable_diff", "comparison", "teacher_test_acc", "teacher_sha256", "recipe", "precision",
            "benchmark_id", "published_elsewhere", "published_test_selected"} <= set(saved.columns)
    assert to_markdown(saved) == paths[1].read_text()  # a board read back renders the same


def test_published_numbers_stand_only_beside_final_runs_of_the_papers_recipe():
    search = leaderboard(pd.DataFrame([_row("k", "kd", epochs=240)]))  # a search's chosen trial
    other_recipe = leaderboard(pd.DataFrame(_benchmark("kd", (0.70, 0.71, 0.72), epochs=240, recipe=None)))
    for board in (search, other_recipe):
        assert board.published_acc.isna().all() and board.published_elsewhere.notna().all()


def test_an_interrupted_benchmark_counts_the_seeds_it_planned():
    rows = _benchmark("kd", (0.70, 0.71), seeds_planned=3)  # the third seed never recorded
    assert leaderboard(pd.DataFrame(rows)).iloc[0][["seeds_ok", "seeds_planned"]].tolist() == [2, 3]


def test_ce_from_the_teachers_weights_is_named_fine_tuning_on_the_board():
    rows = [_row("c1", "ce", val=0.5, search="t", teacher_dataset="imagenet", student_init="teacher"),
            _row("c2", "ce", val=0.4, search="s")]
    markdown = to_markdown(leaderboard(pd.DataFrame(rows)))
    assert "| ce (fine-tuning) |" in markdown  # the transfer setting's baseline
    assert "| ce |" in markdown  # the student alone, from scratch
