"""Energy+forces time and peak memory of the eager model vs system size; training throughput.

Each configuration runs in a fresh subprocess so that its peak resident memory is its own.
Prints a table and writes bench/results/model.json.

    python bench/model_bench.py [--sizes 96,384,768,1536,3072] [--presets tiny,sm] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from water_boxes import water_box

from allscaip.config import model_config
from allscaip.data import atoms_to_batch
from allscaip.model import AllScAIP, compute_properties

HERE = Path(__file__).resolve().parent
PRESETS = {
    "tiny": dict(hidden=64, layers=2, heads=4, cutoff=6.0, max_neighbors=30),
    "fairchem-size": dict(hidden=256, layers=4, heads=4, cutoff=6.0, max_neighbors=30),
    "fairchem-size-nolegendre": dict(hidden=256, layers=4, heads=4, cutoff=6.0, max_neighbors=30, legendre=False),
    "sm": dict(hidden=512, layers=6, heads=8, cutoff=6.0, max_neighbors=30, legendre=False),
}


def run_one(preset: str, n_atoms: int, repeats: int, dtype: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AllScAIP(model_config(elements=[1, 8], **PRESETS[preset])).to(getattr(torch, dtype)).eval()
    atoms = water_box(max(1, n_atoms // 3))
    batch = atoms_to_batch([atoms], dtype=getattr(torch, dtype))
    compute_properties(model, batch)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        compute_properties(model, batch)
        times.append(time.perf_counter() - t)
    return {
        "preset": preset,
        "atoms": len(atoms),
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "seconds": min(times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def train_throughput(preset: str, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = dict(PRESETS[preset])
    cfg["cutoff"] = 5.0
    model = AllScAIP(model_config(elements=[1, 8], **cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frames = [water_box(32, seed=s) for s in range(4)]  # 4 x 96 atoms = 384 atoms per batch
    batch = atoms_to_batch(frames, dtype=torch.float32)
    batch.forces = torch.zeros_like(batch.positions)
    t = None
    for step in range(steps + 1):
        if step == 1:
            t = time.perf_counter()
        # as the trainer: the force loss needs a double backward, which only the math kernel has
        with sdpa_kernel(SDPBackend.MATH):
            out = compute_properties(model, batch, training=True)
        loss = out["energy"].pow(2).mean() + out["forces"].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t
    return {"preset": preset, "structures_per_s": steps * len(frames) / dt, "atoms_per_batch": 384, "cutoff": 5.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="96,384,768,1536,3072")
    ap.add_argument("--presets", default="tiny,fairchem-size,sm")
    ap.add_argument("--max-atoms", default="", help="per-preset size limit, e.g. sm=768 (larger sizes skipped)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "model.json"))
    args = ap.parse_args()
    if args.one:
        kind, preset, n = args.one.split(":")
        res = (
            run_one(preset, int(n), args.repeats, args.dtype, args.threads)
            if kind == "ef"
            else train_throughput(preset, args.train_steps, args.threads)
        )
        print("RESULT " + json.dumps(res))
        return
    rows, train = [], []
    limits = {k: int(v) for k, v in (item.split("=") for item in args.max_atoms.split(",") if item)}
    for preset in args.presets.split(","):
        for n in [int(s) for s in args.sizes.split(",")]:
            if n > limits.get(preset, n):
                continue
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"ef:{preset}:{n}",
                "--repeats",
                str(args.repeats),
                "--dtype",
                args.dtype,
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if not line:
                print(f"{preset} {n}: failed\n{out.stderr[-2000:]}")
                rows.append({"preset": preset, "atoms": n, "error": out.stderr[-300:]})
                continue
            r = json.loads(line[0][7:])
            rows.append(r)
            print(
                f"{r['preset']:>14} {r['atoms']:>6} atoms  {r['seconds']:8.3f} s  peak RSS {r['peak_rss_gb']:6.2f} GB  ({r['params'] / 1e6:.2f} M params)",
                flush=True,
            )
        cmd = [
            sys.executable,
            __file__,
            "--one",
            f"train:{preset}:0",
            "--threads",
            str(args.threads),
            "--train-steps",
            str(args.train_steps),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if line:
            r = json.loads(line[0][7:])
            train.append(r)
            print(
                f"{preset:>14} training: {r['structures_per_s']:.2f} structures/s (96-atom water, 4 per batch, cutoff 5)",
                flush=True,
            )
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "dtype": args.dtype,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "energy_forces": rows, "training": train}, indent=1))


if __name__ == "__main__":
    main()
