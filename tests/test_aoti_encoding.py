"""The AOTInductor export (.pt2) of a node-encoding (sinc_pairs) model: the package takes the encoding
pairs as two more inputs and equals the eager model and the TorchScript export to 1e-8 eV/Å in
float64, in Python (a triclinic cell smaller than the encoding range, a molecule without a cell, no
pair within range) and in pair_style allscaip on one rank (1e-10 relative, the triclinic cell and the
molecule), and on two ranks (gathered whole-system evaluation) equal to one rank to 1e-10.

One AOTInductor compile for the module (the expensive part, a few minutes of CPU time), made by the
allscaip-export CLI, which also verifies it against the checkpoint.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import EXPORT_MODEL, small_model
from lammps_harness import activated_env, assert_rel, lammps_input, python_reference, run_lammps, single_point
from lammps_harness import write_data as write_lammps_data

from allscaip import structures
from allscaip.calculator import AllScAIPCalculator
from allscaip.checkpoint import save_checkpoint
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip.neighbors import whole_system_inputs
from allscaip_export import cli
from allscaip_export.aoti import load_aoti
from allscaip_export.metadata import ENCODING_INPUTS, WHOLE_SYSTEM_INPUTS
from allscaip_export.torchscript import load_torchscript

ENCODING_RANGE_A = 7.5
"""Longer than the 6.2 Å edges of the small triclinic cell: pairs meet several images of one atom."""
ENCODING_WEIGHT_STD = 0.5
"""Random encoding weights of this spread, so that the pair bias moves the forces by far more than
the tolerance (checked by test_encoding_moves_the_forces)."""
ENGINE_AGREEMENT_EV_A = 1e-8
"""Issue 22: engines agree to 1e-8 eV/Å in float64 (energy in eV, virial in eV alike)."""
LAMMPS_TOLERANCE = 1e-10
"""Relative agreement of pair_style allscaip with the Python model (as tests/test_lammps_encoding.py)."""
RANK_TOLERANCE = 1e-10
"""Relative agreement of a run on several ranks with one rank (only summation order differs)."""


def _small_cell() -> Atoms:
    """24 atoms in a 6.2 Å triclinic cell, smaller than the encoding range."""
    return structures.water_box(8, spacing=3.1, seed=4, cell_skew=True)


def _molecule() -> Atoms:
    """A 12-atom water cluster without a cell (zeros, pbc off)."""
    atoms = structures.water_box(8, spacing=2.9, seed=2)[:12]
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    atoms.info.update(charge=0, spin=1)
    return atoms


def _apart() -> Atoms:
    """Two atoms further apart than the encoding range: no pair, no edge."""
    atoms = Atoms("HO", positions=[[0.0, 0.0, 0.0], [ENCODING_RANGE_A + 1.5, 0.0, 0.0]])
    atoms.info.update(charge=0, spin=1)
    return atoms


SYSTEMS = {"small triclinic cell": _small_cell, "molecule": _molecule, "no pair within range": _apart}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """(eager model, checkpoint, (.pt module, metadata), (.pt2 callable, metadata)) of one float64
    sinc_pairs model; both exports by the CLI (each verified against the checkpoint)."""
    model = small_model(node_encoding="sinc_pairs", encoding_range=ENCODING_RANGE_A, encoding_freqs=8, **EXPORT_MODEL)
    torch.manual_seed(5)
    with torch.no_grad():
        model.encoding_weights.normal_(0.0, ENCODING_WEIGHT_STD)
    model.eval()
    ckpt = tmp_path_factory.mktemp("aoti_encoding") / "model.ckpt"
    save_checkpoint(ckpt, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    assert cli.main([str(ckpt)]) == 0
    assert cli.main([str(ckpt), "--format", "aoti"]) == 0
    return model, ckpt, load_torchscript(ckpt.with_suffix(".pt")), load_aoti(ckpt.with_suffix(".pt2"))


def _eager(model, atoms):
    periodic = bool(atoms.pbc.all())
    out = compute_properties(model, atoms_to_batch([atoms]), stress=periodic)
    virial = -out["stress"][0] * atoms.get_volume() if periodic else None
    return out["energy"][0], out["forces"], virial, out["energies"]


def _max_diff(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def test_encoding_moves_the_forces(packages):
    """The agreement below is not met trivially by a model whose encoding does nothing."""
    model = packages[0]
    atoms = _small_cell()
    f_on = _eager(model, atoms)[1]
    saved = model.encoding_weights.detach().clone()
    with torch.no_grad():
        model.encoding_weights.zero_()
    f_off = _eager(model, atoms)[1]
    with torch.no_grad():
        model.encoding_weights.copy_(saved)
    assert _max_diff(f_on, f_off) > 1e-3


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_aoti_equals_eager_and_torchscript(packages, system):
    model, _, (module, ts_meta), (call, meta) = packages
    atoms = SYSTEMS[system]()
    args = whole_system_inputs(atoms, meta["cutoff"], torch.float64, "cpu", meta["encoding_range"])
    if system == "no pair within range":
        assert args[8].shape == (2, 0) and args[4].shape == (2, 0)
    else:
        assert args[8].shape[1] > args[4].shape[1] > 0  # more pairs within R than edges within the cutoff
    aoti = call(*args)
    ts = module(*args)
    energy, forces, virial, energies = _eager(model, atoms)
    for name, got, want in (("energy", aoti[0], energy), ("forces", aoti[1], forces), ("energies", aoti[3], energies)):
        assert _max_diff(got, want) <= ENGINE_AGREEMENT_EV_A, f"{name}: AOTI vs eager"
    if virial is not None:
        assert _max_diff(aoti[2], virial) <= ENGINE_AGREEMENT_EV_A, "virial: AOTI vs eager"
    for k, name in enumerate(("energy", "forces", "virial", "energies")):
        assert _max_diff(aoti[k], ts[k]) <= ENGINE_AGREEMENT_EV_A, f"{name}: AOTI vs TorchScript"


def test_aoti_without_pairs_is_a_clear_error(packages):
    call, meta = packages[3]
    args = whole_system_inputs(_small_cell(), meta["cutoff"], torch.float64, "cpu")  # no encoding_range
    with pytest.raises(ValueError, match=r"node_encoding='sinc_pairs': pass its encoding pairs .* 7.5 Å"):
        call(*args)


def test_metadata_names_the_encoding(packages):
    (_, ts_meta), (_, meta) = packages[2], packages[3]
    assert meta["format"] == "aoti" and meta["node_encoding"] == "sinc_pairs" and meta["interface_version"] == 2
    assert meta["encoding_range"] == ENCODING_RANGE_A and meta["ghost_cutoff"] == ENCODING_RANGE_A
    assert meta["inputs"] == WHOLE_SYSTEM_INPUTS + ENCODING_INPUTS == ts_meta["inputs"]
    assert not meta["supports_domain_decomposition"]


def test_ase_calculator_runs_the_package(packages):
    model, ckpt = packages[0], packages[1]
    energy, forces, virial, _ = _eager(model, _small_cell())
    atoms = _small_cell()
    atoms.calc = AllScAIPCalculator(str(ckpt.with_suffix(".pt2")))
    assert abs(atoms.get_potential_energy() - float(energy)) <= ENGINE_AGREEMENT_EV_A
    assert np.abs(atoms.get_forces() - forces.numpy()).max() <= ENGINE_AGREEMENT_EV_A
    stress = -virial.numpy() / atoms.get_volume()
    assert np.abs(atoms.get_stress(voigt=False) - stress).max() <= ENGINE_AGREEMENT_EV_A


# ------------------------------------------------------------------------------------ LAMMPS


def _molecule_in_box() -> Atoms:
    """The molecule in a 20 Å box for a non-periodic LAMMPS run (boundary f f f)."""
    atoms = _molecule()
    atoms.positions += 10.0 - atoms.positions.mean(0)
    atoms.cell = np.eye(3) * 20.0
    return atoms


@pytest.mark.lammps
@pytest.mark.parametrize("system", ["small triclinic cell", "molecule"])
def test_lammps_one_rank_equals_python(packages, tmp_path, system):
    """pair_style allscaip runs the package whole-system, its pairs from the neighbour list out to R."""
    model, ckpt = packages[0], packages[1]
    periodic = system == "small triclinic cell"
    data = tmp_path / "system.data"
    atoms = write_lammps_data(_small_cell() if periodic else _molecule_in_box(), data)
    script = lammps_input(
        data, ckpt.with_suffix(".pt2"), boundary="p p p" if periodic else "f f f", per_atom_virial=False
    )
    log = run_lammps(activated_env(), tmp_path / "run", script)
    assert "node encoding sinc_pairs with range 7.5 A" in log
    sp = single_point(log, tmp_path / "run")
    ref = python_reference(model, atoms)
    if not periodic:  # W = sum_i x_i (x) F_i without a cell
        w = np.einsum("ia,ib->ab", atoms.positions, ref["forces"])
        ref["virial"] = w[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    assert abs(sp["energy"] - ref["energy"]) <= LAMMPS_TOLERANCE * abs(ref["energy"])
    assert_rel(sp["forces"], ref["forces"], LAMMPS_TOLERANCE, "forces")
    assert_rel(sp["virial"], ref["virial"], LAMMPS_TOLERANCE, "virial")
    assert_rel(sp["energies"], ref["energies"], LAMMPS_TOLERANCE, "per-atom energies")


@pytest.mark.lammps
def test_lammps_ranks_equal_one_rank(packages, tmp_path):
    """On 2 ranks the package runs gathered (every rank evaluates the whole system with all pairs)
    and gives the one-rank numbers to 1e-10."""
    model, ckpt = packages[0], packages[1]
    data = tmp_path / "small.data"
    atoms = write_lammps_data(_small_cell(), data)
    runs = {}
    for nprocs, grid in ((1, None), (2, "2 1 1")):
        wd = tmp_path / f"np{nprocs}"
        script = lammps_input(data, ckpt.with_suffix(".pt2"), per_atom_virial=False, processors=grid)
        log = run_lammps(activated_env(), wd, script, nprocs=nprocs)
        runs[nprocs] = single_point(log, wd)
    assert "AOTInductor package on 2 MPI ranks: gathered whole-system evaluation" in log
    one, two = runs[1], runs[2]
    assert abs(two["energy"] - one["energy"]) <= RANK_TOLERANCE * abs(one["energy"])
    for key in ("forces", "virial", "energies"):
        assert_rel(two[key], one[key], RANK_TOLERANCE, f"{key} on 2 ranks")
    ref = python_reference(model, atoms)
    assert_rel(two["forces"], ref["forces"], LAMMPS_TOLERANCE, "forces on 2 ranks against Python")
