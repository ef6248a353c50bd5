"""Water boxes at liquid density for benchmarks (random orientations on a jittered grid)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule

try:
    from allscaip.geometry import random_rotation
except ImportError:  # run from another environment (bench/fairchem_allscaip.py): use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from allscaip.geometry import random_rotation

VOLUME_PER_MOLECULE = 29.9  # Å^3 at 1.0 g/cm^3


def water_box(n_molecules: int, seed: int = 0) -> Atoms:
    """A cubic periodic box of ``n_molecules`` water molecules at ~1 g/cm^3."""
    rng = np.random.default_rng(seed)
    length = (n_molecules * VOLUME_PER_MOLECULE) ** (1.0 / 3.0)
    m = int(np.ceil(n_molecules ** (1.0 / 3.0)))
    sites = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_molecules]
    spacing = length / m
    w = molecule("H2O")
    w.positions -= w.get_center_of_mass()
    pos, nums = [], []
    for site in sites:
        q = random_rotation(rng)
        pos.append(w.positions @ q.T + (site + 0.5) * spacing + rng.normal(0, 0.05 * spacing, 3))
        nums.append(w.numbers)
    atoms = Atoms(numbers=np.concatenate(nums), positions=np.concatenate(pos), cell=np.eye(3) * length, pbc=True)
    atoms.wrap()
    atoms.info.update(charge=0, spin=1)
    return atoms
