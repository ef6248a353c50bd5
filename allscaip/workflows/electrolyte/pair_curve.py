"""The Na+/Cl- interaction energy against separation in a fixed water configuration.

Start from a solvated ion-pair frame. The Na stays where it is and the Cl moves along a straight
line from it (:func:`scan_direction`: perpendicular to the frame's own Na->Cl line, so that the
path runs through bulk water, not out of the Cl's own hydration shell, whose loss would dominate
the curve). Every water is held fixed, except the few that stand in the Cl's way, which are
removed once for all separations (a channel around the path), so that each point of the scan is
the same neutral system with only the Cl displaced. The energy at each separation is reported
relative to the largest one, for the teacher and for each model alike.

In frozen water this energy is the bare Coulomb attraction of the pair (unscreened: the water
does not reorient) plus the change of the Cl's interaction with the channel walls (the
electrostatic potential of frozen water varies by tenths of a volt from place to place). A model
whose receptive field (layers x cutoff) is shorter than the separation cannot see the first part.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

#: water atoms closer than these to the Cl's path (Å) would clash with it: the Cl-O and Cl-H
#: contacts of the liquid are 3.1 and 2.2 Å (Joung-Cheatham Cl- in TIP3P); the whole molecule goes
CHANNEL_O_A = 3.0
CHANNEL_H_A = 2.1

#: an energy function: Atoms -> energy (eV)
EnergyFn = Callable[[Atoms], float]


def pair_direction(atoms: Atoms) -> tuple[int, int, np.ndarray]:
    """(Na index, Cl index, unit vector Na->Cl, minimum image) of a frame with one Na and one Cl."""
    sym = np.asarray(atoms.get_chemical_symbols())
    na, cl = np.flatnonzero(sym == "Na"), np.flatnonzero(sym == "Cl")
    if len(na) != 1 or len(cl) != 1:
        raise ValueError(
            f"the pair scan needs a frame with exactly one Na and one Cl, got {len(na)} Na and {len(cl)} Cl; "
            f"use an ion_pair frame of the test set"
        )
    d, _ = find_mic(atoms.positions[cl[0]] - atoms.positions[na[0]], atoms.cell, atoms.pbc)
    return int(na[0]), int(cl[0]), d / np.linalg.norm(d)


def scan_direction(atoms: Atoms) -> np.ndarray:
    """Unit vector perpendicular to the frame's Na->Cl line: its cross product with the box axis
    least aligned with it."""
    _, _, u = pair_direction(atoms)
    axis = np.zeros(3)
    axis[int(np.argmin(np.abs(u)))] = 1.0
    v = np.cross(u, axis)
    return v / np.linalg.norm(v)


def _distance_to_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray, atoms: Atoms) -> np.ndarray:
    """Minimum-image distance (Å) of each point to the segment start-end (shorter than half the box)."""
    seg = end - start
    rel, _ = find_mic(points - start, atoms.cell, atoms.pbc)
    t = np.clip(rel @ seg / (seg @ seg), 0.0, 1.0)
    return np.linalg.norm(rel - t[:, None] * seg[None, :], axis=1)


def channel_frame(
    atoms: Atoms, separations: Sequence[float], direction: Optional[np.ndarray] = None
) -> tuple[Atoms, np.ndarray]:
    """The frame without the waters in the Cl's path, and the Cl positions for ``separations`` (Å)
    from the Na along ``direction`` (default: the frame's Na->Cl line).

    Waters are (O, H, H) triples in front of the ions, as the teacher writes them. Returns
    ``(frame, cl_positions [n, 3])``; the frame keeps the teacher's atom order and is neutral."""
    na, cl, u = pair_direction(atoms)
    if direction is not None:
        u = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    r = np.asarray(separations, dtype=float)
    half_box = 0.5 * float(np.min(atoms.cell.lengths()))
    if r.min() <= 0 or r.max() >= half_box:
        raise ValueError(
            f"separations must lie in (0, {half_box:.2f}) Å (half the box, so that the nearest image of the "
            f"Cl is the one scanned), got {r.min():.2f} to {r.max():.2f} Å"
        )
    origin = atoms.positions[na]
    start, end = origin + r.min() * u, origin + r.max() * u
    sym = np.asarray(atoms.get_chemical_symbols())
    n_water_atoms = int(np.flatnonzero(sym == "O").size) * 3
    if not np.all(sym[:n_water_atoms].reshape(-1, 3) == ["O", "H", "H"]):
        raise ValueError("the pair scan expects the teacher's atom order: waters as (O, H, H), then the ions")
    dist = _distance_to_segment(atoms.positions[:n_water_atoms], start, end, atoms).reshape(-1, 3)
    clash = (dist[:, 0] < CHANNEL_O_A) | (dist[:, 1:] < CHANNEL_H_A).any(axis=1)
    keep = np.concatenate([np.repeat(~clash, 3), np.ones(len(atoms) - n_water_atoms, dtype=bool)])
    frame = atoms[keep]
    frame.calc = None
    frame.info = {k: v for k, v in atoms.info.items() if k in ("charge", "spin", "teacher")}
    frame.info["n_molecules"] = int((~clash).sum())
    frame.info["removed_waters"] = int(clash.sum())
    return frame, origin[None, :] + r[:, None] * u[None, :]


def scan(frame: Atoms, cl_positions: np.ndarray, energy_fns: Dict[str, EnergyFn]) -> Dict[str, np.ndarray]:
    """Energy (eV) of ``frame`` with its Cl at each of ``cl_positions``, for each named function,
    relative to the last (largest) separation."""
    cl = int(np.flatnonzero(np.asarray(frame.get_chemical_symbols()) == "Cl")[0])
    out: Dict[str, np.ndarray] = {}
    for name, fn in energy_fns.items():
        e = []
        for p in cl_positions:
            a = frame.copy()
            a.positions[cl] = p
            e.append(fn(a))
        e = np.asarray(e)
        out[name] = e - e[-1]
    return out


def edge_check(r: np.ndarray, reference: np.ndarray, model: np.ndarray, edge_a: float) -> Dict[str, float]:
    """The issue's acceptance check of a model's pair curve beyond the receptive field.

    The reference (teacher) value at the receptive-field edge sets the scale: the grid point
    nearest ``edge_a``. Returns the scale (eV), the worst ``|model - reference|`` (eV) over the
    separations at or beyond the edge, their ratio (the check asks <= 0.1) and the model's own
    change over the same range (near 0: flat)."""
    i_edge = int(np.argmin(np.abs(r - edge_a)))
    beyond = r >= r[i_edge] - 1e-9
    scale = abs(float(reference[i_edge]))
    worst = float(np.max(np.abs(model[beyond] - reference[beyond])))
    return {
        "edge_A": float(r[i_edge]),
        "teacher_at_edge_eV": float(reference[i_edge]),
        "model_at_edge_eV": float(model[i_edge]),
        "max_error_beyond_edge_eV": worst,
        "error_over_edge_value": worst / scale if scale > 0 else float("inf"),
        "model_span_beyond_edge_eV": float(np.ptp(model[beyond])),
    }
