"""One active-learning round for the water model: sample the student's own liquid, label it
with the teacher.

A model trained on the teacher's trajectories can still drift, in its own MD, into
configurations where its energy is too low (the Boltzmann weight rewards every negative
error), and the liquid density follows (docs/validation.md). This module runs the student
(an exported ``.pt``/``.pt2``, OpenMM, hydrogen mass repartitioning) in NPT or at a fixed
density, takes frames along the way, labels each with the teacher's energy, forces and stress
(double precision) and reports the student-minus-teacher errors on exactly those frames::

    python -m allscaip.workflows.teacher.active --model water_f32.pt2 --start liquid/prod_002.xml \\
        --ensemble npt --ps 15 --out al_npt.extxyz

The frames append to a training set as they are (``config_type='student_md'``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import openmm
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from openmm import unit
from tqdm import tqdm

from allscaip.calculator import AllScAIPCalculator
from allscaip.units import ANGSTROM_PER_NM, EV_TO_KJ_PER_MOL, mass_density_g_cm3
from allscaip.workflows.liquid.build import load_molecule
from allscaip.workflows.liquid.engine_openmm import OpenMMEngine, read_state, state_arrays
from allscaip.workflows.liquid.settings import Settings
from allscaip.workflows.teacher.labelling import teacher_for_atoms
from allscaip.workflows.teacher.stress import pressure_bar, teacher_stress
from allscaip.workflows.teacher.system import TEACHER_NAME, water_molar_mass

__all__ = ["density_g_cm3", "error_report", "label", "main", "read_state", "sample", "scale_to_density"]


def density_g_cm3(n_molecules: int, volume_ang3: float) -> float:
    """Density of ``n_molecules`` waters in ``volume_ang3``."""
    return mass_density_g_cm3(n_molecules * water_molar_mass(), volume_ang3)


def scale_to_density(pos: np.ndarray, box: np.ndarray, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale the box and the molecules' centres (not the molecules) to ``density`` g/cm³."""
    n_mol = len(pos) // 3
    factor = (density_g_cm3(n_mol, abs(np.linalg.det(box))) / density) ** (1.0 / 3.0)
    mol = pos.reshape(n_mol, 3, 3)
    centre = mol.mean(axis=1, keepdims=True)
    return (mol + (factor - 1.0) * centre).reshape(-1, 3), box * factor


def label(pos_ang: np.ndarray, box_ang: np.ndarray, info: dict, stress: bool = True) -> Atoms:
    """Teacher energy, forces and (unless ``stress`` is False) stress for one water box
    (O, H, H order, whole molecules)."""
    atoms = Atoms("OHH" * (len(pos_ang) // 3), positions=pos_ang, cell=box_ang, pbc=True)
    teacher = teacher_for_atoms(atoms)
    e, f = teacher.ev_ang(pos_ang / ANGSTROM_PER_NM)
    results = {"energy": e, "forces": f}
    if stress:  # (strains the teacher's box: after the forces)
        results["stress"] = teacher_stress(atoms, labeller=teacher)
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info.update(
        {
            "charge": 0,
            "spin": 1,
            "teacher": TEACHER_NAME,
            "n_molecules": len(atoms) // 3,
            "density_g_cm3": round(density_g_cm3(len(atoms) // 3, atoms.get_volume()), 4),
            "config_type": "student_md",
        }
    )
    atoms.info.update(info)
    return atoms


def sample(
    model: Optional[str],
    start: Path,
    ensemble: str,
    ps: float,
    every_fs: float,
    temperature: float,
    density: Optional[float],
    skip_ps: float,
    seed: int,
    threads: int,
    minimise_iterations: int = 200,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Student MD in OpenMM (1.5 fs, H 3 amu); (positions Å, box Å) every ``every_fs`` after
    ``skip_ps``. Molecules are wrapped whole, as the teacher's non-periodic bonds need.
    ``model=None`` runs the teacher itself (its own ensemble, e.g. for :mod:`allscaip.workflows.teacher.reweight`)."""
    pos, box = read_state(start)
    if density is not None:
        pos, box = scale_to_density(pos, box, density)
    s = Settings(
        molecule="water",
        model=model,
        potential="model" if model else "teacher",
        n_molecules=len(pos) // 3,
        temperature_K=temperature,
        timestep_fs=1.5,
        hydrogen_mass_amu=3.0,
        seed=seed,
        threads=threads,
    )
    eng = OpenMMEngine("liquid", load_molecule("water").water_ordered(), s.n_molecules, s, box_ang=float(box[0, 0]))
    if ensemble == "nvt":
        for k in reversed(range(eng.system.getNumForces())):
            if isinstance(eng.system.getForce(k), openmm.MonteCarloBarostat):
                eng.system.removeForce(k)
    ctx = eng.context(seed)
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box / ANGSTROM_PER_NM])
    ctx.setPositions(pos / ANGSTROM_PER_NM * unit.nanometer)
    if minimise_iterations > 0:  # (OpenMM reads 0 as "until converged")
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, minimise_iterations)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, seed)
    integ = ctx.getIntegrator()
    step_fs = s.timestep_fs
    n_skip = int(round(skip_ps * 1000 / step_fs))
    stride = max(1, int(round(every_fs / step_fs)))
    n_frames = int(round((ps - skip_ps) * 1000 / step_fs)) // stride
    out = []
    with tqdm(
        total=n_skip + n_frames * stride,
        unit="step",
        desc=f"{'student' if model else 'teacher'} {ensemble}",
        mininterval=5,
    ) as bar:
        integ.step(n_skip)
        bar.update(n_skip)
        for _ in range(n_frames):
            integ.step(stride)
            bar.update(stride)
            out.append(state_arrays(ctx.getState(getPositions=True, enforcePeriodicBox=True)))
    return out


def error_report(frames: Sequence[Atoms], model: str) -> list[str]:
    """Mean student-minus-teacher energy per molecule and configurational pressure."""
    calc = AllScAIPCalculator(model)
    de, dp, rho = [], [], []
    for a in frames:
        s = a.copy()
        s.calc = calc
        de.append((s.get_potential_energy() - a.get_potential_energy()) / (len(a) // 3) * EV_TO_KJ_PER_MOL)
        if "stress" in a.calc.results:
            dp.append(pressure_bar(s.get_stress()) - pressure_bar(a.calc.results["stress"]))
        rho.append(a.info["density_g_cm3"])
    de, dp, rho = map(np.asarray, (de, dp, rho))

    def mean_sem(x):
        return f"{x.mean():+.3f} ± {x.std(ddof=1) / np.sqrt(len(x)):.3f}" if len(x) > 1 else f"{x.mean():+.3f}"

    lines = [
        f"{len(frames)} frames, density {rho.mean():.4f} (min {rho.min():.4f}, max {rho.max():.4f}) g/cm³",
        f"energy error {mean_sem(de)} kJ/mol per molecule (std {de.std():.3f})",
    ]
    if len(dp):
        lines.append(
            f"pressure error {dp.mean():+.0f} ± {dp.std(ddof=1) / np.sqrt(max(len(dp), 2)):.0f} bar "
            f"(std {dp.std():.0f})"
        )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="exported student (.pt or .pt2) for the MD")
    who.add_argument(
        "--teacher", action="store_true", help="sample the teacher's own ensemble instead (config_type 'teacher_md')"
    )
    ap.add_argument("--check-model", default=None, help="model for the error report (default: --model)")
    ap.add_argument("--start", required=True, type=Path, help="OpenMM State XML of a water box (O, H, H order)")
    ap.add_argument("--ensemble", choices=("npt", "nvt"), default="npt")
    ap.add_argument("--density", type=float, default=None, help="scale the start box to this density (g/cm³) first")
    ap.add_argument("--temperature", type=float, default=298.15)
    ap.add_argument("--ps", type=float, default=15.0, help="MD length (ps, 1.5 fs steps)")
    ap.add_argument("--skip-ps", type=float, default=1.5, help="equilibration not sampled (ps)")
    ap.add_argument("--every-fs", type=float, default=60.0)
    ap.add_argument("--no-stress", action="store_true", help="label energy and forces only (13x faster labels)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    snaps = sample(
        None if args.teacher else args.model,
        args.start,
        args.ensemble,
        args.ps,
        args.every_fs,
        args.temperature,
        args.density,
        args.skip_ps,
        args.seed,
        args.threads,
    )
    t1 = time.perf_counter()
    who = "teacher" if args.teacher else "student"
    tag = f"{who}_{args.ensemble}_T{args.temperature:g}" + (f"_rho{args.density:g}" if args.density else "")
    frames = [
        label(
            p,
            b,
            {"temperature_K": args.temperature, "traj": f"{tag}_s{args.seed}", "frame": i, "config_type": f"{who}_md"},
            stress=not args.no_stress,
        )
        for i, (p, b) in enumerate(tqdm(snaps, desc="teacher labels", mininterval=5))
    ]
    t2 = time.perf_counter()
    write(str(args.out), frames, format="extxyz")
    print(f"{args.out}: MD {t1 - t0:.0f} s, labels {t2 - t1:.0f} s")
    check = args.check_model or args.model
    if check:
        for line in error_report(frames, check):
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
