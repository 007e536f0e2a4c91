"""What the representation diagnostics (CKA and rank agreement against the teacher, every
epoch, pcbench/diagnostics.py) cost a trial, against its training time.

    python benchmarks/diagnostics.py [--device cpu|cuda] [--epochs 3]

- digits (the embedded default), KD and FCFD cnn_large -> cnn_small: the trial as it runs,
  diagnostics seconds per epoch against the rest of the epoch (training and evaluation);
- CIFAR-100 in the real format (generated here), resnet32x4 -> resnet8x4, KD and FCFD (FCFD
  reads every stage, the largest feature maps): a diagnostics pass costs the same whatever the
  epoch's size (DIAGNOSTIC_IMAGES held-out images), so it is measured on a small set and set
  against a real epoch of 45,000 training images at the measured training rate.

Writes reports/perf/diagnostics-<device>.json and prints a Markdown table. Plain PyTorch."""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from throughput import BATCH, OUT, STUDENT, TEACHER, _data_dir, _teacher_file

CIFAR_TRAIN_IMAGES = 45_000  # a search trial's epoch: 50,000 less the validation split


def trial(config: dict, teacher_file: str) -> list[dict]:
    from pcbench.config import build_config
    from pcbench.engine import LocalReporter, train_trial

    reporter = LocalReporter()
    train_trial(build_config(config, {}).model_copy(update={"teacher_weights": teacher_file}), reporter)
    return reporter.history[1:]  # the first epoch warms up


def digits_teacher(folder: Path) -> str:
    from pcbench.teachers import TeacherStore
    return TeacherStore(folder).ensure("cnn_large", "digits").path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teacher = digits_teacher(scratch / "teachers")
        for method in ("kd", "fcfd"):
            epochs = trial({"method": method, "train": {"epochs": args.epochs, "device": args.device}}, teacher)
            rest = sum(e["epoch_seconds"] - e["diagnostics_seconds"] for e in epochs)
            cost = sum(e["diagnostics_seconds"] for e in epochs)
            records.append({"data": "digits", "pair": "cnn_large->cnn_small", "method": method,
                            "diagnostics_s_per_epoch": cost / len(epochs),
                            "rest_of_epoch_s": rest / len(epochs), "overhead": cost / rest})
        data_dir = _data_dir(scratch / "cifar", 2000)
        teacher = _teacher_file(scratch)
        for method in ("kd", "fcfd"):
            epochs = trial({"data": {"name": "cifar100", "root": str(data_dir), "val_fraction": 0.3,
                                     "batch_size": BATCH},
                            "teacher": TEACHER, "student": STUDENT, "method": method,
                            "train": {"epochs": 2, "device": args.device}}, teacher)
            [epoch] = epochs
            train_images = (1400 // BATCH) * BATCH
            per_image = (epoch["epoch_seconds"] - epoch["diagnostics_seconds"] - epoch["eval_seconds"]) / train_images
            real_epoch = per_image * CIFAR_TRAIN_IMAGES
            records.append({"data": "cifar100 (45,000-image epoch at the measured rate)",
                            "pair": f"{TEACHER}->{STUDENT}", "method": method,
                            "diagnostics_s_per_epoch": epoch["diagnostics_seconds"],
                            "rest_of_epoch_s": real_epoch, "overhead": epoch["diagnostics_seconds"] / real_epoch})
    (OUT / f"diagnostics-{args.device}.json").write_text(json.dumps(
        {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
         "records": records}, indent=1))
    print("| data | pair | method | diagnostics s / epoch | rest of the epoch, s | overhead |")
    print("|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['data']} | {r['pair']} | {r['method']} | {r['diagnostics_s_per_epoch']:.3f} | "
              f"{r['rest_of_epoch_s']:.2f} | {100 * r['overhead']:.2f}% |")


if __name__ == "__main__":
    main()
