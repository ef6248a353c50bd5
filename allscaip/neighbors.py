"""Neighbour lists: O(N) cell lists (vesin) for any triclinic cell, and the padded layout.

Conventions used everywhere in allscaip: an edge ``(i, j, S)`` means atom ``j`` (shifted by
``S`` lattice vectors) is a neighbour of centre ``i``; its vector is
``r_ij = x_j - x_i + S @ cell``. Neighbour lists are *full* (both directions) and include
periodic self-images when the cutoff exceeds a cell length.

The exported models' whole-system call takes this flat list (:func:`whole_system_inputs`); the
model itself reads the padded per-centre layout (:func:`pad_neighbors`).
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
import vesin
from ase import Atoms

from allscaip.data.batch import AtomsBatch

WholeSystemInputs = Tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]
"""(positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin): the arguments of the
exported whole-system call, in its order (allscaip_export.metadata.WHOLE_SYSTEM_INPUTS)."""

EncodedWholeSystemInputs = Tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]
""":data:`WholeSystemInputs` followed by the node encoding's ``encoding_index`` and ``encoding_shifts``."""


def system_neighbor_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list of one system: (centre, neighbour, integer cell shift)."""
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    if pbc.any() and abs(np.linalg.det(box)) < 1e-12:
        raise ValueError(f"periodic system with a degenerate cell (volume ~0): {box.tolist()}")
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(np.asarray(positions, dtype=np.float64), box, [bool(p) for p in pbc], "ijS")
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64)


def batch_neighbor_pairs(batch: AtomsBatch, cutoff: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour pairs of every system of a batch, with global atom indices."""
    pos = batch.positions.detach().cpu().double().numpy()
    cell = batch.cell.detach().cpu().double().numpy()
    pbc = batch.pbc.cpu().numpy()
    natoms = batch.natoms.cpu().numpy()
    offsets = np.concatenate([[0], np.cumsum(natoms)])
    ci, cj, cs = [], [], []
    for b in range(len(natoms)):
        lo, hi = offsets[b], offsets[b + 1]
        i, j, s = system_neighbor_pairs(pos[lo:hi], cell[b], pbc[b], cutoff)
        ci.append(i + lo)
        cj.append(j + lo)
        cs.append(s)
    dev = batch.positions.device
    return (
        torch.from_numpy(np.concatenate(ci)).to(dev),
        torch.from_numpy(np.concatenate(cj)).to(dev),
        torch.from_numpy(np.concatenate(cs).reshape(-1, 3)).to(dev),
    )


def system_encoding_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, encoding_range: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The node encoding's pairs of one system, :func:`system_neighbor_pairs` within
    ``encoding_range`` without the self pairs of zero shift: (i, j, integer cell shift)."""
    i, j, s = system_neighbor_pairs(positions, cell, pbc, encoding_range)
    keep = (i != j) | (s != 0).any(1)
    return i[keep], j[keep], s[keep].reshape(-1, 3)


def encoding_pairs(batch: AtomsBatch, encoding_range: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs of the node encoding (allscaip.model.node_encoding): every ``(i, j, S)`` of a system
    within ``encoding_range`` from the same cell lists as the local graph, without the self pairs of
    zero shift. Returns ``pair_index [2, P]`` (global atom indices) and ``shift [P, 3]`` (integer
    lattice shifts in the dtype of the positions)."""
    center, neighbor, shift = batch_neighbor_pairs(batch, encoding_range)
    keep = (center != neighbor) | (shift != 0).any(1)
    return torch.stack([center[keep], neighbor[keep]]), shift[keep].to(batch.positions.dtype)


def pad_neighbors(
    center: torch.Tensor, neighbor: torch.Tensor, shift: torch.Tensor, n_centers: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat edge list -> padded per-centre layout.

    Returns ``index [Nc, K]`` (neighbour atom index; padding points at the centre itself),
    ``shift [Nc, K, 3]`` (same dtype as ``shift``; zero on padding) and ``mask [Nc, K]``
    (True for real edges). ``K`` is the largest neighbour count (at least 1).
    """
    order = torch.argsort(center, stable=True)
    center = center[order]
    neighbor = neighbor[order]
    shift = shift[order]
    counts = torch.bincount(center, minlength=n_centers)
    k = max(int(counts.max().item()) if counts.numel() > 0 else 0, 1)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(center.shape[0], device=center.device) - start[center]
    index = torch.arange(n_centers, device=center.device).unsqueeze(1).repeat(1, k)
    index[center, slot] = neighbor
    pshift = torch.zeros((n_centers, k, 3), dtype=shift.dtype, device=shift.device)
    pshift[center, slot] = shift
    mask = torch.zeros((n_centers, k), dtype=torch.bool, device=center.device)
    mask[center, slot] = True
    return index, pshift, mask


def whole_system_inputs(
    atoms: Atoms, cutoff: float, dtype: torch.dtype, device: torch.device | str, encoding_range: float = 0.0
) -> Union[WholeSystemInputs, EncodedWholeSystemInputs]:
    """The exported whole-system call's arguments for ``atoms``: full neighbour list within
    ``cutoff``, charge and spin multiplicity from ``atoms.info`` (defaults 0 and 1). With
    ``encoding_range`` > 0 (a model with a node encoding, metadata ``encoding_range``) two more: the
    encoding pairs within it (``encoding_index`` [2, P], ``encoding_shifts`` [P, 3]), self pairs of
    zero shift left out as in :func:`encoding_pairs`."""
    inputs = _whole_system_inputs(atoms, cutoff, dtype, device)
    if encoding_range <= 0.0:
        return inputs
    i, j, s = system_encoding_pairs(atoms.positions, atoms.cell.array, atoms.pbc, encoding_range)
    return inputs + (
        torch.tensor(np.stack([i, j]), dtype=torch.long, device=device),
        torch.tensor(s, dtype=dtype, device=device),
    )


def _whole_system_inputs(
    atoms: Atoms, cutoff: float, dtype: torch.dtype, device: torch.device | str
) -> WholeSystemInputs:
    """The eight arguments every exported whole-system call takes (see :func:`whole_system_inputs`)."""
    i, j, s = system_neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return (
        torch.tensor(atoms.positions, dtype=dtype, device=device),
        torch.tensor(atoms.numbers, dtype=torch.long, device=device),
        torch.tensor(atoms.cell.array, dtype=dtype, device=device),
        torch.tensor(np.asarray(atoms.pbc, dtype=bool).reshape(3), device=device),
        torch.tensor(np.stack([i, j]), dtype=torch.long, device=device),
        torch.tensor(s, dtype=dtype, device=device),
        torch.tensor(int(atoms.info.get("charge", 0)), dtype=torch.long, device=device),
        torch.tensor(int(atoms.info.get("spin", 1)), dtype=torch.long, device=device),
    )
