"""The flexible-water teacher: its force field, topology, reference geometry and boxes.

The teacher is a classical potential whose energies and forces a small machine-learning
potential is trained to reproduce. It is defined precisely as:

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
* **Labels** (:mod:`.labelling`): potential energy and forces computed in double precision on
  OpenMM's ``Reference`` platform. Energies kJ/mol -> eV (divide by
  :data:`allscaip.units.EV_TO_KJ_PER_MOL`, CODATA 2018 N_A e / 1000), forces kJ/mol/nm -> eV/Å
  (additionally divide by 10), positions nm -> Å. No stress / virial labels
  (OpenMM does not report a virial; :mod:`.stress` adds them by finite differences).
* **Energy zero**: the absolute teacher energy as OpenMM reports it; a monomer at
  its equilibrium geometry has E = 0 (all its non-bonded pairs are excluded), so
  bulk frames carry the (negative) cohesive energy. The trainer fits per-element
  reference energies on top of this.

The liquid workflow runs this same force field as its ``--teacher`` potential, so this module
imports nothing from the rest of the workflows.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

try:  # OpenMM is an optional ("engines") dependency of allscaip.
    import openmm
    import openmm.app as app
    import openmm.unit as unit
except ImportError as exc:  # pragma: no cover - exercised only without OpenMM
    raise ImportError(
        "the water teacher (allscaip.workflows.teacher) needs OpenMM (pip install openmm==8.6.1)"
    ) from exc

from ase import Atoms

from allscaip.geometry import random_rotation
from allscaip.reproducible import seed_for
from allscaip.structures import water_box
from allscaip.units import ANGSTROM_PER_NM, volume_A3_at_density

FORCE_FIELD_FILE = "tip3p.xml"
CUTOFF_NM = 0.45
EWALD_TOLERANCE = 1e-5  # labels
MD_EWALD_TOLERANCE = 5e-4  # sampling only
TEACHER_NAME = "openmm-tip3p-flexible-ljpme"

# tip3p.xml equilibrium geometry (used to build starting structures)
R_OH_NM = 0.09572
THETA_HOH_RAD = 1.82421813418

_FORCE_FIELDS: dict[str, app.ForceField] = {}


def force_field(path: str = FORCE_FIELD_FILE) -> app.ForceField:
    """One of OpenMM's bundled force-field files, by default ``tip3p.xml`` (each read once)."""
    if path not in _FORCE_FIELDS:
        _FORCE_FIELDS[path] = app.ForceField(path)
    return _FORCE_FIELDS[path]


def water_molar_mass() -> float:
    """g/mol of one tip3p.xml water (O 15.99943 + 2 H 1.007947)."""
    return 15.99943 + 2 * 1.007947


def box_length_nm(n_molecules: int, density_g_cm3: float) -> float:
    """Edge of a cubic box holding ``n_molecules`` waters at the given mass density."""
    return volume_A3_at_density(n_molecules * water_molar_mass(), density_g_cm3) ** (1.0 / 3.0) / ANGSTROM_PER_NM


def water_topology(n_molecules: int, box_nm: Optional[float]) -> app.Topology:
    """``n_molecules`` waters (residues HOH: O, H1, H2 with two O-H bonds), cubic box if ``box_nm``."""
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


def create_system(
    top: app.Topology,
    periodic: bool,
    ewald_tolerance: float = EWALD_TOLERANCE,
    cutoff_nm: float = CUTOFF_NM,
    force_field_file: str = FORCE_FIELD_FILE,
) -> openmm.System:
    """The teacher's OpenMM System for ``top`` (the definition in the module docstring).

    ``force_field_file``: the bundled file to read; the electrolyte teacher
    (:mod:`.electrolyte`) passes one whose water is this one and which adds ions."""
    ff = force_field(force_field_file)
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


def reference_water_geometry() -> np.ndarray:
    """[3, 3] nm: O at the origin, H atoms in the xy plane (tip3p.xml equilibrium)."""
    s, c = math.sin(THETA_HOH_RAD / 2), math.cos(THETA_HOH_RAD / 2)
    return np.array([[0.0, 0.0, 0.0], [R_OH_NM * s, R_OH_NM * c, 0.0], [-R_OH_NM * s, R_OH_NM * c, 0.0]])


def reference_water_atoms() -> Atoms:
    """One water in Å (O, H, H): O at the origin, H atoms in the xy plane (tip3p.xml equilibrium)."""
    r = R_OH_NM * ANGSTROM_PER_NM
    s, c = math.sin(THETA_HOH_RAD / 2), math.cos(THETA_HOH_RAD / 2)
    return Atoms("OHH", positions=[[0, 0, 0], [r * s, r * c, 0], [-r * s, r * c, 0]])


def random_orient(geom_nm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate a water geometry ([3,3], O first) about its O atom."""
    return (geom_nm - geom_nm[0]) @ random_rotation(rng).T


def build_water_system(n_molecules: int, density_g_cm3: float, seed: int, *, ewald_tolerance: float = EWALD_TOLERANCE):
    """A cubic periodic box of flexible TIP3P water (the teacher definition, module docstring).

    Molecules are placed by :func:`allscaip.structures.water_box` (a jittered simple-cubic grid,
    randomly chosen sites when the grid has more sites than molecules, uniformly random
    orientations about each molecule's centre), whole and unwrapped (the teacher's bonds are not
    periodic); the structure is not minimised here. Returns ``(system, topology, positions_nm
    [3n, 3] ndarray, box_vectors_nm [3, 3] ndarray)``; atoms are ordered O, H, H per molecule.
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
    template = reference_water_atoms()
    template.positions -= template.positions.mean(axis=0)  # rotate about the molecular centre
    box = water_box(n_molecules, density_g_cm3=density_g_cm3, rng=rng, periodic=False, template=template)
    positions = box.positions / ANGSTROM_PER_NM
    top = water_topology(n_molecules, L)
    system = create_system(top, periodic=True, ewald_tolerance=ewald_tolerance)
    return system, top, positions, np.eye(3) * L


def build_gas_system(n_molecules: int = 1):
    """Gas-phase (non-periodic, NoCutoff) teacher for ``n_molecules`` waters: ``(system, topology)``."""
    top = water_topology(n_molecules, None)
    return create_system(top, periodic=False), top
