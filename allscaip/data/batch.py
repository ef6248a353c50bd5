"""A batch of atomic systems as flat tensors (the model's input format)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import numpy as np
import torch
from ase.stress import voigt_6_to_full_3x3_stress


@dataclass
class AtomsBatch:
    """Several systems concatenated atom-wise.

    Units: positions and cell in Å, energy in eV, forces in eV/Å, stress in eV/Å^3
    (ASE sign convention: positive stress = tensile). ``system[i]`` is the index of the
    system atom ``i`` belongs to; atoms of one system are contiguous.
    """

    positions: torch.Tensor  # [N, 3] float
    numbers: torch.Tensor  # [N] int64 atomic numbers
    cell: torch.Tensor  # [B, 3, 3] float, rows are lattice vectors (zeros if not periodic)
    pbc: torch.Tensor  # [B, 3] bool
    system: torch.Tensor  # [N] int64
    natoms: torch.Tensor  # [B] int64
    charge: torch.Tensor  # [B] int64 total charge (e)
    spin: torch.Tensor  # [B] int64 spin multiplicity (2S+1); default 1 when not given
    energy: Optional[torch.Tensor] = None  # [B]
    forces: Optional[torch.Tensor] = None  # [N, 3]
    stress: Optional[torch.Tensor] = None  # [B, 3, 3]
    stress_mask: Optional[torch.Tensor] = None  # [B] bool: which systems have a stress label

    @property
    def num_systems(self) -> int:
        return int(self.natoms.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AtomsBatch":
        """Move to a device; floating tensors are also cast to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                out[f.name] = None
            elif t.is_floating_point():
                out[f.name] = t.to(device=device, dtype=dtype or t.dtype)
            else:
                out[f.name] = t.to(device=device)
        return replace(self, **out)


def _result(atoms, key: str):
    """Label from a SinglePointCalculator (or None), without triggering a calculation."""
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def atoms_to_batch(atoms_list: Sequence, dtype: torch.dtype = torch.float64) -> AtomsBatch:
    """Collate ASE ``Atoms`` into an :class:`AtomsBatch`.

    Labels (energy, forces, stress) are read from attached single-point results when every
    system has them; total charge and spin from ``atoms.info['charge']`` / ``['spin']``.
    """
    if len(atoms_list) == 0:
        raise ValueError("atoms_to_batch: empty list of structures")
    pos = np.concatenate([a.get_positions() for a in atoms_list])
    nums = np.concatenate([a.get_atomic_numbers() for a in atoms_list])
    natoms = np.array([len(a) for a in atoms_list], dtype=np.int64)
    cell = np.stack([np.asarray(a.get_cell(), dtype=float) for a in atoms_list])
    pbc = np.stack([np.asarray(a.pbc, dtype=bool) for a in atoms_list])
    charge = np.array([int(a.info.get("charge", 0)) for a in atoms_list], dtype=np.int64)
    spin = np.array([int(a.info.get("spin", 1)) for a in atoms_list], dtype=np.int64)
    system = np.repeat(np.arange(len(atoms_list)), natoms)

    energy = forces = stress = smask = None
    e = [_result(a, "energy") for a in atoms_list]
    if all(x is not None for x in e):
        energy = torch.tensor(np.array(e, dtype=float), dtype=dtype)
    f = [_result(a, "forces") for a in atoms_list]
    if all(x is not None for x in f):
        forces = torch.tensor(np.concatenate(f), dtype=dtype)
    s = [_result(a, "stress") for a in atoms_list]
    if any(x is not None for x in s):
        full = []
        for x in s:
            if x is None:
                full.append(np.zeros((3, 3)))
            else:
                x = np.asarray(x)
                full.append(voigt_6_to_full_3x3_stress(x) if x.shape == (6,) else x.reshape(3, 3))
        stress = torch.tensor(np.stack(full), dtype=dtype)
        smask = torch.tensor([x is not None for x in s])
    return AtomsBatch(
        positions=torch.tensor(pos, dtype=dtype),
        numbers=torch.tensor(nums, dtype=torch.long),
        cell=torch.tensor(cell, dtype=dtype),
        pbc=torch.tensor(pbc),
        system=torch.tensor(system, dtype=torch.long),
        natoms=torch.tensor(natoms),
        charge=torch.tensor(charge),
        spin=torch.tensor(spin),
        energy=energy,
        forces=forces,
        stress=stress,
        stress_mask=smask,
    )
