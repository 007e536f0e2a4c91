"""What a trial asks Ray for. No Ray import: the CLI checks these rules before Ray starts."""

# A DDP trial's own process only coordinates its workers: it holds this much of its CPUs.
COORDINATOR_CPUS = 0.1


def trial_resources(workers: int, cpus: float, gpus: float) -> dict[str, float]:
    """The Tune trial's own request: everything for one worker, a sliver for DDP."""
    if workers == 1:
        return {"cpu": cpus, "gpu": gpus}
    return {"cpu": COORDINATOR_CPUS}


def worker_resources(workers: int, cpus: float, gpus: float) -> dict[str, float]:
    """Each DDP worker's share of the trial's CPUs (less the coordinator's) and GPUs."""
    share = {"CPU": (cpus - COORDINATOR_CPUS) / workers}
    return {**share, "GPU": gpus / workers} if gpus else share
