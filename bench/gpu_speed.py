"""Energy+forces time and peak GPU memory of the eager model on CUDA against N (float32).

    python bench/gpu_speed.py [--sizes 192,768,3072,12288] [--size 256/4/4] [--repeats 5]

Random weights, water boxes, cutoff 6 Å, soft kNN 30, neighbour list included (on the CPU, as
the ASE calculator builds it). Prints a table and writes bench/results/gpu_speed.json. Part of
``bash bench/gpu_check.sh``; needs a CUDA build of torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from bench_result import write_result
from water_boxes import water_box

from allscaip.config import model_config
from allscaip.data import atoms_to_batch
from allscaip.model import AllScAIP, compute_properties

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="192,768,3072,12288")
    ap.add_argument("--size", default="256/4/4", help="hidden/layers/heads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_speed.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA GPU: this benchmark needs one (and a CUDA build of torch)")
    hidden, layers, heads = (int(x) for x in args.size.split("/"))
    torch.manual_seed(0)
    cfg = model_config(elements=[1, 8], hidden=hidden, layers=layers, heads=heads, cutoff=6.0, max_neighbors=30)
    model = AllScAIP(cfg).float().eval().to("cuda")
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, model {args.size}, float32")
    print("| atoms | s per call | atom-steps/s | peak GPU memory |")
    print("|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        atoms = water_box(max(1, n // 3))
        try:
            torch.cuda.reset_peak_memory_stats()
            compute_properties(model, atoms_to_batch([atoms], dtype=torch.float32).to("cuda"))
            torch.cuda.synchronize()
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                compute_properties(model, atoms_to_batch([atoms], dtype=torch.float32).to("cuda"))
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            seconds = sorted(times)[len(times) // 2]
            row = {"atoms": len(atoms), "seconds": seconds, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
            print(
                f"| {len(atoms)} | {seconds:.4f} | {len(atoms) / seconds:.0f} | {row['peak_gb']:.2f} GB |", flush=True
            )
        except torch.cuda.OutOfMemoryError:
            row = {"atoms": len(atoms), "error": "out of GPU memory"}
            print(f"| {len(atoms)} | out of memory | | |", flush=True)
        rows.append(row)
    result = {
        "command": "python bench/gpu_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "model": args.size,
        "rows": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
