"""The Parquet store: `trials/` (one row per trial) and `epochs/` (one row per trial-epoch),
each a dataset of part files with one fixed schema, written to a temporary name and renamed."""

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pcbench.atomic import write_atomic

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
    ("student", pa.string()),
    ("seed", pa.int64()),
    ("knobs", pa.string()),  # JSON: the searched knobs and their values
    ("config", pa.string()),  # JSON: the whole resolved trial config
    ("val_acc", pa.float64()),  # last epoch, validation split (what selection uses)
    ("val_acc_best", pa.float64()),
    ("test_acc", pa.float64()),  # last epoch of a completed trial; null otherwise
    ("epochs_run", pa.int64()),
    ("epochs_planned", pa.int64()),
    ("wall_seconds", pa.float64()),
    ("train_seconds", pa.float64()),
    ("workers", pa.int64()),
    ("gpus", pa.float64()),  # GPUs the trial held (fractions share one): GPU-hours = wall x gpus
    ("device", pa.string()),
    ("config_hash", pa.string()),
    ("teacher_sha256", pa.string()),
    ("status", pa.string()),  # completed | stopped (early, by the scheduler) | error
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
])

SCHEMAS = {"trials": TRIALS_SCHEMA, "epochs": EPOCHS_SCHEMA}


class ResultsStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def write(self, table: str, rows: list[dict[str, Any]], part: str) -> Path | None:
        if not rows:
            return None
        schema = SCHEMAS[table]
        directory = self.root / table
        directory.mkdir(parents=True, exist_ok=True)
        columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
        arrow_table = pa.table(columns, schema=schema)
        return write_atomic(directory / f"{part}.parquet", lambda p: pq.write_table(arrow_table, p))

    def read(self, table: str) -> pd.DataFrame:
        directory = self.root / table
        if not any(directory.glob("*.parquet")):
            return SCHEMAS[table].empty_table().to_pandas()
        return pq.read_table(directory, schema=SCHEMAS[table]).to_pandas()
