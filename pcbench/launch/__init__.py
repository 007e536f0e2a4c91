"""Ray glue: a search is a Ray Tune Tuner with OptunaSearch and ASHA (search.py), or with
cohorts of trials trained together (cohort.py); a one-worker trial runs the engine inside its
Tune trial, a multi-worker trial is a Ray Train TorchTrainer inside it (trial.py). Import the
submodules: this package itself does not import Ray, so the resource rules (resources.py) can
be checked before Ray starts.

Two backends run a plan (plan.py) and tell the same listener events: Ray (search.py) and this
process (local.py)."""


def backend(ray: bool):
    """run_search (Ray Tune, Ray Train for DDP trials) or run_local (this process, no Ray)."""
    if ray:
        from pcbench.launch.search import run_search
        return run_search
    from pcbench.launch.local import run_local
    return run_local
