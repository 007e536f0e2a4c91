"""A cohort search's generations (launch/cohort.py CohortSearch), driven as Tune drives it with
two slots: TPE's random start-up is asked as one generation, and the trials are exactly those
that asking a generation at a time gives."""

import math

import optuna
from ray.tune.search import Searcher

from pcbench.launch.cohort import COHORT, STARTUP_TRIALS, CohortSearch
from pcbench.selection import METRIC

SPACE = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
         "temperature": optuna.distributions.IntDistribution(1, 8)}


def _score(knobs):
    return -abs(math.log(knobs["lr"] / 0.05)) - abs(knobs["temperature"] - 4) / 4


def _search(startup: int, budget: int = 24, size: int = 4, slots: int = 2):
    """The trials in the order asked, how many were asked before the first ran, and how often
    a free slot found no cohort ready."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=7, n_startup_trials=STARTUP_TRIALS))
    search = CohortSearch(study, SPACE, size, budget, None, "s", "pcbench.search", startup=startup)
    running, waits, first_asked, number = [], 0, None, 0
    while True:
        while len(running) < slots:
            config = search.suggest(f"t{number}")
            if config is None:
                waits += 1
            if config in (None, Searcher.FINISHED):
                break
            running.append((f"t{number}", config))
            number += 1
        first_asked = len(study.trials) if first_asked is None else first_asked
        if not running:
            break
        trial_id, config = running.pop(0)  # the oldest cohort ends first
        search.on_trial_complete(trial_id, {f"{COHORT}/{i}/{key}": value
                                            for i, knobs in enumerate(config["members"])
                                            for key, value in (("epoch", 1), (METRIC, _score(knobs)))})
    return [t.params for t in study.trials], first_asked, waits


def test_the_random_start_up_is_one_generation_with_the_same_trials():
    at_once, asked_at_once, waits_at_once = _search(startup=STARTUP_TRIALS)
    by_generation, asked_by_generation, waits_by_generation = _search(startup=0)
    assert len(at_once) == len(by_generation) == 24
    assert at_once == by_generation  # the random ones and the TPE-modelled generation after them
    # 10 trials at random: two generations of 8 asked at once, not one
    assert (asked_at_once, asked_by_generation) == (16, 8)
    assert waits_at_once < waits_by_generation  # a slot waited at fewer generation ends
