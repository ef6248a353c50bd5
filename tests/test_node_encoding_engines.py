"""sinc_pairs checkpoints in the Python engines: the ASE calculator, OpenMM's PythonForce and a
TorchForce module written from the checkpoint agree with the eager model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
from conftest import small_model, water_box  # noqa: E402
from test_node_encoding import SavedShapes  # noqa: E402
from test_openmm import call_like_torchforce, context_for, energy_forces, topology_of  # noqa: E402

from allscaip.calculator import AllScAIPCalculator  # noqa: E402
from allscaip.checkpoint import save_checkpoint  # noqa: E402
from allscaip.data import atoms_to_batch  # noqa: E402
from allscaip.model import compute_properties  # noqa: E402
from allscaip.neighbors import whole_system_inputs  # noqa: E402
from allscaip.units import EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL  # noqa: E402
from allscaip_export.metadata import build_metadata  # noqa: E402
from allscaip_export.staged_whole_system import StagedWholeSystem  # noqa: E402
from allscaip_export.torchscript import export_torchscript, load_torchscript  # noqa: E402
from allscaip_openmm import MLPotential  # noqa: E402
from allscaip_openmm.torchforce import write_torchforce_module  # noqa: E402

ENGINE_AGREEMENT_EV_A = 1e-8  # issue 22: engines agree to 1e-8 eV/Å in float64


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A random-weight float64 sinc_pairs model whose range (7 Å) exceeds half the 6.2 Å box."""
    torch.manual_seed(3)
    model = small_model(node_encoding="sinc_pairs", encoding_range=7.0, encoding_freqs=8)
    with torch.no_grad():
        model.encoding_weights.normal_(0.0, 0.5)  # large enough that the encoding moves the forces
    path = tmp_path_factory.mktemp("encoded") / "model.ckpt"
    save_checkpoint(path, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    return model, path


def _eager(model, atoms):
    out = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    return float(out["energy"][0]), out["forces"].numpy(), out["stress"][0].numpy()


def test_encoding_changes_the_forces(encoded):
    """The agreement below is not trivially met by a model whose encoding does nothing."""
    model, _ = encoded
    atoms = water_box(2, cell_skew=True, seed=6)
    _, f_on, _ = _eager(model, atoms)
    with torch.no_grad():
        saved = model.encoding_weights.clone()
        model.encoding_weights.zero_()
        _, f_off, _ = _eager(model, atoms)
        model.encoding_weights.copy_(saved)
    assert np.abs(f_on - f_off).max() > 1e-3


def test_ase_calculator_equals_eager(encoded):
    model, path = encoded
    atoms = water_box(2, cell_skew=True, seed=6)
    e, f, s = _eager(model, atoms)
    atoms.calc = AllScAIPCalculator(str(path))
    assert abs(atoms.get_potential_energy() - e) <= 1e-10 * abs(e)
    assert np.abs(atoms.get_forces() - f).max() <= ENGINE_AGREEMENT_EV_A
    stress = atoms.get_stress(voigt=False)
    assert np.abs(stress - s).max() <= 1e-10


@pytest.mark.parametrize("periodic", [True, False])
def test_openmm_pythonforce_equals_eager(encoded, periodic):
    model, path = encoded
    atoms = water_box(2, cell_skew=True, seed=6)
    if not periodic:
        atoms = atoms[:12]
        atoms.pbc = False
        atoms.cell = None
    atoms.info.update(charge=0, spin=1)
    e, f, _ = _eager(model, atoms)
    top = topology_of(atoms, 3)
    system = MLPotential("allscaip", modelPath=str(path)).createSystem(top, charge=0, spin=1)
    e_mm, f_mm = energy_forces(context_for(system, atoms))
    assert abs(e_mm - e * EV_TO_KJ_PER_MOL) <= 1e-9 * abs(e * EV_TO_KJ_PER_MOL)
    assert np.abs(f_mm / EV_PER_A_TO_KJ_PER_MOL_NM - f).max() <= ENGINE_AGREEMENT_EV_A


@pytest.mark.parametrize("kernel", ["reference", "cuda-float64"])
def test_torchforce_module_from_the_checkpoint_equals_eager(encoded, tmp_path, kernel):
    """The TorchForce module (scripted, computing its own encoding pairs) as openmm-torch calls it."""
    model, path = encoded
    atoms = water_box(2, cell_skew=True, seed=6)
    e, f, _ = _eager(model, atoms)
    module = torch.jit.load(str(write_torchforce_module(path, topology_of(atoms, 3), tmp_path / "tf.pt")))
    e_tf, f_tf, _ = call_like_torchforce(module, atoms.positions * 0.1, atoms.cell.array * 0.1, kernel, True)
    assert abs(e_tf - e * EV_TO_KJ_PER_MOL) <= 1e-9 * abs(e * EV_TO_KJ_PER_MOL)
    assert np.abs(f_tf / EV_PER_A_TO_KJ_PER_MOL_NM - f).max() <= ENGINE_AGREEMENT_EV_A


@pytest.fixture(scope="module")
def encoded_torchscript(encoded, tmp_path_factory):
    model, _ = encoded
    path = tmp_path_factory.mktemp("encoded_pt") / "model.pt"
    export_torchscript(model, str(path), build_metadata(model, "float64", "cpu", "torchscript"))
    return path


def test_torchscript_in_ase_runs_staged_and_equals_eager(encoded, encoded_torchscript):
    """A .pt with a node encoding in the ASE calculator takes the staged route (blocked attention)
    and equals the eager model; OpenMM's PythonForce loads it the same way."""
    model, _ = encoded
    atoms = water_box(2, cell_skew=True, seed=6)
    e, f, s = _eager(model, atoms)
    calc = AllScAIPCalculator(str(encoded_torchscript))
    assert isinstance(calc._module, StagedWholeSystem)
    atoms.calc = calc
    assert abs(atoms.get_potential_energy() - e) <= 1e-10 * abs(e)
    assert np.abs(atoms.get_forces() - f).max() <= ENGINE_AGREEMENT_EV_A
    assert np.abs(atoms.get_stress(voigt=False) - s).max() <= 1e-10
    atoms.info.update(charge=0, spin=1)
    system = MLPotential("allscaip", modelPath=str(encoded_torchscript)).createSystem(
        topology_of(atoms, 3), charge=0, spin=1
    )
    e_mm, f_mm = energy_forces(context_for(system, atoms))
    assert abs(e_mm - e * EV_TO_KJ_PER_MOL) <= 1e-9 * abs(e * EV_TO_KJ_PER_MOL)
    assert np.abs(f_mm / EV_PER_A_TO_KJ_PER_MOL_NM - f).max() <= ENGINE_AGREEMENT_EV_A


def test_staged_torchscript_keeps_nothing_quadratic(encoded, encoded_torchscript):
    """The staged route in 16-row blocks equals the export's own dense whole-system call, and
    autograd saves nothing [n, n] on it, while the dense call does."""
    atoms = water_box(3, cell_skew=True, seed=4)  # 27 molecules, 81 atoms
    n = len(atoms)
    scripted, metadata = load_torchscript(encoded_torchscript)
    inputs = whole_system_inputs(atoms, float(metadata["cutoff"]), torch.float64, "cpu", metadata["encoding_range"])
    staged = StagedWholeSystem(scripted, block_elements=int(metadata["heads"]) * n * 16)
    results, shapes = {}, {}
    for name, call in (("dense", scripted), ("staged", staged)):
        with SavedShapes() as saved:
            results[name] = call(*inputs)
        shapes[name] = saved.shapes
    for dense, blocked in zip(results["dense"], results["staged"]):
        assert (dense - blocked).abs().max() <= 1e-10 * max(1.0, dense.abs().max())

    def quadratic(s):
        return sum(d == n for d in s) >= 2

    assert any(quadratic(s) for s in shapes["dense"])
    assert not any(quadratic(s) for s in shapes["staged"]), [s for s in shapes["staged"] if quadratic(s)]
