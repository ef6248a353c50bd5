"""Ion structure of an NaCl(aq) trajectory, read and computed with mdtraj: Na–Cl, Na–O and Cl–O radial
distribution functions, the Na–Cl first-peak height and the contact-ion-pair fraction, each with
block error bars.

* **RDFs**: ``mdtraj.compute_rdf`` over all (a, b) pairs of the two elements, minimum image
  (``periodic=True``), out to :data:`R_MAX_A` (less than half of any box the workflow runs).
* **First peak** of Na–Cl: the largest g(r) in :data:`NACL_PEAK_WINDOW_A`.
* **Contact-ion-pair fraction**: the fraction of Na⁺ that have at least one Cl⁻ within
  ``cip_cutoff_A`` (minimum image), averaged over frames. The cut-off is the first minimum of the
  Na–Cl RDF; :data:`CIP_CUTOFF_A` is its value for Joung–Cheatham ions in TIP3P (the teacher), where
  g(r) has its contact peak at 2.8 Å and its first minimum at about 3.5 Å, before the
  solvent-shared peak near 5 Å. :func:`first_minimum` measures it on a teacher RDF, and the
  workflow reports both.
* **Block errors**: the trajectory is cut into ``n_blocks`` consecutive blocks; a quantity's error
  bar is the standard error of its block values, std(ddof=1) / sqrt(n_blocks). The value itself is
  the whole trajectory's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

#: RDF range (Å): the first three shells of every pair, inside half of the 24.9 Å test box
R_MAX_A = 10.0
#: RDF bin width (Å)
BIN_A = 0.05
#: where the Na–Cl contact peak is looked for (Å): contact at 2.8 Å, well before the solvent-shared 5 Å peak
NACL_PEAK_WINDOW_A = (2.3, 3.3)
#: where the first minimum of Na–Cl is looked for (Å): between the contact and the solvent-shared peak
NACL_MINIMUM_WINDOW_A = (3.0, 4.5)
#: contact-ion-pair cut-off (Å): the teacher's (Joung–Cheatham in TIP3P) first minimum of g_NaCl (module docstring)
CIP_CUTOFF_A = 3.5
#: blocks of the error bars
DEFAULT_BLOCKS = 5
#: the element pairs of the RDFs
PAIRS = (("Na", "Cl"), ("Na", "O"), ("Cl", "O"))
NM_PER_A = 0.1


def load(trajectory: Path, topology: Path):
    """An ``mdtraj.Trajectory`` (DCD, LAMMPS or OpenMM) with its PDB topology."""
    import mdtraj

    traj = mdtraj.load(str(trajectory), top=str(topology))
    if traj.unitcell_lengths is None:
        raise ValueError(f"{trajectory} holds no box; write the trajectory with its periodic box (dump dcd does)")
    return traj


def element_indices(traj, symbol: str) -> np.ndarray:
    idx = np.array([a.index for a in traj.topology.atoms if a.element.symbol == symbol], dtype=int)
    if len(idx) == 0:
        raise ValueError(f"the trajectory has no {symbol} atom (elements: {sorted(element_symbols(traj))})")
    return idx


def element_symbols(traj) -> set:
    return {a.element.symbol for a in traj.topology.atoms}


def rdf(traj, a: str, b: str) -> Tuple[np.ndarray, np.ndarray]:
    """(r Å, g(r)) of elements ``a`` and ``b`` over ``traj`` (module docstring)."""
    import mdtraj

    pairs = traj.topology.select_pairs(element_indices(traj, a), element_indices(traj, b))
    r, g = mdtraj.compute_rdf(
        traj, pairs, r_range=(0.0, R_MAX_A * NM_PER_A), n_bins=round(R_MAX_A / BIN_A), periodic=True
    )
    return r / NM_PER_A, g


def first_peak(r: np.ndarray, g: np.ndarray, window: Sequence[float] = NACL_PEAK_WINDOW_A) -> Tuple[float, float]:
    """(height, position Å) of the largest g in ``window``."""
    sel = (r >= window[0]) & (r <= window[1])
    k = int(np.argmax(np.where(sel, g, -np.inf)))
    return float(g[k]), float(r[k])


def first_minimum(r: np.ndarray, g: np.ndarray, window: Sequence[float] = NACL_MINIMUM_WINDOW_A) -> float:
    """Position (Å) of the smallest g in ``window`` (the first minimum of a Na–Cl RDF)."""
    sel = (r >= window[0]) & (r <= window[1])
    return float(r[int(np.argmin(np.where(sel, g, np.inf)))])


def cip_fraction_per_frame(traj, cutoff_A: float = CIP_CUTOFF_A) -> np.ndarray:
    """Per frame: the fraction of Na with at least one Cl within ``cutoff_A`` (minimum image)."""
    import mdtraj

    na, cl = element_indices(traj, "Na"), element_indices(traj, "Cl")
    pairs = np.array([(i, j) for i in na for j in cl], dtype=int)
    d = mdtraj.compute_distances(traj, pairs, periodic=True) / NM_PER_A  # [frames, n_na * n_cl]
    contact = (d < cutoff_A).reshape(traj.n_frames, len(na), len(cl)).any(axis=2)
    return contact.mean(axis=1)


def blocks(n_frames: int, n_blocks: int) -> list:
    """``n_blocks`` consecutive slices covering ``n_frames`` (sizes differ by at most one)."""
    if n_blocks < 2 or n_frames < n_blocks:
        raise ValueError(
            f"block errors need n_blocks >= 2 and at least one frame per block; got {n_blocks} blocks "
            f"for {n_frames} frames (run longer or ask for fewer --blocks)"
        )
    edges = np.linspace(0, n_frames, n_blocks + 1).round().astype(int)
    return [slice(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def block_error(values: Sequence[float]) -> float:
    """Standard error of the mean of block values: std(ddof=1) / sqrt(n)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / np.sqrt(len(v)))


def analyse(traj, n_blocks: int = DEFAULT_BLOCKS, cip_cutoff_A: float = CIP_CUTOFF_A) -> Dict:
    """RDFs (with per-bin block errors), Na–Cl first peak and CIP fraction (with block errors) of ``traj``."""
    parts = blocks(traj.n_frames, n_blocks)
    out: Dict = {"n_frames": int(traj.n_frames), "n_blocks": n_blocks, "cip_cutoff_A": cip_cutoff_A, "rdf": {}}
    for a, b in PAIRS:
        r, g = rdf(traj, a, b)
        g_blocks = np.array([rdf(traj[s], a, b)[1] for s in parts])
        out["rdf"][f"{a}-{b}"] = {
            "r_A": r.tolist(),
            "g": g.tolist(),
            "g_err": (g_blocks.std(axis=0, ddof=1) / np.sqrt(n_blocks)).tolist(),
        }
        if (a, b) == ("Na", "Cl"):
            height, where = first_peak(r, g)
            out["nacl_peak"] = {
                "height": height,
                "height_err": block_error([first_peak(r, gb)[0] for gb in g_blocks]),
                "r_A": where,
            }
            out["nacl_first_minimum_A"] = first_minimum(r, g)
    cip = cip_fraction_per_frame(traj, cip_cutoff_A)
    out["cip_fraction"] = {"value": float(cip.mean()), "err": block_error([cip[s].mean() for s in parts])}
    return out
