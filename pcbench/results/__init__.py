"""Results: the Parquet store of trials and epochs, the leaderboard and its renderers."""

from pcbench.results.leaderboard import leaderboard
from pcbench.results.render import write_report
from pcbench.results.store import ResultsStore

__all__ = ["ResultsStore", "leaderboard", "write_report"]
