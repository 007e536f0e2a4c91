"""A trial on Ray: the engine inside a Tune trial (one worker), or a TorchTrainer inside the
Tune trial (DDP over gloo on CPU, nccl on GPU; metrics from rank 0 reach Tune)."""

from typing import Any

import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from pcbench.config import build_config
from pcbench.engine import train_trial
from pcbench.launch.resources import worker_resources
from pcbench.launch.resume import Resumption, without_mark


def tune_checkpoint(earlier: str | None = None) -> tune.Checkpoint | None:
    """The Tune trial's checkpoint (a trial restarted after a failure), else `earlier`: the
    last checkpoint of the killed driver's trial that this one continues."""
    return tune.get_checkpoint() or (tune.Checkpoint(earlier) if earlier else None)


class TuneReporter:
    def __init__(self, earlier: str | None = None):
        self.earlier = earlier

    def report(self, metrics, checkpoint_dir):
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self):
        checkpoint = tune_checkpoint(self.earlier)
        return checkpoint.to_directory() if checkpoint else None


class TrainReporter:
    def report(self, metrics, checkpoint_dir):
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self):
        checkpoint = ray.train.get_checkpoint()
        return checkpoint.to_directory() if checkpoint else None


def _worker_loop(loop_config: dict[str, Any]) -> None:
    torch.set_num_threads(loop_config["threads"])
    train_trial(loop_config["config"], TrainReporter(), device=ray.train.torch.get_device())


def tune_trial(knobs: dict[str, Any], *, template: dict[str, Any], cpus: float, gpus: float,
               storage: str, resumption: Resumption) -> None:
    """The Tune trainable: the template with this trial's knobs applied; a killed driver's
    trial goes on from its last checkpoint."""
    config = build_config(template, without_mark(knobs))
    if config.train.workers == 1:
        torch.set_num_threads(max(1, int(cpus)))
        train_trial(config, TuneReporter(resumption.checkpoint(knobs)))
        return
    run_ddp(_worker_loop, {"config": config.to_dict()}, config.train.workers, cpus, gpus, storage,
            resumption.continued(knobs))


def run_ddp(loop, loop_config: dict[str, Any], workers: int, cpus: float, gpus: float, storage: str,
            continues: str | None = None) -> None:
    """`loop(loop_config)` on `workers` DDP workers (a TorchTrainer inside this Tune trial); the
    workers' reports reach Tune. loop_config gains each worker's torch thread count. The
    trainer's run is named after the Tune trial (`continues`: the killed driver's trial this one
    continues), so Ray Train restores it from its own (JSON) state and checkpoint."""
    per_worker = worker_resources(workers, cpus, gpus)
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "threads": max(1, int(per_worker["CPU"]))},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        run_config=ray.train.RunConfig(
            name=continues or tune.get_context().get_trial_id(),
            storage_path=storage,  # the search's: a folder or a URI, opened with pyarrow by Ray
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=1),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()
