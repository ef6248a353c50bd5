"""Checks that stop an evaluation instead of letting a bad one pass silently (docs/errors.md).

* :func:`check_min_distance`: two atoms closer than the model's ``min_distance`` (a fraction of the
  shortest contact in its training data: the network has never seen atoms that close, and atoms on
  top of each other give NaN). An :class:`AtomsTooCloseError` names the pair and its distance.
* :func:`check_finite`: NaN or Inf in energy, forces, virial or per-atom energies. A
  :class:`NonFiniteResultError` names the atoms whose results are not finite.

Every engine in Python (ASE calculator, OpenMM forces) calls both; LAMMPS has its own copy in
lammps_plugin/pair_allscaip_checks.cpp with the same thresholds (read from the export metadata).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from allscaip.neighbors import system_neighbor_pairs

MIN_DISTANCE_FRACTION = 0.5
"""min_distance = this x the shortest contact of any element pair in the training data: well below
every configuration the model was fitted on (a bond compressed to half its length costs several eV),
far above the zero distance at which the model's geometry gives NaN."""

DEFAULT_MIN_DISTANCE = 0.5
"""min_distance (Å) of models saved before the training data's shortest contact was recorded and
without a core-repulsion wall to infer it from: below every chemical bond (H2: 0.74 Å). The LAMMPS
plugin uses the same value (allscaip_model_info.h kDefaultMinDistance)."""

NAMED_ATOMS = 8
"""Atom indices named in a message; the rest are counted."""

TURN_OFF_HINT = "min_distance=0 (ASE calculator, OpenMM createSystem) or pair_style allscaip min_distance off (LAMMPS)"


class AtomsTooCloseError(ValueError):
    """Two atoms are closer than the model's min_distance."""


class NonFiniteResultError(FloatingPointError):
    """The model gave NaN or Inf."""


def min_distance_of_model(model: torch.nn.Module) -> float:
    """The min_distance (Å) of an eager model: MIN_DISTANCE_FRACTION x its training data's shortest
    contact (buffer ``shortest_contact``), else inferred from its core-repulsion radii (which end at
    core_margin x the shortest contact of each pair), else DEFAULT_MIN_DISTANCE."""
    shortest = float(getattr(model, "shortest_contact", torch.zeros(())))
    if shortest > 0:
        return MIN_DISTANCE_FRACTION * shortest
    radius = getattr(model, "core_radius", None)
    if radius is not None and bool((radius > 0).any()):
        return MIN_DISTANCE_FRACTION * float(radius[radius > 0].min()) / float(model.cfg.core_margin)
    return DEFAULT_MIN_DISTANCE


def _indices(idx: Sequence[int]) -> str:
    idx = sorted(int(i) for i in idx)
    shown = ", ".join(str(i) for i in idx[:NAMED_ATOMS])
    return shown + (f" and {len(idx) - NAMED_ATOMS} more" if len(idx) > NAMED_ATOMS else "")


def closest_pair(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    limit: float,
    pairs: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
) -> Optional[Tuple[int, int, float]]:
    """The closest pair (i <= j, distance Å) of atoms closer than ``limit``, None if there is none
    (periodic images included; an atom near its own image counts as i == j). ``pairs``: a neighbour
    list (i, j, integer shifts) of at least ``limit`` to reuse instead of building one."""
    if not limit > 0 or len(positions) < 1:
        return None
    i, j, s = pairs if pairs is not None else system_neighbor_pairs(positions, cell, pbc, limit)
    if len(i) == 0:
        return None
    box = np.asarray(cell, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    d = np.linalg.norm(pos[j] - pos[i] + s @ box, axis=1)
    k = int(np.argmin(d))
    if d[k] >= limit:
        return None
    a, b = sorted((int(i[k]), int(j[k])))
    return a, b, float(d[k])


def check_min_distance(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    limit: float,
    where: str,
    index_name: str = "atoms",
    pairs: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
    names: Optional[Sequence[int]] = None,
) -> None:
    """Raise :class:`AtomsTooCloseError` naming the closest pair closer than ``limit`` (Å).
    ``names``: the index to print for each atom (e.g. OpenMM particle indices of the ML atoms)."""
    pair = closest_pair(positions, cell, pbc, limit, pairs)
    if pair is None:
        return
    a, b, d = pair
    if names is not None:
        a, b = int(names[a]), int(names[b])
    raise AtomsTooCloseError(
        f"{where}: {index_name} {a} and {b} are {d:.4g} Å apart, closer than min_distance {limit:.4g} Å "
        "(a fraction of the shortest contact in the model's training data); the model cannot describe "
        "atoms this close. Check the structure for duplicated or overlapping atoms (e.g. a hydrogen placed "
        f"on its parent atom); in MD, reduce the timestep. To go on anyway: {TURN_OFF_HINT}"
    )


def _bad_rows(values, n: int) -> np.ndarray:
    """Rows (of ``n``) of a per-atom array that hold a NaN or Inf."""
    arr = np.asarray(values.detach().cpu().double() if isinstance(values, torch.Tensor) else values, dtype=float)
    return np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))


def check_finite(
    energy,
    forces,
    energies=None,
    virial=None,
    where: str = "allscaip",
    index_name: str = "atom indices",
    names: Optional[Sequence[int]] = None,
) -> None:
    """Raise :class:`NonFiniteResultError` when energy, forces [N, 3], per-atom energies [N] or the
    virial hold a NaN or Inf, naming the atoms (0-based ``index_name``) whose forces or energies do.
    The fast path is one sum (finite exactly when every entry is)."""
    parts = [p for p in (energy, forces, energies, virial) if p is not None]
    total = sum(float(p.detach().double().sum()) if isinstance(p, torch.Tensor) else float(np.sum(p)) for p in parts)
    if np.isfinite(total):
        return
    n = len(forces)
    bad = set(_bad_rows(forces, n).tolist())
    if energies is not None:
        bad |= set(_bad_rows(energies, n).tolist())
    if names is not None:
        bad = {int(names[b]) for b in bad}
    who = f"{index_name} {_indices(bad)}" if bad else "the total energy or virial only (no single atom)"
    raise NonFiniteResultError(
        f"{where}: the model gave non-finite (NaN or Inf) energy or forces for {who}. These atoms are "
        "usually overlapping or far outside the model's training data: check the structure near them "
        "(duplicated atoms, a hydrogen on its parent atom), or in MD reduce the timestep and look at the "
        "frames before this one"
    )
