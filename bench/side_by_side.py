"""This project against fairchem's AllScAIP at equal sizes, in one run: time, memory and their ratios.

For each model size and atom count, three fresh subprocesses run one after the other on the same
water box (bench/water_boxes.py, seed 0), so every ratio comes from one machine state:

- ``allscaip``: the eager model (random weights, float32, frozen as the calculator freezes them:
  :func:`allscaip.model.frozen`; malloc set as the calculator sets it: :mod:`allscaip.heap`), one
  energy + forces + stress call per step, neighbour list included, positions displaced by 0.01 Å
  between steps;
- ``allscaip_recompute``: the same with ``recompute = "layers"`` (each block's activations are
  recomputed in the force backward, activation checkpointing);
- ``allscaip_bf16`` and ``allscaip_bf16_recompute``: the same two with ``block_precision = "bfloat16"``
  (the blocks' matrix products in bfloat16; its force error is measured by bench/floor.py);
- ``..._compiled``: with ``attention_kernel = "compiled"`` (the neighbour attention's norms, logits,
  softmax and values through Inductor; compiled in the warm-up step, whose time is not counted);
- ``--variants`` picks some of these columns (default: all).
- ``fairchem``: fairchem-core's ``FAIRChemCalculator`` on a random-weight AllScAIP checkpoint
  (``bench/fairchem_allscaip.py``, run in the fairchem environment), energy + forces per step,
  sincx mask off (the published "md" switches; our model has no encoding either).
- ``--allocator glibc-keep`` runs every subprocess (ours and fairchem alike) with glibc told to
  keep freed memory (``ALLOCATOR_KEEP``). With glibc's defaults, every tensor above its mmap
  threshold (at most 32 MiB) goes back to the kernel when freed and is page-faulted in again by
  the next call: at 768 atoms fairchem spent 58 of 136 CPU-seconds in the kernel on this
  machine, and took half the time with the setting (docs/benchmarks.md). Each subprocess's user
  and kernel CPU seconds are recorded (``cpu_user_s``, ``cpu_sys_s``, imports and warm-up
  included).

Sizes are ``hidden/layers/heads``, cutoff 6 Å, soft kNN 30 (fairchem ``knn_k``), as in issue 23.
Time is the median of ``--repeats`` steps after a warm-up; memory is each subprocess's peak
resident set (GiB), imports included. Prints a markdown table and writes JSON.

    bash bench/setup_fairchem_venv.sh                      # .fcvenv (fairchem-core 2.24, torch 2.13 CPU)
    python bench/side_by_side.py --sizes 256/4/4 --atoms 192,384,768 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_result import run_header, write_result

HERE = Path(__file__).resolve().parent
CUTOFF_A = 6.0
KNN = 30
DISPLACEMENT_A = 0.01  # per-step random displacement, as bench/fairchem_allscaip.py
ALLOCATOR_KEEP = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),  # no tensor below 4 GiB gets its own mapping...
    "MALLOC_TRIM_THRESHOLD_": str(2**36),  # ...and the heap's free top is never handed back
    "MALLOC_TOP_PAD_": str(2**30),  # grow the heap a GiB at a time
}
"""glibc settings of ``--allocator glibc-keep`` (see the module docstring)."""


VARIANTS = {
    "allscaip": (False, "float32", "eager"),
    "allscaip_recompute": (True, "float32", "eager"),
    "allscaip_bf16": (False, "bfloat16", "eager"),
    "allscaip_bf16_recompute": (True, "bfloat16", "eager"),
    "allscaip_compiled": (False, "float32", "compiled"),
    "allscaip_bf16_compiled": (False, "bfloat16", "compiled"),
    "allscaip_compiled_recompute": (True, "float32", "compiled"),
    "allscaip_bf16_compiled_recompute": (True, "bfloat16", "compiled"),
}
"""This project's columns: (recompute, block_precision, attention_kernel)."""


def ours_worker(hidden: int, layers: int, heads: int, n_atoms: int, repeats: int, variant: str) -> dict:
    """One configuration of this project's eager model in this process (see the module docstring)."""
    import torch
    from water_boxes import water_box

    from allscaip.config import model_config
    from allscaip.data import atoms_to_batch
    from allscaip.heap import keep_heap_resident
    from allscaip.model import AllScAIP, compute_properties, frozen

    keep_heap_resident()  # as the calculator and the LAMMPS plugin do (unless MALLOC_* are set)

    torch.manual_seed(0)
    cfg = model_config(elements=[1, 8], hidden=hidden, layers=layers, heads=heads, cutoff=CUTOFF_A, max_neighbors=KNN)
    model = frozen(AllScAIP(cfg).float())  # as AllScAIPCalculator loads a checkpoint
    recompute, precision, kernel = VARIANTS[variant]
    model.recompute = "layers" if recompute else "none"
    model.block_precision = precision
    model.attention_kernel = kernel
    atoms = water_box(max(1, n_atoms // 3), seed=0)
    base = atoms.positions.copy()
    rng = np.random.default_rng(1)

    def step() -> float:
        atoms.positions = base + rng.normal(0.0, DISPLACEMENT_A, base.shape)
        t = time.perf_counter()
        out = compute_properties(model, atoms_to_batch([atoms], dtype=torch.float32), stress=True)
        seconds = time.perf_counter() - t
        if not torch.isfinite(out["forces"]).all():
            raise FloatingPointError("non-finite forces")
        return seconds

    step()
    times = [step() for _ in range(repeats)]
    return {
        "atoms": len(atoms),
        "seconds_per_call": float(np.median(times)),
        "times_s": times,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params": sum(p.numel() for p in model.parameters()),
        "status": "ok",
    }


def run_ours(args, hidden: int, layers: int, heads: int, n_atoms: int, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--ours-worker", f"{hidden}/{layers}/{heads}", str(n_atoms)]
    cmd += ["--repeats", str(args.repeats), "--variant", variant]
    return _run(cmd, args.threads, args.timeout, args.allocator)


def run_fairchem(args, hidden: int, layers: int, heads: int, n_atoms: int) -> dict:
    cmd = [str(args.fairchem_python), str(HERE / "fairchem_allscaip.py"), "--worker-size", str(n_atoms)]
    cmd += ["--sizes", str(n_atoms), "--hidden", str(hidden), "--layers", str(layers), "--heads", str(heads)]
    cmd += ["--cutoff", str(CUTOFF_A), "--max-neighbors", str(KNN), "--no-sincx", "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads), "--displacement", str(DISPLACEMENT_A), "--mem-limit-gb", "0"]
    return _run(cmd, args.threads, args.timeout, args.allocator)


def _run(cmd: list, threads: int, timeout: float, allocator: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for key in ALLOCATOR_KEEP:
        env.pop(key, None)
    if allocator == "glibc-keep":
        env.update(ALLOCATOR_KEEP)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"killed after {timeout:.0f} s"}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"status": "error", "note": f"exit code {proc.returncode}", "stderr_tail": proc.stderr[-1500:]}
    return {
        **json.loads(lines[-1][len("RESULT ") :]),
        "cpu_user_s": after.ru_utime - before.ru_utime,
        "cpu_sys_s": after.ru_stime - before.ru_stime,
    }


def installed_packages(python: Path) -> dict:
    """Every distribution installed for interpreter ``python`` and its version: the reference's
    speed moved by 30 % between two environments built by the same set-up script on one day
    (docs/benchmarks.md), so each result records both environments in full."""
    code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return dict(sorted(json.loads(proc.stdout).items())) if proc.returncode == 0 else {"error": proc.stderr[-300:]}


def ratio(a: dict, b: dict, key: str):
    if a.get("status") == "ok" and b.get("status") == "ok":
        return a[key] / b[key]
    return None


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256/4/4", help="comma-separated hidden/layers/heads")
    ap.add_argument("--atoms", default="192,384,768")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    ap.add_argument("--fairchem-python", type=Path, default=HERE.parent / ".fcvenv" / "bin" / "python")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "side_by_side.json")
    ap.add_argument("--ours-worker", nargs=2, metavar=("SIZE", "ATOMS"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=list(VARIANTS), default="allscaip", help=argparse.SUPPRESS)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated columns of this project")
    ap.add_argument(
        "--allocator",
        choices=("glibc", "glibc-keep"),
        default="glibc",
        help="glibc's defaults, or glibc keeping freed memory for every subprocess (see above)",
    )
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.ours_worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        h, n_layers, n_heads = (int(x) for x in args.ours_worker[0].split("/"))
        row = ours_worker(h, n_layers, n_heads, int(args.ours_worker[1]), args.repeats, args.variant)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    if not args.fairchem_python.exists():
        raise SystemExit(
            f"no fairchem environment at {args.fairchem_python}: run `bash bench/setup_fairchem_venv.sh` "
            "or pass --fairchem-python"
        )
    rows = []
    print("| size | atoms | " + " | ".join(variants) + " | fairchem | speed-up | memory ratio |")
    print("|---|---|" + "---|" * len(variants) + "---|---|---|")
    for size in args.sizes.split(","):
        hidden, layers, heads = (int(x) for x in size.split("/"))
        for n in (int(a) for a in args.atoms.split(",")):
            row = {"size": size, "atoms": n, "load_1m_before": os.getloadavg()[0]}
            for variant in variants:
                row[variant] = run_ours(args, hidden, layers, heads, n, variant)
            fc = row["fairchem"] = run_fairchem(args, hidden, layers, heads, n)
            row["speedup"] = {v: ratio(fc, row[v], "seconds_per_call") for v in variants}
            row["memory_ratio"] = {v: ratio(row[v], fc, "peak_rss_gb") for v in variants}
            rows.append(row)

            def cell(r):
                if r.get("status") != "ok":
                    return r.get("status", "?")
                return f"{r['seconds_per_call']:.2f} s, {r['peak_rss_gb']:.2f} GiB"

            speed = " / ".join(fmt(row["speedup"][v], ".2f") + "×" for v in variants)
            memory = " / ".join(fmt(row["memory_ratio"][v], ".2f") for v in variants)
            cells = " | ".join(cell(row[v]) for v in variants)
            print(f"| {size} | {n} | {cells} | {cell(fc)} | {speed} | {memory} |", flush=True)
    result = {
        **run_header("bench/side_by_side.py", argv),
        "cutoff_A": CUTOFF_A,
        "knn": KNN,
        "dtype": "float32",
        "threads": args.threads,
        "repeats": args.repeats,
        "allocator": {"name": args.allocator, "env": ALLOCATOR_KEEP if args.allocator == "glibc-keep" else {}},
        "variants": {v: dict(zip(("recompute", "block_precision", "attention_kernel"), VARIANTS[v])) for v in variants},
        "rows": rows,
        "packages": {
            "ours": installed_packages(Path(sys.executable)),
            "fairchem": installed_packages(args.fairchem_python),
        },
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
