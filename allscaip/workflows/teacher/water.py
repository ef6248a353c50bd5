"""Flexible-water "teacher": labelled water configurations from OpenMM.

The teacher is a classical potential whose energies and forces a small
machine-learning potential is trained to reproduce. It is defined precisely as:

* **Force field**: OpenMM 8.6.1's bundled ``tip3p.xml`` (the AMBER TIP3P water:
  q(O) = -0.834 e, q(H) = +0.417 e, O-O Lennard-Jones sigma = 0.315075 nm,
  epsilon = 0.635968 kJ/mol, no LJ on H) built with
  ``ForceField.createSystem(..., constraints=None, rigidWater=False)``, so the
  water is **fully flexible**: the file's harmonic O-H bond
  (r0 = 0.09572 nm, k = 462750.4 kJ/mol/nm^2) and H-O-H angle
  (theta0 = 104.52 deg, k = 836.8 kJ/mol/rad^2) are active and there are no
  constraints. Intramolecular non-bonded pairs (O-H, H-H) are excluded.
* **Periodic systems** (cubic boxes): ``nonbondedMethod=LJPME`` (particle-mesh Ewald
  for both the Coulomb *and* the r^-6 dispersion term), ``nonbondedCutoff =
  0.45 nm`` (the same for every box; it has to be below half the edge of the
  smallest box, 32 molecules at 1.10 g/cm^3, L = 0.955 nm),
  ``ewaldErrorTolerance = 1e-5``, no switching function. The isotropic
  *dispersion correction is off* (it does not apply to LJPME: the dispersion tail
  is Ewald-summed instead, and it contributes forces). Only the repulsive r^-12
  term is truncated at 0.45 nm (a jump of at most 0.035 kJ/mol per O-O pair
  at the cutoff). Because nothing but that tiny r^-12 tail depends on the
  cutoff, the same teacher describes every box size, and an isolated molecule
  or dimer in a very large periodic box has the same energy as in the gas phase.
* **Gas phase** (single molecules and dimers): the same force field with
  ``nonbondedMethod=NoCutoff`` and no periodic box.
* **Labels**: potential energy and forces computed in double precision on
  OpenMM's ``Reference`` platform. Energies kJ/mol -> eV (divide by
  96.48533212331, CODATA 2018 N_A e / 1000), forces kJ/mol/nm -> eV/Å
  (additionally divide by 10), positions nm -> Å. No stress / virial labels
  (OpenMM does not report a virial).
* **Energy zero**: the absolute teacher energy as OpenMM reports it; a monomer at
  its equilibrium geometry has E = 0 (all its non-bonded pairs are excluded), so
  bulk frames carry the (negative) cohesive energy. The trainer fits per-element
  reference energies on top of this.

Sampling: NVT Langevin dynamics (``LangevinMiddleIntegrator``, 0.5 fs time step
because the O-H bonds are flexible, friction 1/ps) on the ``CPU`` platform
(mixed precision) after an energy minimisation, at each (temperature, density)
point, from a jittered grid of randomly oriented molecules. The MD itself uses a
looser Ewald tolerance (5e-4) for speed; this only changes which
configurations are visited, not the labels, which are always recomputed with
the teacher definition above. Frames are taken every ``stride_fs`` (default
200 fs) after ``equilibration_ps`` (default 2 ps, whose first quarter, at most
0.5 ps, uses a 10x larger friction to thermalise the minimised structure).

Each frame is an ``ase.Atoms`` with a ``SinglePointCalculator(energy, forces)``,
``pbc=True`` and a cubic cell for bulk frames (``pbc=False`` and a zero cell for
gas-phase frames) and ``info`` keys ``charge=0``, ``spin=1``, ``temperature_K``,
``density_g_cm3`` (0 for gas phase), ``teacher``, ``config_type``
(``bulk``/``monomer``/``dimer``), ``n_molecules``, ``traj`` and ``frame``.

Command line (see ``--help``)::

    python -m allscaip.workflows.teacher.water --n-molecules 32,64 --temperatures 250,300,350,400 \\
        --densities 0.90,1.00,1.10 --frames-per-state 33,6 --seed 0 \\
        --train-out examples/water/data/train.extxyz --val-out examples/water/data/val.extxyz
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

try:  # OpenMM is an optional ("engines") dependency of allscaip.
    import openmm
    import openmm.app as app
    import openmm.unit as unit
except ImportError as exc:  # pragma: no cover - exercised only without OpenMM
    raise ImportError("allscaip.workflows.teacher.water needs OpenMM (pip install openmm==8.6.1)") from exc

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from allscaip.geometry import random_rotation
from allscaip.reproducible import seed_for

# ---------------------------------------------------------------------------------------
# Constants and teacher definition
# ---------------------------------------------------------------------------------------
KJMOL_PER_EV = 96.48533212331  # 1 eV in kJ/mol (CODATA 2018: e * N_A / 1000)
NM_TO_ANG = 10.0
AVOGADRO = 6.02214076e23
KB_KJMOL = 0.00831446261815324  # Boltzmann constant, kJ/mol/K

FORCE_FIELD_FILE = "tip3p.xml"
CUTOFF_NM = 0.45
EWALD_TOLERANCE = 1e-5  # labels
MD_EWALD_TOLERANCE = 5e-4  # sampling only
TEACHER_NAME = "openmm-tip3p-flexible-ljpme"

# tip3p.xml equilibrium geometry (used to build starting structures)
R_OH_NM = 0.09572
THETA_HOH_RAD = 1.82421813418

_FORCE_FIELD: Optional[app.ForceField] = None


def _force_field() -> app.ForceField:
    global _FORCE_FIELD
    if _FORCE_FIELD is None:
        _FORCE_FIELD = app.ForceField(FORCE_FIELD_FILE)
    return _FORCE_FIELD


def water_molar_mass() -> float:
    """g/mol of one tip3p.xml water (O 15.99943 + 2 H 1.007947)."""
    return 15.99943 + 2 * 1.007947


def box_length_nm(n_molecules: int, density_g_cm3: float) -> float:
    """Edge of a cubic box holding ``n_molecules`` waters at the given mass density."""
    volume_cm3 = n_molecules * water_molar_mass() / (density_g_cm3 * AVOGADRO)
    return (volume_cm3 ** (1.0 / 3.0)) * 1e7  # cm -> nm


def _water_topology(n_molecules: int, box_nm: Optional[float]) -> app.Topology:
    top = app.Topology()
    chain = top.addChain()
    for _ in range(n_molecules):
        res = top.addResidue("HOH", chain)
        o = top.addAtom("O", app.element.oxygen, res)
        h1 = top.addAtom("H1", app.element.hydrogen, res)
        h2 = top.addAtom("H2", app.element.hydrogen, res)
        top.addBond(o, h1)
        top.addBond(o, h2)
    if box_nm is not None:
        top.setPeriodicBoxVectors(np.eye(3) * box_nm * unit.nanometer)
    return top


def _create_system(
    top: app.Topology, periodic: bool, ewald_tolerance: float = EWALD_TOLERANCE, cutoff_nm: float = CUTOFF_NM
) -> openmm.System:
    ff = _force_field()
    if periodic:
        system = ff.createSystem(
            top,
            nonbondedMethod=app.LJPME,
            nonbondedCutoff=cutoff_nm * unit.nanometer,
            constraints=None,
            rigidWater=False,
            ewaldErrorTolerance=ewald_tolerance,
        )
    else:
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            f.setUseDispersionCorrection(False)  # not used by LJPME anyway; explicit
            f.setUseSwitchingFunction(False)
    if system.getNumConstraints() != 0:  # pragma: no cover - guards the teacher definition
        raise RuntimeError("teacher water must be flexible (no constraints)")
    return system


def _reference_water_geometry() -> np.ndarray:
    """[3, 3] nm: O at the origin, H atoms in the xy plane (tip3p.xml equilibrium)."""
    s, c = math.sin(THETA_HOH_RAD / 2), math.cos(THETA_HOH_RAD / 2)
    return np.array([[0.0, 0.0, 0.0], [R_OH_NM * s, R_OH_NM * c, 0.0], [-R_OH_NM * s, R_OH_NM * c, 0.0]])


def _random_orient(geom_nm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate a water geometry ([3,3], O first) about its O atom."""
    return (geom_nm - geom_nm[0]) @ random_rotation(rng).T


# ---------------------------------------------------------------------------------------
# System construction
# ---------------------------------------------------------------------------------------
def build_water_system(n_molecules: int, density_g_cm3: float, seed: int, *, ewald_tolerance: float = EWALD_TOLERANCE):
    """A cubic periodic box of flexible TIP3P water (the teacher definition, module docstring).

    Molecules sit on a jittered simple-cubic grid (randomly chosen sites when the grid has
    more sites than molecules) with uniformly random orientations; the structure is not
    minimised here. Returns ``(system, topology, positions_nm [3n, 3] ndarray,
    box_vectors_nm [3, 3] ndarray)``; atoms are ordered O, H, H per molecule.
    """
    if n_molecules < 1:
        raise ValueError("n_molecules must be >= 1")
    L = box_length_nm(n_molecules, density_g_cm3)
    if 2 * CUTOFF_NM >= L:
        raise ValueError(
            f"box edge {L:.3f} nm ({n_molecules} molecules at {density_g_cm3} g/cm^3) is too small "
            f"for the teacher's {CUTOFF_NM} nm cutoff (needs > {2 * CUTOFF_NM} nm)"
        )
    rng = np.random.default_rng(seed_for("build", n_molecules, float(density_g_cm3), seed))
    g = int(math.ceil(n_molecules ** (1.0 / 3.0) - 1e-9))
    spacing = L / g
    sites = np.array([(i, j, k) for i in range(g) for j in range(g) for k in range(g)], dtype=float)
    chosen = sites[rng.choice(len(sites), size=n_molecules, replace=False)]
    ref = _reference_water_geometry()
    ref = ref - ref.mean(axis=0)  # rotate about the molecular centre
    pos = []
    for site in chosen:
        centre = (site + 0.5) * spacing + rng.uniform(-0.1, 0.1, size=3) * spacing
        pos.append(centre + ref @ random_rotation(rng).T)
    positions = np.concatenate(pos)
    top = _water_topology(n_molecules, L)
    system = _create_system(top, periodic=True, ewald_tolerance=ewald_tolerance)
    box = np.eye(3) * L
    return system, top, positions, box


def build_gas_system(n_molecules: int = 1):
    """Gas-phase (non-periodic, NoCutoff) teacher for ``n_molecules`` waters: ``(system, topology)``."""
    top = _water_topology(n_molecules, None)
    return _create_system(top, periodic=False), top


# ---------------------------------------------------------------------------------------
# Labelling
# ---------------------------------------------------------------------------------------
class TeacherLabeller:
    """Double-precision (Reference platform) energies/forces of one teacher system."""

    def __init__(self, system: openmm.System, box_nm: Optional[np.ndarray] = None):
        self.system = system
        self.box_nm = None if box_nm is None else np.asarray(box_nm, dtype=float)
        platform = openmm.Platform.getPlatformByName("Reference")  # always double precision
        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
        if self.box_nm is not None:
            self.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in self.box_nm])

    def kj_nm(self, positions_nm: np.ndarray):
        """(energy kJ/mol, forces kJ/mol/nm [N,3]) in OpenMM units."""
        self.context.setPositions(np.asarray(positions_nm, dtype=float) * unit.nanometer)
        st = self.context.getState(getEnergy=True, getForces=True)
        e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return float(e), np.asarray(f, dtype=float)

    def energy_kj(self, positions_nm: np.ndarray) -> float:
        self.context.setPositions(np.asarray(positions_nm, dtype=float) * unit.nanometer)
        return float(self.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))

    def ev_ang(self, positions_nm: np.ndarray):
        """(energy eV, forces eV/Å [N,3])."""
        e, f = self.kj_nm(positions_nm)
        return e / KJMOL_PER_EV, f / (KJMOL_PER_EV * NM_TO_ANG)


def _make_atoms(
    positions_nm: np.ndarray,
    n_molecules: int,
    energy_ev: float,
    forces_ev_ang: np.ndarray,
    box_nm: Optional[np.ndarray],
    info: dict,
) -> Atoms:
    symbols = "OHH" * n_molecules
    pos = np.asarray(positions_nm, dtype=float) * NM_TO_ANG
    if box_nm is not None:
        atoms = Atoms(symbols, positions=pos, cell=np.asarray(box_nm) * NM_TO_ANG, pbc=True)
    else:
        atoms = Atoms(symbols, positions=pos, cell=np.zeros((3, 3)), pbc=False)
    if not (np.isfinite(energy_ev) and np.all(np.isfinite(forces_ev_ang))):
        raise RuntimeError(f"non-finite teacher label for {info}")
    atoms.calc = SinglePointCalculator(atoms, energy=float(energy_ev), forces=np.array(forces_ev_ang))
    atoms.info.update({"charge": 0, "spin": 1, "teacher": TEACHER_NAME, "n_molecules": int(n_molecules)})
    atoms.info.update(info)
    return atoms


def _check_geometry(pos_nm: np.ndarray, n_molecules: int, box_nm: Optional[np.ndarray], where: str) -> None:
    """Guard against the unphysical region of TIP3P (H has no LJ core): intermolecular H...O >= 0.12 nm,
    intramolecular O-H within [0.07, 0.13] nm."""
    p = pos_nm.reshape(n_molecules, 3, 3)
    oh = np.linalg.norm(p[:, 1:] - p[:, :1], axis=-1)
    if oh.min() < 0.07 or oh.max() > 0.13:
        raise RuntimeError(f"{where}: O-H bond length out of range ({oh.min():.4f}-{oh.max():.4f} nm)")
    if n_molecules < 2:
        return
    o = p[:, 0]
    h = p[:, 1:].reshape(-1, 3)
    d = h[:, None, :] - o[None, :, :]
    if box_nm is not None:
        L = np.diag(box_nm)
        d -= L * np.round(d / L)
    r = np.linalg.norm(d, axis=-1)
    own = np.repeat(np.arange(n_molecules), 2)
    r[np.arange(len(h)), own] = np.inf
    if r.min() < 0.12:
        raise RuntimeError(f"{where}: intermolecular H...O distance {r.min():.4f} nm < 0.12 nm")


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------
CPU_THREADS: Optional[int] = None  # OpenMM CPU-platform threads for MD (None: OpenMM's default)


def _cpu_platform():
    platform = openmm.Platform.getPlatformByName("CPU")
    props = {"DeterministicForces": "true"}
    if CPU_THREADS:
        props["Threads"] = str(CPU_THREADS)
    return platform, props


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
    every ``stride_fs``. MD runs on the CPU platform with a looser Ewald tolerance;
    labels are computed in double precision with the full teacher. ``atoms.info`` gets
    ``temperature_K``, ``density_g_cm3``, ``config_type='bulk'``, ``traj``, ``frame`` and
    ``kinetic_temperature_K`` (instantaneous, from the MD).
    """
    system_label, top, pos0, box = build_water_system(n_molecules, density_g_cm3, seed)
    system_md = _create_system(top, periodic=True, ewald_tolerance=MD_EWALD_TOLERANCE)
    labeller = TeacherLabeller(system_label, box)

    step_ps = timestep_fs * 1e-3
    integ = openmm.LangevinMiddleIntegrator(
        temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, step_ps * unit.picoseconds
    )
    integ.setRandomNumberSeed(seed_for("langevin", seed))
    platform, props = _cpu_platform()
    ctx = openmm.Context(system_md, integ, platform, props)
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    ctx.setPositions(pos0 * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 0)
    ctx.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed_for("velocities", seed))
    n_eq = int(round(equilibration_ps / step_ps))
    n_stride = max(1, int(round(stride_fs * 1e-3 / step_ps)))
    # Thermalise quickly first: the first quarter of the equilibration (at most 0.5 ps) uses a
    # 10x larger friction, then the production friction for the rest of the run.
    n_hot = min(n_eq // 4, int(round(0.5 / step_ps)))
    if n_hot:
        integ.setFriction(10 * friction_per_ps / unit.picosecond)
        integ.step(n_hot)
        integ.setFriction(friction_per_ps / unit.picosecond)
    if n_eq - n_hot:
        integ.step(n_eq - n_hot)
    dof = 3 * system_md.getNumParticles() - 3  # CMMotionRemover removes 3 DOF
    frames = []
    for i in range(n_frames):
        integ.step(n_stride)
        st = ctx.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=True)
        pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        where = f"{traj or 'bulk'} frame {i}"
        _check_geometry(pos, n_molecules, box, where)
        e, f = labeller.ev_ang(pos)
        atoms = _make_atoms(
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
                "kinetic_temperature_K": round(2 * ke / (dof * KB_KJMOL), 2),
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
    ctx.setPositions(_random_orient(_reference_water_geometry(), rng) * unit.nanometer)
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
        _check_geometry(pos, 1, None, f"{traj} frame {i}")
        e, f = labeller.ev_ang(pos)
        atoms = _make_atoms(
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
        r = rng.uniform(r_min_ang, r_max_ang) / NM_TO_ANG
        pool = pools[T]
        for _ in range(max_tries):
            a = _random_orient(pool[rng.integers(len(pool))], rng)
            b = _random_orient(pool[rng.integers(len(pool))], rng)
            u = rng.normal(size=3)
            b = b + r * u / np.linalg.norm(u)
            d = np.linalg.norm(np.concatenate([a[1:, None] - b[None, :1], b[1:, None] - a[None, :1]]), axis=-1)
            if d.min() * NM_TO_ANG < min_h_o_ang:
                continue
            pos = np.concatenate([a, b])
            e_int = dimer.energy_kj(pos) - mono.energy_kj(a) - mono.energy_kj(b)
            if rng.random() < math.exp(-max(e_int, 0.0) / (KB_KJMOL * T)):
                break
        else:
            continue  # no acceptable orientation at this distance: draw a new distance
        e, f = dimer.ev_ang(pos)
        atoms = _make_atoms(
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
                "r_OO_ang": round(r * NM_TO_ANG, 4),
                "interaction_energy_eV": e_int / KJMOL_PER_EV,
            },
        )
        frames.append(atoms)
        if callback is not None:
            callback(atoms)
    return frames


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
def teacher_for_atoms(atoms: Atoms) -> TeacherLabeller:
    """The teacher (double precision) matching an ``Atoms`` written by this module."""
    n = len(atoms) // 3
    if atoms.pbc.any():
        top = _water_topology(n, float(atoms.cell[0, 0]) / NM_TO_ANG)
        box = np.asarray(atoms.cell) / NM_TO_ANG
        return TeacherLabeller(_create_system(top, periodic=True), box)
    return TeacherLabeller(build_gas_system(n)[0])


def finite_difference_check(
    atoms: Atoms, n_components: int = 24, n_directions: int = 4, h_ang: float = 1e-5, seed: int = 0
) -> dict:
    """Central finite differences of the teacher energy vs its forces (double precision).

    Note: the Ewald real-space sum is truncated at the cutoff, so the energy jumps by
    ~q_i q_j erfc(alpha r_c)/r_c (about 4e-4 kJ/mol for an O-H pair at tolerance 1e-5) when a
    pair crosses 0.45 nm; a displacement that makes a pair cross shows up as an apparent
    force error of that jump / 2h. With the default h = 1e-5 Å such crossings are rare.

    Checks ``n_components`` random Cartesian components and ``n_directions`` random
    directional derivatives of the whole configuration. Returns errors in eV/Å.
    """
    rng = np.random.default_rng(seed)
    lab = teacher_for_atoms(atoms)
    x0 = atoms.get_positions() / NM_TO_ANG
    h = h_ang / NM_TO_ANG
    e0, f0 = lab.ev_ang(x0)
    comp_err, comp_ref = [], []
    for flat in rng.choice(x0.size, size=min(n_components, x0.size), replace=False):
        i, k = divmod(int(flat), 3)
        xp, xm = x0.copy(), x0.copy()
        xp[i, k] += h
        xm[i, k] -= h
        fd = -(lab.energy_kj(xp) - lab.energy_kj(xm)) / (2 * h) / (KJMOL_PER_EV * NM_TO_ANG)
        comp_err.append(fd - f0[i, k])
        comp_ref.append(f0[i, k])
    dir_err, dir_ref = [], []
    for _ in range(n_directions):
        d = rng.normal(size=x0.shape)
        d /= np.linalg.norm(d)
        fd = -(lab.energy_kj(x0 + h * d) - lab.energy_kj(x0 - h * d)) / (2 * h) / (KJMOL_PER_EV * NM_TO_ANG)
        an = float(np.sum(f0 * d))
        dir_err.append(fd - an)
        dir_ref.append(an)
    comp_err, comp_ref = np.array(comp_err), np.array(comp_ref)
    dir_err, dir_ref = np.array(dir_err), np.array(dir_ref)
    stored = atoms.get_forces()
    return {
        "h_ang": h_ang,
        "energy_eV": e0,
        "stored_energy_diff_eV": float(abs(e0 - atoms.get_potential_energy())),
        "stored_forces_max_diff_eV_ang": float(np.abs(stored - f0).max()),
        "component_max_abs_err_eV_ang": float(np.abs(comp_err).max()),
        "component_rms_err_eV_ang": float(np.sqrt(np.mean(comp_err**2))),
        "component_rms_force_eV_ang": float(np.sqrt(np.mean(comp_ref**2))),
        "directional_max_rel_err": float(np.max(np.abs(dir_err) / np.maximum(np.abs(dir_ref), 1e-12))),
        "directional_max_abs_err_eV_ang": float(np.abs(dir_err).max()),
    }


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def split_count(n: int, val_fraction: float) -> tuple[int, int]:
    """(n_train, n_val) for ``n`` frames: n_val = max(1, round(n * val_fraction)) when both are possible."""
    if val_fraction <= 0 or n < 2:
        return n, 0
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    return n - n_val, n_val


def _summary_rows(frames: Sequence[Atoms], split: str) -> list[dict]:
    groups: dict = {}
    for a in frames:
        key = (a.info["config_type"], a.info["n_molecules"], a.info["temperature_K"], a.info["density_g_cm3"])
        groups.setdefault(key, []).append(a)
    rows = []
    for (kind, n, T, rho), fr in groups.items():
        e = np.array([a.get_potential_energy() / n for a in fr])
        f = np.concatenate([a.get_forces().ravel() for a in fr])
        tk = [a.info.get("kinetic_temperature_K") for a in fr]
        tk = [x for x in tk if x is not None]
        rows.append(
            {
                "split": split,
                "kind": kind,
                "n_mol": n,
                "T_K": T,
                "rho": rho,
                "frames": len(fr),
                "atoms": sum(len(a) for a in fr),
                "E_mol_mean_eV": float(e.mean()),
                "E_mol_std_meV": float(e.std() * 1e3),
                "F_rms_eV_A": float(np.sqrt(np.mean(f**2))),
                "T_kin_K": float(np.mean(tk)) if tk else float("nan"),
            }
        )
    return rows


def _print_table(rows: list[dict], file=sys.stdout) -> None:
    hdr = (
        f"{'split':5} {'kind':7} {'n_mol':>5} {'T/K':>5} {'rho':>5} {'frames':>6} {'atoms':>7} "
        f"{'<E>/mol eV':>11} {'sd meV/mol':>10} {'F_rms eV/A':>10} {'T_kin/K':>8}"
    )
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for r in rows:
        print(
            f"{r['split']:5} {r['kind']:7} {r['n_mol']:5d} {r['T_K']:5.0f} {r['rho']:5.2f} {r['frames']:6d} "
            f"{r['atoms']:7d} {r['E_mol_mean_eV']:11.4f} {r['E_mol_std_meV']:10.2f} {r['F_rms_eV_A']:10.3f} "
            f"{r['T_kin_K']:8.1f}",
            file=file,
        )


def _write_and_verify(path: str, frames: Sequence[Atoms]) -> None:
    import os

    import ase.io

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ase.io.write(path, list(frames), format="extxyz")
    back = ase.io.read(path, index=":", format="extxyz")
    if len(back) != len(frames):
        raise RuntimeError(f"{path}: wrote {len(frames)} frames, read back {len(back)}")
    for a, b in zip(frames, back):
        de = abs(a.get_potential_energy() - b.get_potential_energy())
        df = np.abs(a.get_forces() - b.get_forces()).max()
        dx = np.abs(a.get_positions() - b.get_positions()).max()
        if (
            de > 1e-9 * max(1.0, abs(a.get_potential_energy()))
            or df > 1e-7
            or dx > 1e-7
            or bool(a.pbc.any()) != bool(b.pbc.any())
        ):
            raise RuntimeError(f"{path}: extxyz round trip failed (dE={de}, dF={df}, dx={dx})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m allscaip.workflows.teacher.water",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=None, help="extxyz with every frame (train + val)")
    p.add_argument("--train-out", default=None, help="extxyz for the training split")
    p.add_argument("--val-out", default=None, help="extxyz for the validation split")
    p.add_argument("--n-molecules", type=_ints, default=[32, 64], help="comma-separated box sizes")
    p.add_argument("--temperatures", type=_floats, default=[250.0, 300.0, 350.0, 400.0], help="K")
    p.add_argument("--densities", type=_floats, default=[0.90, 1.00, 1.10], help="g/cm^3")
    p.add_argument(
        "--frames-per-state",
        type=_ints,
        default=[33, 6],
        help="frames per (T, density) state, one value or one per --n-molecules entry; "
        "split into train/val trajectories by --val-fraction",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="per state, this fraction of the frames comes from a separate, independent "
        "validation trajectory (at least 1)",
    )
    p.add_argument("--n-monomers", type=int, default=100, help="gas-phase single molecules (over all T)")
    p.add_argument("--n-dimers", type=int, default=150, help="gas-phase dimers, O-O 2.5-8 Å")
    p.add_argument("--equilibration-ps", type=float, default=2.0)
    p.add_argument("--stride-fs", type=float, default=200.0, help="time between bulk frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="OpenMM CPU threads (default: OpenMM's)")
    p.add_argument("--no-fd-check", action="store_true", help="skip the finite-difference force check")
    args = p.parse_args(argv)

    from tqdm import tqdm

    global CPU_THREADS
    if args.threads:
        CPU_THREADS = args.threads
    if not (args.out or args.train_out or args.val_out):
        p.error("give at least one of --out, --train-out, --val-out")
    fps = args.frames_per_state
    if len(fps) == 1:
        fps = fps * len(args.n_molecules)
    if len(fps) != len(args.n_molecules):
        p.error("--frames-per-state needs one value or one per --n-molecules entry")

    t0 = time.time()
    train: list[Atoms] = []
    val: list[Atoms] = []
    # (kind, n, T, rho, split, n_frames)
    jobs = []
    for n, nf in zip(args.n_molecules, fps):
        ntr, nva = split_count(nf, args.val_fraction)
        for T in args.temperatures:
            for rho in args.densities:
                jobs.append(("bulk", n, T, rho, "train", ntr))
                if nva:
                    jobs.append(("bulk", n, T, rho, "val", nva))
    nT = len(args.temperatures)
    for i, T in enumerate(args.temperatures):  # spread the monomers over temperatures
        n_t = args.n_monomers // nT + (1 if i < args.n_monomers % nT else 0)
        ntr, nva = split_count(n_t, args.val_fraction)
        jobs.append(("monomer", 1, T, 0.0, "train", ntr))
        if nva:
            jobs.append(("monomer", 1, T, 0.0, "val", nva))
    ntr, nva = split_count(args.n_dimers, args.val_fraction)
    jobs.append(("dimer", 2, 0.0, 0.0, "train", ntr))
    if nva:
        jobs.append(("dimer", 2, 0.0, 0.0, "val", nva))

    total = sum(j[-1] for j in jobs)
    bar = tqdm(total=total, unit="frame", desc="teacher", file=sys.stderr)
    cb = lambda _a: bar.update(1)  # noqa: E731
    for kind, n, T, rho, split, nf in jobs:
        if nf == 0:
            continue
        seed = seed_for(args.seed, kind, n, T, rho, split)
        if kind == "bulk":
            name = f"bulk_n{n}_T{T:g}_rho{rho:.2f}_{split}"
            bar.set_postfix_str(name)
            fr = sample_frames(
                n,
                T,
                rho,
                nf,
                seed,
                equilibration_ps=args.equilibration_ps,
                stride_fs=args.stride_fs,
                traj=name,
                callback=cb,
            )
        elif kind == "monomer":
            name = f"monomer_T{T:g}_{split}"
            bar.set_postfix_str(name)
            fr = sample_monomers(T, nf, seed, traj=name, callback=cb)
        else:
            name = f"dimer_{split}"
            bar.set_postfix_str(name)
            fr = sample_dimers(args.temperatures, nf, seed, traj=name, callback=cb)
        (train if split == "train" else val).extend(fr)
    bar.close()
    t_gen = time.time() - t0

    if args.out:
        _write_and_verify(args.out, train + val)
    if args.train_out:
        _write_and_verify(args.train_out, train)
    if args.val_out:
        _write_and_verify(args.val_out, val)

    rows = _summary_rows(train, "train") + _summary_rows(val, "val")
    _print_table(rows)
    allf = train + val
    bulk = [a for a in allf if a.info["config_type"] == "bulk"]
    f_all = np.concatenate([a.get_forces().ravel() for a in allf])
    print(f"\nframes: {len(train)} train + {len(val)} val = {len(allf)}; atoms: {sum(len(a) for a in allf)}")
    print(
        f"force RMS (all components, all frames): {np.sqrt(np.mean(f_all**2)):.4f} eV/Å; "
        f"max |F|: {np.abs(f_all).max():.3f} eV/Å"
    )
    if bulk:
        e_mol = np.array([a.get_potential_energy() / a.info["n_molecules"] for a in bulk])
        print(
            f"bulk energy per molecule: mean {e_mol.mean():.4f} eV, sd {e_mol.std():.4f} eV, "
            f"range [{e_mol.min():.4f}, {e_mol.max():.4f}] eV"
        )
    for path in (args.out, args.train_out, args.val_out):
        if path:
            import os

            print(f"wrote {path}: {os.path.getsize(path) / 1e6:.2f} MB")
    if not args.no_fd_check and bulk:
        res = finite_difference_check(bulk[0])
        print(
            f"finite-difference check on {bulk[0].info['traj']} frame {bulk[0].info['frame']} "
            f"({len(bulk[0])} atoms, h = {res['h_ang']} Å, double precision):"
        )
        for k, v in res.items():
            print(f"  {k}: {v:.3e}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"generation wall time: {t_gen:.1f} s; total {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
