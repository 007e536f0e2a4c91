"""bf16 autocast against fp32 (`train.precision`): what it does to accuracy, measured with
identical seeds (a seed fixes the initial student, the data order and the augmentation).

    python benchmarks/precision.py [--device cpu|cuda] [--seeds N] [--epochs N] [--methods ce kd pc]
                                   [--teachers DIR] [--parts digits cifar] [--out FILE]
                                   [--cifar-per-class N] [--cifar-test-per-class N] [--cifar-epochs N]
                                   [--cifar-batch N] [--cifar-teacher-epochs N]

- digits (the embedded default): a cnn_large teacher trained once in fp32 with the store's
  recipe (in a temporary store, or the one in --teachers DIR), cnn_small students, recipe
  "digits", on all the training data (data.val_fraction 0, as final runs). For each seed, the
  methods train in fp32 as one cohort, then in bf16 as another (`train_cohort`: one teacher
  forward per batch, every member ends as it would alone). Test accuracy per seed, the mean
  paired difference bf16 - fp32 with a 95% t interval, wall seconds. Both arms load the same
  fp32 teacher weights; in a bf16 run the teacher's forward, like the student's and the test
  evaluation, runs under bf16 autocast (what the engine does), so the teacher's own test
  accuracy with an fp32 and a bf16 forward is reported too.
- cifar: resnet32x4 -> resnet8x4 KD on a generated CIFAR-100 directory in the real format
  (`pcbench.data.cifar.write`: one grey level per class under uniform noise), seed 1, in fp32,
  in bf16 and in fp32 again (the control: on a CPU the same fp32 run twice is bit-identical, so
  any drift is bf16's; on a GPU nondeterministic kernels make it the noise floor). Train loss
  per epoch, the final weights' relative difference (also as a share of the distance they
  travelled from their initialisation), the test logits' relative difference, prediction
  agreement and test accuracy.

A CPU without AMX (or AVX512-BF16) emulates bf16: on the 2-core AVX2 machine these were made
on, bf16 training ran 15 to 70 times slower than fp32. So the CPU defaults are cut to fit about
ten minutes: 2 seeds of 5 digits epochs, and 4 SGD steps on 100 CIFAR-shaped images from an
untrained teacher, which shows numerical drift only, no accuracy effect. The CUDA defaults are
the protocol's: 3 seeds of the 20-epoch recipe, and a CIFAR-shaped run long enough to learn the
generated classes, from a teacher trained on them in fp32, with the suites' GPU settings
(channels_last, CUDA graphs) in both arms so that precision is the only difference.

Writes reports/precision/precision-<device>.json (or --out) and prints Markdown tables. Plain
PyTorch: no Ray, no MLflow.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "reports" / "precision"
PRECISIONS = ("fp32", "bf16")
DIGITS_PAIR = ("cnn_large", "cnn_small")
CIFAR_PAIR = ("resnet32x4", "resnet8x4")
# Per device. The CPU's fit ten minutes of emulated bf16 (one CIFAR-100 image per class is the
# writer's least: 4 steps of 25); the GPU's are the protocol's seeds and epochs, and train the
# generated classes for real (an accuracy) from a teacher trained on them.
DEFAULTS = {"cpu": {"seeds": 2, "epochs": 5, "cifar_per_class": 1, "cifar_test_per_class": 1,
                    "cifar_epochs": 1, "cifar_batch": 25, "cifar_teacher_epochs": 0},
            "cuda": {"seeds": 3, "epochs": 20, "cifar_per_class": 50, "cifar_test_per_class": 10,
                     "cifar_epochs": 30, "cifar_batch": 64, "cifar_teacher_epochs": 30}}


def machine(device: str) -> dict:
    """What the numbers were measured on: bf16 is fast on a CPU only with AMX."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), "unknown")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = lscpu
    info = {"cpu": model, "cpu_cores": os.cpu_count(), "cpu_amx_bf16": "amx_bf16" in flags,
            "cpu_avx512_bf16": "avx512_bf16" in flags, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def train_settings(device: str, precision: str, suite_speed: bool = False) -> dict:
    """One arm's train settings. `suite_speed` on a GPU: channels_last and CUDA graphs, as the
    CIFAR suites run bf16, in both arms so that precision is the only difference."""
    train = {"device": device, "precision": precision, "diagnostics": False}  # accuracy only
    if suite_speed and device == "cuda":
        train.update(channels_last=True, compile="reduce-overhead")
    return train


def run(configs: list, directories: list[Path | None] | None = None) -> tuple[list[dict], float]:
    """Train the configurations as one cohort (one data stream, one teacher forward per batch;
    each member ends as it would alone: `train_cohort`). Each one's test accuracy (None when it
    was not asked for one) and train loss per epoch, and the cohort's wall seconds."""
    from pcbench.engine import LocalReporter, train_cohort

    reporters = [LocalReporter(str(d) if d else None) for d in directories or [None] * len(configs)]
    started = time.perf_counter()
    finals = train_cohort(configs, reporters)
    seconds = time.perf_counter() - started
    return [{"test_acc": f.get("test_acc"), "train_loss": [m["train_loss"] for m in r.history],
             "diverged": f.get("diverged")} for f, r in zip(finals, reporters)], seconds


@torch.no_grad()
def test_logits(model, data, precision: str) -> torch.Tensor:
    """Test-set logits as the engine's evaluation computes them (under autocast, as float)."""
    from pcbench.engine import autocast

    model.eval()
    out = []
    for x, _, _ in data.batches("test", 1024):
        with autocast(x.device, precision):
            out.append(model(x).float())
    return torch.cat(out).cpu()


def paired(fp32: list[float], bf16: list[float]) -> dict:
    """bf16 - fp32 over runs of the same seeds: mean and Student's t 95% interval."""
    from pcbench.results.significance import ci95

    diffs = [b - a for a, b in zip(fp32, bf16)]
    low, high = ci95(diffs)
    return {"mean_diff": sum(diffs) / len(diffs), "ci95": [low, high], "diffs": diffs}


# ---- digits: accuracy ---------------------------------------------------------------------

def digits_teacher(store_root: Path, device: str):
    """The stored cnn_large teacher of digits, trained here in fp32 if the store has none."""
    from pcbench.teachers import TeacherStore, teacher_config

    store = TeacherStore(store_root)
    teacher, _ = DIGITS_PAIR
    if store.get(teacher, "digits") is not None:
        return store.ensure(teacher, "digits"), 0.0  # checked against its hash
    started = time.perf_counter()
    record = store.train(teacher_config(teacher, "digits", overrides={"train.device": device}))
    return record, time.perf_counter() - started


def digits_config(method: str, seed: int, precision: str, args, record):
    from pcbench.config import build_config
    from pcbench.recipes import with_recipe
    from pcbench.teachers import attach

    teacher, student = DIGITS_PAIR
    overrides = {"train.epochs": args.epochs}
    base = with_recipe({"data": {"name": "digits", "val_fraction": 0.0}, "teacher": teacher,
                        "student": student, "method": method, "seed": seed,
                        "train": train_settings(args.device, precision)}, "digits", overrides)
    # ce too, which never reads it: a cohort's members share one teacher
    return attach(build_config(base, overrides), record)


def teacher_forward(record, device: str) -> dict:
    """The teacher's test accuracy with an fp32 and a bf16 forward, and how often they agree."""
    from pcbench.data import load_dataset
    from pcbench.models import create_model

    data = load_dataset("digits", None, 0.0, 0).to(torch.device(device))
    model = create_model(DIGITS_PAIR[0], data.num_classes, data.input_shape[0])
    model.load_state_dict(torch.load(record.path, map_location="cpu", weights_only=True)["model"])
    model = model.to(device)
    preds = {p: test_logits(model, data, p).argmax(1) for p in PRECISIONS}
    labels = data.test[1].cpu()
    return {**{f"{p}_acc": (preds[p] == labels).double().mean().item() for p in PRECISIONS},
            "agreement": (preds["fp32"] == preds["bf16"]).double().mean().item(),
            "test_images": len(labels)}


def digits_part(args, scratch: Path, save) -> dict:
    record, teacher_seconds = digits_teacher(args.teachers or scratch / "teachers", args.device)
    origin = f"trained here in {teacher_seconds:.0f} s" if teacher_seconds else "from the store"
    print(f"digits teacher {record.model}: test {record.test_acc:.4f} (fp32; {origin})", flush=True)
    runs, seconds = [], {p: [] for p in PRECISIONS}
    for seed in range(1, args.seeds + 1):
        for precision in PRECISIONS:  # interleaved: load from other work hits both arms alike
            results, wall = run([digits_config(m, seed, precision, args, record) for m in args.methods])
            seconds[precision].append(wall)
            runs += [{"method": m, "seed": seed, "precision": precision, **r}
                     for m, r in zip(args.methods, results)]
            accuracies = ", ".join(f"{m} {r['test_acc']:.4f}" for m, r in zip(args.methods, results))
            print(f"digits seed {seed} {precision}: test {accuracies} ({wall:.1f} s)", flush=True)
            save({"runs": runs, "cohort_seconds": seconds, "complete": False})
    summary = {}
    for method in args.methods:
        acc = {p: [r["test_acc"] for r in runs if r["method"] == method and r["precision"] == p]
               for p in PRECISIONS}
        summary[method] = {**paired(acc["fp32"], acc["bf16"]), "acc": acc}
    all_acc = {p: [r["test_acc"] for r in runs if r["precision"] == p] for p in PRECISIONS}
    summary["all"] = paired(all_acc["fp32"], all_acc["bf16"])
    forward = teacher_forward(record, args.device)
    return {"teacher": {"model": record.model, "sha256": record.sha256, "test_acc_store": record.test_acc,
                        "trained_seconds": teacher_seconds, **forward},
            "student": DIGITS_PAIR[1], "epochs": args.epochs, "seeds": args.seeds,
            "test_images": forward["test_images"], "cohort_seconds": seconds, "runs": runs,
            "summary": summary}


# ---- CIFAR-shaped: numerical drift (and accuracy on a GPU) -----------------------------------

def cifar_teacher(root: Path, scratch: Path, cifar: dict, device: str) -> tuple[str, dict]:
    """resnet32x4 for the generated data: trained in fp32 on it, or (0 epochs) as initialised."""
    from pcbench.models import create_model
    from pcbench.teachers import TeacherStore, teacher_config

    teacher = CIFAR_PAIR[0]
    if cifar["teacher_epochs"] == 0:
        path = scratch / f"{teacher}-init.pt"
        torch.manual_seed(0)
        torch.save({"model": create_model(teacher).state_dict()}, path)
        return str(path), {"trained_epochs": 0}
    overrides = {"train.epochs": cifar["teacher_epochs"], "train.device": device,
                 "data.batch_size": cifar["batch"], "train.diagnostics": False}
    started = time.perf_counter()
    record = TeacherStore(scratch / "cifar-teachers").train(
        teacher_config(teacher, "cifar100", str(root), overrides))
    return record.path, {"trained_epochs": cifar["teacher_epochs"], "test_acc": record.test_acc,
                         "seconds": time.perf_counter() - started}


def cifar_config(root: Path, teacher_file: str, seed: int, precision: str, cifar: dict, device: str):
    from pcbench.config import build_config
    from pcbench.recipes import with_recipe

    overrides = {"train.epochs": cifar["epochs"]}
    train = {**train_settings(device, precision, suite_speed=True), "report_test": False}  # tested here
    base = with_recipe({"data": {"name": "cifar100", "root": str(root), "val_fraction": 0.0,
                                 "batch_size": cifar["batch"]},
                        "teacher": CIFAR_PAIR[0], "student": CIFAR_PAIR[1], "method": "kd", "seed": seed,
                        "train": train}, "cifar100-crd", overrides)
    return build_config(base, overrides).model_copy(update={"teacher_weights": teacher_file})


def initial_student(seed: int) -> dict[str, torch.Tensor]:
    """The student's weights before training, built as the engine builds them from the seed."""
    from pcbench.models import create_model

    torch.manual_seed(seed)
    return create_model(CIFAR_PAIR[1]).state_dict()


def flat_weights(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every floating tensor of a state_dict (BatchNorm statistics too) as one vector."""
    return torch.cat([v.detach().double().flatten().cpu() for k, v in sorted(state.items())
                      if v.is_floating_point()])


def cifar_arm(root: Path, teacher_file: str, folder: Path, precision: str, cifar: dict, device: str) -> dict:
    """One run; its history, final weights and test predictions (in its own precision)."""
    from pcbench.data import load_dataset
    from pcbench.engine import MODEL_FILE
    from pcbench.models import create_model

    results, seconds = run([cifar_config(root, teacher_file, 1, precision, cifar, device)], [folder])
    result = {**results[0], "seconds": seconds}
    state = torch.load(folder / "checkpoint" / MODEL_FILE, map_location="cpu", weights_only=True)["model"]
    data = load_dataset("cifar100", str(root), 0.0, 0).to(torch.device(device))
    model = create_model(CIFAR_PAIR[1])
    model.load_state_dict(state)
    result["logits"] = test_logits(model.to(device), data, precision)
    result["preds"] = result["logits"].argmax(1)
    result["weights"] = flat_weights(state)
    result["test_acc"] = (result["preds"] == data.test[1].cpu()).double().mean().item()
    return result


def drift(a: dict, b: dict, start: torch.Tensor) -> dict:
    """How far run b ended from run a: in loss, weights and test predictions."""
    apart = (b["weights"] - a["weights"]).norm().item()
    return {"weights_rel_diff": apart / a["weights"].norm().item(),
            "weights_diff_over_distance_trained": apart / (a["weights"] - start).norm().item(),
            "max_train_loss_diff": max(abs(x - y) for x, y in zip(a["train_loss"], b["train_loss"])),
            "prediction_agreement": (a["preds"] == b["preds"]).double().mean().item(),
            # informative where the predictions are not (a barely trained student predicts one class)
            "test_logits_rel_diff": ((b["logits"] - a["logits"]).norm() / a["logits"].norm()).item()}


def cifar_part(args, scratch: Path) -> dict:
    from pcbench.data import cifar as cifar_format

    cifar = {k.removeprefix("cifar_"): v for k, v in vars(args).items() if k.startswith("cifar_")}
    root = scratch / "cifar"
    cifar_format.write("cifar100", root, per_class=cifar["per_class"],
                       test_per_class=cifar["test_per_class"])
    teacher_file, teacher = cifar_teacher(root, scratch, cifar, args.device)
    arms = {}
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16"), ("fp32 again", "fp32")):
        arms[name] = cifar_arm(root, teacher_file, scratch / name.replace(" ", "-"), precision, cifar,
                               args.device)
        print(f"cifar {name}: train loss {[round(v, 4) for v in arms[name]['train_loss']]}, test "
              f"{arms[name]['test_acc']:.4f} ({arms[name]['seconds']:.1f} s)", flush=True)
    start = flat_weights(initial_student(1))
    return {"teacher": {"model": CIFAR_PAIR[0], **teacher}, "student": CIFAR_PAIR[1], "method": "kd",
            "train_images": 100 * cifar["per_class"], "test_images": 100 * cifar["test_per_class"],
            "batch": cifar["batch"], "epochs": cifar["epochs"], "seed": 1,
            "runs": {n: {k: v for k, v in a.items() if k not in ("logits", "preds", "weights")}
                     for n, a in arms.items()},
            "bf16_vs_fp32": drift(arms["fp32"], arms["bf16"], start),
            "fp32_rerun_vs_fp32": drift(arms["fp32"], arms["fp32 again"], start)}


# ---- output ----------------------------------------------------------------------------------

def ci(interval) -> str:
    low, high = interval
    return "n/a" if math.isnan(low) else f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def print_digits(d: dict) -> None:
    t = d["teacher"]
    print(f"\ndigits, {t['model']} -> {d['student']}, {d['epochs']} epochs, all training data, "
          f"{d['test_images']} test images (one image = {100 / d['test_images']:.2f} points)")
    print(f"teacher (fp32 weights): test {100 * t['fp32_acc']:.2f}% with an fp32 forward, "
          f"{100 * t['bf16_acc']:.2f}% with a bf16 forward ({100 * t['agreement']:.1f}% same predictions)\n")
    print("| method | fp32 test % (seeds 1..N) | bf16 test % (seeds 1..N) | bf16 - fp32, points "
          "| 95% CI |\n|---|---|---|---|---|")
    for method, s in d["summary"].items():
        per = {p: ", ".join(f"{100 * a:.2f}" for a in s.get("acc", {}).get(p, [])) for p in PRECISIONS}
        print(f"| {method} | {per['fp32']} | {per['bf16']} | {100 * s['mean_diff']:+.2f} "
              f"| {ci(s['ci95'])} |")
    mean = {p: sum(v) / len(v) for p, v in d["cohort_seconds"].items()}
    print(f"\nwall seconds per seed (one cohort of {len(d['summary']) - 1} methods): "
          f"fp32 {mean['fp32']:.1f}, bf16 {mean['bf16']:.1f} (x{mean['bf16'] / mean['fp32']:.1f})")


def print_cifar(c: dict) -> None:
    teacher = c["teacher"]
    trained = f"trained {teacher['trained_epochs']} epochs" if teacher["trained_epochs"] else "untrained"
    print(f"\nCIFAR-shaped (generated CIFAR-100 format), {teacher['model']} ({trained}) -> {c['student']} "
          f"kd, {c['train_images']} train / {c['test_images']} test images, batch {c['batch']}, "
          f"{c['epochs']} epochs, seed 1\n")
    print("| comparison | weights rel. diff | / distance trained | max train-loss diff "
          "| test logits rel. diff | same test predictions |\n|---|---|---|---|---|---|")
    for name, key in (("bf16 vs fp32", "bf16_vs_fp32"), ("fp32 rerun vs fp32", "fp32_rerun_vs_fp32")):
        x = c[key]
        print(f"| {name} | {x['weights_rel_diff']:.2e} | {x['weights_diff_over_distance_trained']:.2e} | "
              f"{x['max_train_loss_diff']:.2e} | {x['test_logits_rel_diff']:.2e} | "
              f"{100 * x['prediction_agreement']:.1f}% |")
    for name, r in c["runs"].items():
        print(f"{name}: train loss {', '.join(f'{v:.4f}' for v in r['train_loss'])}; test "
              f"{100 * r['test_acc']:.2f}% (chance 1%); {r['seconds']:.1f} s")
    if not teacher["trained_epochs"]:
        print("Generated data and a few steps from an untrained teacher cannot show an accuracy effect, "
              "only numerical drift.")


def write(out: Path, record: dict) -> None:
    out.write_text(json.dumps(record, indent=1) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", default=["ce", "kd", "pc"])
    parser.add_argument("--teachers", type=Path, help="a teacher store holding digits/cnn_large "
                        "(default: trained here in a temporary folder)")
    parser.add_argument("--parts", nargs="+", choices=["digits", "cifar"], default=["digits", "cifar"])
    parser.add_argument("--out", type=Path, help="default: reports/precision/precision-<device>.json")
    helps = {"seeds": "digits: seeds 1..N", "epochs": "digits student epochs (the recipe's: 20)"}
    for knob in DEFAULTS["cpu"]:
        parser.add_argument(f"--{knob.replace('_', '-')}", type=int,
                            help=f"{helps.get(knob, '')} (default: {DEFAULTS['cpu'][knob]} on cpu, "
                                 f"{DEFAULTS['cuda'][knob]} on cuda)")
    args = parser.parse_args()
    for knob, value in DEFAULTS[args.device].items():
        if getattr(args, knob) is None:
            setattr(args, knob, value)
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    record = {"command": "python " + shlex.join(sys.argv), "machine": machine(args.device),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    out = args.out or OUT / f"precision-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pcbench-precision-") as scratch:
        if "digits" in args.parts:
            # written after every cohort too: a run stopped midway keeps what it measured
            record["digits"] = digits_part(args, Path(scratch),
                                           lambda partial: write(out, {**record, "digits": partial}))
            print_digits(record["digits"])
            write(out, record)
        if "cifar" in args.parts:
            record["cifar"] = cifar_part(args, Path(scratch))
            print_cifar(record["cifar"])
    record["total_seconds"] = time.perf_counter() - started
    write(out, record)
    print(f"\n{record['total_seconds']:.0f} s in all; wrote {out}")


if __name__ == "__main__":
    main()
