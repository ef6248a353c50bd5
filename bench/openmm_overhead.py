"""OpenMM step time with the allscaip PythonForce against a bare model call.

For water boxes of increasing size and a tiny random model (hidden 64, 2 layers, cutoff 5 Å, kNN 24;
times per energy+forces evaluation:

  model      the exported TorchScript module alone (neighbour list precomputed)
  nl         the vesin neighbour list alone
  model+nl   vesin neighbour list + module (what the PythonForce callback must do anyway)
  ase        AllScAIPCalculator.get_forces on an ASE Atoms (for comparison)
  step CPU   one VerletIntegrator step of an OpenMM System holding only the PythonForce,
             CPU platform (one force evaluation per step)
  step Ref   the same on the Reference platform
  glue       one step of the same System whose PythonForce callback only reads positions and
             box from the State and returns zero forces (the OpenMM <-> Python transfer)

overhead = step CPU - model+nl (the OpenMM <-> Python <-> torch glue; at these sizes
smaller than the run-to-run noise of the model call, hence the separate glue column). The table shows
process CPU time per call (robust on a shared machine, exact for one torch thread); wall
times are in the JSON too. Prints a table and writes bench/results/openmm_overhead.json.

    python bench/openmm_overhead.py [--sizes 192,699,1500,3000] [--threads 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import unit
from water_boxes import water_box

from allscaip.calculator import AllScAIPCalculator
from allscaip.config import model_config
from allscaip.model import AllScAIP
from allscaip.neighbors import system_neighbor_pairs
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import export_torchscript
from allscaip_openmm.forces import load_model, make_python_force

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int, warmup: int) -> dict:
    """Median wall time and median process CPU time (all threads) per call, in seconds.

    On a shared machine wall time depends on the other jobs; with one torch thread the CPU
    time is what the call costs on an idle core, so the table reports CPU time.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall": float(np.median(wall)), "cpu": float(np.median(cpu))}


def _glue_only(state):
    """PythonForce callback that only moves data: positions and box out, zero forces in."""
    pos = np.asarray(state.getPositions(asNumpy=True)._value, dtype=np.float64)
    np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value, dtype=np.float64)
    return 0.0, np.zeros_like(pos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="192,699,1500,3000", help="approximate atom counts (water: multiples of 3)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: on a shared 2-core machine more threads only contend)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="untimed calls first (TorchScript's profiling executor optimises during the first calls)",
    )
    ap.add_argument("--out", default=str(HERE / "results" / "openmm_overhead.json"))
    args = ap.parse_args()

    load_start = list(os.getloadavg())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = dict(
        elements=[1, 8], hidden=64, layers=2, heads=4, cutoff=5.0, max_neighbors=24
    )  # bundled water architecture
    model = AllScAIP(model_config(**cfg)).to(getattr(torch, args.dtype)).eval()
    tmp = tempfile.TemporaryDirectory()
    model_path = Path(tmp.name) / "tiny.pt"
    export_torchscript(model, model_path, build_metadata(model, args.dtype, "cpu", "torchscript"))
    calc = AllScAIPCalculator(model_path)
    # one module instance for every path (the PythonForce gets it from load_model's cache), so
    # all paths run the same warmed-up TorchScript
    loaded = load_model(model_path)
    calc._module = loaded.module
    module, dt = loaded.module, loaded.dtype

    rows = []
    header = (
        f"{'atoms':>6} {'edges':>7} {'model ms':>9} {'nl ms':>6} {'model+nl ms':>12} {'ase ms':>8} "
        f"{'step CPU ms':>12} {'step Ref ms':>12} {'glue ms':>8} {'overhead ms':>12} {'overhead %':>10}"
    )
    print(
        f"# torch {torch.__version__}, openmm {openmm.__version__}, threads {args.threads}, dtype {args.dtype}; "
        "process CPU time per call (median)"
    )
    print(header)
    for n_target in [int(s) for s in args.sizes.split(",")]:
        atoms = water_box(max(1, round(n_target / 3)))
        n = len(atoms)
        pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
        i, j, s = system_neighbor_pairs(pos, cell, pbc, calc.cutoff)
        inputs = (
            torch.tensor(pos, dtype=dt),
            torch.tensor(atoms.numbers),
            torch.tensor(cell, dtype=dt),
            torch.tensor(pbc),
            torch.tensor(np.stack([i, j])),
            torch.tensor(s, dtype=dt),
            torch.tensor(0),
            torch.tensor(1),
        )
        t_model = timed(lambda: module(*inputs), args.repeats, args.warmup)

        def model_nl():
            ii, jj, ss = system_neighbor_pairs(pos, cell, pbc, calc.cutoff)
            module(
                torch.from_numpy(pos).to(dt),
                inputs[1],
                torch.from_numpy(cell).to(dt),
                inputs[3],
                torch.from_numpy(np.stack([ii, jj])),
                torch.from_numpy(ss).to(dt),
                inputs[6],
                inputs[7],
            )

        t_nl = timed(lambda: system_neighbor_pairs(pos, cell, pbc, calc.cutoff), args.repeats, 1)
        t_model_nl = timed(model_nl, args.repeats, 1)
        a = atoms.copy()
        a.calc = calc

        def ase_call():
            a.positions[0, 0] += 1e-6  # invalidate the cache
            a.get_forces()

        t_ase = timed(ase_call, args.repeats, 1)

        step = {}
        for plat in ("CPU", "Reference", "glue"):
            system = openmm.System()
            for z in atoms.numbers:
                system.addParticle(1.008 if z == 1 else 15.999)
            box = [openmm.Vec3(*(0.1 * v)) for v in cell]
            system.setDefaultPeriodicBoxVectors(*box)
            if plat == "glue":
                force = openmm.PythonForce(_glue_only)
                force.setUsesPeriodicBoundaryConditions(True)
            else:
                force = make_python_force(model_path, atoms.numbers, True)
            system.addForce(force)
            integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
            platform_name = "CPU" if plat == "glue" else plat
            ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform_name))
            ctx.setPositions(pos * 0.1)
            ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
            step[plat] = timed(lambda integ=integrator: integ.step(1), 50 if plat == "glue" else args.repeats, 1)
            del ctx, integrator
        overhead = step["CPU"]["cpu"] - t_model_nl["cpu"]
        row = {
            "atoms": n,
            "edges": int(len(i)),
            "model_s": t_model,
            "model_nl_s": t_model_nl,
            "ase_calculator_s": t_ase,
            "openmm_step_cpu_platform_s": step["CPU"],
            "openmm_step_reference_platform_s": step["Reference"],
            "neighbor_list_s": t_nl,
            "glue_step_s": step["glue"],
            "overhead_cpu_s": overhead,
            "overhead_fraction": overhead / t_model_nl["cpu"],
        }
        rows.append(row)
        print(
            f"{n:>6} {len(i):>7} {t_model['cpu'] * 1e3:>9.1f} {t_nl['cpu'] * 1e3:>6.2f} {t_model_nl['cpu'] * 1e3:>12.1f} "
            f"{t_ase['cpu'] * 1e3:>8.1f} {step['CPU']['cpu'] * 1e3:>12.1f} {step['Reference']['cpu'] * 1e3:>12.1f} "
            f"{step['glue']['cpu'] * 1e3:>8.3f} {overhead * 1e3:>12.1f} {100 * overhead / t_model_nl['cpu']:>9.1f}%",
            flush=True,
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()),
            "gpu": None,
        },
        "versions": {"torch": torch.__version__, "openmm": openmm.__version__, "python": platform.python_version()},
        "model": dict(cfg, dtype=args.dtype, weights="random"),
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timing": "median per call; 'cpu' = process CPU time (all threads), 'wall' = wall time",
        "command": "python " + " ".join(sys.argv),
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
