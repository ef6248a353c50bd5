"""What glibc's heap trimming costs an MD step, and what allscaip/heap.py saves.

With glibc's default malloc settings the freed top of the heap is given back to the kernel
after every force call and faulted in again, zeroed, by the next one. The LAMMPS plugin and
the calculator raise the trim threshold (lammps_plugin/allscaip_heap.cpp, allscaip/heap.py);
``ALLSCAIP_MALLOC_TUNING=0`` restores glibc's defaults. For each water box this runs
``pair_style allscaip`` NVE on one rank with the tuning on and off, alternating ``--pairs``
times so that both see the same load, and reports seconds per step, minor page faults per
step and the kernel's share of the CPU time (all from ``getrusage`` of the child).

    python bench/heap_trim.py [--molecules 64,256] [--steps 20] [--pairs 2] [--model model.pt]

Prints a table and writes bench/results/heap_trim.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import tempfile
from pathlib import Path
from typing import Dict, List

import ase.io
import numpy as np
from lammps_md import default_model, lammps_input, run_lammps
from water_boxes import water_box

HERE = Path(__file__).resolve().parent

SETTINGS = {
    "tuned": {},
    # the plugin's setting before 2026-12-08 (mmap threshold 32 MiB), given through glibc's own
    # variables, which the plugin then leaves alone
    "tuned, 32 MiB mmap threshold": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
    "glibc default": {"ALLSCAIP_MALLOC_TUNING": "0"},
}


def measured_run(workdir: Path, script: str, steps: int, extra_env: Dict[str, str]) -> Dict[str, float]:
    """One LAMMPS run: s/step of its timed run, and per-step faults and system CPU share of the
    whole process (warm-up and start-up included; --steps large makes them small)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = run_lammps(workdir, script, 1, 1800.0, 1, extra_env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if t is None:
        raise SystemExit(f"LAMMPS failed in {workdir}")
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "s_per_step": t,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "system_cpu_fraction": sys_ / (user + sys_),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", default="64,256", help="water molecules per box")
    ap.add_argument("--steps", type=int, default=20, help="timed MD steps per run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=2, help="tuned/default runs per box, alternating")
    ap.add_argument(
        "--model", default=None, help="exported .pt or .pt2 (default: random weights, bundled architecture, float32)"
    )
    ap.add_argument("--out", default=str(HERE / "results" / "heap_trim.json"))
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    model = Path(args.model).resolve() if args.model else default_model(work / "model.pt", "float32", {})
    load_start = list(os.getloadavg())
    rows: List[dict] = []
    print(
        f"# model {model.name if args.model else 'random weights, examples/water/train.yaml architecture, float32'}, "
        f"1 rank, 1 thread, load average at start {load_start[0]:.2f}"
    )
    print(f"{'atoms':>6} {'malloc':>14} {'s/step':>9} {'faults/step':>12} {'kernel CPU':>10}")
    for nmol in [int(m) for m in args.molecules.split(",")]:
        d = work / f"m{nmol}"
        d.mkdir()
        ase.io.write(d / "water.data", water_box(nmol), format="lammps-data", specorder=["H", "O"], atom_style="atomic")
        script = lammps_input(d / "water.data", model, args.warmup, args.steps)
        runs: Dict[str, List[Dict[str, float]]] = {k: [] for k in SETTINGS}
        for _ in range(args.pairs):
            for label, env in SETTINGS.items():
                runs[label].append(measured_run(d, script, args.warmup + args.steps, env))
        for label, rs in runs.items():
            row = {
                "molecules": nmol,
                "atoms": 3 * nmol,
                "malloc": label,
                "runs": rs,
                "s_per_step_median": float(np.median([r["s_per_step"] for r in rs])),
                "faults_per_step": float(np.median([r["minor_faults"] for r in rs])) / (args.warmup + args.steps),
                "system_cpu_fraction": float(np.median([r["system_cpu_fraction"] for r in rs])),
            }
            rows.append(row)
            print(
                f"{3 * nmol:>6} {label:>14} {row['s_per_step_median']:>9.3f} {row['faults_per_step']:>12.0f} "
                f"{100 * row['system_cpu_fraction']:>9.1f}%"
            )
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "steps": args.steps,
        "warmup": args.warmup,
        "model": str(args.model or "random weights"),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
