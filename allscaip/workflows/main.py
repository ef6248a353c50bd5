"""The main job: train on the bundled water data, export, run MD in LAMMPS and OpenMM,
report density.

    python -m allscaip.workflows.main [--out runs/main] [--epochs 8] [--frames 64] [--md-ps 0.25]

1. ``allscaip-train examples/water/train.yaml`` for a few epochs on a subset of the bundled
   data, 192-atom batches (shows the trainer and its falling validation errors; a few minutes);
2. ``allscaip-export`` of the shipped water model ``examples/water/model.ckpt`` (trained with
   the same config for longer; see examples/water/README.md) to TorchScript;
3. NPT MD of a water box with ``pair_style allscaip`` in LAMMPS (``lmp``, 2 MPI ranks);
4. NPT MD of the same box in OpenMM through ``openmm.PythonForce``;
5. a summary table: validation errors, MD wall times and mean densities.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from ase.io import read, write

from allscaip.engines.lammps import LammpsError, lmp_command, mpi_environment

REPO = Path(__file__).resolve().parents[2]
# small batches in the demonstration (the largest frame has 192 atoms): ~30 optimizer steps per
# epoch on 64 frames, so that the force error falls visibly within a couple of minutes
DEMO_MAX_ATOMS = 192


def _run(cmd: List[str], log: Path, env: Dict[str, str] | None = None, cwd: Path = REPO) -> float:
    """Run a step, teeing its output to ``log``; raise with the log's tail on failure."""
    print(f"  $ {' '.join(str(c) for c in cmd)}", flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if line.strip() and not line.startswith(" ") and len(line) < 200:
                print("    " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text().splitlines()[-25:]
        raise SystemExit(
            f"step failed (exit {rc}): {' '.join(map(str, cmd))}\n" + "\n".join(tail) + f"\n(full log: {log})"
        )
    return time.perf_counter() - t


def train(out: Path, epochs: int, frames: int) -> Dict[str, float]:
    """A short demonstration training on a subset of the bundled data (the shipped model
    was trained with the full set and the same config)."""
    run_dir = out / "train"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    data = REPO / "examples" / "water" / "data"
    subset = out / "subset"
    subset.mkdir(exist_ok=True)
    write(subset / "train.extxyz", read(data / "train.extxyz", index=f"::{max(1, 647 // frames)}")[:frames])
    write(subset / "val.extxyz", read(data / "val.extxyz", index="::4"))
    _run(
        [
            sys.executable,
            "-m",
            "allscaip.train.cli",
            "examples/water/train.yaml",
            f"run.out_dir={run_dir}",
            f"optim.epochs={epochs}",
            f"data.train=[{subset / 'train.extxyz'}]",
            f"data.val=[{subset / 'val.extxyz'}]",
            "run.checkpoint_every_steps=0",
            f"data.max_atoms={DEMO_MAX_ATOMS}",
            "run.threads=1",
        ],
        out / "train.log",
    )
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)}


def export(out: Path, checkpoint: Path) -> Path:
    model = out / "water.pt"
    _run([sys.executable, "-m", "allscaip_export.cli", str(checkpoint), "-o", str(model)], out / "export.log")
    return model


def lammps_md(out: Path, model: Path, md_ps: float, ranks: int) -> Dict[str, float]:
    lmp_dir = out / "lammps"
    lmp_dir.mkdir(exist_ok=True)
    steps = int(round(md_ps * 1000 / 0.5))
    try:  # lmp, the mpirun beside it, the plugin directory and MPICH's libraries, also when the venv was not activated
        cmd = lmp_command(ranks) + ["-in", "in.water", "-var", "model", model.resolve(), "-var", "steps", str(steps)]
        env = mpi_environment()
    except LammpsError as err:
        raise SystemExit(f"LAMMPS step: {err}") from err
    cmd += ["-log", (lmp_dir / "log.lammps").resolve()]
    wall = _run(cmd, out / "lammps.log", env=env, cwd=REPO / "examples/lammps/water")
    rho = _lammps_density(lmp_dir / "log.lammps")
    return {"wall_s": wall, "density_g_cm3": rho, "steps": steps}


def _lammps_density(log: Path) -> float:
    """Mean of the thermo column ``Density`` over the second half of the run."""
    header, values = None, []
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "Step":
            header = parts
            continue
        if header and len(parts) == len(header) and parts[0].isdigit():
            values.append(float(parts[header.index("Density")]))
        elif header and parts[:1] == ["Loop"]:
            header = None
    if not values:
        raise SystemExit(f"no Density column found in {log}")
    return sum(values[len(values) // 2 :]) / len(values[len(values) // 2 :])


def openmm_md(out: Path, model: Path, md_ps: float, n_molecules: int) -> Dict[str, float]:
    # OpenMM is an optional dependency (the engines extra), as is the teacher that builds the start box
    from openmm import app, unit

    from allscaip.workflows.teacher.system import build_water_system

    omm_dir = out / "openmm"
    omm_dir.mkdir(exist_ok=True)
    _, topology, positions, box = build_water_system(n_molecules, 1.0, seed=1)
    topology.setPeriodicBoxVectors(box)
    pdb = omm_dir / "start.pdb"
    with open(pdb, "w") as f:  # positions are bare nm values: give them their unit, or PDB takes them as Å
        app.PDBFile.writeFile(topology, unit.Quantity(positions, unit.nanometer), f)
    steps = int(round(md_ps * 1000 / 0.5))
    wall = _run(
        [
            sys.executable,
            REPO / "examples/openmm/water_npt.py",
            "--model",
            model,
            "--pdb",
            pdb,
            "--steps",
            str(steps),
            "--minimize",
            "20",
            "--threads",
            "1",
            "--out",
            omm_dir,
        ],
        out / "openmm.log",
    )
    with open(omm_dir / "log.csv") as f:
        rows = list(csv.reader(f))
    col = [i for i, name in enumerate(rows[0]) if name.startswith("Density")][0]
    values = [float(r[col]) for r in rows[1:]]
    half = values[len(values) // 2 :]
    return {"wall_s": wall, "density_g_cm3": sum(half) / len(half), "steps": steps}


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "main")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the demonstration training (default 8)")
    ap.add_argument("--frames", type=int, default=64, help="training frames of the demonstration (default 64)")
    ap.add_argument("--md-ps", type=float, default=0.25, help="picoseconds of NPT MD per engine (default 0.25)")
    ap.add_argument("--ranks", type=int, default=2, help="MPI ranks for LAMMPS (default 2)")
    ap.add_argument(
        "--model",
        type=Path,
        default=REPO / "examples" / "water" / "model.ckpt",
        help="checkpoint used for MD (default: the shipped water model)",
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(flush=True)
    print(
        f"[1/4] training {args.epochs} epochs on {args.frames} frames of examples/water/data (bundled flexible-water teacher data)"
    )
    metrics = train(args.out, args.epochs, args.frames)
    checkpoint = args.model if args.model.exists() else args.out / "train" / "best.ckpt"
    print(f"[2/4] exporting {checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint}")
    model = export(args.out, checkpoint)
    print(f"[3/4] LAMMPS NPT, {args.md_ps} ps, {args.ranks} MPI ranks")
    lmp = lammps_md(args.out, model, args.md_ps, args.ranks)
    print(f"[4/4] OpenMM NPT, {args.md_ps} ps")
    omm = openmm_md(args.out, model, args.md_ps, 64)
    summary = {
        "training_last_epoch": metrics,
        "lammps": lmp,
        "openmm": omm,
        "model": str(checkpoint),
        "total_wall_s": time.perf_counter() - t0,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n=== allscaip main job ===")
    print(
        f"training ({args.epochs} epochs): val energy MAE {metrics.get('val_energy_mae_meV_atom', float('nan')):.2f} meV/atom, "
        f"force MAE {metrics.get('val_force_mae_meV_A', float('nan')):.1f} meV/Å, force RMSE {metrics.get('val_force_rmse_meV_A', float('nan')):.1f} meV/Å"
    )
    print(f"MD model: {checkpoint.name} exported to {model}")
    print(f"{'engine':<8} {'steps':>6} {'wall (s)':>9} {'density (g/cm³)':>16}")
    for name, r in (("LAMMPS", lmp), ("OpenMM", omm)):
        print(f"{name:<8} {r['steps']:>6} {r['wall_s']:>9.1f} {r['density_g_cm3']:>16.4f}")
    print(
        f"(short runs from a 1.0 g/cm³ start: a demonstration, not a converged density; "
        f"see `allscaip liquid` and docs/validation.md)\ntotal {summary['total_wall_s']:.0f} s; summary in {args.out / 'summary.json'}"
    )


if __name__ == "__main__":
    main()
