"""Sampling for the electrolyte teacher: NaCl solutions and restrained ion pairs, labelled.

Both samplers run the water teacher's NVT protocol (:func:`.sampling.run_nvt`: minimisation,
Langevin middle integrator at 0.5 fs, 1/ps friction after a hot start, CPU platform, Ewald
tolerance 5e-4 for the MD only) on boxes from :func:`.electrolyte.build_solution_system`, and
label every frame with the double-precision teacher (:mod:`.electrolyte`, :mod:`.labelling`).

* :func:`sample_solution_frames`: ``n_pairs`` Na⁺/Cl⁻ pairs in ``n_waters`` waters, free MD.
* :func:`sample_ion_pairs`: one Na⁺ and one Cl⁻ in water, each window an MD run whose Na-Cl
  distance is held near a target by a harmonic restraint (:data:`PAIR_RESTRAINT_KJ_NM2`) that
  acts in the MD only: the labels are the unrestrained teacher's. Targets cover contact to
  half the box edge, where the teacher's ion-ion interaction is long-range Coulomb that a local
  model cannot see.

``atoms.info`` adds to the water keys (:mod:`.sampling`): ``n_na``, ``n_cl``,
``molality_mol_kg``, ``water_density_g_cm3`` (the water's share, which sets the box; the
standard ``density_g_cm3`` is the whole solution's), ``config_type`` (``solution`` or
``ion_pair``), and for ion pairs ``pair_target_ang`` and ``r_NaCl_ang`` (minimum image).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import openmm
from ase import Atoms

from allscaip.reproducible import seed_for
from allscaip.units import ANGSTROM_PER_NM
from allscaip.workflows.teacher.electrolyte import (
    build_solution_system,
    create_solution_system,
    molality,
    solution_box_nm,
    solution_density_g_cm3,
)
from allscaip.workflows.teacher.labelling import TeacherLabeller, check_geometry, make_atoms
from allscaip.workflows.teacher.sampling import run_nvt
from allscaip.workflows.teacher.system import MD_EWALD_TOLERANCE

#: harmonic Na-Cl restraint of the ion-pair windows (MD only): kT/k at 300 K gives a spread of
#: 0.02 nm about the target, narrow against the 0.25-0.8 nm range of targets
PAIR_RESTRAINT_KJ_NM2 = 5000.0
#: closest target separation: below the Na-Cl contact minimum (0.28 nm) the pair is repulsive
MIN_PAIR_TARGET_NM = 0.26
#: farthest target as a fraction of the box edge (the minimum image flips at one half)
MAX_PAIR_TARGET_FRACTION = 0.49


def _pair_distance_nm(pos: np.ndarray, box: float) -> float:
    d = pos[-1] - pos[-2]
    return float(np.linalg.norm(d - box * np.round(d / box)))


def sample_solution_frames(
    n_waters: int,
    n_pairs: int,
    temperature_K: float,
    water_density_g_cm3: float,
    n_frames: int,
    seed: int,
    *,
    pair_distance_nm: Optional[float] = None,
    equilibration_ps: float = 2.0,
    stride_fs: float = 200.0,
    traj: str = "",
    callback: Optional[Callable[[Atoms], None]] = None,
) -> list[Atoms]:
    """One NVT trajectory of ``n_pairs`` NaCl in ``n_waters`` waters, labelled by the teacher.

    With ``pair_distance_nm`` (one pair) the MD restrains the Na-Cl distance to it
    (:data:`PAIR_RESTRAINT_KJ_NM2`) and the frames are ``config_type='ion_pair'``."""
    system_label, top, pos0, box = build_solution_system(
        n_waters, n_pairs, water_density_g_cm3, seed, pair_distance_nm=pair_distance_nm
    )
    system_md = create_solution_system(top, periodic=True, ewald_tolerance=MD_EWALD_TOLERANCE)
    if pair_distance_nm is not None:
        restraint = openmm.CustomBondForce("0.5*k_pair*(r-r0_pair)^2")
        restraint.addGlobalParameter("k_pair", PAIR_RESTRAINT_KJ_NM2)
        restraint.addGlobalParameter("r0_pair", pair_distance_nm)
        restraint.setUsesPeriodicBoundaryConditions(True)
        restraint.addBond(len(pos0) - 2, len(pos0) - 1)
        system_md.addForce(restraint)
    labeller = TeacherLabeller(system_label, box)
    L = float(box[0, 0])
    kind = "solution" if pair_distance_nm is None else "ion_pair"
    traj = traj or f"{kind}_w{n_waters}_p{n_pairs}_T{temperature_K:g}_s{seed}"
    ions = ["Na"] * n_pairs + ["Cl"] * n_pairs
    md = run_nvt(
        system_md, pos0, box, temperature_K, n_frames, seed, equilibration_ps=equilibration_ps, stride_fs=stride_fs
    )
    frames = []
    for i, (pos, t_kin) in enumerate(md):
        check_geometry(pos, n_waters, box, f"{traj} frame {i}")
        e, f = labeller.ev_ang(pos)
        info = {
            "temperature_K": float(temperature_K),
            "density_g_cm3": round(solution_density_g_cm3(n_waters, n_pairs, L), 4),
            "water_density_g_cm3": float(water_density_g_cm3),
            "molality_mol_kg": round(molality(n_waters, n_pairs), 4),
            "n_na": n_pairs,
            "n_cl": n_pairs,
            "config_type": kind,
            "traj": traj,
            "frame": i,
            "kinetic_temperature_K": t_kin,
        }
        if pair_distance_nm is not None:
            info["pair_target_ang"] = round(pair_distance_nm * ANGSTROM_PER_NM, 4)
            info["r_NaCl_ang"] = round(_pair_distance_nm(pos, L) * ANGSTROM_PER_NM, 4)
        atoms = make_atoms(pos, n_waters, e, f, box, info, ions=ions)
        frames.append(atoms)
        if callback is not None:
            callback(atoms)
    return frames


def pair_targets_nm(
    n_waters: int, water_density_g_cm3: float, n_windows: int, seed: int, evenly: bool = False
) -> np.ndarray:
    """``n_windows`` Na-Cl targets from contact to half the box edge: stratified uniform (one
    random target in each of ``n_windows`` equal bins), or ``evenly`` spaced with both ends."""
    L = solution_box_nm(n_waters, 1, water_density_g_cm3)
    lo, hi = MIN_PAIR_TARGET_NM, MAX_PAIR_TARGET_FRACTION * L
    if evenly:
        return np.linspace(lo, hi, n_windows)
    rng = np.random.default_rng(seed_for("pair-targets", n_waters, n_windows, seed))
    return lo + (hi - lo) * (np.arange(n_windows) + rng.random(n_windows)) / n_windows


def sample_ion_pairs(
    n_waters: int,
    temperatures: Sequence[float],
    water_density_g_cm3: float,
    n_windows: int,
    frames_per_window: int,
    seed: int,
    *,
    equilibration_ps: float = 1.0,
    stride_fs: float = 200.0,
    evenly: bool = False,
    traj: str = "",
    callback: Optional[Callable[[Atoms], None]] = None,
) -> list[Atoms]:
    """Dilute ion pairs: ``n_windows`` restrained windows (:func:`pair_targets_nm`, ``evenly``
    passed on), each its own start structure and MD at a temperature drawn from ``temperatures``."""
    rng = np.random.default_rng(seed_for("pair-temperatures", seed))
    frames = []
    for w, r0 in enumerate(pair_targets_nm(n_waters, water_density_g_cm3, n_windows, seed, evenly)):
        T = float(temperatures[int(rng.integers(len(temperatures)))])
        frames += sample_solution_frames(
            n_waters,
            1,
            T,
            water_density_g_cm3,
            frames_per_window,
            seed_for(seed, "window", w),
            pair_distance_nm=float(r0),
            equilibration_ps=equilibration_ps,
            stride_fs=stride_fs,
            traj=f"{traj or f'ion_pair_w{n_waters}_s{seed}'}_win{w:02d}",
            callback=callback,
        )
    return frames
