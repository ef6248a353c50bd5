"""Independent numpy references for the OpenMM labels (used by the tests and the data summary).

Coulomb + Lorentz-Berthelot Lennard-Jones between two molecules by a direct double sum, and a
plain Ewald sum (real space over images + reciprocal space + self term) with the switched
Born-Mayer repulsion for the point-charge boxes. Nothing here calls OpenMM.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from scipy.special import erfc

from allscaip.units import EV_TO_KJ_PER_MOL
from allscaip.workflows.longrange.parameters import COULOMB_EV_A, REP_A, REP_RHO, REP_SWITCH


def dimer_energy_forces(
    pos: np.ndarray, na: int, q: np.ndarray, sigma: np.ndarray, eps_kjmol: np.ndarray
) -> Tuple[float, np.ndarray]:
    """Intermolecular Coulomb + LJ (eV, eV/Å) between atoms [:na] and [na:] (Å, e, Å, kJ/mol)."""
    a, b = slice(0, na), slice(na, None)
    dv = pos[a, None, :] - pos[None, b, :]  # [na, nb, 3], from j (in B) to i (in A)
    r = np.linalg.norm(dv, axis=-1)
    qq = q[a, None] * q[None, b]
    s = 0.5 * (sigma[a, None] + sigma[None, b])
    e = np.sqrt(eps_kjmol[a, None] * eps_kjmol[None, b]) / EV_TO_KJ_PER_MOL
    sr6 = (s / r) ** 6
    energy = COULOMB_EV_A * qq / r + 4.0 * e * (sr6 * sr6 - sr6)
    # -dU/dr
    fmag = COULOMB_EV_A * qq / r**2 + 24.0 * e * (2.0 * sr6 * sr6 - sr6) / r
    fpair = (fmag / r)[..., None] * dv  # force on the A atom from the B atom
    forces = np.zeros_like(pos)
    forces[a] = fpair.sum(1)
    forces[b] = -fpair.sum(0)
    return float(energy.sum()), forces


def switch(r: np.ndarray, r_on: float, r_off: float) -> Tuple[np.ndarray, np.ndarray]:
    """OpenMM's switching function S (1 - 10x^3 + 15x^4 - 6x^5) and dS/dr, x = (r-r_on)/(r_off-r_on)."""
    x = np.clip((r - r_on) / (r_off - r_on), 0.0, 1.0)
    s = 1.0 - 10.0 * x**3 + 15.0 * x**4 - 6.0 * x**5
    ds = (-30.0 * x**2 + 60.0 * x**3 - 30.0 * x**4) / (r_off - r_on)
    return s, ds


def _repulsion(r: np.ndarray, a: float | None, rho: float | None, window) -> Tuple[np.ndarray, np.ndarray]:
    """Switched Born-Mayer energy A exp(-r/rho) S(r) and its -d/dr (eV, eV/Å); 0 beyond the cutoff."""
    a = REP_A if a is None else a
    rho = REP_RHO if rho is None else rho
    r_on, r_off = window or REP_SWITCH
    s, ds = switch(r, r_on, r_off)
    with np.errstate(over="ignore", invalid="ignore"):
        u = a * np.exp(-r / rho)
        return np.where(r < r_off, u * s, 0.0), np.where(r < r_off, u * s / rho - u * ds, 0.0)


def repulsion_pair(r: np.ndarray, a: float | None = None, rho: float | None = None, window=None) -> np.ndarray:
    """Switched Born-Mayer energy A exp(-r/rho) S(r) (eV); 0 beyond the cutoff."""
    return _repulsion(r, a, rho, window)[0]


def repulsion_force_pair(r: np.ndarray, a: float | None = None, rho: float | None = None, window=None) -> np.ndarray:
    """-d/dr of :func:`repulsion_pair` (eV/Å)."""
    return _repulsion(r, a, rho, window)[1]


def ewald_energy_forces(
    pos: np.ndarray, q: np.ndarray, box: float, alpha: float = 0.35, tol: float = 1e-12
) -> Tuple[float, np.ndarray]:
    """Coulomb energy (eV) and forces (eV/Å) of point charges ``q`` in a cubic periodic box (Å)
    by an Ewald sum with splitting ``alpha`` (1/Å), converged to about ``tol``."""
    n = len(q)
    # real space: all images within r_cut
    r_cut = math.sqrt(-math.log(tol)) / alpha
    m = int(math.ceil(r_cut / box)) + 1
    rng = np.arange(-m, m + 1)
    shifts = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3) * box
    e_real = 0.0
    f = np.zeros((n, 3))
    for i in range(n):
        dv = pos[i][None, None, :] - (pos[None, :, :] + shifts[:, None, :])  # [S, n, 3]: r_i - (r_j + image shift)
        r = np.linalg.norm(dv, axis=-1)
        ok = (r > 1e-12) & (r < r_cut)
        rr = np.where(ok, r, 1.0)
        qq = q[i] * q[None, :]
        e_real += 0.5 * np.sum(np.where(ok, qq * erfc(alpha * rr) / rr, 0.0))
        fm = np.where(
            ok,
            qq * (erfc(alpha * rr) / rr**2 + 2.0 * alpha / math.sqrt(math.pi) * np.exp(-((alpha * rr) ** 2)) / rr),
            0.0,
        )
        f[i] += np.sum((fm / rr)[..., None] * dv, axis=(0, 1))
    # reciprocal space
    k_max = 2.0 * alpha * math.sqrt(-math.log(tol))
    nmax = int(math.ceil(k_max * box / (2.0 * math.pi)))
    rng = np.arange(-nmax, nmax + 1)
    nvec = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3)
    nvec = nvec[np.any(nvec != 0, axis=1)]
    k = 2.0 * math.pi / box * nvec
    k2 = (k * k).sum(1)
    keep = k2 <= k_max**2
    k, k2 = k[keep], k2[keep]
    vol = box**3
    fk = np.exp(-k2 / (4.0 * alpha**2)) / k2
    phase = pos @ k.T  # [n, K]
    s = (q[:, None] * np.exp(1j * phase)).sum(0)  # S(k)
    e_recip = 2.0 * math.pi / vol * np.sum(fk * np.abs(s) ** 2)
    im = np.imag(np.exp(1j * phase) * np.conj(s)[None, :])  # [n, K]
    f += 4.0 * math.pi / vol * q[:, None] * ((fk[None, :] * im) @ k)
    e_self = -alpha / math.sqrt(math.pi) * np.sum(q * q)
    return float(COULOMB_EV_A * (e_real + e_recip + e_self)), COULOMB_EV_A * f


def box_energy_forces(pos: np.ndarray, q: np.ndarray, box: float) -> Tuple[float, np.ndarray]:
    """Ewald Coulomb + switched repulsion (minimum image) of a point-charge box (eV, eV/Å)."""
    e, f = ewald_energy_forces(pos, q, box)
    dv = pos[:, None] - pos[None]
    dv -= box * np.round(dv / box)
    r = np.linalg.norm(dv, axis=-1)
    np.fill_diagonal(r, np.inf)
    rep_e, fm = _repulsion(r, None, None, None)
    e += 0.5 * float(rep_e.sum())
    f = f + ((fm / np.where(np.isfinite(r), r, 1.0))[..., None] * dv).sum(1)
    return e, f
