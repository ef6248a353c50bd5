"""pair_style allscaip with an exported fairchem AllScAIP (export/fairchem_torchscript.py): one MPI
rank through the whole-system call, against fairchem's own numbers of the fixture; two ranks refused
(no staged interface: docs/fairchem.md, *Limitations*)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from lammps_harness import activated_env, lammps_input, run_lammps, single_point, write_data

from allscaip_export.cli import main as export_main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fairchem"
ENERGY_ATOL = 2e-5  # eV (tests/test_fairchem_parity.py: fairchem's numbers are float32)
FORCE_ATOL = 3e-5  # eV/Å, float64 export against fairchem's float32 forces
VIRIAL_ATOL = 1e-4  # eV, on virials of about 10 eV (stress tolerance 1e-6 eV/Å³ times 240 Å³)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("fairchem_lammps") / "conserving.pt"
    assert export_main([str(FIXTURE / "allscaip_md_conserving.pt"), "-o", str(path), "--no-verify"]) == 0
    return path


def water_box(workdir: Path):
    ref = json.loads((FIXTURE / "reference.json").read_text())
    s = ref["structures"]["water8_periodic"]
    # coordinates rounded to float32 as fairchem's float32 run saw them
    positions = np.asarray(s["positions"], dtype=np.float32).astype(np.float64)
    cell = np.asarray(s["cell"], dtype=np.float32).astype(np.float64)
    atoms = write_data(Atoms(numbers=s["numbers"], positions=positions, cell=cell, pbc=True), workdir / "data.lmp")
    return atoms, ref["models"]["conserving"]["results"]["water8_periodic"]


def test_one_rank_matches_fairchem(exported, tmp_path):
    atoms, expected = water_box(tmp_path)
    log = run_lammps(activated_env(), tmp_path, lammps_input(tmp_path / "data.lmp", exported, per_atom_virial=False))
    got = single_point(log, tmp_path)
    assert got["energy"] == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
    np.testing.assert_allclose(got["forces"], expected["forces"], atol=FORCE_ATOL, rtol=0)
    w = -np.asarray(expected["stress"]) * atoms.get_volume()  # virial W = -dE/dstrain (eV)
    voigt = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
    np.testing.assert_allclose(got["virial"], voigt, atol=VIRIAL_ATOL, rtol=0)


def test_two_ranks_are_refused(exported, tmp_path):
    water_box(tmp_path)
    script = lammps_input(tmp_path / "data.lmp", exported, per_atom_virial=False)
    log = run_lammps(activated_env(), tmp_path, script, nprocs=2, expect_fail=True)
    assert "domain decomposition" in log
