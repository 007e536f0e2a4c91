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


def teacher_runner(ray: bool, storage: str, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                   on_epoch=None):
    """How a teacher trains (teachers.Runner): a Ray trial, on a node with the resources a
    trial asks for, or None: in this process (the store's own loop)."""
    if not ray:
        return None
    from pcbench.launch.search import train_one

    def run(config):
        return train_one(config, storage, f"teacher-{config.data.name}-{config.student}",
                         cpus_per_trial, gpus_per_trial, on_epoch)
    return run
