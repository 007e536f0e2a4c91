"""Cohorts against single trials: the same KD trials (resnet32x4 -> resnet8x4, batch 64, on a
CIFAR-100 directory in the real format, generated here) trained one at a time and as one
cohort that computes the teacher's forward once per batch for all its members.

    python benchmarks/cohort.py [--device cpu|cuda] [--images 1000] [--sizes 1 2 4 8]
                                [--precision fp32 bf16]

For each cohort size K and precision: the training seconds of the second epoch (the first
warms up; evaluation is timed apart and left out) and the images all K members train per
second, K x images / cohort seconds, against one trial alone. Writes
reports/perf/cohort-<device>.json and prints a Markdown table. Plain PyTorch: no Ray, no MLflow.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from throughput import BATCH, OUT, STUDENT, TEACHER, _data_dir, _teacher_file, _train_labels


def cohort_epoch(data_dir: Path, teacher_file: str, device: str, precision: str, size: int) -> float:
    """Training seconds of a K-member cohort's second epoch."""
    from pcbench.config import build_config
    from pcbench.engine import LocalReporter, train_cohort

    configs = [build_config(
        {"data": {"name": "cifar100", "root": str(data_dir), "val_fraction": 0.0, "batch_size": BATCH},
         "teacher": TEACHER, "student": STUDENT, "method": "kd",
         "train": {"epochs": 2, "device": device, "precision": precision, "lr": 0.05 * (1 + i / 10),
                   "diagnostics": False}},  # training speed only
        {}).model_copy(update={"teacher_weights": teacher_file}) for i in range(size)]
    reporters = [LocalReporter() for _ in configs]
    train_cohort(configs, reporters)
    # each member's epoch_seconds holds its share of the cohort's training time, plus its own
    # evaluation (the last epoch evaluates the test split)
    return sum(r.history[-1]["epoch_seconds"] - r.history[-1]["eval_seconds"] for r in reporters)


def _has_amx() -> bool:
    """bf16 on a CPU is fast only with AMX (Sapphire Rapids and later); elsewhere it is emulated."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=1000, help="generated training images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    args = parser.parse_args()
    torch.manual_seed(0)
    records = []
    out = OUT / f"cohort-{args.device}.json"
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = _data_dir(Path(scratch), args.images)
        teacher_file = _teacher_file(Path(scratch))
        images = (len(_train_labels(data_dir)) // BATCH) * BATCH
        for precision in args.precision:
            alone = None
            for size in args.sizes:
                seconds = cohort_epoch(data_dir, teacher_file, args.device, precision, size)
                rate = size * images / seconds  # trial-images per second, all members together
                alone = alone or (rate if size == 1 else None)
                records.append({"precision": precision, "cohort": size, "epoch_seconds": seconds,
                                "images_per_s_all_members": rate,
                                "vs_one_trial": rate / alone if alone else None})
                print(f"{precision} cohort {size}: {seconds:.1f} s/epoch, {rate:.1f} images/s over "
                      f"its members", flush=True)
                out.write_text(json.dumps({  # after every record: a long run stopped keeps them
                    "device": args.device, "torch": torch.__version__, "batch": BATCH, "teacher": TEACHER,
                    "student": STUDENT, "train_images": images, "threads": torch.get_num_threads(),
                    "cpu_amx": _has_amx(), "records": records}, indent=1))
    print("\n| precision | cohort | s / epoch | images/s, all members | vs one trial |")
    print("|---|---|---|---|---|")
    for r in records:
        ratio = f"{r['vs_one_trial']:.2f}x" if r["vs_one_trial"] else ""
        print(f"| {r['precision']} | {r['cohort']} | {r['epoch_seconds']:.1f} | "
              f"{r['images_per_s_all_members']:.1f} | {ratio} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
