"""Force errors on the electrolyte test boxes, binned by each atom's distance to the nearest ion.

The ions' Coulomb field reaches past a local model's receptive field (layers x cutoff), so a
local model's error should be largest on the ions themselves and on the water near them. For
each atom, :func:`nearest_ion_distance` is the minimum-image distance to the closest Na or Cl
other than itself: for a water atom, its nearest ion; for an ion, its nearest fellow ion (in a
dilute ion-pair box that is the Na-Cl separation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.geometry import get_distances

ION_SYMBOLS = ("Na", "Cl")
#: bin edges (Å) of the distance to the nearest ion: the first solvation shells (Na-O 2.4 Å,
#: Cl-O 3.2 Å, second shells to ~6 Å), then 2 Å bins out to the receptive-field edge (8 Å) and past it
DISTANCE_EDGES_A = (0.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.5, np.inf)

#: a predictor: Atoms -> (energy eV, forces eV/Å [N, 3])
Predictor = Callable[[Atoms], Tuple[float, np.ndarray]]


def is_ion(atoms: Atoms) -> np.ndarray:
    """Boolean mask of the Na and Cl atoms."""
    return np.isin(np.asarray(atoms.get_chemical_symbols()), ION_SYMBOLS)


def nearest_ion_distance(atoms: Atoms) -> np.ndarray:
    """Per atom, the minimum-image distance (Å) to the nearest ion other than itself; inf when
    there is none (pure water, or an ion alone)."""
    ions = np.flatnonzero(is_ion(atoms))
    out = np.full(len(atoms), np.inf)
    if len(ions) == 0:
        return out
    pbc = atoms.pbc if atoms.pbc.any() else None
    _, d = get_distances(atoms.positions[ions], atoms.positions, cell=atoms.cell, pbc=pbc)
    d[np.arange(len(ions)), ions] = np.inf  # an ion is not its own nearest ion
    return d.min(axis=0)


@dataclass
class FrameErrors:
    """Per-atom results of one model on a set of frames, concatenated over frames."""

    abs_force_error: np.ndarray  # [N_total] mean over x, y, z of |F_model - F_ref| (eV/Å)
    distance: np.ndarray  # [N_total] nearest_ion_distance (Å)
    ion: np.ndarray  # [N_total] bool
    energy_error_per_atom: np.ndarray  # [n_frames] (E_model - E_ref) / N (eV/atom)


def frame_errors(frames: Sequence[Atoms], predict: Predictor) -> FrameErrors:
    """Errors of ``predict`` against the frames' stored energies and forces (teacher labels)."""
    err: List[np.ndarray] = []
    dist: List[np.ndarray] = []
    ion: List[np.ndarray] = []
    de: List[float] = []
    for atoms in frames:
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        energy, forces = predict(atoms)
        err.append(np.abs(np.asarray(forces) - ref_f).mean(axis=1))
        dist.append(nearest_ion_distance(atoms))
        ion.append(is_ion(atoms))
        de.append((energy - ref_e) / len(atoms))
    return FrameErrors(np.concatenate(err), np.concatenate(dist), np.concatenate(ion), np.asarray(de))


def binned_mae(errors: FrameErrors, edges: Sequence[float] = DISTANCE_EDGES_A) -> Dict[str, List[Dict[str, float]]]:
    """Force MAE (meV/Å) of ions and of water atoms in each distance bin ``[lo, hi)``.

    Returns ``{"ion": rows, "water": rows}``, each row ``{lo, hi, n_atoms, mae_meV_A}``; a bin
    without atoms has ``mae_meV_A`` NaN."""
    out: Dict[str, List[Dict[str, float]]] = {}
    for name, mask in (("ion", errors.ion), ("water", ~errors.ion)):
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = mask & (errors.distance >= lo) & (errors.distance < hi)
            n = int(sel.sum())
            mae = 1000.0 * float(errors.abs_force_error[sel].mean()) if n else float("nan")
            rows.append({"lo": float(lo), "hi": float(hi), "n_atoms": n, "mae_meV_A": mae})
        out[name] = rows
    return out


def summary(errors: FrameErrors) -> Dict[str, float]:
    """Overall force MAE (meV/Å) of ions, of water atoms and of all atoms, and energy MAE (meV/atom)."""
    return {
        "ion_force_mae_meV_A": 1000.0 * float(errors.abs_force_error[errors.ion].mean()),
        "water_force_mae_meV_A": 1000.0 * float(errors.abs_force_error[~errors.ion].mean()),
        "force_mae_meV_A": 1000.0 * float(errors.abs_force_error.mean()),
        "energy_mae_meV_atom": 1000.0 * float(np.abs(errors.energy_error_per_atom).mean()),
        "n_ions": int(errors.ion.sum()),
        "n_water_atoms": int((~errors.ion).sum()),
    }
