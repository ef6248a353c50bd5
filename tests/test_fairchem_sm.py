"""The converted fairchem AllScAIP **sm** model (frequency mask in the neighbourhood attention, sinc
mask in the node attention; allscaip/model/fairchem_masks.py) against fairchem's own numbers of the
sm fixture (tests/fixtures/fairchem_sm, bench/fairchem_sm_fixture.py), without fairchem.

Tolerances and their reasons as in tests/test_fairchem_parity.py (fairchem runs float32; the
coordinates are rounded to float32 as fairchem saw them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from allscaip.engines.ase_calculator import AllScAIPCalculator
from allscaip.model.fairchem_load import fairchem_model
from allscaip_export.cli import main as export_main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fairchem_sm"
CHECKPOINT = FIXTURE / "allscaip_sm_conserving.pt"
STRUCTURES = ("ethanol", "benzene_cation_doublet", "water8_periodic")
ENERGY_ATOL = 2e-5  # eV; measured <= 3.8e-6 (float32), 1.7e-6 (float64)
FORCE_ATOL = {torch.float32: 1e-5, torch.float64: 3e-5}  # eV/Å; measured <= 1.8e-6, 1.4e-5
STRESS_ATOL = 1e-6  # eV/Å³; measured <= 5.2e-8
FD_STEP, FD_ATOL = 1e-5, 3e-7  # Å and eV/Å, float64 central differences (as the md test)


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


def rounded(s: dict, key: str) -> np.ndarray:
    return np.asarray(s[key], dtype=np.float32).astype(np.float64)


def inputs(name: str, dtype: torch.dtype):
    s = reference()["structures"][name]
    return (
        torch.tensor(rounded(s, "positions"), dtype=dtype),
        torch.tensor(s["numbers"]),
        torch.tensor(rounded(s, "cell"), dtype=dtype),
        torch.tensor(s["pbc"]),
        int(s["charge"]),
        int(s["spin"]),
    )


@pytest.fixture(scope="module")
def models():
    return {dtype: fairchem_model(CHECKPOINT, dtype=dtype) for dtype in (torch.float32, torch.float64)}


def test_fixture_is_an_sm_checkpoint(models):
    settings = models[torch.float64].settings
    assert settings.frequency_list == [6, 4, 2, 2, 2] and settings.sinc_frequencies == 32
    radial = models[torch.float64].transformer_blocks[1].node_attention.radial_weight
    assert radial is not None and tuple(radial.shape) == (4, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", STRUCTURES)
def test_matches_fairchem(models, name, dtype):
    expected = reference()["models"]["conserving"]["results"][name]
    periodic = name == "water8_periodic"
    out = models[dtype](*inputs(name, dtype), compute_stress=periodic)
    assert float(out.energy) == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
    np.testing.assert_allclose(out.forces.double().numpy(), expected["forces"], atol=FORCE_ATOL[dtype], rtol=0)
    if periodic:
        np.testing.assert_allclose(out.stress.double().numpy(), expected["stress"], atol=STRESS_ATOL, rtol=0)


def test_masks_matter(models):
    """Without its sinc bias or its frequency mask the model gives other forces (the masks are used)."""
    model = models[torch.float64]
    args = inputs("ethanol", torch.float64)
    full = model(*args).forces
    saved = model.frequency_list
    try:
        model.frequency_list = []
        without_frequency = model(*args).forces
    finally:
        model.frequency_list = saved
    saved_sinc = model.sinc_frequencies
    try:
        model.sinc_frequencies = 0
        without_sinc = model(*args).forces
    finally:
        model.sinc_frequencies = saved_sinc
    assert (full - without_frequency).abs().max() > 1e-3
    assert (full - without_sinc).abs().max() > 1e-3


def test_forces_and_stress_are_finite_differences_float64(models):
    model = models[torch.float64]
    positions, numbers, cell, pbc, charge, spin = inputs("water8_periodic", torch.float64)
    out = model(positions, numbers, cell, pbc, charge, spin, compute_stress=True)

    def energy(pos, box):
        return float(model(pos, numbers, box, pbc, charge, spin).energy)

    for atom, axis in [(0, 0), (5, 2), (23, 1)]:
        step = torch.zeros_like(positions)
        step[atom, axis] = FD_STEP
        fd = -(energy(positions + step, cell) - energy(positions - step, cell)) / (2 * FD_STEP)
        assert float(out.forces[atom, axis]) == pytest.approx(fd, abs=FD_ATOL)
    strain = torch.zeros(3, 3, dtype=torch.float64)
    strain[0, 1] = strain[1, 0] = FD_STEP / 2
    plus, minus = torch.eye(3, dtype=torch.float64) + strain, torch.eye(3, dtype=torch.float64) - strain
    de = energy(positions @ plus, cell @ plus) - energy(positions @ minus, cell @ minus)
    volume = float(torch.linalg.det(cell).abs())
    assert float(out.stress[0, 1]) == pytest.approx(de / (2 * FD_STEP) / volume, abs=FD_ATOL)


def test_export_in_ase_matches_fairchem(tmp_path):
    path = tmp_path / "sm.pt"
    assert export_main([str(CHECKPOINT), "-o", str(path)]) == 0  # verified against the eager model
    calc = AllScAIPCalculator(path)
    for name in STRUCTURES:
        s = reference()["structures"][name]
        atoms = Atoms(numbers=s["numbers"], positions=rounded(s, "positions"), cell=rounded(s, "cell"), pbc=s["pbc"])
        atoms.info.update(charge=s["charge"], spin=s["spin"])
        atoms.calc = calc
        expected = reference()["models"]["conserving"]["results"][name]
        assert atoms.get_potential_energy() == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
        np.testing.assert_allclose(atoms.get_forces(), expected["forces"], atol=FORCE_ATOL[torch.float64], rtol=0)
