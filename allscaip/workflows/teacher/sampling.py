"""Teacher sampling: water configurations from OpenMM dynamics, labelled by the teacher.

* **Bulk** (:func:`sample_frames`): NVT Langevin dynamics (``LangevinMiddleIntegrator``, 0.5 fs
  time step because the O-H bonds are flexible, friction 1/ps) on the ``CPU`` platform (mixed
  precision) after an energy minimisation, at each (temperature, density) point, from a jittered
  grid of randomly oriented molecules (:func:`.system.build_water_system`). The MD itself uses a
  looser Ewald tolerance (5e-4) for speed; this only changes which configurations are visited,
  not the labels, which are always recomputed with the teacher definition (:mod:`.system`).
  Frames are taken every ``stride_fs`` (default 200 fs) after ``equilibration_ps`` (default
  2 ps, whose first quarter, at most 0.5 ps, uses a 10x larger friction to thermalise the
  minimised structure).
* **Monomers** (:func:`sample_monomers`): isolated molecules from gas-phase Langevin MD.
* **Dimers** (:func:`sample_dimers`): two gas-phase molecules at random O-O separations and
  orientations, with a Boltzmann test on their interaction energy.

Frames are labelled by :mod:`.labelling`; samplers add the ``info`` keys ``temperature_K``,
``density_g_cm3`` (0 for gas phase), ``config_type`` (``bulk``/``monomer``/``dimer``), ``traj``
and ``frame``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import openmm
import openmm.unit as unit
from ase import Atoms

from allscaip.reproducible import seed_for
from allscaip.units import ANGSTROM_PER_NM, BOLTZMANN_KJ_PER_MOL_K, EV_TO_KJ_PER_MOL
from allscaip.workflows.teacher.labelling import TeacherLabeller, check_geometry, make_atoms
from allscaip.workflows.teacher.system import (
    MD_EWALD_TOLERANCE,
    build_gas_system,
    build_water_system,
    create_system,
    random_orient,
    reference_water_geometry,
)

CPU_THREADS: Optional[int] = None  # OpenMM CPU-platform threads for MD (None: OpenMM's default)


def _cpu_platform():
    platform = openmm.Platform.getPlatformByName("CPU")
    props = {"DeterministicForces": "true"}
    if CPU_THREADS:
        props["Threads"] = str(CPU_THREADS)
    return platform, props


def run_nvt(
    system_md: openmm.System,
    positions_nm: np.ndarray,
    box_nm: np.ndarray,
    temperature_K: float,
    n_frames: int,
    seed: int,
    *,
    equilibration_ps: float = 2.0,
    stride_fs: float = 200.0,
    timestep_fs: float = 0.5,
    friction_per_ps: float = 1.0,
    minimise: bool = True,
    hot_start: bool = True,
) -> Iterator[tuple[np.ndarray, float]]:
    """NVT Langevin MD of a periodic box (module docstring): yields ``n_frames`` pairs
    ``(positions_nm [N, 3], kinetic temperature K)``, one every ``stride_fs`` after the
    minimisation and ``equilibration_ps``. Positions are wrapped by molecule (OpenMM's
    ``enforcePeriodicBox``). ``minimise=False`` starts MD from ``positions_nm`` as they are and
    ``hot_start=False`` keeps ``friction_per_ps`` throughout (the electrolyte MD comparison runs the
    LAMMPS protocol so)."""
    step_ps = timestep_fs * 1e-3
    integ = openmm.LangevinMiddleIntegrator(
        temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, step_ps * unit.picoseconds
    )
    integ.setRandomNumberSeed(seed_for("langevin", seed))
    platform, props = _cpu_platform()
    ctx = openmm.Context(system_md, integ, platform, props)
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box_nm])
    ctx.setPositions(positions_nm * unit.nanometer)
    if minimise:
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 0)
    ctx.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed_for("velocities", seed))
    n_eq = int(round(equilibration_ps / step_ps))
    n_stride = max(1, int(round(stride_fs * 1e-3 / step_ps)))
    # Thermalise quickly first: the first quarter of the equilibration (at most 0.5 ps) uses a
    # 10x larger friction, then the production friction for the rest of the run.
    n_hot = min(n_eq // 4, int(round(0.5 / step_ps))) if hot_start else 0
    if n_hot:
        integ.setFriction(10 * friction_per_ps / unit.picosecond)
        integ.step(n_hot)
        integ.setFriction(friction_per_ps / unit.picosecond)
    if n_eq - n_hot:
        integ.step(n_eq - n_hot)
    dof = 3 * system_md.getNumParticles() - 3  # CMMotionRemover removes 3 DOF
    for _ in range(n_frames):
        integ.step(n_stride)
        st = ctx.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=True)
        pos = np.asarray(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        yield pos, round(2 * ke / (dof * BOLTZMANN_KJ_PER_MOL_K), 2)


def sample_frames(
    n_molecules: int,
    temperature_K: float,
    density_g_cm3: float,
    n_frames: int,
    seed: int,
    *,
    equilibration_ps: float = 2.0,
    stride_fs: float = 200.0,
    timestep_fs: float = 0.5,
    friction_per_ps: float = 1.0,
    traj: str = "",
    callback: Optional[Callable[[Atoms], None]] = None,
) -> list[Atoms]:
    """One NVT Langevin trajectory of a periodic water box, labelled by the teacher.

    Builds the box (:func:`build_water_system`), minimises, draws Maxwell-Boltzmann
    velocities, equilibrates for ``equilibration_ps`` and then takes ``n_frames`` frames
    every ``stride_fs`` (:func:`run_nvt`). MD runs on the CPU platform with a looser Ewald
    tolerance; labels are computed in double precision with the full teacher. ``atoms.info`` gets
    ``temperature_K``, ``density_g_cm3``, ``config_type='bulk'``, ``traj``, ``frame`` and
    ``kinetic_temperature_K`` (instantaneous, from the MD).
    """
    system_label, top, pos0, box = build_water_system(n_molecules, density_g_cm3, seed)
    system_md = create_system(top, periodic=True, ewald_tolerance=MD_EWALD_TOLERANCE)
    labeller = TeacherLabeller(system_label, box)
    md = run_nvt(
        system_md,
        pos0,
        box,
        temperature_K,
        n_frames,
        seed,
        equilibration_ps=equilibration_ps,
        stride_fs=stride_fs,
        timestep_fs=timestep_fs,
        friction_per_ps=friction_per_ps,
    )
    frames = []
    for i, (pos, t_kin) in enumerate(md):
        where = f"{traj or 'bulk'} frame {i}"
        check_geometry(pos, n_molecules, box, where)
        e, f = labeller.ev_ang(pos)
        atoms = make_atoms(
            pos,
            n_molecules,
            e,
            f,
            box,
            {
                "temperature_K": float(temperature_K),
                "density_g_cm3": float(density_g_cm3),
                "config_type": "bulk",
                "traj": traj or f"bulk_n{n_molecules}_T{temperature_K:g}_rho{density_g_cm3:.2f}_s{seed}",
                "frame": i,
                "kinetic_temperature_K": t_kin,
            },
        )
        frames.append(atoms)
        if callback is not None:
            callback(atoms)
    return frames


def _run_monomer_md(
    temperature_K: float,
    n_snapshots: int,
    stride_fs: float,
    seed: int,
    *,
    equilibration_ps: float = 1.0,
    timestep_fs: float = 0.5,
    friction_per_ps: float = 1.0,
):
    """Positions [n_snapshots, 3, 3] nm of an isolated flexible water (Langevin MD)."""
    system, _ = build_gas_system(1)
    step_ps = timestep_fs * 1e-3
    integ = openmm.LangevinMiddleIntegrator(
        temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, step_ps * unit.picoseconds
    )
    integ.setRandomNumberSeed(seed_for("monomer-langevin", seed))
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(seed_for("monomer-orient", seed))
    ctx.setPositions(random_orient(reference_water_geometry(), rng) * unit.nanometer)
    ctx.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed_for("monomer-velocities", seed))
    integ.step(int(round(equilibration_ps / step_ps)))
    n_stride = max(1, int(round(stride_fs * 1e-3 / step_ps)))
    out = []
    for _ in range(n_snapshots):
        integ.step(n_stride)
        p = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        out.append(np.asarray(p) - np.asarray(p).mean(axis=0))
    return np.stack(out)


def sample_monomers(
    temperature_K: float,
    n_frames: int,
    seed: int,
    *,
    stride_fs: float = 1000.0,
    traj: str = "",
    callback: Optional[Callable[[Atoms], None]] = None,
) -> list[Atoms]:
    """Isolated flexible waters (pbc=False, zero cell) from gas-phase Langevin MD at ``temperature_K``."""
    system, _ = build_gas_system(1)
    labeller = TeacherLabeller(system)
    traj = traj or f"monomer_T{temperature_K:g}_s{seed}"
    frames = []
    for i, pos in enumerate(_run_monomer_md(temperature_K, n_frames, stride_fs, seed)):
        check_geometry(pos, 1, None, f"{traj} frame {i}")
        e, f = labeller.ev_ang(pos)
        atoms = make_atoms(
            pos,
            1,
            e,
            f,
            None,
            {
                "temperature_K": float(temperature_K),
                "density_g_cm3": 0.0,
                "config_type": "monomer",
                "traj": traj,
                "frame": i,
            },
        )
        frames.append(atoms)
        if callback is not None:
            callback(atoms)
    return frames


def sample_dimers(
    temperatures: Sequence[float],
    n_frames: int,
    seed: int,
    *,
    r_min_ang: float = 2.5,
    r_max_ang: float = 8.0,
    min_h_o_ang: float = 1.4,
    max_tries: int = 5000,
    traj: str = "",
    callback: Optional[Callable[[Atoms], None]] = None,
) -> list[Atoms]:
    """Gas-phase water dimers (pbc=False) with O-O separations drawn uniformly in [r_min, r_max] Å.

    For each dimer: a temperature T is drawn from ``temperatures``; both molecules take
    internal geometries from gas-phase MD at T and uniformly random orientations; the
    second O is placed at the drawn O-O distance in a random direction. Orientations are
    re-drawn (same distance) until the intermolecular H...O distances are >= ``min_h_o_ang``
    and the teacher's interaction energy E_int passes a Boltzmann test
    ``u < exp(-max(E_int, 0) / kT)``, which removes strongly repulsive orientations at short
    range while keeping every attractive one. ``info['r_OO_ang']`` and
    ``info['interaction_energy_eV']`` are stored.
    """
    rng = np.random.default_rng(seed_for("dimers", seed))
    traj = traj or f"dimer_s{seed}"
    temps = [float(t) for t in temperatures]
    pools = {t: _run_monomer_md(t, max(50, 2 * n_frames), 100.0, seed_for("dimer-pool", seed, t)) for t in temps}
    mono_system, _ = build_gas_system(1)
    dimer_system, _ = build_gas_system(2)
    mono = TeacherLabeller(mono_system)
    dimer = TeacherLabeller(dimer_system)
    frames = []
    while len(frames) < n_frames:
        T = temps[int(rng.integers(len(temps)))]
        r = rng.uniform(r_min_ang, r_max_ang) / ANGSTROM_PER_NM
        pool = pools[T]
        for _ in range(max_tries):
            a = random_orient(pool[rng.integers(len(pool))], rng)
            b = random_orient(pool[rng.integers(len(pool))], rng)
            u = rng.normal(size=3)
            b = b + r * u / np.linalg.norm(u)
            d = np.linalg.norm(np.concatenate([a[1:, None] - b[None, :1], b[1:, None] - a[None, :1]]), axis=-1)
            if d.min() * ANGSTROM_PER_NM < min_h_o_ang:
                continue
            pos = np.concatenate([a, b])
            e_int = dimer.energy_kj(pos) - mono.energy_kj(a) - mono.energy_kj(b)
            if rng.random() < math.exp(-max(e_int, 0.0) / (BOLTZMANN_KJ_PER_MOL_K * T)):
                break
        else:
            continue  # no acceptable orientation at this distance: draw a new distance
        e, f = dimer.ev_ang(pos)
        atoms = make_atoms(
            pos,
            2,
            e,
            f,
            None,
            {
                "temperature_K": T,
                "density_g_cm3": 0.0,
                "config_type": "dimer",
                "traj": traj,
                "frame": len(frames),
                "r_OO_ang": round(r * ANGSTROM_PER_NM, 4),
                "interaction_energy_eV": e_int / EV_TO_KJ_PER_MOL,
            },
        )
        frames.append(atoms)
        if callback is not None:
            callback(atoms)
    return frames
