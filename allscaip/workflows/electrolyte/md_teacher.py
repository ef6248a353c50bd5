"""The teacher's side of the electrolyte MD: the same protocol as ``examples/electrolyte/in.nacl`` in
OpenMM with the teacher's force field (:func:`.teacher.electrolyte.create_solution_system`).

Same start frame (no minimisation), velocities at T, Langevin at T with a 1/ps friction (OpenMM's
LangevinMiddle against LAMMPS's GJF-vhalf Langevin of the same damping), 0.5 fs, the same
equilibration and production lengths and trajectory interval, all through the teacher sampler's
:func:`.teacher.sampling.run_nvt` (``minimise=False, hot_start=False``). The MD uses the sampler's
Ewald tolerance (:data:`.teacher.system.MD_EWALD_TOLERANCE`). The trajectory is a DCD that mdtraj
reads with the same PDB topology as the model's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

import numpy as np
import openmm.app as app
from ase import Atoms

from allscaip.units import ANGSTROM_PER_NM
from allscaip.workflows.teacher import sampling
from allscaip.workflows.teacher.electrolyte import composition, create_solution_system, solution_topology
from allscaip.workflows.teacher.system import MD_EWALD_TOLERANCE


def run_md(
    atoms: Atoms,
    workdir: Path,
    steps: Dict[str, int],
    temperature_K: float,
    seed: int,
    timestep_fs: float,
    threads: int = 1,
) -> Dict:
    """``steps``: eq_steps, nvt_steps, dump_every (as in.nacl's); writes ``workdir/teacher.dcd``."""
    n_w, n_na, n_cl = composition(atoms.get_chemical_symbols())
    box_nm = np.asarray(atoms.cell) / ANGSTROM_PER_NM
    top = solution_topology(n_w, n_na, n_cl, float(box_nm[0, 0]))
    system = create_solution_system(top, periodic=True, ewald_tolerance=MD_EWALD_TOLERANCE)
    n_frames = steps["nvt_steps"] // steps["dump_every"]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "teacher.dcd"
    old_threads, sampling.CPU_THREADS = sampling.CPU_THREADS, threads
    temps = []
    t0 = time.perf_counter()
    try:
        frames = sampling.run_nvt(
            system,
            atoms.positions / ANGSTROM_PER_NM,
            box_nm,
            temperature_K,
            n_frames,
            seed,
            equilibration_ps=steps["eq_steps"] * timestep_fs * 1e-3,
            stride_fs=steps["dump_every"] * timestep_fs,
            timestep_fs=timestep_fs,
            minimise=False,
            hot_start=False,
        )
        with open(path, "wb") as fh:
            dcd = app.DCDFile(fh, top, timestep_fs * 1e-3, steps["dump_every"], steps["dump_every"])
            for pos_nm, temp in frames:
                dcd.writeModel(pos_nm, periodicBoxVectors=box_nm)
                temps.append(temp)
    finally:
        sampling.CPU_THREADS = old_threads
    wall = time.perf_counter() - t0
    return {
        "engine": "openmm",
        "wall_s": wall,
        "steps_per_s": (steps["eq_steps"] + steps["nvt_steps"]) / wall,
        "trajectory": str(path),
        "n_atoms": len(atoms),
        "nvt_temperature_K": float(np.mean(temps)),
    }
