"""Per-element energy references fitted by (ridge-regularised) linear least squares.

Model: ``E_i ≈ Σ_Z n_{i,Z} ε_Z`` over the training frames ``i``.

Regularisation choice: the count matrix ``A`` (frames × elements) is rank deficient whenever
elements only occur in fixed ratios (a pure-water set: n_O = n_H / 2), so plain least squares
has no unique solution. We solve the ridge problem on column-normalised counts,
``min ||Ã x - E||² + λ ||x||²`` with ``Ã = A D⁻¹``, ``D = diag(||a_Z||)``, ``ε = D⁻¹ x``,
``λ = ridge`` (default 1e-16). In the SVD ``Ã = U S Vᵀ`` this is ``x = V S/(S²+λ) Uᵀ E``:
directions with singular value ``s ≫ √λ = 1e-8`` get the least-squares value (relative bias
``λ / s²``), directions with ``s ≲ 1e-8`` (exact or round-off rank deficiency) are damped to
their minimum-norm value (in the normalised variables), so the result is finite, unique and does not depend on frame order;
the fitted energies ``A ε`` (hence the referenced targets) are the least-squares ones.
Elements of the model that never occur in the data get ``ε_Z = 0``. The solve goes through a
chunked QR of ``[A | E]`` (stable, memory ``O(chunk × elements)``), then an SVD.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from allscaip.data.readers import DataError

CountsEnergies = tuple[np.ndarray, np.ndarray]
Data = Union[Sequence[Atoms], CountsEnergies]


def counts_and_energies(
    data: Data, elements: Sequence[int], max_frames: Optional[int] = None, seed: int = 0
) -> CountsEnergies:
    """``(counts [N, K] int64, energies [N])`` with columns in the order of ``elements``.

    ``data`` is a dataset / sequence of Atoms (each frame is read once) or an already computed
    ``(counts, energies)`` tuple (returned as is). ``max_frames`` picks a seeded random subset.
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return data
    elements = [int(z) for z in elements]
    col = np.full(max(elements) + 1, -1, dtype=np.int64)
    col[elements] = np.arange(len(elements))
    idx = np.arange(len(data))
    if max_frames is not None and len(idx) > max_frames:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), max_frames, replace=False))
    counts = np.zeros((len(idx), len(elements)), dtype=np.int64)
    energies = np.zeros(len(idx))
    for row, i in enumerate(idx):
        atoms = data[int(i)]
        z = atoms.numbers
        bad = z[(z >= len(col)) | (col[np.minimum(z, len(col) - 1)] < 0)]
        if len(bad):
            where = atoms.info.get("source", f"frame {i}")
            raise DataError(f"{where}: element {chemical_symbols[int(bad[0])]} not in the model's elements")
        np.add.at(counts[row], col[z], 1)
        res = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        if res.get("energy") is None:
            raise DataError(f"{atoms.info.get('source', f'frame {i}')}: missing energy label")
        energies[row] = float(res["energy"])
    if len(idx) == 0:
        raise DataError("cannot fit element references on an empty data set")
    return counts, energies


def _r_factor(counts: np.ndarray, energies: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Upper-triangular R of ``[A | E] = Q R`` by chunked (TSQR) Householder QR."""
    r = np.zeros((0, counts.shape[1] + 1))
    for s in range(0, len(energies), chunk):
        m = np.hstack([counts[s : s + chunk].astype(float), energies[s : s + chunk, None]])
        r = np.linalg.qr(np.vstack([r, m]), mode="r")
    return r


def fit_element_references(
    data: Data, elements: Sequence[int], ridge: float = 1e-16, max_frames: Optional[int] = None, seed: int = 0
) -> dict[int, float]:
    """Per-element reference energies ``{Z: ε_Z}`` (eV) minimising ``Σ_i (E_i - Σ_Z n_iZ ε_Z)²``
    (plus the tiny ridge described in the module docstring)."""
    counts, energies = counts_and_energies(data, elements, max_frames, seed)
    r = _r_factor(counts, energies)
    k = counts.shape[1]
    a, z = r[:, :k], r[:, k]
    norms = np.linalg.norm(a, axis=0)  # = column norms of A, since Q is orthonormal
    scale = np.where(norms > 0, norms, 1.0)
    u, s, vt = np.linalg.svd(a / scale, full_matrices=False)
    x = vt.T @ (s / (s**2 + ridge) * (u.T @ z))
    eps = x / scale
    return {int(zz): float(e) for zz, e in zip(elements, eps)}


def referenced_energies_per_atom(
    data: Data, refs: dict[int, float], max_frames: Optional[int] = None, seed: int = 0
) -> np.ndarray:
    """``(E_i - Σ_Z n_iZ ε_Z) / N_i`` for each frame (eV/atom)."""
    elements = list(refs)
    counts, energies = counts_and_energies(data, elements, max_frames, seed)
    eps = np.array([refs[z] for z in elements])
    return (energies - counts @ eps) / counts.sum(axis=1)


def energy_rms_after_references(
    data: Data, refs: dict[int, float], max_frames: Optional[int] = None, seed: int = 0
) -> float:
    """RMS over frames of the per-atom referenced energy (eV/atom): the energy target scale."""
    return float(np.sqrt(np.mean(referenced_energies_per_atom(data, refs, max_frames, seed) ** 2)))


def fit_references_and_rms(
    data: Data, elements: Sequence[int], ridge: float = 1e-16, max_frames: Optional[int] = None, seed: int = 0
) -> tuple[dict[int, float], float]:
    """Both in one pass over the data (reads each frame once)."""
    ce = counts_and_energies(data, elements, max_frames, seed)
    refs = fit_element_references(ce, elements, ridge)
    return refs, energy_rms_after_references(ce, refs)
