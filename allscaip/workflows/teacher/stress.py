"""Stress labels for periodic teacher frames (the pressure a liquid's density depends on).

Energies and forces do not fix a periodic model's virial: forces are derivatives at a fixed
cell, the stress is the derivative with respect to a homogeneous strain of cell and atoms.
A model trained without it can get the liquid's pressure, hence its density, wrong (see
docs/validation.md). The teacher's stress is computed here by central finite differences of
its double-precision energy under the six strain components (ASE convention:
``stress = (1/V) dE/dε``, positive = tensile, eV/Å³)::

    python -m allscaip.workflows.teacher.stress examples/water/data/train.extxyz examples/water/data/val.extxyz

labels every periodic frame of each file in place (atomic rewrite) and prints the mean
configurational pressure per (molecules, density) state.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import openmm
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from tqdm import tqdm

from allscaip.units import ANGSTROM_PER_NM, EV_PER_A3_TO_BAR, EV_TO_KJ_PER_MOL
from allscaip.workflows.teacher.labelling import (
    CutoffPairs,
    TeacherLabeller,
    crossing_free_perturbation_step,
    cutoff_pairs,
    teacher_for_atoms,
)

#: strain step of the central differences (double precision: ~1e-9 relative stress error)
STRAIN_STEP = 1e-5


def crossing_free_step(
    atoms: Atoms, strain: np.ndarray, step: float = STRAIN_STEP, pairs: Optional[CutoffPairs] = None
) -> float:
    """The largest of ``step, step/2, ...`` at which no pair distance crosses the teacher's
    cutoff between the strains ``-step * strain`` and ``+step * strain`` (pair vectors strain as
    ``d @ (1 + s strain)``; :func:`.labelling.crossing_free_perturbation_step`, whose jump would
    otherwise put hundreds of bar into one frame in ten at step 1e-5 in a 1 nm box). ``pairs``:
    the frame's :func:`.labelling.cutoff_pairs`, when the caller has them."""
    strain = np.asarray(strain, dtype=float)
    pairs = cutoff_pairs(atoms) if pairs is None else pairs
    return crossing_free_perturbation_step(pairs, lambda i, j, d: d @ strain, step)


def teacher_stress(atoms: Atoms, step: float = STRAIN_STEP, labeller: Optional[TeacherLabeller] = None) -> np.ndarray:
    """Voigt stress ``[xx, yy, zz, yz, xz, xy]`` (eV/Å³) of the teacher for a periodic frame.
    ``labeller``: the frame's teacher (:func:`teacher_for_atoms`) when the caller already has
    one; its box is left strained."""
    if not atoms.pbc.all():
        raise ValueError("teacher_stress needs a periodic frame")
    if labeller is None:
        labeller = teacher_for_atoms(atoms)
    cell = np.asarray(atoms.cell, dtype=float)
    pos = np.asarray(atoms.positions, dtype=float)
    volume = abs(np.linalg.det(cell))

    def energy(strain: np.ndarray) -> float:
        m = np.eye(3) + strain
        box, xyz = cell @ m, pos @ m
        # OpenMM wants a lower-triangular box (a along x, b in the xy plane): rotate cell and
        # atoms together (the energy is rotation invariant)
        q, r = np.linalg.qr(box.T)
        q = q * np.sign(np.diag(r))
        box, xyz = box @ q, xyz @ q
        labeller.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.tril(box) / ANGSTROM_PER_NM])
        return labeller.energy_kj(xyz / ANGSTROM_PER_NM) / EV_TO_KJ_PER_MOL

    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    out = np.zeros(6)
    pairs = cutoff_pairs(atoms)
    for k, (i, j) in enumerate(voigt):
        unit_strain = np.zeros((3, 3))
        unit_strain[i, j] = unit_strain[j, i] = 1.0  # a shear strains both ways: dE/dε_ij + dE/dε_ji
        h = crossing_free_step(atoms, unit_strain, step, pairs)
        e = h * unit_strain
        out[k] = (energy(e) - energy(-e)) / ((2.0 if i == j else 4.0) * h * volume)
    return out


def pressure_bar(stress_voigt: np.ndarray) -> float:
    """Configurational (virial) pressure of a stress, bar."""
    return -float(np.mean(stress_voigt[:3])) * EV_PER_A3_TO_BAR


def label_file(path: str | os.PathLike, progress: bool = True) -> list[Atoms]:
    """Add the teacher stress to every periodic frame of an extxyz file, in place."""
    frames = read(str(path), ":")
    for a in tqdm(frames, desc=f"stress {Path(path).name}", disable=not progress):
        if not a.pbc.all():
            continue
        res = dict(a.calc.results) if a.calc is not None else {}
        res["stress"] = teacher_stress(a)
        info = dict(a.info)
        a.calc = SinglePointCalculator(a, **res)
        a.info.update(info)
    tmp = Path(str(path) + ".tmp")
    write(str(tmp), frames, format="extxyz")
    os.replace(tmp, path)
    return frames


def _summary(frames: Sequence[Atoms]) -> list[str]:
    groups: dict = {}
    for a in frames:
        if a.pbc.all():
            key = (a.info.get("n_molecules"), a.info.get("density_g_cm3"))
            groups.setdefault(key, []).append(pressure_bar(a.calc.results["stress"]))
    return [
        f"  {n} molecules, {rho} g/cm³: configurational pressure {np.mean(p):8.0f} bar (mean of {len(p)})"
        for (n, rho), p in sorted(groups.items())
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "files", nargs="+", help="extxyz files written by allscaip.workflows.teacher.cli (rewritten in place)"
    )
    args = p.parse_args(argv)
    for f in args.files:
        frames = label_file(f)
        print(f"{f}: stress added to {sum(a.pbc.all() for a in frames)} of {len(frames)} frames")
        print("\n".join(_summary(frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
