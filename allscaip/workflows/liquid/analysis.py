"""Time-series statistics, density and heat of vaporization with standard errors.

For a correlated series x_1..x_N the standard error of the mean is
``sd(x) * sqrt(g / N)`` with the statistical inefficiency ``g = 1 + 2 sum_t (1 - t/N) C(t)``
(pymbar's estimator: the normalised autocorrelation C(t) is summed until it first drops to
zero). The start of the equilibrated region ``t0`` is chosen as in pymbar's
``detect_equilibration``, by maximising the number of uncorrelated samples (N - t0) / g, but
only over the first half of the series: on a short series of a slowly wandering observable the
unrestricted maximum can sit in the last few samples (a tail that happens to look uncorrelated)
and report its mean with a tiny error bar. The production run follows an explicit
equilibration, so discarding more than half of it would be a symptom, not a cure. pymbar
(PyPI ``pymbar``) computes g when importable; otherwise the same estimator implemented here
(:func:`_statistical_inefficiency`).

ΔHvap = <U_gas> - <U_liq>/N_mol + RT  (ideal gas; the kinetic energies cancel)
with standard error sqrt(se(U_gas)^2 + se(U_liq/N_mol)^2) (independent simulations).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from allscaip.units import BOLTZMANN_KJ_PER_MOL_K


def _pymbar_timeseries():
    """pymbar.timeseries, imported without its JAX banner; None when pymbar is missing."""
    log = logging.getLogger("pymbar")
    old = log.level
    log.setLevel(logging.ERROR)
    try:  # pymbar is optional at run time (without it, the estimator below); its import logs a banner
        from pymbar import timeseries

        return timeseries
    except ImportError:
        return None
    finally:
        log.setLevel(old)


def _statistical_inefficiency(x: np.ndarray, mintime: int = 3) -> float:
    """pymbar's ``statistical_inefficiency`` (fast=False) for one series."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    dx = x - x.mean()
    var = float(np.dot(dx, dx) / n)
    if var == 0.0:
        return 1.0
    g = 1.0
    t = 1
    while t < n - 1:
        c = float(np.dot(dx[: n - t], dx[t:]) / (n - t) / var)
        if c <= 0.0 and t > mintime:
            break
        g += 2.0 * c * (1.0 - t / n)
        t += 1
    return max(g, 1.0)


def statistical_inefficiency(x) -> float:
    """Statistical inefficiency g >= 1 of a series (pymbar when available)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0.0:
        return 1.0
    ts = _pymbar_timeseries()
    if ts is not None:
        return float(ts.statistical_inefficiency(x))
    return _statistical_inefficiency(x)


def detect_equilibration(x, max_origins: int = 200, max_discard: float = 0.5):
    """``(t0, g, n_eff)``: start of the equilibrated region, its statistical inefficiency and the
    number of uncorrelated samples after t0. Candidate starts run from 0 to ``max_discard`` of
    the series (at most ``max_origins`` of them)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 4 or np.ptp(x) == 0.0:
        return 0, 1.0, float(n)
    last = int(max_discard * n)
    nskip = max(1, (last + 1) // max_origins)
    best = (0, 1.0, -1.0)
    for t in range(0, last + 1, nskip):
        g = statistical_inefficiency(x[t:])
        neff = (n - t) / g
        if neff > best[2]:
            best = (t, g, neff)
    return int(best[0]), float(best[1]), float(best[2])


@dataclass
class SeriesStats:
    """Mean and standard error of a correlated series after discarding ``t0`` samples."""

    mean: float
    stderr: float
    std: float
    g: float  # statistical inefficiency (in samples)
    t0: int  # discarded samples
    n: int  # samples used (after t0)
    n_total: int
    n_eff: float  # n / g
    sample_interval_ps: Optional[float] = None

    @property
    def correlation_time_ps(self) -> Optional[float]:
        """Integrated correlation time (g - 1) / 2 sample intervals, in ps."""
        if self.sample_interval_ps is None:
            return None
        return (self.g - 1.0) / 2.0 * self.sample_interval_ps

    def as_dict(self) -> dict:
        d = asdict(self)
        d["correlation_time_ps"] = self.correlation_time_ps
        return d


def analyse_series(x, detect: bool = True, sample_interval_ps: Optional[float] = None) -> SeriesStats:
    """Equilibration detection (``detect``) + mean ± standard error with statistical inefficiency."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("analyse_series needs a non-empty 1-D series")
    if not np.all(np.isfinite(x)):
        raise ValueError("the series has non-finite values (did the simulation blow up?)")
    n_total = len(x)
    t0 = 0
    if detect and n_total >= 4:
        t0, _, _ = detect_equilibration(x)
    y = x[t0:]
    n = len(y)
    g = statistical_inefficiency(y)
    std = float(y.std(ddof=1)) if n > 1 else 0.0
    stderr = std * math.sqrt(g / n) if n > 1 else float("nan")
    return SeriesStats(
        float(y.mean()), float(stderr), std, float(g), int(t0), int(n), int(n_total), float(n / g), sample_interval_ps
    )


@dataclass
class Result:
    value: float
    stderr: float

    def as_dict(self) -> dict:
        return {"value": self.value, "stderr": self.stderr}


def heat_of_vaporization(u_gas: SeriesStats, u_liq_per_molecule: SeriesStats, temperature_K: float) -> Result:
    """ΔHvap (kJ/mol) = <U_gas> - <U_liq>/N + RT, errors added in quadrature."""
    value = u_gas.mean - u_liq_per_molecule.mean + BOLTZMANN_KJ_PER_MOL_K * temperature_K
    err = math.sqrt(u_gas.stderr**2 + u_liq_per_molecule.stderr**2)
    return Result(float(value), float(err))


def running_mean(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return np.cumsum(x) / np.arange(1, len(x) + 1)


def ar1_series(n: int, phi: float, mean: float = 0.0, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    """A stationary AR(1) series x_t = mean + phi (x_{t-1} - mean) + noise with marginal standard
    deviation ``sigma``; its statistical inefficiency is (1 + phi) / (1 - phi)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, sigma * math.sqrt(1.0 - phi * phi), n)
    x = np.empty(n)
    x[0] = rng.normal(0.0, sigma)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x + mean


def energy_drift_mev_atom_ps(time_ps, total_energy_ev, n_atoms: int) -> float:
    """Energy drift of an NVE segment: slope of a least-squares line through the total energy
    against time, in meV per atom per ps."""
    t, e = np.asarray(time_ps, dtype=float), np.asarray(total_energy_ev, dtype=float)
    if len(t) < 2 or np.ptp(t) == 0.0:
        raise ValueError(f"the drift needs at least two samples at different times, got {len(t)}")
    return float(np.polyfit(t - t[0], e, 1)[0] * 1000.0 / n_atoms)
