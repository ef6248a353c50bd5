"""allscaip-export of fairchem AllScAIP checkpoints (TorchScript whole-system call), and the export in
the ASE calculator and the OpenMM plugin, against fairchem's own numbers of the fixture.

Tolerances: as tests/test_fairchem_parity.py for float64 exports (fairchem's numbers are float32);
a float32 export also returns its energy in float32, whose rounding on these -800 to -2600 eV totals
is up to 1.2e-4 eV (about 1e-7 relative)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from allscaip.engines.ase_calculator import AllScAIPCalculator
from allscaip.units import EV_TO_KJ_PER_MOL
from allscaip_export.cli import main as export_main
from allscaip_export.torchscript import load_torchscript

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fairchem"
ENERGY_ATOL = 2e-5  # eV, float64 export
ENERGY_RTOL_F32 = 1e-6  # float32 export: float32 rounding of the total energy (the target)
FORCE_ATOL = {"float64": 3e-5, "float32": 1e-5}  # eV/Å
STRESS_ATOL = 1e-6  # eV/Å³


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


def atoms_of(name: str) -> Atoms:
    s = reference()["structures"][name]
    # coordinates rounded to float32 as fairchem's float32 run saw them (tests/test_fairchem_parity.py)
    rounded = {key: np.asarray(s[key], dtype=np.float32).astype(np.float64) for key in ("positions", "cell")}
    atoms = Atoms(numbers=s["numbers"], positions=rounded["positions"], cell=rounded["cell"], pbc=s["pbc"])
    atoms.info.update(charge=s["charge"], spin=s["spin"])
    return atoms


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """float64 and float32 exports of the conserving fixture, each verified by allscaip-export."""
    folder = tmp_path_factory.mktemp("fairchem_export")
    paths = {}
    for dtype in ("float64", "float32"):
        paths[dtype] = folder / f"conserving_{dtype}.pt"
        source = str(FIXTURE / "allscaip_md_conserving.pt")
        assert export_main([source, "-o", str(paths[dtype]), "--dtype", dtype]) == 0
    return paths


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exported_model_in_ase_matches_fairchem(exported, dtype):
    module, meta = load_torchscript(exported[dtype])
    assert meta["supports_domain_decomposition"] is True and meta["staged_interface"] == "fairchem"
    assert meta["dtype"] == dtype
    assert meta["weights"] == "ema" and meta["fairchem_task"] == "omol"
    calc = AllScAIPCalculator(exported[dtype])
    for name, expected in reference()["models"]["conserving"]["results"].items():
        atoms = atoms_of(name)
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        if dtype == "float64":
            assert energy == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
        else:
            assert energy == pytest.approx(expected["energy"], rel=ENERGY_RTOL_F32)
        np.testing.assert_allclose(atoms.get_forces(), expected["forces"], atol=FORCE_ATOL[dtype], rtol=0)
        if all(atoms.pbc):
            voigt = full_3x3_to_voigt_6_stress(np.asarray(expected["stress"]))
            np.testing.assert_allclose(atoms.get_stress(), voigt, atol=STRESS_ATOL, rtol=0)


def test_direct_model_and_aoti_are_refused(tmp_path, capsys):
    direct = str(FIXTURE / "allscaip_md_direct.pt")
    assert export_main([direct, "-o", str(tmp_path / "direct.pt")]) == 2
    assert "direct-force fairchem model" in capsys.readouterr().err
    conserving = str(FIXTURE / "allscaip_md_conserving.pt")
    assert export_main([conserving, "--format", "aoti", "-o", str(tmp_path / "x.pt2")]) == 2
    assert "TorchScript only" in capsys.readouterr().err


def topology_of(atoms):
    from openmm import app

    top = app.Topology()
    residue = top.addResidue("MOL", top.addChain())
    for k, z in enumerate(atoms.numbers):
        top.addAtom(f"A{k}", app.element.Element.getByAtomicNumber(int(z)), residue)
    return top


@pytest.mark.parametrize("source", ["export", "checkpoint"])
def test_openmm_matches_fairchem(exported, source):
    """The OpenMM plugin (PythonForce) with the export, or with the fairchem checkpoint itself."""
    openmm = pytest.importorskip("openmm")
    from openmm import unit

    from allscaip_openmm import MLPotential

    name = "benzene_cation_doublet"
    atoms = atoms_of(name)
    expected = reference()["models"]["conserving"]["results"][name]
    path = exported["float64"] if source == "export" else FIXTURE / "allscaip_md_conserving.pt"
    system = MLPotential("allscaip", modelPath=str(path)).createSystem(topology_of(atoms), charge=1, spin=2)
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * 0.1)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert energy == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
    forces_ev = np.asarray(forces) / (EV_TO_KJ_PER_MOL * 10.0)
    np.testing.assert_allclose(forces_ev, expected["forces"], atol=FORCE_ATOL["float64"], rtol=0)


def test_torchforce_module_of_fairchem_checkpoint(tmp_path):
    """openmm-torch's module (what TorchForce runs) built from the fairchem checkpoint: called as the
    Reference kernel calls it (float64 positions in nm), it gives fairchem's energy and forces."""
    pytest.importorskip("openmm")
    from allscaip_openmm.torchforce import write_torchforce_module

    name = "benzene_cation_doublet"
    atoms = atoms_of(name)
    expected = reference()["models"]["conserving"]["results"][name]
    source = FIXTURE / "allscaip_md_conserving.pt"
    path = write_torchforce_module(source, topology_of(atoms), tmp_path / "tf.pt", charge=1, spin=2)
    module = torch.jit.load(str(path))
    positions_nm = torch.tensor(atoms.positions * 0.1, dtype=torch.float64, requires_grad=True)
    energy, forces = module(positions_nm)
    assert float(energy) / EV_TO_KJ_PER_MOL == pytest.approx(expected["energy"], abs=ENERGY_ATOL)
    forces_ev = forces.detach().numpy() / (EV_TO_KJ_PER_MOL * 10.0)
    np.testing.assert_allclose(forces_ev, expected["forces"], atol=FORCE_ATOL["float64"], rtol=0)
