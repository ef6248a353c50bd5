"""MD speed of `pair_style allscaip` in LAMMPS (1 and 2 MPI ranks) against the ASE calculator.

For water boxes from ~200 to ~6000 atoms and one exported model (by default a random-weight
model with the bundled water model's architecture, read from examples/water/train.yaml), it
measures

  lmp 1 rank   s per NVE step, `lmp` with one rank and all cores as torch threads
  lmp 2 ranks  s per NVE step, `mpirun -np 2 lmp` (domain decomposition, one thread per rank)
  ase          s per energy+forces call of AllScAIPCalculator on the same .pt (same threads as
               the 1-rank run; a small displacement before each call defeats the cache)

and prints atom-steps/s = atoms / (s per step). LAMMPS times are `Loop time` / steps of a
timed run after an untimed warm-up run (TorchScript's profiling executor optimises during the
first calls). Prints a table and writes bench/results/lammps_md.json.

    python bench/lammps_md.py [--molecules 64,256,683,1000,2000] [--steps 10] [--model model.pt]
        [--ranks 1,2] [--threads-per-rank N]

On a shared machine use --threads-per-rank 1: torch's OpenMP threads spin-wait, and more
threads than free cores makes every call many times slower (19 s instead of 0.2 s per step
for 192 atoms was seen with 2 threads on 2 busy cores).

Compare with fairchem's AllScAIP at the same size: bench/fairchem_allscaip.py (its own venv).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import ase.io
import numpy as np
import torch
import yaml
from water_boxes import water_box

from allscaip.calculator import AllScAIPCalculator
from allscaip.config import model_config
from allscaip.model import AllScAIP
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import export_torchscript

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = REPO / ".venv"


@functools.lru_cache(maxsize=None)
def _activated_env() -> Tuple[Tuple[str, str], ...]:
    """The environment `source .venv/bin/activate` makes (libmpi path, LAMMPS_PLUGIN_PATH)."""
    out = subprocess.run(
        ["bash", "-c", f"source '{VENV}/bin/activate' >/dev/null 2>&1; env -0"], capture_output=True, check=True
    ).stdout.decode()
    return tuple(tuple(kv.split("=", 1)) for kv in out.split("\0") if "=" in kv)  # type: ignore[misc]


def venv_env(threads: int) -> Dict[str, str]:
    """The activated venv's environment with ``OMP_NUM_THREADS=threads``."""
    env = dict(_activated_env())
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def default_model(path: Path, dtype: str, overrides: Dict[str, object]) -> Path:
    """Random-weight export with the bundled water model's architecture (plus ``overrides``)."""
    section = dict(yaml.safe_load((REPO / "examples" / "water" / "train.yaml").read_text())["model"])
    preset = section.pop("preset", None)
    section["elements"] = [1, 8]
    section.update(overrides)
    torch.manual_seed(0)
    model = AllScAIP(model_config(preset, **section)).to(getattr(torch, dtype)).eval()
    export_torchscript(model, path, build_metadata(model, dtype, "cpu", "torchscript"))
    return path


def lammps_input(data: Path, model: Path, warmup: int, steps: int) -> str:
    return (
        "\n".join(
            [
                "units metal",
                "atom_style atomic",
                "boundary p p p",
                "newton on",
                f"read_data {data}",
                "mass 1 1.008",
                "mass 2 15.999",
                "pair_style allscaip",
                f"pair_coeff * * {model} H O",
                "neighbor 1.0 bin",
                "neigh_modify every 1 delay 0 check yes",
                "velocity all create 300 4928459 loop geom mom yes",
                "timestep 0.0005",
                "fix md all nve",
                "thermo 1000",
                f"run {warmup}",
                f"run {steps}",
            ]
        )
        + "\n"
    )


def run_lammps(
    workdir: Path, script: str, ranks: int, timeout: float, threads: int, extra_env: Optional[Dict[str, str]] = None
) -> Optional[float]:
    """Seconds per step of the last `run`, or None if it failed / timed out."""
    (workdir / "in.lmp").write_text(script)
    cmd = [str(VENV / "bin" / "lmp"), "-in", "in.lmp", "-log", "log.lammps", "-nocite", "-screen", "none"]
    if ranks > 1:
        cmd = [str(VENV / "bin" / "mpirun"), "-np", str(ranks)] + cmd
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env={**venv_env(threads), **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", log)
    if proc.returncode != 0 or len(loops) < 2:
        sys.stderr.write(f"lmp failed in {workdir}:\n{(proc.stdout + proc.stderr + log)[-2000:]}\n")
        return None
    t, n = loops[-1]
    return float(t) / int(n)


def time_ase(model: Path, atoms, repeats: int, warmup: int, threads: int) -> float:
    torch.set_num_threads(threads)
    a = atoms.copy()
    a.calc = AllScAIPCalculator(model)
    rng = np.random.default_rng(0)
    base = a.positions.copy()
    times = []
    for k in range(warmup + repeats):
        a.positions = base + rng.normal(0.0, 0.01, base.shape)
        t = time.perf_counter()
        a.get_forces()
        if k >= warmup:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", default="64,256,683,1000,2000", help="water molecules per box (3 atoms each)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--steps", type=int, default=10, help="timed MD steps per LAMMPS run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed MD steps first")
    ap.add_argument("--ase-repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="exported .pt (default: random weights, bundled architecture)")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model config overrides for the default model, e.g. hidden=256 layers=4 heads=8",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="for the default model")
    ap.add_argument(
        "--max-seconds-per-run",
        type=float,
        default=600.0,
        help="stop a LAMMPS run after this long (larger boxes are then skipped)",
    )
    ap.add_argument(
        "--threads-per-rank",
        type=int,
        default=0,
        help="torch threads per LAMMPS rank and for the ASE calculator (0: cores / ranks)",
    )
    ap.add_argument("--skip-ase", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "lammps_md.json"))
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    model = Path(args.model).resolve() if args.model else default_model(work / "model.pt", args.dtype, overrides)
    ranks = [int(r) for r in args.ranks.split(",")]
    load_start = list(os.getloadavg())
    rows = []
    print(
        f"# model {model.name if args.model else 'random weights, examples/water/train.yaml architecture'} "
        f"({args.dtype if not args.model else 'as exported'}), {os.cpu_count()} cores, torch {torch.__version__}"
    )
    head = f"{'atoms':>6} " + " ".join(f"{'lmp ' + str(r) + 'r s/step':>15} {'atom-steps/s':>12}" for r in ranks)
    print(head + f" {'ase s/call':>11} {'atom-steps/s':>12}")
    skip = False
    for nmol in [int(m) for m in args.molecules.split(",")]:
        atoms = water_box(nmol)
        n = len(atoms)
        row: Dict[str, object] = {"atoms": n, "molecules": nmol}
        if skip:
            row["skipped"] = "a smaller box exceeded --max-seconds-per-run"
            rows.append(row)
            continue
        d = work / f"n{n}"
        d.mkdir()
        ase.io.write(d / "water.data", atoms, format="lammps-data", specorder=["H", "O"], atom_style="atomic")
        for r in ranks:
            threads = args.threads_per_rank or max(1, (os.cpu_count() or 1) // r)
            t = run_lammps(
                d, lammps_input(d / "water.data", model, args.warmup, args.steps), r, args.max_seconds_per_run, threads
            )
            row[f"lmp_{r}rank_s_per_step"] = t
            row[f"lmp_{r}rank_atom_steps_per_s"] = n / t if t else None
            if t is None:
                skip = True
        t_ase = (
            None
            if args.skip_ase
            else time_ase(model, atoms, args.ase_repeats, 1, args.threads_per_rank or (os.cpu_count() or 1))
        )
        row["ase_s_per_call"] = t_ase
        row["ase_atom_steps_per_s"] = n / t_ase if t_ase else None
        rows.append(row)

        def fmt(v, spec):
            return format(v, spec) if isinstance(v, float) else "-"

        print(
            f"{n:>6} "
            + " ".join(
                f"{fmt(row[f'lmp_{r}rank_s_per_step'], '15.4f')} {fmt(row[f'lmp_{r}rank_atom_steps_per_s'], '12.0f')}"
                for r in ranks
            )
            + f" {fmt(t_ase, '11.4f')} {fmt(n / t_ase if t_ase else None, '12.0f')}",
            flush=True,
        )

    result = {
        "benchmark": "lammps_md",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cores": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()),
        },
        "torch": torch.__version__,
        "model": str(model) if args.model else "random weights, examples/water/train.yaml architecture",
        "model_overrides": overrides,
        "dtype": args.dtype if not args.model else "as exported",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
