"""One trial's training loop on one worker: build, train, evaluate, report.

`train_trial(config, reporter)` runs the same way in a plain process, inside a Ray Tune trial
and on every worker of a Ray Train DDP job: it detects torch.distributed, and everything
Ray-specific sits behind the `Reporter` it is handed. No Ray or MLflow import here.
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pcbench.atomic import sha256_of
from pcbench.config import TrialConfig
from pcbench.data import DataSource, get_dataset, load_dataset
from pcbench.diagnostics import EMBEDDING, Reference, diagnostic_split, features
from pcbench.errors import UserError
from pcbench.methods import DataInfo, Method, Step, get_method
from pcbench.models import PREACT, TapModel, Tapped, create_model, model_info

MODEL_FILE = "model.pt"  # {'model': state_dict}: the RepDistiller checkpoint format
TRAINER_FILE = "trainer.pt"  # method modules, optimizer, schedule, epoch

# What every epoch's report holds (plus `loss/<term>` per loss term and, with diagnostics,
# `cka/<tap>`); drivers keep these keys out of the fields their schedulers add.
METRICS = frozenset({"epoch", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss", "lr",
                     "batch_global", "epoch_seconds", "eval_seconds", "device", "rank_agreement",
                     "diagnostics_seconds", "setup_seconds"})
METRIC_PREFIXES = ("loss/", "cka/")  # per loss term, per tap


def is_metric(key: str) -> bool:
    """What the engine reports for an epoch (result dicts carry the runner's own keys too)."""
    return key in METRICS or key.startswith(METRIC_PREFIXES)


# A trial whose loss turned non-finite ends at once with one last report: this key holds the
# reason (epoch and step), val_acc is NaN, and no checkpoint is saved.
DIVERGED = "diverged"
DIVERGENCE_CHECK_STEPS = 16  # steps between checks (each check waits for the device)
_NEVER = 1 << 62


class Reporter(Protocol):
    def report(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        """Called once per epoch on every rank; `checkpoint_dir` is set on rank 0 only and is
        deleted after the call returns, so keep a copy."""

    def latest_checkpoint(self) -> str | None:
        """A checkpoint directory to resume from, if the trial is being restarted."""


class LocalReporter:
    """Keeps the metric history and the latest checkpoint in `directory` (plain processes)."""

    def __init__(self, directory: str | None = None, on_epoch=None):
        self.history: list[dict[str, float]] = []
        self.directory = directory
        self.on_epoch = on_epoch

    @property
    def checkpoint_dir(self) -> str | None:
        return os.path.join(self.directory, "checkpoint") if self.directory else None

    def report(self, metrics, checkpoint_dir):
        self.history.append(metrics)
        if checkpoint_dir and self.directory:
            staging = self.checkpoint_dir + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint_dir, staging)
            previous = self.checkpoint_dir + ".old"
            if os.path.isdir(self.checkpoint_dir):
                os.replace(self.checkpoint_dir, previous)
            os.replace(staging, self.checkpoint_dir)
            shutil.rmtree(previous, ignore_errors=True)
        if self.on_epoch:
            self.on_epoch(metrics)

    def latest_checkpoint(self):
        path = self.checkpoint_dir
        return path if path and os.path.isdir(path) else None


class Distiller(nn.Module):
    """The trainable part of a trial: the student (tapped) and the method's extra modules.
    One module, so one DDP wrapper synchronises both."""

    def __init__(self, student: TapModel, method: Method, taps: set[str], precision: str = "fp32",
                 compile: str = "off"):
        super().__init__()
        self.student = Tapped(student, taps, compile=compile)
        self.method = method
        self.precision = precision

    def forward(self, x, y, index, epoch: int, teacher_feats, teacher: TapModel | None, strong=None):
        """`strong`: (the strong view's images, the teacher's taps of them), for a method of
        two views."""
        step = Step(x, y, index, epoch, self._student(x), teacher_feats, self.student.model, teacher)
        if strong is not None:
            step.strong = dataclasses.replace(step, x=strong[0], student_feats=self._student(strong[0]),
                                              teacher_feats=strong[1])
        return self.method(step)

    def _student(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(x.device, self.precision):
            feats = self.student(x)
        return {k: v.float() for k, v in feats.items()}  # losses are computed in float32


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def teacher_state(config: TrialConfig) -> dict[str, torch.Tensor]:
    """The stored teacher's weights, which must still be the file whose hash the trial records."""
    if config.teacher_sha256 and sha256_of(config.teacher_weights) != config.teacher_sha256:
        raise RuntimeError(f"teacher {config.teacher_weights} changed since this trial was set up "
                           f"(its sha256 is no longer {config.teacher_sha256[:12]}); run it again")
    return torch.load(config.teacher_weights, map_location="cpu", weights_only=True)["model"]


def load_teacher(config: TrialConfig, data: DataSource) -> TapModel:
    """The stored teacher, with its own data set's classes (another task's, in transfer)."""
    # the student's classes, as counted by its data (an image-folder subset), unless another task's
    classes = get_dataset(config.teacher_data).num_classes if config.transfer else data.num_classes
    teacher = create_model(config.teacher, classes, data.input_shape[0])
    teacher.load_state_dict(teacher_state(config))
    return teacher.requires_grad_(False)


def init_from_teacher(student: TapModel, config: TrialConfig) -> None:
    """The teacher's weights in the student (one architecture), all but the classifier's: the
    layer that gives the logits keeps its fresh initialisation (another task's classes, or a
    head to learn again)."""
    head = student.TAP_NODES["logits"] + "."
    state = {k: v for k, v in teacher_state(config).items() if not k.startswith(head)}
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or not all(k.startswith(head) for k in missing):
        raise RuntimeError(f"teacher {config.teacher_weights} does not fit {config.student} beyond its "
                           f"classifier (missing {missing}, unexpected {unexpected})")


def teacher_features(teacher: Tapped, x: torch.Tensor, precision: str) -> dict[str, torch.Tensor]:
    """The frozen teacher's taps, computed in inference mode (no autograd bookkeeping at all)
    and copied out as ordinary float32 tensors, which losses may save for their backward."""
    with torch.inference_mode(), autocast(x.device, precision):
        feats = teacher(x)
    return {k: v.to(torch.float32, copy=True) for k, v in feats.items()}


def _all_reduce(values: torch.Tensor, op=None) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=op or dist.ReduceOp.SUM)
    return values


@torch.no_grad()
def evaluate(model: Tapped, data: DataSource, split: str, rank: int, world: int,
             precision: str = "fp32", memory_format=torch.contiguous_format,
             batch_size: int = 1024) -> dict[str, float] | None:
    """Accuracy and loss over the whole split, summed across ranks (None: an empty split)."""
    if data.size(split) == 0:
        return None
    model.eval()
    if world > 1:  # every rank evaluates rank 0's model: its BatchNorm statistics too
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    totals = None  # correct, loss sum, count
    for x, y, _ in data.batches(split, batch_size, rank, world):
        with autocast(x.device, precision):
            logits = model(x.contiguous(memory_format=memory_format))["logits"].float()
        batch = torch.stack([(logits.argmax(1) == y).sum().double(),
                             nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                             torch.tensor(len(y), device=y.device, dtype=torch.float64)])
        totals = batch if totals is None else totals + batch
    correct, loss, count = _all_reduce(totals).tolist()
    return {"acc": correct / count, "loss": loss / count}


def make_schedule(optimizer, train) -> torch.optim.lr_scheduler.LRScheduler:
    if train.schedule == "step":  # RepDistiller's: x gamma at each milestone epoch
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, train.milestones, train.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)


def train_trial(config: TrialConfig | dict[str, Any], reporter: Reporter,
                device: torch.device | None = None) -> dict[str, Any]:
    """Train one trial to the end (or until the caller stops it); return the last metrics."""
    return train_cohort([config], [reporter], device)[0]


# What the members of a cohort must share: one data stream and one teacher forward feed them all.
COHORT_SHARED = ("data", "teacher", "teacher_dataset", "student", "teacher_weights", "teacher_sha256",
                 "seed", "train.epochs", "train.workers", "train.device", "train.precision",
                 "train.channels_last", "train.compile")


def cohort_mismatch(configs: list[TrialConfig]) -> str | None:
    """Why these configurations cannot train as one cohort, or None."""
    flats = [c.flat() for c in configs]
    for key in COHORT_SHARED:
        values = {json.dumps({k: v for k, v in f.items() if k == key or k.startswith(key + ".")},
                             sort_keys=True, default=str) for f in flats}
        if len(values) > 1:
            return f"members differ in {key}"
    modes = {get_method(c.method.name).teacher_in_train_mode(c.method) for c in configs
             if get_method(c.method.name).needs_teacher}
    if len(modes) > 1:  # one teacher forward: one BatchNorm mode
        return "members differ in the teacher's train mode"
    return None


def train_cohort(configs: list[TrialConfig | dict[str, Any]], reporters: list[Reporter],
                 device: torch.device | None = None, halving: "Halving | None" = None,
                 after_epoch: Callable[[int, set[int]], None] | None = None,
                 ended: set[int] = frozenset()) -> list[dict[str, Any]]:
    """Train K trials of one pair in lockstep: one data stream (the same batches and
    augmentation for every member), the teacher's forward once per batch for the union of the
    members' taps, then each live member's own forward, loss, backward and step. Each member
    has its own student, method state, optimizer, schedule, random stream and checkpoints, so
    it ends exactly as it would have alone. A member stops when its loss diverges or when
    `halving` stops it at a rung; the others go on. `after_epoch(epoch, running)` is called once
    every member has reported the epoch, with the members still running (a driver that reports
    the cohort as a whole, and remembers who ended). A restarted cohort is told `ended`: the
    members that had stopped, diverged or finished, which do not train again. Returns each
    member's last metrics."""
    if not configs or len(configs) != len(reporters):
        raise ValueError(f"a cohort needs one reporter per member: {len(configs)} configs, "
                         f"{len(reporters)} reporters")
    cfgs = [c if isinstance(c, TrialConfig) else TrialConfig.parse(c) for c in configs]
    if (why := cohort_mismatch(cfgs)) is not None:
        raise ValueError(f"not one cohort: {why}")
    began = time.perf_counter()
    cohort = _Cohort(cfgs[0], device or pick_device(cfgs[0].train.device))
    members = cohort.set_up(cfgs, reporters)
    for member in members:  # loading the data and the teacher, building the members
        member.setup_seconds = time.perf_counter() - began
    for index in ended:
        members[index].running = False
    epochs = cohort.cfg.train.epochs
    for epoch in range(min((m.start_epoch for m in members if m.running), default=epochs), epochs):
        live = [m for m in members if m.running and m.start_epoch <= epoch]
        if not live:
            continue  # none left, or the ones left resume at a later epoch
        live = cohort.train_epoch(live, epoch)
        if halving is not None:
            for i in halving.stop(epoch + 1, {i: m.metrics.get("val_acc") for i, m in enumerate(members)
                                              if m in live and m.running}):
                members[i].running = False
        if after_epoch is not None:
            after_epoch(epoch + 1, {i for i, m in enumerate(members) if m.running})
    return [m.metrics for m in members]


class _Cohort:
    """What a cohort's members share: the device and precision, the data, the teacher and
    its taps (the union of what the members read)."""

    def __init__(self, cfg: TrialConfig, device: torch.device):
        self.cfg, self.device, self.precision = cfg, device, cfg.train.precision
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        # compiling pays off where kernel launches dominate: on a GPU (and CUDA graphs exist only there)
        self.compile_mode = cfg.train.compile if device.type == "cuda" else "off"
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.val_fraction, cfg.data.split_seed,
                                 cfg.data.loader_workers).to(device)
        samples = self.data.size("train")
        if cfg.data.batch_size // self.world > samples // self.world:  # no full batch: no step
            raise UserError(f"data.batch_size={cfg.data.batch_size} is more than the {samples} training "
                            f"samples of {cfg.data.name} (over {self.world} workers); lower data.batch_size")
        self.teacher: TapModel | None = None
        self.teacher_taps: Tapped | None = None  # what the training steps read of the teacher
        self.teacher_mode = False

    def set_up(self, cfgs: list[TrialConfig], reporters: list[Reporter]) -> list["_Member"]:
        needs_teacher = [get_method(c.method.name).needs_teacher for c in cfgs]
        two_views = [c.method.name for c in cfgs if get_method(c.method.name).views == 2]
        if two_views and not getattr(self.data, "has_strong_view", False):
            raise UserError(f"{two_views[0]} learns from a second, strongly augmented view of each batch, "
                            f"which data set {self.cfg.data.name} does not give (its source needs "
                            f"has_strong_view and batches(strong_view=True)); pick another method or "
                            f"data set")
        split = diagnostic_split(self.data)
        # a CE member measures against the teacher when the driver attached one
        diagnosing = [c.train.diagnostics and c.teacher_weights is not None and split is not None
                      for c in cfgs]
        teacher_info = None
        if any(needs_teacher) or any(diagnosing):
            self.teacher = load_teacher(self.cfg, self.data)
            teacher_info = model_info(self.teacher, self.data.input_shape, self.cfg.teacher)
            self.teacher = self.teacher.to(self.device, memory_format=self.memory_format)
        members = [_Member(c, r, self.data, teacher_info if t else None, self.device, self.memory_format,
                           self.compile_mode, self.world) for c, r, t in zip(cfgs, reporters, needs_teacher)]
        for member in members:
            if member.needs_teacher:
                member.distiller.method.prepare(self.teacher, self.data)
        if any(diagnosing):
            wanted = set().union(*(m.diagnose(self.teacher.TAP_NODES, split)
                                   for m, on in zip(members, diagnosing) if on))
            tapped = Tapped(self.teacher, wanted)
            reference = Reference(features(tapped, self.data, split, self.memory_format))
            for member, on in zip(members, diagnosing):
                member.reference = reference if on else None
        if any(needs_teacher):
            taps = set().union(*(m.taps for m in members if m.needs_teacher))
            self.teacher_taps = Tapped(self.teacher, taps, compile=self.compile_mode)
            self.teacher_mode = next(get_method(m.cfg.method.name).teacher_in_train_mode(m.cfg.method)
                                     for m in members if m.needs_teacher)
        return members

    def train_epoch(self, live: list["_Member"], epoch: int) -> list["_Member"]:
        """One epoch of the live members over one data stream; those still running after it."""
        cfg, device = self.cfg, self.device
        started = time.perf_counter()
        for member in live:
            member.begin_epoch(epoch, device)
        if self.teacher_taps is not None:
            self.teacher_taps.train(self.teacher_mode)
        # the teacher's forward runs only while some member reads it (AB and FSP stop after their first stage)
        reading = {id(m) for m in live if m.needs_teacher and m.distiller.method.reads_teacher(epoch)}
        per_rank_batch = max(1, cfg.data.batch_size // self.world)  # data.batch_size is the global batch
        # the same order on every rank, and on a resumed trial
        two_views = {id(m) for m in live if m.views == 2}  # a strong view too, which only they read
        batches = self.data.batches("train", per_rank_batch, self.rank, self.world,
                                    shuffle_seed=cfg.seed * 100_003 + epoch, augment=cfg.data.augment,
                                    **({"strong_view": True} if two_views else {}))
        strong_seconds = 0.0  # making the strong view and the teacher's forward of it: theirs alone
        for steps, (x, y, index, *strong_x) in enumerate(batches, start=1):
            x = x.contiguous(memory_format=self.memory_format)
            teacher_feats = (teacher_features(self.teacher_taps, x, self.precision)
                             if self.teacher_taps and reading else None)
            strong = None
            if strong_x:
                strong_started = time.perf_counter()
                strong_x = strong_x[0]() if callable(strong_x[0]) else strong_x[0]
                strong_x = strong_x.contiguous(memory_format=self.memory_format)
                strong = (strong_x, teacher_features(self.teacher_taps, strong_x, self.precision)
                          if self.teacher_taps and reading & two_views else None)
                strong_seconds += time.perf_counter() - strong_started
            for member in live:
                if member.bad_step is None:
                    member.step(x, y, index, epoch, teacher_feats if id(member) in reading else None,
                                self.teacher, strong if id(member) in two_views else None)
            if steps % DIVERGENCE_CHECK_STEPS == 0 and _check_divergence(live):
                break
        _check_divergence(live)
        for member in live:
            if member.bad_step is not None:
                member.end_diverged(epoch, device)
        live = [m for m in live if m.running]
        # each member's share: the shared time by its forwards (two views, twice), and the strong
        # view's making to the members that read it
        readers = sum(m.views == 2 for m in live)
        shared = time.perf_counter() - started - (strong_seconds if readers else 0.0)
        views = sum(m.views for m in live)
        for member in live:
            own = strong_seconds / readers if member.views == 2 else 0.0
            member.end_epoch(epoch, self.data, self.rank, self.world, self.precision, self.memory_format,
                             shared * member.views / views + own, device)
        return live


class Halving(Protocol):
    def stop(self, epoch: int, val_acc: dict[int, float | None]) -> set[int]:
        """After `epoch`: which of the live members (by index, with their validation accuracy)
        stop here."""


class SuccessiveHalving:
    """Synchronous successive halving at fixed rungs: at each rung the live members are ranked
    by validation accuracy and the worse ones stop, keeping 1/reduction of them (at least one;
    ties keep the earlier member). The first rung is a third of the epochs, as ASHA's grace
    period in a search; each next one `reduction` times later. Deterministic: it sees every
    member's result of the rung at once."""

    def __init__(self, epochs: int, reduction: int = 2):
        first = max(1, epochs // 3)
        self.rungs, rung = set(), first
        while rung < epochs:
            self.rungs.add(rung)
            rung *= reduction
        self.reduction = reduction

    def stop(self, epoch: int, val_acc: dict[int, float | None]) -> set[int]:
        if epoch not in self.rungs or len(val_acc) < 2:
            return set()
        ranked = sorted(val_acc, key=lambda i: (-(val_acc[i] if val_acc[i] is not None else -1.0), i))
        return set(ranked[max(1, len(ranked) // self.reduction):])


class _Member:
    """One trial of a cohort: built from its own seed exactly as it would be alone."""

    def __init__(self, cfg: TrialConfig, reporter: Reporter, data: DataSource, teacher_info,
                 device, memory_format, compile_mode: str, world: int):
        self.cfg, self.reporter = cfg, reporter
        self.setup_seconds: float | None = None  # reported with the first epoch trained here
        torch.manual_seed(cfg.seed)  # identical initial models and path sampling on every rank
        method_class = get_method(cfg.method.name)
        self.needs_teacher, self.views = method_class.needs_teacher, method_class.views
        student = create_model(cfg.student, data.num_classes, data.input_shape[0])
        if cfg.train.init_from_teacher:
            init_from_teacher(student, cfg)
        student_info = model_info(student, data.input_shape, cfg.student)
        self.taps = method_class.taps(cfg.method, student.stage_taps)
        method = method_class(cfg.method, student_info, teacher_info,
                              DataInfo(data.num_classes, data.size("train"), cfg.train.epochs))
        self.distiller = Distiller(student, method, self.taps, cfg.train.precision, compile_mode)
        self.distiller = self.distiller.to(device, memory_format=memory_format)
        self.trainer = self.distiller
        if world > 1:
            # No buffer broadcast each step: evaluation broadcasts rank 0's BatchNorm statistics,
            # and CRD keeps its memory banks identical itself (re-sending them would cost 51 MB a
            # step on CIFAR, 1.3 GB on ImageNet).
            self.trainer = DistributedDataParallel(self.distiller, broadcast_buffers=False,
                                                   find_unused_parameters=method.sometimes_unused)
        self.optimizer = torch.optim.SGD(
            self.distiller.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay, nesterov=method.nesterov and cfg.train.momentum > 0,
            # one kernel for all parameters; PyTorch's fused SGD fails on a parameter whose first
            # gradient comes after the first step
            fused=device.type == "cuda" and not method.sometimes_unused)
        self.schedule = make_schedule(self.optimizer, cfg.train)
        self.random = _RandomStream(device)  # its own: members draw (CRD's negatives) in turn
        self.start_epoch = 0
        if (resume := reporter.latest_checkpoint()) is not None:
            self.start_epoch = _restore(resume, self.distiller, self.optimizer, self.schedule, self.random)
        self.running = self.start_epoch < cfg.train.epochs
        self.metrics: dict[str, Any] = {}
        self.reference: Reference | None = None  # the teacher's side of the diagnostics
        self.diagnosed: Tapped | None = None

    def diagnose(self, teacher_has: Iterable[str], split: str) -> set[str]:
        """Measure this member against the teacher every epoch on `split`: at the taps its
        method reads and the embedding, where the teacher has them. Returns those taps."""
        read = {t.removesuffix(PREACT) for t in self.taps}  # AB reads stages before their ReLU
        taps = {t for t in read if t != "logits" and t in teacher_has} | {EMBEDDING}
        self.diagnosed, self.split = Tapped(self.distiller.student.model, taps), split
        return taps

    def begin_epoch(self, epoch: int, device) -> None:
        if epoch > 0 and epoch == self.distiller.method.init_epochs:
            self.optimizer.state.clear()  # distillation starts with no momentum from the first stage
        self.distiller.train()
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        # kept on the device: the loop never waits for it except every few steps
        self.first_bad = torch.full((), _NEVER, dtype=torch.long, device=device)
        self.bad_step: int | None = None

    def step(self, x, y, index, epoch, teacher_feats, teacher, strong=None) -> None:
        with self.random.active():
            terms = self.trainer(x, y, index, epoch, teacher_feats, teacher, strong)
            loss = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()
        self.first_bad = torch.where(torch.isfinite(loss.detach()) | (self.first_bad != _NEVER),
                                     self.first_bad, self.steps)
        self.steps += 1

    def end_diverged(self, epoch: int, device) -> None:
        self.metrics = {"epoch": epoch + 1, "train_loss": math.nan, "val_acc": math.nan,
                        "lr": self.schedule.get_last_lr()[0], "device": device.type,
                        DIVERGED: f"non-finite loss at epoch {epoch + 1}, step {self.bad_step + 1}"}
        self.running = False
        self.reporter.report(self.metrics, None)  # no checkpoint: the weights are no longer numbers

    def end_epoch(self, epoch, data, rank, world, precision, memory_format, train_seconds, device):
        lr = self.schedule.get_last_lr()[0]
        self.schedule.step()
        names = sorted(self.sums)
        means = (_all_reduce(torch.stack([self.sums[n] for n in names]).double())
                 / (self.steps * world)).tolist()
        metrics = {"epoch": epoch + 1, "train_loss": sum(means), "lr": lr,
                   "batch_global": max(1, self.cfg.data.batch_size // world) * world}  # what DDP ran
        metrics.update({f"loss/{n}": v for n, v in zip(names, means)})
        evaluating = time.perf_counter()
        student = self.distiller.student
        if val := evaluate(student, data, "val", rank, world, precision, memory_format):
            metrics.update(val_acc=val["acc"], val_loss=val["loss"])
        if epoch + 1 == self.cfg.train.epochs:  # test data is for reporting only, at the end
            if self.cfg.train.report_test:
                test = evaluate(student, data, "test", rank, world, precision, memory_format)
                metrics.update(test_acc=test["acc"], test_loss=test["loss"])
            self.running = False
        metrics["eval_seconds"] = time.perf_counter() - evaluating
        if self.reference is not None:
            measuring = time.perf_counter()
            metrics.update(self.reference.compare(features(self.diagnosed, data, self.split, memory_format)))
            metrics["diagnostics_seconds"] = time.perf_counter() - measuring
        # a cohort's training time is shared among the members it trained
        metrics["epoch_seconds"] = (train_seconds + metrics["eval_seconds"]
                                    + metrics.get("diagnostics_seconds", 0.0))
        metrics["device"] = device.type
        if self.setup_seconds is not None:  # the first epoch this process trained
            metrics["setup_seconds"], self.setup_seconds = self.setup_seconds, None
        self.metrics = metrics
        _report(self.reporter, metrics, rank, epoch, self.distiller, self.optimizer, self.schedule,
                self.random)


def _check_divergence(members: list[_Member]) -> bool:
    """Finds each member's first non-finite step on any rank (one collective for all of them);
    True when none is left to train."""
    pending = [m for m in members if m.bad_step is None]
    if pending:
        firsts = _all_reduce(torch.stack([m.first_bad for m in pending]), dist.ReduceOp.MIN).tolist()
        for member, step in zip(pending, firsts):
            member.bad_step = None if step == _NEVER else int(step)
    return all(m.bad_step is not None for m in members)


class _RandomStream:
    """A member's own global random state: made active around its steps, so members that draw
    random numbers do not take them from each other."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self):
        outer = _RandomStream(self.device)  # what runs between members' steps keeps its own
        self._install()
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
            outer._install()

    def _install(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "cuda": self.cuda}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # random states are CPU byte tensors, whatever device the checkpoint was loaded to
        self.cpu = state["cpu"].cpu()
        if self.cuda is not None and state.get("cuda") is not None:
            self.cuda = state["cuda"].cpu()


def _report(reporter: Reporter, metrics, rank, epoch, distiller: Distiller, optimizer, schedule,
            random: _RandomStream):
    if rank != 0:
        reporter.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="pcbench-ckpt-") as directory:
        torch.save({"model": distiller.student.model.state_dict()}, os.path.join(directory, MODEL_FILE))
        torch.save({"method": distiller.method.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "epoch": epoch, "random": random.state_dict()},
                   os.path.join(directory, TRAINER_FILE))
        reporter.report(metrics, directory)


def _restore(directory: str, distiller: Distiller, optimizer, schedule, random: _RandomStream) -> int:
    device = next(distiller.parameters()).device
    model = torch.load(os.path.join(directory, MODEL_FILE), map_location=device, weights_only=True)
    state = torch.load(os.path.join(directory, TRAINER_FILE), map_location=device, weights_only=True)
    distiller.student.model.load_state_dict(model["model"])
    distiller.method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if "random" in state:  # resumed with the random state it had: as if never stopped
        random.load_state_dict(state["random"])
    return state["epoch"] + 1


def accuracy_on_test(model_name: str, state_dict: dict[str, torch.Tensor], dataset: str,
                  data_dir: str | None, device: torch.device | None = None) -> float:
    """Test accuracy of weights loaded strictly into `model_name` (an imported teacher)."""
    device = device or pick_device("auto")
    data = load_dataset(dataset, data_dir, 0.0, 0).to(device)
    model = create_model(model_name, data.num_classes, data.input_shape[0])
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        shape = "x".join(map(str, data.input_shape))
        raise UserError(f"the checkpoint does not fit {model_name} on {dataset} ({shape} images, "
                        f"{data.num_classes} classes): {str(error).splitlines()[1].strip()}; a model of "
                        f"another data set or architecture? check --dataset and --model") from None
    return evaluate(Tapped(model.to(device), {"logits"}), data, "test", 0, 1)["acc"]
