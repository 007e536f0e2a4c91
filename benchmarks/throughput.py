"""Training throughput (images/s): pcbench's engine against a standard PyTorch loop, and GPU
packing. KD, resnet32x4 -> resnet8x4, batch 64, on a CIFAR-100 directory in the real format
(generated here unless --data-dir points at the real one).

    python benchmarks/throughput.py [--device cpu|cuda] [--images 1000] [--variants ...]
                                    [--pack 1 2 4] [--full-epoch]

- `standard`: torchvision's CIFAR100 dataset, a DataLoader (0 and N workers), PIL transforms
  (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize), teacher under no_grad.
- `engine:<options>`: `pcbench.engine.train_trial` itself (device-resident uint8 data, batch
  augmentation on the device), timed on its second epoch; options joined by +: fp32 | bf16, cl
  (channels_last), compile (torch.compile) or cg (torch.compile with CUDA graphs).
- `--pack N`: N engine trials at once on one GPU (separate processes), total images/s: what
  fractional GPUs per trial (--gpus-per-trial 1/N) buy.
Writes reports/perf/throughput-<device>.json and prints a Markdown table. Plain PyTorch: no
Ray, no MLflow.
"""

import argparse
import json
import multiprocessing
import os
import pickle
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "reports" / "perf"
TEACHER, STUDENT = "resnet32x4", "resnet8x4"
BATCH = 64


def _data_dir(root: Path, images: int) -> Path:
    from pcbench.data import cifar
    cifar.write("cifar100", root, per_class=max(1, images // 100), test_per_class=1)
    return root


def _teacher_file(folder: Path) -> str:
    from pcbench.models import create_model
    path = folder / f"{TEACHER}.pth"
    if not path.exists():
        torch.save({"model": create_model(TEACHER).state_dict()}, path)
    return str(path)


def standard_loop(data_dir: Path, teacher_file: str, device: str, workers: int, steps: int) -> float:
    """The loop most distillation code bases run (RepDistiller's train_distill, in essence)."""
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from pcbench.models import create_model

    class CIFAR100(datasets.CIFAR100):  # generated files do not have the official MD5s
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))])
    loader = torch.utils.data.DataLoader(
        CIFAR100(str(data_dir), train=True, transform=transform), batch_size=BATCH, shuffle=True,
        num_workers=workers, pin_memory=device == "cuda", drop_last=True, persistent_workers=workers > 0)
    teacher, student = create_model(TEACHER).to(device).eval(), create_model(STUDENT).to(device).train()
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True)["model"])
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    done, started, warmup = 0, None, 3
    while True:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                z_t = teacher(x)
            z_s = student(x)
            kd = F.kl_div(F.log_softmax(z_s / 4, 1), F.softmax(z_t / 4, 1), reduction="batchmean") * 16
            loss = 0.1 * F.cross_entropy(z_s, y) + 0.9 * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == warmup:
                _sync(device)
                started = time.perf_counter()
            if done == warmup + steps:
                _sync(device)
                return steps * BATCH / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _compile_mode(opts: set[str]) -> str:
    return "reduce-overhead" if "cg" in opts else "default" if "compile" in opts else "off"


def engine_trial(data_dir: Path, teacher_file: str, device: str, options: str, epochs: int = 2) -> dict:
    """Images/s of pcbench's own loop over its last training epoch (the first warms up)."""
    from pcbench.config import build_config
    from pcbench.engine import LocalReporter, train_trial

    opts = set(options.split("+"))
    config = build_config(
        {"data": {"name": "cifar100", "root": str(data_dir), "val_fraction": 0.0, "batch_size": BATCH},
         "teacher": TEACHER, "student": STUDENT, "method": "kd",
         "train": {"epochs": epochs, "device": device, "precision": "bf16" if "bf16" in opts else "fp32",
                   "channels_last": "cl" in opts, "compile": _compile_mode(opts),
                   "diagnostics": False}},  # training speed only
        {}).model_copy(update={"teacher_weights": teacher_file})
    reporter = LocalReporter()
    train_trial(config, reporter)
    images = (len(_train_labels(data_dir)) // BATCH) * BATCH
    last = reporter.history[-1]
    # the last epoch also evaluates the test split: time it apart and take it out
    return {"images_per_s": images / (last["epoch_seconds"] - last.get("eval_seconds", 0.0)),
            "epoch_seconds": last["epoch_seconds"], "train_images": images}


class _Enough(Exception):
    pass


def faithful_trial(data_dir: Path, teacher_file: str, device: str, options: str, measured: int) -> dict:
    """The CIFAR-100 recipe as a final run trains it (240 epochs, milestones 150/180/210, all
    50,000 images), stopped after `measured` epochs and extrapolated: the first epoch (which
    compiles) once, then the mean of the others for each remaining epoch."""
    from pcbench.config import build_config
    from pcbench.engine import LocalReporter, train_trial
    from pcbench.recipes import with_recipe

    opts = set(options.split("+"))
    base = with_recipe({"data": {"name": "cifar100", "root": str(data_dir), "val_fraction": 0.0},
                        "teacher": TEACHER, "student": STUDENT, "method": "kd"}, "cifar100-crd")
    base["train"].update(device=device, precision="bf16" if "bf16" in opts else "fp32",
                         channels_last="cl" in opts, compile=_compile_mode(opts))
    config = build_config(base, {}).model_copy(update={"teacher_weights": teacher_file})

    class StopAfter(LocalReporter):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if len(self.history) == measured:
                raise _Enough

    reporter = StopAfter()
    try:
        train_trial(config, reporter)
    except _Enough:
        pass
    seconds = [m["epoch_seconds"] for m in reporter.history]
    steady = sum(seconds[1:]) / len(seconds[1:])
    total = seconds[0] + steady * (config.train.epochs - 1)
    return {"epochs_planned": config.train.epochs, "epochs_measured": measured,
            "first_epoch_seconds": seconds[0], "epoch_seconds": steady,
            "extrapolated_trial_minutes": total / 60,
            "images_per_s": (len(_train_labels(data_dir)) // BATCH) * BATCH / steady}


def _train_labels(data_dir: Path):
    with open(data_dir / "cifar-100-python" / "train", "rb") as f:
        return pickle.load(f, encoding="latin1")["fine_labels"]


def _packed_worker(args) -> dict:
    data_dir, teacher_file, options, epochs = args
    torch.set_num_threads(1)
    return engine_trial(Path(data_dir), teacher_file, "cuda", options, epochs)


def packed(data_dir: Path, teacher_file: str, options: str, trials: int, epochs: int) -> dict:
    """`trials` engine trials at once on the one GPU, each in its own process."""
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with context.Pool(trials) as pool:
        results = pool.map(_packed_worker, [(str(data_dir), teacher_file, options, epochs)] * trials)
    wall = time.perf_counter() - started
    return {"trials": trials, "images_per_s_total": sum(r["images_per_s"] for r in results),
            "images_per_s_each": [round(r["images_per_s"], 1) for r in results], "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", type=Path, help="a CIFAR-100 root (default: generated)")
    parser.add_argument("--images", type=int, default=1000, help="generated training images")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the standard loop")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp32+cl"])
    parser.add_argument("--pack", type=int, nargs="*", default=[])
    parser.add_argument("--pack-variant", default="bf16+cl+cg")
    parser.add_argument("--faithful-epochs", type=int, default=0,
                        help="measure this many epochs of the 240-epoch recipe and extrapolate")
    parser.add_argument("--faithful-variant", default="bf16+cl+cg")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or _data_dir(Path(scratch), args.images)
        teacher_file = _teacher_file(Path(scratch))
        records = []
        for workers in args.loader_workers:
            rate = standard_loop(data_dir, teacher_file, args.device, workers, args.steps)
            records.append({"loop": "standard", "variant": f"DataLoader workers={workers}",
                            "images_per_s": rate})
            print(f"standard, {workers} workers: {rate:.1f} images/s", flush=True)
        for variant in args.variants:
            result = engine_trial(data_dir, teacher_file, args.device, variant)
            records.append({"loop": "engine", "variant": variant, **result})
            print(f"engine {variant}: {result['images_per_s']:.1f} images/s", flush=True)
        if args.faithful_epochs:
            result = faithful_trial(data_dir, teacher_file, args.device, args.faithful_variant,
                                    args.faithful_epochs)
            records.append({"loop": "engine, 240-epoch recipe (extrapolated)",
                            "variant": args.faithful_variant, **result})
            print(f"faithful trial: {result['extrapolated_trial_minutes']:.1f} min "
                  f"(extrapolated from {args.faithful_epochs} epochs)", flush=True)
        for trials in args.pack:
            result = packed(data_dir, teacher_file, args.pack_variant, trials, epochs=3)
            records.append({"loop": f"engine, {trials} packed", "variant": args.pack_variant, **result,
                            "images_per_s": result["images_per_s_total"]})
            print(f"packed x{trials}: {result['images_per_s_total']:.1f} images/s in all", flush=True)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    baseline = max(r["images_per_s"] for r in records if r["loop"] == "standard")
    for r in records:
        r.update(device=device_name, torch=torch.__version__, speedup=r["images_per_s"] / baseline)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"throughput-{args.device}.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"\n{device_name}, {TEACHER} -> {STUDENT}, kd, batch {BATCH}\n")
    print("| loop | variant | images/s | x best standard |\n|---|---|---|---|")
    for r in records:
        print(f"| {r['loop']} | {r['variant']} | {r['images_per_s']:.1f} | {r['speedup']:.2f} |")
    for r in records:
        if "extrapolated_trial_minutes" in r:
            minutes = r["extrapolated_trial_minutes"]
            print(f"\nOne faithful 240-epoch trial ({r['variant']}): {minutes:.1f} min, "
                  f"extrapolated from {r['epochs_measured']} measured epochs "
                  f"(first {r['first_epoch_seconds']:.1f} s, then {r['epoch_seconds']:.2f} s each)")


if __name__ == "__main__":
    main()
