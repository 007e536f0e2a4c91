"""Leaderboard: one table per protocol, one row per method.

A table holds what can be ranked together: the same data set, teacher (by name and by the
content hash of its weights), student and start, training length, recipe, precision, scoring
rule and protocol. A benchmark's table ("final" protocol) is its final runs alone: the
configuration that won the search on the validation split, re-run with several seeds on the
full training set, test accuracy as mean +- std over the seeds that completed, each method
tested against the table's best (significance.py). A plain search's table ("search" protocol)
is each method's chosen trial, ranked by that trial's validation accuracy: search trials never
see the test split. `cka` and `rank_agreement` are the diagnostics (pcbench.diagnostics) of
the same runs' last epochs. Published numbers stand beside a row only when their protocol is
the table's (published.py)."""

import json
import math

import pandas as pd

from pcbench.results.published import published, published_teacher
from pcbench.results.selection import best_trial
from pcbench.results.significance import ALPHA, BEST, IDENTICAL, PAIRED, WELCH, ci95, compare, holm
from pcbench.results.store import ADDED

# A pair is its teacher (and the data set it learnt), its student (and how it starts).
PAIR = ["dataset", "teacher", "teacher_dataset", "student", "student_init"]
# What a trial shares with every trial it is ranked against, bar length and protocol.
SETUP = [*PAIR, "teacher_sha256", "recipe", "precision", "scoring_rule"]
# One table. protocol: "final" (a benchmark's seed runs) or "search" (a search's chosen
# trial); benchmark_id: a benchmark's search_id (each benchmark is a table of its own), null
# for plain searches (those of different commands share a table when all else matches).
GROUP = [*SETUP, "epochs_planned", "protocol", "benchmark_id"]
TEST_SELECTED = "‡"  # beside a published number its source selected on the test set

COLUMNS = [*PAIR, "teacher_sha256", "teacher_test_acc", "recipe", "precision", "epochs_planned",
           "protocol", "benchmark_id", "method", "test_acc_mean", "test_acc_std", "seeds", "seeds_ok",
           "seeds_planned", "failed_seeds", "ci95_low", "ci95_high", "comparison", "p_raw", "p_vs_best",
           "tied_with_best", "detectable_diff", "val_acc", "cka", "rank_agreement", "knobs", "trials",
           "completed", "diverged", "compute_hours", "gpu_hours", "published_acc", "published_epochs",
           "published_test_selected", "published_rule", "published_source", "published_teacher_acc",
           "published_elsewhere", "suite", "search_id", "config_hash", "trial_id", "mlflow_run_id",
           "scoring_rule", "selection_split"]


def ranked_on(protocol: str) -> str:
    """The column a table ranks by: test accuracy over seeds, or (a search, which never saw the
    test split) the chosen trial's validation accuracy."""
    return "test_acc_mean" if protocol == "final" else "val_acc"


def _gpu_hours(rows: pd.DataFrame) -> float:
    """From training time: a DDP trial's wall time includes waiting for its GPUs."""
    return float((rows["train_seconds"].fillna(0.0) * rows["gpus"].fillna(0.0)).sum() / 3600.0)


def _diverged_row(search: pd.DataFrame) -> dict:
    """A method none of whose trials completed, some diverged: shown as such, never ranked (in
    its benchmark's table where the others have final runs)."""
    row = search.iloc[-1].to_dict()
    final_epochs = row["_final_epochs"]
    in_benchmark = not math.isnan(final_epochs)
    row.update(val_acc=math.nan, cka=math.nan, rank_agreement=math.nan, knobs="", test_acc_mean=math.nan,
               test_acc_std=math.nan, seeds=0, seeds_ok=0, seeds_planned=0, failed_seeds=None,
               protocol="final" if in_benchmark else "search", _runs=[], trial_id=None,
               mlflow_run_id=None, config_hash=None)
    if in_benchmark:
        row["epochs_planned"] = int(final_epochs)
    return row


def _final_runs(finals: pd.DataFrame) -> dict:
    """A benchmark's result: its final runs, even when some or all failed (then said so)."""
    ok = (finals["status"] == "completed") & finals["test_acc"].notna()
    done, failed = finals[ok], finals[~ok]
    accs = done["test_acc"].astype(float)
    return dict(
        _runs=list(zip(done["seed"].fillna(-1).astype(int), accs)),
        test_acc_mean=accs.mean() if len(accs) else math.nan,
        test_acc_std=accs.std(ddof=1) if len(accs) > 1 else math.nan,
        seeds=len(done), seeds_ok=len(done),
        # as the benchmark planned them (a stopped one may not have recorded them all)
        seeds_planned=max(len(finals), int(finals["seeds_planned"].fillna(0).max())),
        failed_seeds=", ".join(f"{seed} ({status})" for seed, status in
                               zip(failed["seed"].fillna(-1).astype(int), failed["status"])) or None,
        # the representation where the accuracy was measured: the final runs' last epochs
        cka=done["cka"].astype(float).mean(), rank_agreement=done["rank_agreement"].astype(float).mean(),
        epochs_planned=int(finals["epochs_planned"].iloc[0]), protocol="final")


def _published_columns(row: dict) -> dict:
    """The published number in the board's columns where its protocol is the row's (pair and
    training length); where only the length differs, a phrase for the table's footnote."""
    same_setting = row["teacher_dataset"] == row["dataset"] and row["student_init"] == "scratch"
    reference = (published(row["dataset"], row["teacher"], row["student"], row["method"])
                 if same_setting else None)
    columns = dict(published_acc=math.nan, published_epochs=None, published_test_selected=None,
                   published_rule=None, published_source=None, published_teacher_acc=math.nan,
                   published_elsewhere=None)
    if reference is None:
        return columns
    source, mark = reference.source, TEST_SELECTED if reference.source.selected_on_test else ""
    # only beside final runs of the paper's length and recipe: a search's chosen trial is
    # ranked on validation, and another schedule is another protocol
    if (reference.epochs != row["epochs_planned"] or row["recipe"] != source.recipe
            or row["protocol"] != "final"):
        columns["published_elsewhere"] = (f"{reference.accuracy:.2f}{mark} at {reference.epochs} epochs, "
                                          f"recipe {source.recipe}, test-scored final runs "
                                          f"({source.label})")
        return columns
    teacher = published_teacher(source, row["dataset"], row["teacher"], row["student"])
    return {**columns, "published_acc": reference.accuracy / 100, "published_epochs": reference.epochs,
            "published_test_selected": source.selected_on_test, "published_rule": source.selection,
            "published_source": source.where,
            "published_teacher_acc": math.nan if teacher is None else teacher / 100}


def _first(values: pd.Series) -> float:
    present = values.dropna()
    return float(present.iloc[0]) if len(present) else math.nan


def _row(search: pd.DataFrame, finals: pd.DataFrame) -> dict | None:
    best = best_trial(search)
    if best is None and not (search["status"] == "diverged").any():
        return None  # nothing completed and nothing to say about it
    row = best.to_dict() if best is not None else _diverged_row(search)
    spent = pd.concat([search, finals])
    if len(finals):  # a benchmark: its final runs are the result, even when they all failed
        row.update(_final_runs(finals))
    elif best is not None:  # a search trial's test accuracy exists only in older parts and runs
        row.update(test_acc_mean=best["test_acc"], test_acc_std=math.nan, seeds=1, seeds_ok=1,
                   seeds_planned=1, failed_seeds=None, protocol="search", _runs=[])
    row.update(trials=len(search), completed=int((search["status"] == "completed").sum()),
               diverged=int((spent["status"] == "diverged").sum()),
               compute_hours=spent["wall_seconds"].sum() / 3600.0, gpu_hours=_gpu_hours(spent),
               teacher_test_acc=_first(spent["teacher_test_acc"]),
               benchmark_id=row["search_id"] if row["protocol"] == "final" else None)
    row.update(_published_columns(row))
    return row


def _intervals(group: pd.DataFrame) -> pd.DataFrame:
    """Student's t interval per method, clipped to accuracies' [0, 1]."""
    intervals = [tuple(v if math.isnan(v) else min(1.0, max(0.0, v)) for v in ci95([a for _, a in runs]))
                 for runs in group["_runs"]]
    return group.assign(ci95_low=[i[0] for i in intervals], ci95_high=[i[1] for i in intervals])


def _compare_with_best(group: pd.DataFrame) -> pd.DataFrame:
    """Each method against the table's best (highest mean): the kind of comparison, raw and
    Holm-adjusted p, whether it is separated from the best and what these seeds could detect.
    A search's table has no seeds to test."""
    group = _intervals(group)
    tested = group["protocol"].iloc[0] == "final" and group["test_acc_mean"].notna().any()
    best = group["test_acc_mean"].idxmax() if tested else None
    found = {i: compare(runs, group.at[best, "_runs"]) for i, runs in group["_runs"].items()
             if best is not None and i != best}
    raw = [found[i].p if found.get(i) else math.nan for i in group.index]
    adjusted = dict(zip(group.index, holm(raw)))
    kinds, tied = [], []
    for i in group.index:
        kind = BEST if i == best else (found[i].kind if found.get(i) else None)
        kinds.append(kind)
        tied.append(True if kind in (BEST, IDENTICAL) else
                    bool(adjusted[i] >= ALPHA) if kind in (PAIRED, WELCH) else None)
    return group.assign(
        comparison=kinds,
        p_raw=[1.0 if i == best else p for i, p in zip(group.index, raw)],
        p_vs_best=[1.0 if i == best else adjusted[i] for i in group.index],
        tied_with_best=pd.array(tied, dtype="boolean"),  # True: not separated from the best
        detectable_diff=[found[i].detectable if found.get(i) else math.nan for i in group.index])


def _train_settings(config) -> dict:
    try:
        return json.loads(config)["train"]
    except (TypeError, ValueError, KeyError):
        return {}


def with_defaults(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with every column the board reads: what older parts (or a table without the
    columns) mean by those added since: the student's own data set's teacher, a student from
    scratch, fp32."""
    trials = trials.assign(**{name: value for name, value in ADDED["trials"].items() if name not in trials})
    train = trials["config"].map(_train_settings)  # older parts: what their configs recorded
    return trials.assign(teacher_dataset=trials["teacher_dataset"].fillna(trials["dataset"]),
                         student_init=trials["student_init"].fillna("scratch"),
                         recipe=trials["recipe"].fillna(train.map(lambda t: t.get("recipe"))),
                         precision=trials["precision"].fillna(train.map(lambda t: t.get("precision")))
                         .fillna("fp32"),
                         **{name: trials[name].astype(float)
                            for name in ("cka", "rank_agreement", "teacher_test_acc")})


def leaderboard(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    trials = with_defaults(trials.assign(phase=trials["phase"].fillna("search")))
    # a benchmark's final length per pair and setup: where a method that never completed is shown
    final = trials["phase"] == "final"
    trials["_final_epochs"] = trials["epochs_planned"].where(final).astype(float).groupby(
        [trials[k] for k in ["search_id", *SETUP]], dropna=False).transform("max")
    rows = []
    # one row per (search, setup, method); a method searched again keeps only its latest
    for _, runs in trials.groupby(["search_id", *SETUP, "method"], sort=False, dropna=False):
        row = _row(runs[runs["phase"] != "final"], runs[runs["phase"] == "final"])
        if row is not None:
            row["_finished"] = runs["finished_at"].max()
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    board = pd.DataFrame(rows).sort_values("_finished").drop_duplicates(GROUP + ["method"], keep="last")
    board = pd.concat([_compare_with_best(group)
                       for _, group in board.groupby(GROUP, sort=False, dropna=False)])
    board["_score"] = [row[ranked_on(row["protocol"])] for _, row in board.iterrows()]
    board = board.sort_values(GROUP + ["_score"], ascending=[True] * len(GROUP) + [False])
    return board[COLUMNS].reset_index(drop=True)


def pair_label(row) -> str:
    """`teacher -> student`, naming the teacher's data set where it is another task's and the
    student's start where it is the teacher's weights."""
    teacher = row["teacher"] if row["teacher_dataset"] == row["dataset"] else \
        f"{row['teacher']} ({row['teacher_dataset']})"
    start = ", from the teacher's weights" if row["student_init"] == "teacher" else ""
    return f"{teacher} -> {row['student']}{start}"
