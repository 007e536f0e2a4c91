"""Ray glue: a search is a Ray Tune Tuner with OptunaSearch and ASHA; a one-worker trial runs
the engine inside its Tune trial, a multi-worker trial is a Ray Train TorchTrainer inside it."""

from pcbench.launch.cluster import start_ray
from pcbench.launch.search import SearchPlan, run_search

__all__ = ["SearchPlan", "run_search", "start_ray"]
