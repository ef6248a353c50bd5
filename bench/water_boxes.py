"""Water boxes at liquid density for benchmarks: ``allscaip.structures.water_box`` by molecule count."""

from __future__ import annotations

import sys
from pathlib import Path

from ase import Atoms

try:
    from allscaip.structures import water_box as _water_box
except ImportError:  # run from another environment (bench/fairchem_allscaip.py): use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from allscaip.structures import water_box as _water_box


def water_box(n_molecules: int, seed: int = 0) -> Atoms:
    """A cubic periodic box of ``n_molecules`` water molecules at 1 g/cm^3."""
    return _water_box(n_molecules, density_g_cm3=1.0, seed=seed)
