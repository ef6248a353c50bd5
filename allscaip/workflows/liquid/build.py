"""Molecule parsing, input checks and liquid-box packing.

``--molecule`` is read as

* a file (``.pdb``, ``.xyz``, ``.extxyz``, ``.sdf``, ``.mol``, ...) through ASE: one molecule
  (one connected fragment), its atoms in the file's order;
* a name from the experimental table (``water``, ``methanol``, ...; :mod:`.experimental`);
* otherwise a SMILES string, embedded in 3-D with RDKit (``pip install rdkit``).

Water given by name or as the SMILES ``O`` needs no RDKit (the teacher's equilibrium
geometry is used).

Boxes are packed with Packmol (PyPI ``packmol``, periodic ``pbc`` mode) when it is
importable, otherwise with a random-insertion packer with overlap rejection
(:func:`random_insertion`). The box is cubic with edge ``(N m / (rho N_A))^(1/3)``, so the
packed mass density is the requested one to rounding.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import natural_cutoffs, neighbor_list

from allscaip.calculator import AllScAIPCalculator
from allscaip.geometry import random_rotation
from allscaip.units import mass_density_g_cm3, volume_A3_at_density
from allscaip.workflows.liquid import experimental

FILE_SUFFIXES = (".pdb", ".xyz", ".extxyz", ".sdf", ".mol", ".mol2", ".cif", ".traj", ".json", ".gro")


class InputError(ValueError):
    """Bad user input (unparseable molecule, unknown element, box too small, ...)."""


@dataclass
class Molecule:
    """One molecule: ``atoms`` (Å, centred on its centre of mass), how it was given and its bonds."""

    atoms: Atoms
    spec: str
    source: str  # "file", "name" or "smiles"
    bonds: List[Tuple[int, int]] = field(default_factory=list)
    name: str = ""

    @property
    def formula(self) -> str:
        return self.atoms.get_chemical_formula("hill")

    @property
    def molar_mass(self) -> float:
        """g/mol (ASE masses)."""
        return float(self.atoms.get_masses().sum())

    @property
    def natoms(self) -> int:
        return len(self.atoms)

    def masses(self, hydrogen_mass: Optional[float] = None) -> np.ndarray:
        """Per-atom masses (amu) for the MD. With ``hydrogen_mass``, every H bonded to a heavy
        atom gets that mass and the heavy atom gives up the difference (hydrogen mass
        repartitioning: the molecule's mass, hence the density, is unchanged; configurational
        averages such as ρ and ⟨U⟩ do not depend on masses, while heavier hydrogens allow
        longer time steps)."""
        m = self.atoms.get_masses().astype(float)
        if hydrogen_mass is None:
            return m
        z = self.atoms.numbers
        for a, b in self.bonds:
            for h, x in ((a, b), (b, a)):
                if z[h] == 1 and z[x] != 1:
                    dm = float(hydrogen_mass) - m[h]
                    m[h] += dm
                    m[x] -= dm
        if np.any(m <= 0.0):
            raise InputError(
                f"hydrogen mass {hydrogen_mass} amu leaves a heavy atom of {self.formula} with mass "
                f"{m.min():.3f} amu; use a smaller --hydrogen-mass (e.g. 3)"
            )
        return m

    def is_water(self) -> bool:
        return self.formula == "H2O"

    def water_ordered(self) -> "Molecule":
        """Water with its atoms in O, H, H order (the teacher's topology)."""
        if not self.is_water():
            raise InputError(f"{self.spec!r} ({self.formula}) is not water")
        order = [int(np.flatnonzero(self.atoms.numbers == 8)[0])] + [
            int(i) for i in np.flatnonzero(self.atoms.numbers == 1)
        ]
        atoms = self.atoms[order]
        return Molecule(atoms, self.spec, self.source, [(0, 1), (0, 2)], self.name)

    def experimental(self):
        return experimental.lookup(self.spec, self.formula, self.source)


def _bonds(atoms: Atoms) -> List[Tuple[int, int]]:
    if len(atoms) < 2:
        return []
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.15), self_interaction=False)
    return sorted({(int(a), int(b)) for a, b in zip(i, j) if a < b})


def _n_fragments(n: int, bonds: Sequence[Tuple[int, int]]) -> int:
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in bonds:
        parent[find(a)] = find(b)
    return len({find(a) for a in range(n)})


def _water_atoms() -> Atoms:
    # the teacher's module needs OpenMM, an optional dependency (the engines extra)
    from allscaip.workflows.teacher.system import reference_water_atoms

    return reference_water_atoms()


def _from_smiles(smiles: str, seed: int) -> Atoms:
    try:  # RDKit is optional at run time: only SMILES input needs it, and the error says so
        from rdkit import Chem, RDLogger
        from rdkit.Chem import AllChem
    except ImportError as err:
        raise InputError(
            f"--molecule {smiles!r} is neither an existing file nor a known liquid name, so it would be "
            f"read as SMILES, and SMILES needs RDKit (pip install rdkit); or give a .pdb/.xyz file"
        ) from err
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise InputError(
            f"could not parse molecule {smiles!r}: it is not an existing file, not a known liquid name "
            f"({', '.join(l.name for l in experimental.LIQUIDS)}) and not valid SMILES"
        )
    if len(Chem.GetMolFrags(mol)) != 1:
        raise InputError(f"SMILES {smiles!r} has {len(Chem.GetMolFrags(mol))} fragments; give one molecule")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) or 1
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise InputError(f"RDKit could not embed SMILES {smiles!r} in 3-D")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    pos = mol.GetConformer().GetPositions()
    return Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=pos)


def load_molecule(spec: str, seed: int = 0) -> Molecule:
    """Read ``--molecule`` (file, known name or SMILES); see the module docstring."""
    spec = str(spec).strip()
    if not spec:
        raise InputError("--molecule is empty")
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            atoms = ase.io.read(str(path), index=0)
        except Exception as err:  # ASE raises many types for bad files
            raise InputError(f"could not parse molecule file {spec}: {type(err).__name__}: {err}") from err
        if len(atoms) == 0:
            raise InputError(f"molecule file {spec} has no atoms")
        atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions)  # drop any cell/pbc/calculator
        source, name = "file", path.stem
    elif path.suffix.lower() in FILE_SUFFIXES or os.sep in spec:
        raise InputError(f"molecule file {spec} does not exist")
    else:
        liq = experimental.by_name(spec)
        smiles = liq.smiles if liq is not None else spec
        source = "name" if liq is not None else "smiles"
        name = liq.name if liq is not None else spec
        if smiles in ("O", "[OH2]"):
            atoms = _water_atoms()
        else:
            atoms = _from_smiles(smiles, seed)
    if np.any(atoms.numbers <= 0):
        raise InputError(f"molecule {spec} has atoms without a known element")
    bonds = _bonds(atoms)
    nfrag = _n_fragments(len(atoms), bonds)
    if nfrag != 1:
        raise InputError(
            f"molecule {spec} has {nfrag} separate fragments ({len(atoms)} atoms, {atoms.get_chemical_formula()}); "
            "give a single molecule (one copy, not a box)"
        )
    atoms.positions -= atoms.get_center_of_mass()
    return Molecule(atoms, spec, source, bonds, name)


# ------------------------------------------------------------------------------- checks
@dataclass
class ModelInfo:
    path: str
    cutoff: float  # Å
    atomic_numbers: List[int]
    metadata: dict

    @property
    def symbols(self) -> List[str]:
        return [chemical_symbols[z] for z in self.atomic_numbers]


def model_info(model_path: str) -> ModelInfo:
    """Cutoff and elements of an allscaip model file (.pt, .pt2 or .ckpt)."""
    if not Path(model_path).is_file():
        raise InputError(f"model file {model_path} does not exist")
    try:
        calc = AllScAIPCalculator(model_path)
    except Exception as err:
        raise InputError(f"could not load model {model_path}: {type(err).__name__}: {err}") from err
    return ModelInfo(
        str(Path(model_path).resolve()), float(calc.cutoff), [int(z) for z in calc.elements], dict(calc.metadata)
    )


def check_elements(mol: Molecule, allowed: Sequence[int], what: str) -> None:
    unknown = sorted(set(int(z) for z in mol.atoms.numbers) - set(int(z) for z in allowed))
    if unknown:
        raise InputError(
            f"element(s) {', '.join(chemical_symbols[z] for z in unknown)} of {mol.spec} ({mol.formula}) "
            f"are not in {what}, which knows {', '.join(chemical_symbols[z] for z in allowed)}"
        )


def box_edge(n_molecules: int, molar_mass: float, density_g_cm3: float) -> float:
    """Å: edge of a cubic box holding ``n_molecules`` of ``molar_mass`` g/mol at the density."""
    return volume_A3_at_density(n_molecules * molar_mass, density_g_cm3) ** (1.0 / 3.0)


def min_molecules(cutoff: float, molar_mass: float, density_g_cm3: float, margin: float = 1.0) -> int:
    """Smallest number of molecules whose box edge exceeds ``2 * cutoff + margin`` Å."""
    edge = 2.0 * cutoff + margin
    return int(math.ceil(edge**3 / volume_A3_at_density(molar_mass, density_g_cm3)))


def check_box(n_molecules: int, mol: Molecule, density_g_cm3: float, cutoff: float, what: str) -> float:
    """The box edge (Å); :class:`InputError` unless it exceeds twice ``cutoff``."""
    edge = box_edge(n_molecules, mol.molar_mass, density_g_cm3)
    if edge <= 2.0 * cutoff:
        need = min_molecules(cutoff, mol.molar_mass, density_g_cm3)
        raise InputError(
            f"box too small: {n_molecules} molecules of {mol.formula} at {density_g_cm3:.3f} g/cm^3 give a box "
            f"edge of {edge:.2f} Å, which must exceed 2 x the {what} cutoff {cutoff:.2f} Å = {2 * cutoff:.2f} Å; "
            f"use --n-molecules {need} or more"
        )
    return edge


# ------------------------------------------------------------------------------- packing
def _min_image_min_dist(new: np.ndarray, old: np.ndarray, edge: float) -> float:
    if len(old) == 0:
        return math.inf
    d = new[:, None, :] - old[None, :, :]
    d -= edge * np.round(d / edge)
    return float(np.sqrt((d * d).sum(-1)).min())


def random_insertion(
    mol: Molecule, n_molecules: int, edge: float, seed: int = 0, tolerance: float = 2.0, max_tries: int = 2000
) -> np.ndarray:
    """Positions [n_molecules * natoms, 3] Å: random centres and orientations, each new molecule
    at least ``tolerance`` Å (minimum image) from every atom placed so far; after ``max_tries``
    failed attempts for one molecule the tolerance shrinks by 10 %."""
    rng = np.random.default_rng(seed)
    ref = mol.atoms.positions
    placed = np.zeros((0, 3))
    tol = tolerance
    out = []
    for _ in range(n_molecules):
        while True:
            for _try in range(max_tries):
                trial = ref @ random_rotation(rng).T + rng.uniform(0, edge, 3)
                if _min_image_min_dist(trial, placed, edge) >= tol:
                    break
            else:
                tol *= 0.9
                if tol < 0.5:
                    raise RuntimeError(
                        f"random insertion could not place {n_molecules} molecules in a {edge:.2f} Å box"
                    )
                continue
            break
        out.append(trial)
        placed = np.concatenate([placed, trial])
    return np.concatenate(out)


def _packmol_binary() -> Optional[str]:
    try:  # the packmol wheel is optional at run time: without it, packmol on PATH or random insertion
        from packmol.cli import get_binary_path

        return str(get_binary_path())
    except Exception:
        return shutil.which("packmol")


def packmol_pack(
    mol: Molecule, n_molecules: int, edge: float, seed: int = 0, tolerance: float = 2.0, timeout: float = 600.0
) -> np.ndarray:
    """Positions [n_molecules * natoms, 3] Å from Packmol in periodic (``pbc``) mode."""
    exe = _packmol_binary()
    if exe is None:
        raise FileNotFoundError("packmol not found (pip install packmol)")
    with tempfile.TemporaryDirectory(prefix="allscaip_packmol_") as tmp:
        ase.io.write(os.path.join(tmp, "molecule.xyz"), mol.atoms, format="xyz")
        inp = (
            f"tolerance {tolerance}\nfiletype xyz\noutput packed.xyz\nseed {int(seed) + 1}\n"
            f"pbc 0. 0. 0. {edge:.6f} {edge:.6f} {edge:.6f}\n"
            f"structure molecule.xyz\n  number {n_molecules}\nend structure\n"
        )
        with open(os.path.join(tmp, "pack.inp"), "w") as fh:
            fh.write(inp)
        with open(os.path.join(tmp, "pack.inp")) as fh:
            res = subprocess.run([exe], stdin=fh, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        out = os.path.join(tmp, "packed.xyz")
        if not os.path.exists(out):
            raise RuntimeError(f"packmol failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        packed = ase.io.read(out, format="xyz")
    if len(packed) != n_molecules * mol.natoms:
        raise RuntimeError(f"packmol wrote {len(packed)} atoms, expected {n_molecules * mol.natoms}")
    if not np.array_equal(packed.numbers, np.tile(mol.atoms.numbers, n_molecules)):
        raise RuntimeError("packmol changed the atom order")
    return packed.positions


def min_intermolecular_distance(positions: np.ndarray, natoms: int, edge: float) -> float:
    """Smallest minimum-image distance between atoms of different molecules (Å)."""
    n = len(positions) // natoms
    mol_id = np.repeat(np.arange(n), natoms)
    best = math.inf
    for m in range(n):
        a = positions[mol_id == m]
        b = positions[mol_id > m]
        if len(b):
            best = min(best, _min_image_min_dist(a, b, edge))
    return best


def pack_box(
    mol: Molecule, n_molecules: int, density_g_cm3: float, seed: int = 0, tolerance: float = 2.0, method: str = "auto"
) -> Atoms:
    """A cubic periodic box of ``n_molecules`` copies of ``mol`` at ``density_g_cm3``.

    ``method``: ``packmol``, ``random`` or ``auto`` (Packmol when installed). Atoms are ordered
    molecule by molecule in the template's order; ``info`` holds ``n_molecules``,
    ``density_g_cm3`` and ``packer``; molecules are whole (not wrapped).
    """
    if n_molecules < 1:
        raise InputError("--n-molecules must be >= 1")
    if density_g_cm3 <= 0:
        raise InputError("the packing density must be > 0")
    edge = box_edge(n_molecules, mol.molar_mass, density_g_cm3)
    packer = method
    if method == "auto":
        packer = "packmol" if _packmol_binary() else "random"
    if packer == "packmol":
        pos = packmol_pack(mol, n_molecules, edge, seed, tolerance)
    elif packer == "random":
        pos = random_insertion(mol, n_molecules, edge, seed, tolerance)
    else:
        raise ValueError(f"unknown packing method {method!r}")
    atoms = Atoms(numbers=np.tile(mol.atoms.numbers, n_molecules), positions=pos, cell=np.eye(3) * edge, pbc=True)
    atoms.set_masses(np.tile(mol.atoms.get_masses(), n_molecules))
    atoms.info.update(n_molecules=int(n_molecules), density_g_cm3=float(density_g_cm3), packer=packer, charge=0, spin=1)
    return atoms


def mass_density(atoms: Atoms) -> float:
    """g/cm^3 of a periodic ``atoms``."""
    return mass_density_g_cm3(atoms.get_masses().sum(), atoms.get_volume())
