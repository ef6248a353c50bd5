"""The model's side of the electrolyte MD: ``examples/electrolyte/in.nacl`` in LAMMPS on N MPI ranks,
and the 1-against-N-ranks single point.

* :func:`write_start` writes a frame as the LAMMPS data file (types 1-4 = O H Na Cl, as in.nacl's
  ``pair_coeff``) and as the PDB topology (the teacher's :func:`.electrolyte.solution_topology`)
  that mdtraj reads both engines' DCD trajectories with.
* :func:`export_model` exports a checkpoint with ``allscaip-export`` (TorchScript, the given dtype).
* :func:`run_md` runs in.nacl (``mpirun -np N lmp``, one thread per rank) and returns the NVT and
  NVE thermo tables and the NVE drift (:func:`.liquid.analysis.energy_drift_mev_atom_ps`).
* :func:`rank_check` runs one ``run 0`` single point on 1 and on N ranks (float64 export) and
  returns the largest relative differences of energy, forces and virial.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import ase.io
import numpy as np
import openmm.app as app
from ase import Atoms

from allscaip.engines.lammps import LammpsError, lmp_command, mpi_environment
from allscaip.engines.lammps_output import single_point, single_point_commands, thermo_blocks
from allscaip.units import ANGSTROM_PER_NM
from allscaip.workflows.liquid.analysis import energy_drift_mev_atom_ps
from allscaip.workflows.teacher.electrolyte import ELEMENTS, composition, solution_topology

IN_NACL = Path(__file__).resolve().parents[3] / "examples" / "electrolyte" / "in.nacl"
#: LAMMPS atom types 1..4 (in.nacl's ``pair_coeff * * model O H Na Cl``)
TYPE_ORDER = list(ELEMENTS)
TIMESTEP_FS = 0.5  # in.nacl's timestep
#: a real run (ps): equilibration, NVT production (20 ps: 200 frames at 100 fs, 4 ps per block of 5), NVE
DEFAULT_LENGTHS_PS = {"equilibration": 2.0, "nvt": 20.0, "nve": 2.0}
LOOP_TIME = re.compile(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps")


def write_start(atoms: Atoms, workdir: Path) -> Dict[str, Path]:
    """``nacl.data`` and ``nacl.pdb`` of ``atoms`` (waters, then Na, then Cl; a cubic box) in ``workdir``."""
    n_w, n_na, n_cl = composition(atoms.get_chemical_symbols())
    cell = np.asarray(atoms.cell)
    if not np.allclose(cell, np.diag(np.diag(cell))):
        raise ValueError(f"the start frame's cell must be orthorhombic, got {cell.tolist()}")
    workdir.mkdir(parents=True, exist_ok=True)
    data, pdb = workdir / "nacl.data", workdir / "nacl.pdb"
    ase.io.write(data, atoms, format="lammps-data", masses=True, specorder=TYPE_ORDER, atom_style="atomic")
    top = solution_topology(n_w, n_na, n_cl, None)
    top.setPeriodicBoxVectors(cell / ANGSTROM_PER_NM)
    with open(pdb, "w") as fh:
        app.PDBFile.writeFile(top, atoms.positions, fh)  # plain numbers: Å
    return {"data": data, "pdb": pdb}


def export_model(checkpoint: Path, out: Path, dtype: str) -> Path:
    """``allscaip-export CHECKPOINT -o OUT --dtype DTYPE`` (TorchScript); skipped when OUT is newer."""
    if out.is_file() and out.stat().st_mtime > Path(checkpoint).stat().st_mtime:
        return out
    cmd = [sys.executable, "-m", "allscaip_export.cli", str(checkpoint), "-o", str(out), "--dtype", dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"export of {checkpoint} failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out


def _run_lmp(args: list, workdir: Path, ranks: int, log_name: str) -> str:
    cmd = lmp_command(ranks) + args + ["-log", log_name, "-nocite"]
    proc = subprocess.run(cmd, cwd=workdir, env=mpi_environment(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        errors = [line for line in out.splitlines() if "ERROR" in line]
        raise LammpsError(
            f"lmp failed in {workdir} (exit {proc.returncode}): " + (" | ".join(errors) if errors else out[-3000:])
        )
    return (workdir / log_name).read_text()


def run_md(
    model: Path,
    start: Dict[str, Path],
    workdir: Path,
    ranks: int,
    steps: Dict[str, int],
    temperature_K: float,
    seed: int,
) -> Dict:
    """in.nacl on ``ranks`` ranks; ``steps``: eq_steps, nvt_steps, nve_steps, dump_every, thermo_every."""
    args = ["-in", str(IN_NACL), "-var", "model", str(Path(model).resolve()), "-var", "data", start["data"].name]
    args += ["-var", "temp", f"{temperature_K:g}", "-var", "seed", str(int(seed) % 900000000 + 1)]
    for k, v in steps.items():
        args += ["-var", k, str(int(v))]
    t0 = time.perf_counter()
    log = _run_lmp(args, workdir, ranks, "log.lammps")
    wall = time.perf_counter() - t0
    eq, nvt, nve = thermo_blocks(log)
    loops = [(float(t), int(n)) for t, n in LOOP_TIME.findall(log)]  # the runs' own time, start-up excluded
    n_atoms = len(ase.io.read(start["data"], format="lammps-data", atom_style="atomic"))
    total_steps = steps["eq_steps"] + steps["nvt_steps"] + steps["nve_steps"]
    return {
        "engine": "lammps",
        "ranks": ranks,
        "wall_s": wall,
        "steps_per_s": sum(n for _, n in loops) / sum(t for t, _ in loops),
        "wall_steps_per_s": total_steps / wall,
        "trajectory": str(workdir / "nvt.dcd"),
        # dump dcd also writes the production run's first step (the equilibrated start): the analysis skips it,
        # so that both engines' frames sit at the same times (dump_every, 2 dump_every, ... into production)
        "skip_frames": 1,
        "n_atoms": n_atoms,
        "nvt_temperature_K": float(np.mean(nvt["Temp"])),
        "nve": {
            "time_ps": (nve["Time"] - nve["Time"][0]).tolist(),
            "etotal_eV": nve["TotEng"].tolist(),
            "temperature_K": float(np.mean(nve["Temp"])),
            "drift_meV_atom_ps": energy_drift_mev_atom_ps(nve["Time"], nve["TotEng"], n_atoms),
        },
        "equilibration_final_temperature_K": float(eq["Temp"][-1]),
    }


def single_point_input(data: Path, model: Path) -> str:
    lines = [
        "units metal",
        "atom_style atomic",
        "atom_modify map array",
        "boundary p p p",
        "newton on",
        f"read_data {data}",
        "pair_style allscaip",
        f"pair_coeff * * {Path(model).resolve()} {' '.join(TYPE_ORDER)}",
        "neighbor 2.0 bin",
        *single_point_commands("metal", per_atom_virial=False),
    ]
    return "\n".join(lines) + "\n"


def rank_check(model64: Path, start: Dict[str, Path], workdir: Path, ranks: int) -> Dict:
    """Single point on 1 and ``ranks`` ranks: ``max |x_N - x_1| / max |x_1|`` for energy, forces, virial."""
    results = {}
    for n in (1, ranks):
        wd = workdir / f"np{n}"
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "in.sp").write_text(single_point_input(start["data"].resolve(), model64))
        results[n] = single_point(_run_lmp(["-in", "in.sp"], wd, n, "log.lammps"), wd)
    one, many = results[1], results[ranks]
    out = {"ranks": ranks, "dtype": "float64"}
    for key in ("energy", "forces", "virial"):
        a, b = np.asarray(one[key], float), np.asarray(many[key], float)
        out[f"{key}_rel_diff"] = float(np.abs(b - a).max() / max(np.abs(a).max(), 1e-300))
    return out
