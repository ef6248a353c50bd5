"""Water boxes: the one builder behind tests, benchmarks, the export self-check and the teacher.

Randomly rotated water molecules on a jittered simple-cubic grid. Positions in Å, atoms ordered
O, H, H per molecule, ``info`` carrying ``charge=0, spin=1`` (what the model's inputs expect).
The random stream is fixed by the draws below, so a seed gives the same box on every machine.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from ase import Atoms
from ase.build import molecule

from allscaip.geometry import random_rotation
from allscaip.units import volume_A3_at_density

WATER_MOLAR_MASS_G = 18.01528  # g/mol, IUPAC standard atomic weights (O 15.999, H 1.008)
DEFAULT_JITTER_A = 0.1  # Å, standard deviation of each molecule's displacement off its grid site
# the triclinic tilts (Å) of a skewed cell: large enough that every off-diagonal path of the
# periodic-image code runs, small enough that the cell stays far from degenerate
SKEW_TILTS_A = {(1, 0): 0.9, (2, 0): -0.6, (2, 1): 0.7}


def water_box(
    n_molecules: int,
    *,
    spacing: Optional[float] = None,
    density_g_cm3: float = 1.0,
    seed: int = 0,
    rng: Optional[np.random.Generator] = None,
    cell_skew: bool = False,
    periodic: bool = True,
    jitter: float = DEFAULT_JITTER_A,
    template: Optional[Atoms] = None,
) -> Atoms:
    """``n_molecules`` waters on a jittered ``g x g x g`` grid, ``g = ceil(n_molecules^(1/3))``.

    spacing: grid spacing in Å; by default the one that puts the box at ``density_g_cm3``.
    rng: a generator to draw from (the caller's stream); otherwise ``default_rng(seed)``.
    cell_skew: add the tilts of :data:`SKEW_TILTS_A` (a triclinic cell).
    periodic: a periodic cell with the atoms wrapped into it; otherwise a cluster with no cell.
    template: one molecule, O first (default ASE's H2O), rotated about its own origin.

    When the grid has more sites than molecules, the sites are drawn at random (one
    ``rng.choice`` before the molecules), so a partly filled grid still fills the box evenly.
    Each molecule then draws one rotation and one displacement, in that order.
    """
    if n_molecules < 1:
        raise ValueError(f"n_molecules must be >= 1, got {n_molecules}")
    rng = np.random.default_rng(seed) if rng is None else rng
    g = int(math.ceil(n_molecules ** (1.0 / 3.0) - 1e-9))
    if spacing is None:
        volume_A3 = volume_A3_at_density(n_molecules * WATER_MOLAR_MASS_G, density_g_cm3)
        spacing = volume_A3 ** (1.0 / 3.0) / g
    sites = np.array([(i, j, k) for i in range(g) for j in range(g) for k in range(g)], dtype=float)
    if n_molecules < len(sites):
        sites = sites[rng.choice(len(sites), size=n_molecules, replace=False)]
    w = molecule("H2O") if template is None else template
    pos, nums = [], []
    for site in sites:
        rotation = random_rotation(rng)
        pos.append(w.positions @ rotation.T + (site * spacing + rng.normal(0, jitter, 3)))
        nums.append(w.numbers)
    cell = np.eye(3) * g * spacing
    if cell_skew:
        for (i, j), tilt in SKEW_TILTS_A.items():
            cell[i, j] = tilt
    atoms = Atoms(
        numbers=np.concatenate(nums),
        positions=np.concatenate(pos),
        cell=cell if periodic else None,
        pbc=periodic,
    )
    if periodic:
        atoms.wrap()
    atoms.info.update(charge=0, spin=1)
    return atoms
