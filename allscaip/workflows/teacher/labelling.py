"""Teacher labels: double-precision energies and forces of water (and NaCl solution) configurations.

Each labelled frame is an ``ase.Atoms`` with a ``SinglePointCalculator(energy, forces)``,
``pbc=True`` and a cubic cell for bulk frames (``pbc=False`` and a zero cell for gas-phase
frames) and ``info`` keys ``charge=0``, ``spin=1``, ``teacher`` and ``n_molecules`` (waters), plus
what the sampler adds (:mod:`.sampling`). The water teacher is defined in :mod:`.system`, the
electrolyte teacher (waters, then Na, then Cl atoms) in :mod:`.electrolyte`;
:func:`teacher_for_atoms` picks the one a frame needs.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import openmm
import openmm.unit as unit
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list

from allscaip.units import ANGSTROM_PER_NM, EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL
from allscaip.workflows.teacher.electrolyte import (
    ELECTROLYTE_TEACHER_NAME,
    composition,
    create_solution_system,
    solution_topology,
)
from allscaip.workflows.teacher.system import (
    CUTOFF_NM,
    TEACHER_NAME,
    build_gas_system,
    create_system,
    water_topology,
)

# Guards against the unphysical region of TIP3P (H has no LJ core)
MIN_INTERMOLECULAR_H_O_NM = 0.12
OH_BOND_RANGE_NM = (0.07, 0.13)
#: closest approach of an ion to any other atom (Joung-Cheatham contacts: Cl-H ~0.21 nm,
#: Na-O ~0.23 nm in the liquid); closer means the MD fell into the Coulomb singularity of a bare H
MIN_ION_CONTACT_NM = 0.15


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
        return e / EV_TO_KJ_PER_MOL, f / EV_PER_A_TO_KJ_PER_MOL_NM


def make_atoms(
    positions_nm: np.ndarray,
    n_molecules: int,
    energy_ev: float,
    forces_ev_ang: np.ndarray,
    box_nm: Optional[np.ndarray],
    info: dict,
    ions: Sequence[str] = (),
) -> Atoms:
    """A labelled frame (module docstring); ``info`` is added to the standard keys.

    ``ions``: the symbols of the atoms after the ``n_molecules`` waters (Na..., Cl...); with any,
    the frame is the electrolyte teacher's."""
    symbols = ["O", "H", "H"] * n_molecules + list(ions)
    pos = np.asarray(positions_nm, dtype=float) * ANGSTROM_PER_NM
    if box_nm is not None:
        atoms = Atoms(symbols, positions=pos, cell=np.asarray(box_nm) * ANGSTROM_PER_NM, pbc=True)
    else:
        atoms = Atoms(symbols, positions=pos, cell=np.zeros((3, 3)), pbc=False)
    if not (np.isfinite(energy_ev) and np.all(np.isfinite(forces_ev_ang))):
        raise RuntimeError(f"non-finite teacher label for {info}")
    atoms.calc = SinglePointCalculator(atoms, energy=float(energy_ev), forces=np.array(forces_ev_ang))
    teacher = ELECTROLYTE_TEACHER_NAME if len(ions) else TEACHER_NAME
    atoms.info.update({"charge": 0, "spin": 1, "teacher": teacher, "n_molecules": int(n_molecules)})
    atoms.info.update(info)
    return atoms


def check_geometry(pos_nm: np.ndarray, n_molecules: int, box_nm: Optional[np.ndarray], where: str) -> None:
    """Guard against the unphysical region of TIP3P (H has no LJ core): intermolecular H...O >= 0.12 nm,
    intramolecular O-H within [0.07, 0.13] nm, and any atoms after the waters (ions) at least
    :data:`MIN_ION_CONTACT_NM` from every other atom."""
    pos_nm = np.asarray(pos_nm, dtype=float)
    if len(pos_nm) > 3 * n_molecules:
        ions = pos_nm[3 * n_molecules :]
        d = ions[:, None, :] - pos_nm[None, :, :]
        if box_nm is not None:
            L = np.diag(box_nm)
            d -= L * np.round(d / L)
        r = np.linalg.norm(d, axis=-1)
        r[np.arange(len(ions)), 3 * n_molecules + np.arange(len(ions))] = np.inf
        if r.min() < MIN_ION_CONTACT_NM:
            raise RuntimeError(f"{where}: an ion is {r.min():.4f} nm from another atom (< {MIN_ION_CONTACT_NM} nm)")
    p = pos_nm[: 3 * n_molecules].reshape(n_molecules, 3, 3)
    oh = np.linalg.norm(p[:, 1:] - p[:, :1], axis=-1)
    if oh.min() < OH_BOND_RANGE_NM[0] or oh.max() > OH_BOND_RANGE_NM[1]:
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
    if r.min() < MIN_INTERMOLECULAR_H_O_NM:
        raise RuntimeError(f"{where}: intermolecular H...O distance {r.min():.4f} nm < {MIN_INTERMOLECULAR_H_O_NM} nm")


def teacher_for_atoms(atoms: Atoms) -> TeacherLabeller:
    """The teacher (double precision) matching an ``Atoms`` written by this module.

    Water alone gets the water teacher, water with ions the electrolyte teacher; an element
    neither knows is a ``ValueError`` naming the known ones (:func:`.electrolyte.composition`)."""
    n, n_na, n_cl = composition(atoms.get_chemical_symbols())
    if atoms.pbc.any():
        box = np.asarray(atoms.cell) / ANGSTROM_PER_NM
        if n_na:
            top = solution_topology(n, n_na, n_cl, float(box[0, 0]))
            return TeacherLabeller(create_solution_system(top, periodic=True), box)
        return TeacherLabeller(create_system(water_topology(n, float(box[0, 0])), periodic=True), box)
    if n_na:
        return TeacherLabeller(create_solution_system(solution_topology(n, n_na, n_cl, None), periodic=False))
    return TeacherLabeller(build_gas_system(n)[0])


#: how often a finite-difference step is halved to keep every pair on one side of the cutoff;
#: 2^-12 of 1e-5 is still ~1e3 times above the energy's double-precision noise
MAX_HALVINGS = 12
#: pairs this far beyond the cutoff are looked at too (far more than any step moves a pair)
CROSSING_MARGIN_ANG = 0.01


class CutoffPairs(NamedTuple):
    """The pairs of a frame near or inside the teacher's cutoff (:func:`cutoff_pairs`)."""

    i: np.ndarray  # [P] first atom
    j: np.ndarray  # [P] second atom
    d: np.ndarray  # [P, 3] Å, from atom i to the image of atom j


def cutoff_pairs(atoms: Atoms) -> CutoffPairs:
    """Every pair of ``atoms`` within the teacher's cutoff plus :data:`CROSSING_MARGIN_ANG`: built
    once per frame, for all of its finite differences."""
    i, j, d = neighbor_list("ijD", atoms, CUTOFF_NM * ANGSTROM_PER_NM + CROSSING_MARGIN_ANG)
    return CutoffPairs(i, j, d)


def crossing_free_perturbation_step(
    pairs: CutoffPairs, pair_change: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], step: float
) -> float:
    """The largest of ``step, step/2, step/4, ...`` at which no pair distance crosses the
    teacher's cutoff between the perturbations ``-step`` and ``+step``.

    ``pair_change(i, j, d)`` gives the change of each pair vector ``d`` of ``pairs``
    (:func:`cutoff_pairs`) per unit step. The teacher's real-space Ewald and LJ-PME sums are
    truncated at the cutoff, so its energy jumps (about 1e-3 kJ/mol for an O-O pair) when a pair
    crosses it. A central difference that straddles such a jump is off by jump / (2 step):
    0.2 eV/Å in a force at 1e-5 Å, hundreds of bar in a stress at a strain of 1e-5."""
    rc = CUTOFF_NM * ANGSTROM_PER_NM
    change = pair_change(*pairs)
    for _ in range(MAX_HALVINGS + 1):
        side = [np.linalg.norm(pairs.d + s * change, axis=1) > rc for s in (-step, 0.0, step)]
        if not ((side[0] != side[1]) | (side[1] != side[2])).any():
            return step
        step /= 2.0
    raise ValueError(
        f"a pair stays within a step of {2 * step:.1e} of the teacher's {rc} Å cutoff, so no central "
        "difference of the energy avoids its jump there; perturb the frame's positions slightly"
    )


def finite_difference_check(
    atoms: Atoms, n_components: int = 24, n_directions: int = 4, h_ang: float = 1e-5, seed: int = 0
) -> dict:
    """Central finite differences of the teacher energy vs its forces (double precision).

    The Ewald real-space sum is truncated at the cutoff, so the energy jumps by
    ~q_i q_j erfc(alpha r_c)/r_c (about 4e-4 kJ/mol for an O-H pair at tolerance 1e-5) when a
    pair crosses 0.45 nm. Each difference therefore uses the largest of h, h/2, ... at which no
    pair crosses (:func:`crossing_free_perturbation_step`).

    Checks ``n_components`` random Cartesian components and ``n_directions`` random
    directional derivatives of the whole configuration. Returns errors in eV/Å.
    """
    rng = np.random.default_rng(seed)
    lab = teacher_for_atoms(atoms)
    x0 = atoms.get_positions() / ANGSTROM_PER_NM
    e0, f0 = lab.ev_ang(x0)
    pairs = cutoff_pairs(atoms)

    def derivative(direction: np.ndarray) -> float:
        """Central difference of the energy along ``direction`` [N, 3] (unit-free), eV/Å."""
        h = crossing_free_perturbation_step(pairs, lambda i, j, d: direction[j] - direction[i], h_ang) / ANGSTROM_PER_NM
        return (
            (lab.energy_kj(x0 + h * direction) - lab.energy_kj(x0 - h * direction))
            / (2 * h)
            / EV_PER_A_TO_KJ_PER_MOL_NM
        )

    comp_err, comp_ref = [], []
    for flat in rng.choice(x0.size, size=min(n_components, x0.size), replace=False):
        i, k = divmod(int(flat), 3)
        unit_move = np.zeros_like(x0)
        unit_move[i, k] = 1.0
        comp_err.append(-derivative(unit_move) - f0[i, k])
        comp_ref.append(f0[i, k])
    dir_err, dir_ref = [], []
    for _ in range(n_directions):
        d = rng.normal(size=x0.shape)
        d /= np.linalg.norm(d)
        an = float(np.sum(f0 * d))
        dir_err.append(-derivative(d) - an)
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
