"""The Parquet store: `trials/` (one row per trial) and `epochs/` (one row per trial-epoch),
each a dataset of part files with one fixed schema, written whole or not at all (a temporary
name then a rename; on object stores one upload). The store is a folder or a URI that pyarrow
opens (`pcbench.storage`: file://, s3://, gs://, ...)."""

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pcbench.storage import Location, list_files, resolve, write_file

TRIALS_SCHEMA = pa.schema([
    ("search_id", pa.string()),
    ("trial_id", pa.string()),
    ("mlflow_run_id", pa.string()),
    ("suite", pa.string()),  # the benchmark suite, if the trial ran in one
    ("phase", pa.string()),  # search | final (a seed run of the selected configuration) | run
    ("selected_trial", pa.string()),  # final runs: the search trial whose configuration they re-run
    ("method", pa.string()),
    ("dataset", pa.string()),
    ("teacher", pa.string()),
    ("teacher_dataset", pa.string()),  # what the teacher was trained on: `dataset`, or another task's
    ("student", pa.string()),
    ("student_init", pa.string()),  # scratch | teacher (its weights, the classifier re-initialised)
    ("seed", pa.int64()),
    ("knobs", pa.string()),  # JSON: the searched knobs and their values
    ("config", pa.string()),  # JSON: the whole resolved trial config
    ("val_acc", pa.float64()),  # last epoch, validation split (what selection uses)
    ("val_acc_best", pa.float64()),
    ("test_acc", pa.float64()),  # last epoch of a completed trial; null otherwise
    ("epochs_run", pa.int64()),
    ("epochs_planned", pa.int64()),
    ("wall_seconds", pa.float64()),  # a cohort member's: its share of the cohort's
    ("cohort_size", pa.int64()),  # trials trained in lockstep in the same process (1: alone)
    ("seeds_planned", pa.int64()),  # final runs: the seed runs planned for the method (null: others)
    ("train_seconds", pa.float64()),
    ("workers", pa.int64()),
    ("gpus", pa.float64()),  # GPUs the trial held (fractions share one): GPU-hours = wall x gpus
    ("device", pa.string()),
    # last epoch, teacher against student on held-out images (pcbench.diagnostics): linear CKA
    # at the embedding, rank agreement of the embedding's dissimilarities; null without a teacher
    ("cka", pa.float64()),
    ("rank_agreement", pa.float64()),
    ("config_hash", pa.string()),
    ("teacher_sha256", pa.string()),
    ("teacher_test_acc", pa.float64()),  # the teacher's own test accuracy, as its store record says
    ("recipe", pa.string()),  # the named training profile (recipes.py), if the trial used one
    ("precision", pa.string()),  # fp32 | bf16 (autocast)
    ("status", pa.string()),  # completed | stopped (early: ASHA, or a cohort's rung) | diverged | error
    ("error", pa.string()),
    ("scoring_rule", pa.string()),
    ("selection_split", pa.string()),
    ("versions", pa.string()),  # JSON: package versions
    ("finished_at", pa.timestamp("s", tz="UTC")),
])

EPOCHS_SCHEMA = pa.schema([
    ("search_id", pa.string()),
    ("trial_id", pa.string()),
    ("method", pa.string()),
    ("epoch", pa.int64()),
    ("train_loss", pa.float64()),
    ("loss_terms", pa.string()),  # JSON: {term: mean weighted value over the epoch}
    ("val_acc", pa.float64()),
    ("val_loss", pa.float64()),
    ("test_acc", pa.float64()),  # only on a completed trial's last epoch
    ("lr", pa.float64()),
    ("epoch_seconds", pa.float64()),
    ("cka", pa.float64()),  # at the embedding (diagnostics); null without a teacher
    ("cka_taps", pa.string()),  # JSON: {tap: CKA} at every tap measured
    ("rank_agreement", pa.float64()),
])

SCHEMAS = {"trials": TRIALS_SCHEMA, "epochs": EPOCHS_SCHEMA}
# Columns added after parts were first written, and what an older part means by them.
ADDED = {"trials": {"cohort_size": 1, "cka": None, "rank_agreement": None,
                    "teacher_dataset": None, "student_init": "scratch",  # None: the student's
                    "teacher_test_acc": None, "recipe": None, "precision": None,
                    "seeds_planned": None},  # the board reads recipe and precision from `config`
         "epochs": {"cka": None, "cka_taps": None, "rank_agreement": None}}


# What identifies a row: a part copied beside itself (a sync tool's copy, a manual backup) or an
# overlapping compaction must not count a trial or an epoch twice.
KEYS = {"trials": ("search_id", "phase", "method", "trial_id"),
        "epochs": ("search_id", "method", "trial_id", "epoch")}


class ResultsStore:
    def __init__(self, root: "str | Path | Location"):
        self.location = resolve(root)
        self.root = self.location.uri  # the absolute folder, or the URI

    def write(self, table: str, rows: list[dict[str, Any]], part: str) -> str | None:
        """One part file of `table`; returns its path (or URI)."""
        if not rows:
            return None
        schema = SCHEMAS[table]
        columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
        sink = pa.BufferOutputStream()  # serialised first: the upload is then one write
        pq.write_table(pa.table(columns, schema=schema), sink)
        return write_file(self.location.join(table, f"{part}.parquet"), sink.getvalue()).uri

    def parts(self, table: str) -> list[str]:
        """The part files of `table`, as paths on the store's filesystem."""
        return list_files(self.location.join(table), ".parquet")

    def read(self, table: str, skipped: list[tuple[str, str]] | None = None) -> pd.DataFrame:
        """Every readable part of `table`. A part that cannot be read (truncated, not Parquet,
        another schema) is left out and, with a `skipped` list, reported there as (path,
        reason); without one it is an error. Rows are read once: a row whose key (KEYS) an
        earlier part (in name order) already gave is left out, and noted in `skipped`."""
        schema = SCHEMAS[table]
        tables, seen = [], set()
        for part in self.parts(table):
            try:
                found = pq.read_table(part, filesystem=self.location.fs)
                for name, value in ADDED[table].items():
                    if name not in found.column_names:
                        found = found.append_column(name, pa.array([value] * len(found),
                                                                   schema.field(name).type))
                missing = [name for name in schema.names if name not in found.column_names]
                if missing:
                    raise ValueError(f"not a pcbench {table} table: no column {missing[0]}")
                found = found.select(schema.names).cast(schema)
            except (OSError, ValueError, pa.ArrowException) as error:
                if skipped is None:
                    raise
                skipped.append((part, str(error).splitlines()[0] if str(error) else type(error).__name__))
                continue
            fresh = []
            for key in zip(*(found.column(name).to_pylist() for name in KEYS[table])):
                fresh.append(key not in seen)
                seen.add(key)
            if not all(fresh):
                found = found.filter(pa.array(fresh))
                if skipped is not None:
                    skipped.append((part, f"{fresh.count(False)} of its rows repeat rows already read "
                                          f"(a copy of another part?): counted once"))
            tables.append(found)
        if not tables:
            return schema.empty_table().to_pandas()
        return pa.concat_tables(tables).to_pandas()
