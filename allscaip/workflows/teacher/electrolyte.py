"""The aqueous-NaCl teacher: the water teacher's flexible TIP3P plus Na⁺ and Cl⁻ ions.

It extends the water teacher (:mod:`.system`) and changes nothing in its water:

* **Force field**: OpenMM 8.6.1's bundled ``amber14/tip3p.xml``. Its water (residue HOH) has
  exactly ``tip3p.xml``'s parameters (charges, O-O Lennard-Jones, harmonic O-H bond and H-O-H
  angle; ``tests/test_electrolyte_teacher.py`` checks that the two files give the same water
  energies) and it adds the **Joung-Cheatham (2008) ions for TIP3P** (AmberTools
  ``frcmod.ionsjc_tip3p``), residues NA and CL:

  ====  =========  =============  ==================  ============
  ion   charge/e   sigma/nm       epsilon/(kJ/mol)    mass/amu
  ====  =========  =============  ==================  ============
  Na⁺   +1         0.2439280690   0.3658460312        22.99
  Cl⁻   -1         0.4477656957   0.1489127440        35.45
  ====  =========  =============  ==================  ============

  Lorentz-Berthelot combining (sigma arithmetic, epsilon geometric mean), as the file's
  NonbondedForce does. Joung-Cheatham is the standard AMBER ion model fitted to TIP3P (hydration
  free energies, lattice constants and energies of the NaCl crystal), so it is the ion model
  that belongs with this water.
* **Non-bonded treatment**: the water teacher's, unchanged (:func:`.system.create_system`):
  ``LJPME`` with a 0.45 nm cutoff, Ewald tolerance 1e-5, no switching, no dispersion
  correction. Coulomb is particle-mesh Ewald, as the issue asks; the dispersion is also Ewald
  summed, so, as for water, nothing but the r^-12 tail beyond 0.45 nm depends on the box or
  cutoff, and one teacher describes the 100-atom training boxes and the 1500-atom test boxes.
  One consequence to know: OpenMM's LJPME uses the exact (Lorentz-Berthelot) Lennard-Jones
  inside the cutoff and geometric-mean C6 coefficients for the dispersion beyond it. For
  water-water pairs the two agree (O-O is one type, H has no LJ); for an ion pair beyond
  0.45 nm the Na-Cl dispersion is -4 sqrt(eps_Na eps_Cl) (sigma_Na sigma_Cl)^3 / r^6 rather than
  the combined-sigma form (at 0.5 nm: -0.08 instead of -0.10 kJ/mol, against 278 kJ/mol of
  Coulomb). :func:`ion_pair_energy_kj` writes out exactly this.
* **Gas phase** (an ion pair alone): the same force field with ``NoCutoff``.
* **Labels**: as the water teacher's (:mod:`.labelling`, double precision, eV, eV/Å, stress by
  strain finite differences in :mod:`.stress`). Atoms are ordered waters first (O, H, H), then
  every Na, then every Cl; :func:`composition` reads that back from an ``ase.Atoms`` and refuses
  any other element (naming the ones the teacher knows) or order. Frames are neutral
  (``n_Na == n_Cl``; the net charge of a periodic box would be an Ewald artefact).
* **Energy zero**: isolated ions and a monomer at its equilibrium geometry have E = 0.

Box volumes: the water at ``water_density`` plus :data:`NACL_APPARENT_MOLAR_VOLUME_CM3_MOL` per
ion pair.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from allscaip.reproducible import seed_for
from allscaip.structures import water_box
from allscaip.units import ANGSTROM_PER_NM, AVOGADRO, volume_A3_at_density
from allscaip.workflows.teacher.system import (
    CUTOFF_NM,
    EWALD_TOLERANCE,
    create_system,
    reference_water_atoms,
    water_molar_mass,
    water_topology,
)

ION_FORCE_FIELD_FILE = "amber14/tip3p.xml"
ELECTROLYTE_TEACHER_NAME = "openmm-tip3p-flexible-jc-nacl-ljpme"
#: every element the teacher labels, in the order atoms must come (waters, then Na, then Cl)
ELEMENTS = ("O", "H", "Na", "Cl")
#: (residue, atom name, element) of each ion in ``amber14/tip3p.xml``
IONS = {"Na": ("NA", "NA", app.element.sodium), "Cl": ("CL", "CL", app.element.chlorine)}
#: masses in ``amber14/tip3p.xml`` (amu)
ION_MASS = {"Na": 22.99, "Cl": 35.45}
#: Joung-Cheatham TIP3P parameters in ``amber14/tip3p.xml``: (charge e, sigma nm, epsilon kJ/mol)
ION_PARAMETERS = {"Na": (1.0, 0.2439280690268249, 0.3658460312), "Cl": (-1.0, 0.4477656957373345, 0.148912744)}
#: apparent molar volume of NaCl in water at 25 °C (cm³/mol): 16.6 at infinite dilution,
#: 18.0 near 1 mol/kg, 19.1 at 2 mol/kg (experiment); the box holds the water plus this per pair
NACL_APPARENT_MOLAR_VOLUME_CM3_MOL = 18.0
#: Coulomb constant e²/(4π ε0) in kJ/mol nm (OpenMM's ONE_4PI_EPS0)
COULOMB_KJ_NM = 138.935456


def molality(n_waters: int, n_pairs: int) -> float:
    """mol/kg of NaCl for ``n_pairs`` ion pairs in ``n_waters`` waters."""
    return n_pairs / (n_waters * water_molar_mass() * 1e-3)


def composition(symbols: Sequence[str]) -> tuple[int, int, int]:
    """``(n_waters, n_Na, n_Cl)`` of atoms ordered waters (O, H, H), then Na, then Cl.

    Raises ``ValueError`` for an element the teacher does not know (naming the ones it does),
    for atoms out of that order, or for a charged system."""
    symbols = list(symbols)
    unknown = sorted(set(symbols) - set(ELEMENTS))
    if unknown:
        raise ValueError(
            f"element(s) {unknown} are not in the teacher, which knows {', '.join(ELEMENTS)} "
            "(water and NaCl); remove those atoms or use a teacher with them"
        )
    n = Counter(symbols)
    n_w = n["O"]
    expected = ["O", "H", "H"] * n_w + ["Na"] * n["Na"] + ["Cl"] * n["Cl"]
    if symbols != expected:
        raise ValueError(
            "atoms must be ordered waters (O, H, H per molecule), then every Na, then every Cl; "
            f"got {len(symbols)} atoms ({dict(n)}) in another order"
        )
    if n["Na"] != n["Cl"]:
        raise ValueError(f"the teacher labels neutral systems only: {n['Na']} Na+ and {n['Cl']} Cl-")
    return n_w, n["Na"], n["Cl"]


def solution_topology(n_waters: int, n_na: int, n_cl: int, box_nm: Optional[float]) -> app.Topology:
    """``n_waters`` waters (:func:`.system.water_topology`) then ``n_na`` NA and ``n_cl`` CL residues."""
    top = water_topology(n_waters, box_nm)
    chain = top.addChain()
    for symbol, count in (("Na", n_na), ("Cl", n_cl)):
        res_name, atom_name, element = IONS[symbol]
        for _ in range(count):
            top.addAtom(atom_name, element, top.addResidue(res_name, chain))
    return top


def create_solution_system(
    top: app.Topology, periodic: bool, ewald_tolerance: float = EWALD_TOLERANCE
) -> openmm.System:
    """The teacher's OpenMM System for ``top`` (module docstring)."""
    return create_system(top, periodic, ewald_tolerance=ewald_tolerance, force_field_file=ION_FORCE_FIELD_FILE)


def total_charge(system: openmm.System) -> float:
    """Sum of the NonbondedForce charges (e)."""
    force = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    return sum(
        force.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in range(force.getNumParticles())
    )


def solution_box_nm(n_waters: int, n_pairs: int, water_density_g_cm3: float) -> float:
    """Edge of the cubic box: the water at ``water_density_g_cm3`` plus the ions' apparent volume."""
    water_A3 = volume_A3_at_density(n_waters * water_molar_mass(), water_density_g_cm3)
    ions_A3 = n_pairs * NACL_APPARENT_MOLAR_VOLUME_CM3_MOL * 1e24 / AVOGADRO
    return (water_A3 + ions_A3) ** (1.0 / 3.0) / ANGSTROM_PER_NM


def solution_density_g_cm3(n_waters: int, n_pairs: int, box_nm: float) -> float:
    """Mass density of the solution in a cubic box of edge ``box_nm``."""
    mass = n_waters * water_molar_mass() + n_pairs * (ION_MASS["Na"] + ION_MASS["Cl"])
    return mass / AVOGADRO / (box_nm * 1e-7) ** 3


def _minimum_image(d: np.ndarray, box: float) -> np.ndarray:
    return d - box * np.round(d / box)


def build_solution_system(
    n_waters: int,
    n_pairs: int,
    water_density_g_cm3: float,
    seed: int,
    *,
    pair_distance_nm: Optional[float] = None,
    ewald_tolerance: float = EWALD_TOLERANCE,
):
    """A cubic periodic box of ``n_waters`` flexible waters and ``n_pairs`` Na⁺/Cl⁻ pairs.

    :func:`allscaip.structures.water_box` fills a jittered grid with ``n_waters + 2 n_pairs``
    randomly oriented waters; ``2 n_pairs`` of them, drawn at random, are replaced by ions at
    their centres. With ``pair_distance_nm`` (one pair only) the Cl⁻ takes the site whose
    minimum-image distance from the Na⁺ is closest to it (the sampler's restraint then holds the
    pair at that separation). Not minimised. Returns ``(system, topology, positions_nm,
    box_vectors_nm)`` like :func:`.system.build_water_system`.
    """
    if n_waters < 1 or n_pairs < 0:
        raise ValueError(f"need n_waters >= 1 and n_pairs >= 0, got {n_waters} and {n_pairs}")
    if pair_distance_nm is not None and n_pairs != 1:
        raise ValueError(f"pair_distance_nm places one ion pair; got n_pairs={n_pairs}")
    L = solution_box_nm(n_waters, n_pairs, water_density_g_cm3)
    if 2 * CUTOFF_NM >= L:
        raise ValueError(
            f"box edge {L:.3f} nm ({n_waters} waters, {n_pairs} NaCl) is too small for the teacher's "
            f"{CUTOFF_NM} nm cutoff (needs > {2 * CUTOFF_NM} nm): add waters"
        )
    rng = np.random.default_rng(seed_for("build-solution", n_waters, n_pairs, float(water_density_g_cm3), seed))
    n_sites = n_waters + 2 * n_pairs
    g = int(np.ceil(n_sites ** (1.0 / 3.0) - 1e-9))
    template = reference_water_atoms()
    template.positions -= template.positions.mean(axis=0)
    spacing_A = L * ANGSTROM_PER_NM / g
    sites = water_box(n_sites, spacing=spacing_A, rng=rng, periodic=False, template=template)
    molecules = sites.positions.reshape(n_sites, 3, 3) / ANGSTROM_PER_NM
    centres = molecules.mean(axis=1)
    order = rng.permutation(n_sites)
    if pair_distance_nm is None:
        ion_sites = order[: 2 * n_pairs]
    else:
        na = order[0]
        r = np.linalg.norm(_minimum_image(centres - centres[na], L), axis=1)
        r[na] = np.inf
        ion_sites = np.array([na, int(np.argmin(np.abs(r - pair_distance_nm)))])
    water_sites = np.setdiff1d(np.arange(n_sites), ion_sites)
    positions = np.concatenate([molecules[water_sites].reshape(-1, 3), centres[ion_sites]])
    top = solution_topology(n_waters, n_pairs, n_pairs, L)
    system = create_solution_system(top, periodic=True, ewald_tolerance=ewald_tolerance)
    return system, top, positions, np.eye(3) * L


def build_gas_ion_pair() -> tuple[openmm.System, app.Topology]:
    """One Na⁺ and one Cl⁻, no periodic box (``NoCutoff``): ``(system, topology)``."""
    top = solution_topology(0, 1, 1, None)
    return create_solution_system(top, periodic=False), top


def ion_pair_energy_kj(r_nm: np.ndarray | float, beyond_cutoff_nm: Optional[float] = None) -> np.ndarray:
    """Gas-phase Na⁺-Cl⁻ energy (kJ/mol) at separation ``r_nm``: Coulomb + Lennard-Jones (LB).

    With ``beyond_cutoff_nm``, pairs farther apart than it get what the periodic teacher (LJPME)
    gives them instead of the LB Lennard-Jones: only the geometric-mean dispersion (module
    docstring)."""
    r = np.asarray(r_nm, dtype=float)
    (q1, s1, e1), (q2, s2, e2) = ION_PARAMETERS["Na"], ION_PARAMETERS["Cl"]
    eps = np.sqrt(e1 * e2)
    sr6 = ((s1 + s2) / 2 / r) ** 6
    lj = 4 * eps * (sr6**2 - sr6)
    if beyond_cutoff_nm is not None:
        lj = np.where(r > beyond_cutoff_nm, -4 * eps * (s1 * s2) ** 3 / r**6, lj)
    return COULOMB_KJ_NM * q1 * q2 / r + lj
