"""Predicting a student's density from the teacher's NPT ensemble (allscaip.workflows.teacher.reweight)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from allscaip.calculator import AllScAIPCalculator
from allscaip.units import BOLTZMANN_KJ_PER_MOL_K
from allscaip.workflows.teacher import reweight

T = 298.15
KT = BOLTZMANN_KJ_PER_MOL_K * T
VAL = Path(__file__).resolve().parents[1] / "examples" / "water" / "data" / "val.extxyz"


def _gaussian_ensemble(n: int, slope_kT: float, noise_kT: float, seed: int = 0):
    """Teacher densities ρ ~ N(1.02, 0.03²) and ΔU = slope·z + noise (kT), z = (ρ − μ)/σ."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n)
    rho = 1.02 + 0.03 * z
    du_kT = slope_kT * z + noise_kT * rng.standard_normal(n) + 7.0  # a constant offset changes nothing
    return rho, du_kT * KT


def test_jointly_gaussian_ensemble_gives_the_analytic_shift():
    # reweighting N(μ, σ²) by exp(−a z) moves the mean to μ − a σ exactly
    rho, du = _gaussian_ensemble(40000, slope_kT=1.0, noise_kT=0.8)
    p = reweight.predict(rho, du, T, n_molecules=64, block=1)
    expected = 1.02 - 1.0 * 0.03
    assert p.teacher_density == pytest.approx(1.02, abs=4 * p.teacher_density_err)
    assert p.cumulant_density == pytest.approx(expected, abs=4 * p.cumulant_density_err + 1e-4)
    assert p.reweighted_density == pytest.approx(expected, abs=4 * p.reweighted_density_err + 1e-4)
    assert p.cumulant_density_err < 5e-4
    assert 0.1 * len(rho) < p.effective_frames < len(rho)
    assert p.density_slope_kT == pytest.approx(1.0 / 0.03 * 1.02, rel=0.05)  # kT per unit relative density
    assert p.error_spread_kT_per_box == pytest.approx(np.hypot(1.0, 0.8), rel=0.03)


def test_uncorrelated_error_leaves_the_density_alone():
    rho, du = _gaussian_ensemble(20000, slope_kT=0.0, noise_kT=1.5, seed=1)
    p = reweight.predict(rho, du, T, n_molecules=64, block=1)
    assert abs(p.cumulant_density - p.teacher_density) < 4 * p.cumulant_density_err
    assert p.mean_error_kj_mol_per_molecule == pytest.approx(7.0 * KT / 64, rel=0.05)


def test_block_bootstrap_sees_the_correlation():
    # an AR(1) series with correlation time ~20 samples: blocks of 50 give a ~6x larger error
    rng = np.random.default_rng(2)
    x = np.zeros(20000)
    for i in range(1, len(x)):
        x[i] = 0.95 * x[i - 1] + rng.standard_normal()
    naive = reweight.block_bootstrap(np.mean, [x], block=1, n_boot=200)
    blocked = reweight.block_bootstrap(np.mean, [x], block=200, n_boot=200)
    exact = x.std() * np.sqrt((1 + 0.95) / (1 - 0.95) / len(x))
    assert blocked == pytest.approx(exact, rel=0.3)
    assert blocked > 4 * naive


def test_model_energies_of_a_checkpoint_match_the_calculator(export_checkpoint):

    frames = [a for a in read(VAL, ":") if a.pbc.all()][:3]
    e = reweight.model_energies_ev(str(export_checkpoint), frames, batch_size=2, dtype="float64")
    calc = AllScAIPCalculator(export_checkpoint, dtype="float64")
    for a, ei in zip(frames, e):
        s = a.copy()
        s.calc = calc
        assert ei == pytest.approx(s.get_potential_energy(), abs=1e-8)
    rho = reweight.frame_densities(frames)
    np.testing.assert_allclose(rho, [a.info["density_g_cm3"] for a in frames], atol=2e-3)
