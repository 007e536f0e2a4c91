"""Cost of the losses: forward + backward time and peak memory against batch size.

    python benchmarks/losses.py [--batches 64 128 256 512 1024] [--repeats 3]

PC (the shipped chunked soft rank vs the naive B x B x B one), OT (exact vs Sinkhorn, for
64x256 and 256x256 neurons) and one full FCFD training step vs one KD step on the digits pair.
Runs on the CPU, and on a GPU when one is available. Each measurement runs in a fresh process
so that CPU peak memory (the rise of maxrss) belongs to it alone; on a GPU it is
torch.cuda.max_memory_allocated. Writes reports/perf/losses.json and prints a Markdown table.
Plain PyTorch: no Ray, no MLflow.
"""

import argparse
import json
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "reports" / "perf" / "losses.json"
NAIVE_PC_LIMIT_BYTES = 8 << 30  # the naive soft rank holds ~4 B^3 floats: skip beyond this


def _pc(batch: int, variant: str, device: torch.device):
    from pcbench.methods import pc

    s = torch.randn(batch, 128, device=device, requires_grad=True)
    t = torch.randn(batch, 128, device=device)

    def run():
        ft = pc.hard_rank(pc.dissimilarity(t, "cosine"))
        d = pc.dissimilarity(s, "cosine")
        fs = pc.soft_rank(d, 0.5) if variant == "chunked" else pc.naive_soft_rank(d, 0.5)
        pc.rank_disagreement(fs, ft, "mse").backward()
    return run


def _ot(batch: int, variant: str, device: torch.device):
    from pcbench.methods.ot import neuron_cost, ot_loss

    solver, shape = variant.split(":")
    p, q = (int(n) for n in shape.split("x"))
    a_t = torch.randn(p, batch, device=device)
    a_s = torch.randn(q, batch, device=device, requires_grad=True)
    return lambda: ot_loss(neuron_cost(a_t, a_s), solver).backward()


def _step(batch: int, variant: str, device: torch.device):
    from pcbench.config import build_config
    from pcbench.engine import Distiller
    from pcbench.methods import DataInfo, get_method
    from pcbench.models import Tapped, create_model, model_info

    config = build_config({"method": variant}, {}).method
    method_class = get_method(variant)
    student, teacher = create_model("cnn_small", 10, 1), create_model("cnn_large", 10, 1)
    taps = method_class.taps(config, student.stage_taps)
    method = method_class(config, model_info(student, (1, 8, 8)), model_info(teacher, (1, 8, 8)),
                          DataInfo(10, 1221, epochs=20))
    distiller = Distiller(student, method, taps).to(device)
    teacher_taps = Tapped(teacher.requires_grad_(False), taps).to(device).eval()
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    index = torch.arange(batch, device=device)

    def run():
        with torch.no_grad():
            teacher_feats = teacher_taps(x)
        loss = sum(distiller(x, y, index, 0, teacher_feats, teacher).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return run


CASES = {"pc": (_pc, ["chunked", "naive"]),
         "ot": (_ot, ["exact:64x256", "sinkhorn:64x256", "exact:256x256", "sinkhorn:256x256"]),
         "step": (_step, ["fcfd", "kd"])}


def measure(loss: str, variant: str, batch: int, device_name: str, repeats: int) -> dict:
    """One measurement, meant to run in a fresh process."""
    torch.manual_seed(0)
    device = torch.device(device_name)
    run = CASES[loss][0](batch, variant, device)  # imports and inputs: not part of the peak
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run()  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    elapsed_ms = (time.perf_counter() - started) / repeats * 1000
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # Linux reports maxrss in KiB
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"loss": loss, "variant": variant, "batch": batch, "device": device_name,
            "fwd_bwd_ms": round(elapsed_ms, 3), "peak_mem_mb": round(peak_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--devices", nargs="+", help="default: cpu, and cuda when available")
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    jobs = []
    for device in devices:
        for batch in args.batches:
            for loss, (_, variants) in CASES.items():
                for variant in variants:
                    naive_bytes = 4 * batch ** 3 * 4
                    if variant == "naive" and naive_bytes > NAIVE_PC_LIMIT_BYTES:
                        print(f"skip pc naive B={batch} on {device}: needs ~{naive_bytes / 2**30:.0f} GiB")
                        continue
                    jobs.append((loss, variant, batch, device, args.repeats))
    records = []
    # A fixed mmap threshold makes glibc return every large buffer to the OS when it is freed,
    # so maxrss measures the peak of live tensors rather than the allocator's reuse pattern.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, max_tasks_per_child=1) as pool:
        for job in jobs:
            record = pool.submit(measure, *job).result()
            records.append(record)
            print(f"{record['loss']:>4} {record['variant']:>16} B={record['batch']:>5} "
                  f"{record['device']}: {record['fwd_bwd_ms']:>10.2f} ms {record['peak_mem_mb']:>9.1f} MB",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staged = args.out.with_suffix(".tmp")
    staged.write_text(json.dumps(records, indent=1) + "\n")
    staged.replace(args.out)
    print("\n| loss | variant | batch | device | fwd+bwd (ms) | peak mem (MB) |\n|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['loss']} | {r['variant']} | {r['batch']} | {r['device']} | "
              f"{r['fwd_bwd_ms']:.2f} | {r['peak_mem_mb']:.1f} |")


if __name__ == "__main__":
    main()
