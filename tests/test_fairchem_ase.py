"""AllScAIPCalculator on fairchem AllScAIP checkpoints (recognised by content) against fairchem's own
FAIRChemCalculator numbers of the fixture (tests/fixtures/fairchem/reference.json).

Tolerances as in tests/test_fairchem_parity.py (fairchem's numbers are float32)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import full_3x3_to_voigt_6_stress

from allscaip.engines.ase_calculator import AllScAIPCalculator

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fairchem"
ENERGY_ATOL = 2e-5  # eV
FORCE_ATOL = {"float32": 1e-5, "float64": 3e-5}  # eV/Å (float64 against fairchem's float32 rounding)
STRESS_ATOL = 1e-6  # eV/Å³


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


def atoms_of(name: str, with_charge_spin: bool = True) -> Atoms:
    s = reference()["structures"][name]
    # coordinates rounded to float32 as fairchem's float32 run saw them (tests/test_fairchem_parity.py)
    rounded = {key: np.asarray(s[key], dtype=np.float32).astype(np.float64) for key in ("positions", "cell")}
    atoms = Atoms(numbers=s["numbers"], positions=rounded["positions"], cell=rounded["cell"], pbc=s["pbc"])
    if with_charge_spin:
        atoms.info.update(charge=s["charge"], spin=s["spin"])
    return atoms


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["conserving", "direct"])
def test_calculator_reads_fairchem_checkpoint(kind, dtype):
    calc = AllScAIPCalculator(FIXTURE / f"allscaip_md_{kind}.pt", dtype=dtype)
    for name, expected in reference()["models"][kind]["results"].items():
        atoms = atoms_of(name)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
        np.testing.assert_allclose(atoms.get_forces(), expected["forces"], atol=FORCE_ATOL[dtype], rtol=0)
        assert calc.results["energies"].sum() == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
        if "stress" in expected and all(atoms.pbc):
            voigt = full_3x3_to_voigt_6_stress(np.asarray(expected["stress"]))
            np.testing.assert_allclose(atoms.get_stress(), voigt, atol=STRESS_ATOL, rtol=0)
        elif all(atoms.pbc):
            with pytest.raises(PropertyNotImplementedError):
                atoms.get_stress()  # a direct-force model has no stress


def test_detection_by_content_and_charge_spin_from_info(tmp_path):
    """Any suffix: the file's content tells; charge and spin come from atoms.info (defaults 0 and 1)."""
    renamed = tmp_path / "published.ckpt"
    shutil.copy(FIXTURE / "allscaip_md_conserving.pt", renamed)
    calc = AllScAIPCalculator(renamed, dtype="float32")
    expected = reference()["models"]["conserving"]["results"]["benzene_cation_doublet"]
    cation = atoms_of("benzene_cation_doublet")
    cation.calc = calc
    assert cation.get_potential_energy() == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
    neutral = atoms_of("benzene_cation_doublet", with_charge_spin=False)
    calc.reset()  # ASE's change check looks at positions, numbers, cell and pbc, not atoms.info
    neutral.calc = calc
    assert abs(neutral.get_potential_energy() - expected["energy"]) > 1e-3  # another charge/spin embedding
    bad = atoms_of("ethanol")
    bad.info["charge"] = 101
    bad.calc = calc
    with pytest.raises(ValueError, match="charge 101"):
        bad.get_potential_energy()
