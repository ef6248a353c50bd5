"""pair_style allscaip with an exported fairchem AllScAIP (export/fairchem_torchscript.py, staged
evaluation of lammps_plugin/allscaip_fairchem_staged.cpp on every rank count): one MPI rank against
fairchem's own numbers of the fixture, and 1, 2 and 3 ranks owning real sub-domains against each
other and the whole-system Python model (docs/fairchem.md, *Multi-rank evaluation*)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from lammps_harness import (
    _cluster_in_big_box,
    activated_env,
    assert_rel,
    lammps_input,
    run_lammps,
    single_point,
    write_data,
)

from allscaip.model.fairchem_load import fairchem_model
from allscaip_export.cli import main as export_main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fairchem"
ENERGY_ATOL = 2e-5  # eV (tests/test_fairchem_parity.py: fairchem's numbers are float32)
FORCE_ATOL = 3e-5  # eV/Å, float64 export against fairchem's float32 forces
VIRIAL_ATOL = 1e-4  # eV, on virials of about 10 eV (stress tolerance 1e-6 eV/Å³ times 240 Å³)
RANK_INDEPENDENCE = 1e-10  # relative, float64 (the target)
RATTLE, REPEAT = 0.05, (3, 2, 2)  # 288 atoms in 18.6 x 12.4 x 12.4 Å (tests/test_fairchem_staged.py)


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


def rattled_water(workdir: Path) -> Atoms:
    s = json.loads((FIXTURE / "reference.json").read_text())["structures"]["water8_periodic"]
    atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=True).repeat(REPEAT)
    atoms.positions += np.random.default_rng(7).normal(0.0, RATTLE, atoms.positions.shape)
    return write_data(atoms, workdir / "data.lmp")


def python_reference(atoms: Atoms):
    """Energy, forces, virial (LAMMPS's six components) of the whole-system Python model, float64."""
    model = fairchem_model(FIXTURE / "allscaip_md_conserving.pt", dtype=torch.float64)
    ref = model(
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers),
        torch.tensor(np.array(atoms.cell)),
        torch.tensor(atoms.pbc),
        compute_stress=True,
    )
    w = ref.virial.numpy()
    return float(ref.energy), ref.forces.numpy(), np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])


def test_ranks_equal_one_rank_and_the_python_model(exported, tmp_path):
    """Slabs of 9.3 and 6.2 Å (2 and 3 ranks along x): edges, destination rows and node attention
    cross ranks; charge and spin default (0, multiplicity 1) as in the Python call."""
    atoms = rattled_water(tmp_path)
    env = activated_env()
    got = {}
    for nprocs in (1, 2, 3):
        workdir = tmp_path / f"np{nprocs}"
        script = lammps_input(tmp_path / "data.lmp", exported, processors=f"{nprocs} 1 1", per_atom_virial=False)
        got[nprocs] = single_point(run_lammps(env, workdir, script, nprocs=nprocs), workdir)
    energy, forces, voigt = python_reference(atoms)
    for nprocs in (1, 2, 3):
        assert_rel(got[nprocs]["energy"], energy, RANK_INDEPENDENCE, f"energy on {nprocs} ranks")
        assert_rel(got[nprocs]["forces"], forces, RANK_INDEPENDENCE, f"forces on {nprocs} ranks")
        assert_rel(got[nprocs]["virial"], voigt, RANK_INDEPENDENCE, f"virial on {nprocs} ranks")
        assert_rel(got[nprocs]["energies"], got[1]["energies"], RANK_INDEPENDENCE, f"energies on {nprocs} ranks")


def test_ranks_without_atoms(exported, tmp_path):
    """Three waters near x = 3 Å of a 24 Å box on `processors 4 1 1`: two ranks own no atom and must
    still run every communication (forward and backward) in step with the others."""
    atoms = write_data(_cluster_in_big_box(), tmp_path / "cluster.lmp")
    script = lammps_input(tmp_path / "cluster.lmp", exported, processors="4 1 1", per_atom_virial=False)
    got = single_point(run_lammps(activated_env(), tmp_path, script, nprocs=4), tmp_path)
    energy, forces, voigt = python_reference(atoms)
    assert_rel(got["energy"], energy, RANK_INDEPENDENCE, "energy")
    assert_rel(got["forces"], forces, RANK_INDEPENDENCE, "forces")
    assert_rel(got["virial"], voigt, RANK_INDEPENDENCE, "virial")


def test_sm_model_on_two_ranks_is_refused(tmp_path):
    """sm models (sinc bias, a whole-system normalisation) have no staged evaluation."""
    path = tmp_path / "sm.pt"
    sm = FIXTURE.parent / "fairchem_sm" / "allscaip_sm_conserving.pt"
    assert export_main([str(sm), "-o", str(path), "--no-verify"]) == 0
    water_box(tmp_path)
    script = lammps_input(tmp_path / "data.lmp", path, per_atom_virial=False)
    log = run_lammps(activated_env(), tmp_path, script, nprocs=2, expect_fail=True)
    assert "use an md checkpoint" in log
