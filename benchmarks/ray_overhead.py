"""What Ray costs a trial: the same `pcbench run` in this process (`--no-ray`) and as a Ray
Tune trial on a local Ray instance, timed end to end from the command line.

    python benchmarks/ray_overhead.py [--repeats 3] [--workloads digits cifar]

Workloads: `digits` (kd, cnn_large -> cnn_small, 20 epochs: the demo's trial) and `cifar`
(kd, resnet32x4 -> resnet8x4 on a generated CIFAR-100 directory in the real format, 2 epochs).
For each run: the command's wall time (Python start, Ray start, MLflow, the trial), the trial's
wall time as recorded (start to finish as the driver saw it) and its training time (the sum of
its epochs). Writes reports/perf/ray_overhead.json and prints a Markdown table. Needs Ray and
MLflow (the CPU machine's install), unlike the other benchmarks.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "reports" / "perf" / "ray_overhead.json"


def _workloads(scratch: Path, teachers: Path) -> dict[str, list[str]]:
    import torch

    from pcbench.data import cifar
    from pcbench.engine import accuracy_on_test
    from pcbench.models import create_model
    from pcbench.teachers import TeacherStore

    store = TeacherStore(teachers)
    store.ensure("cnn_large", "digits")
    data_dir = scratch / "data"
    cifar.write("cifar100", data_dir, per_class=10, test_per_class=1)
    weights = scratch / "resnet32x4.pth"
    torch.save({"model": create_model("resnet32x4").state_dict()}, weights)
    store.import_checkpoint(weights, "resnet32x4", "cifar100",
                            lambda name, state: accuracy_on_test(name, state, "cifar100", str(data_dir)))
    return {
        "digits": ["--method", "kd", "--epochs", "20"],
        "cifar": ["--method", "kd", "--dataset", "cifar100", "--data-dir", str(data_dir),
                  "--teacher", "resnet32x4", "--student", "resnet8x4", "--epochs", "2"],
    }


def _run(args: list[str], mode: str, scratch: Path, teachers: Path) -> dict:
    results = scratch / f"results-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "pcbench", "run", *args, "--results", str(results),
               "--teachers", str(teachers), "--tracking-uri", f"sqlite:///{scratch / 'mlflow.db'}",
               "--cpus-per-trial", str(os.cpu_count())]
    if mode == "no-ray":
        command.append("--no-ray")
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    trial = pd.read_parquet(results / "trials").iloc[0]
    return {"mode": mode, "command_seconds": wall, "trial_seconds": float(trial.wall_seconds),
            "train_seconds": float(trial.train_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=["digits", "cifar"])
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        teachers = scratch / "teachers"
        workloads = _workloads(scratch, teachers)
        for name in args.workloads:
            for repeat in range(args.repeats):
                for mode in ("no-ray", "ray"):  # interleaved: drift in the machine hits both
                    timing = _run(workloads[name], mode, scratch, teachers)
                    record = {"workload": name, "repeat": repeat, **timing}
                    records.append(record)
                    print(f"{name} {mode:>6} #{repeat}: command {record['command_seconds']:.1f} s, "
                          f"trial {record['trial_seconds']:.1f} s, training {record['train_seconds']:.1f} s",
                          flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(records, indent=1) + "\n")
    table = pd.DataFrame(records).groupby(["workload", "mode"])[
        ["command_seconds", "trial_seconds", "train_seconds"]].median()
    print(f"\nMedian of {args.repeats} runs, CPU ({os.cpu_count()} cores)\n")
    print("| workload | mode | command (s) | trial (s) | training (s) | overhead vs --no-ray |")
    print("|---|---|---|---|---|---|")
    for (workload, mode), row in table.iterrows():
        base = table.loc[(workload, "no-ray")]
        overhead = (row.command_seconds / base.command_seconds - 1) * 100
        print(f"| {workload} | {mode} | {row.command_seconds:.1f} | {row.trial_seconds:.1f} | "
              f"{row.train_seconds:.1f} | {overhead:+.0f}% command, "
              f"{(row.train_seconds / base.train_seconds - 1) * 100:+.0f}% training |")


if __name__ == "__main__":
    main()
