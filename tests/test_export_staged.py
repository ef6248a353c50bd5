"""The exported staged (domain-decomposition) interface equals the whole-system call; with the node
encoding (sinc_pairs), the TorchScript export and the staged spec equal the eager model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from conftest import small_model, water_box

from allscaip.calculator import AllScAIPCalculator
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip.neighbors import (
    batch_neighbor_pairs,
    encoding_pairs,
    pad_neighbors,
    system_neighbor_pairs,
    whole_system_inputs,
)
from allscaip_export.dd_reference import dd_evaluate, split_slabs
from allscaip_export.metadata import ENCODING_INTERFACE_VERSION, build_metadata
from allscaip_export.torchscript import export_torchscript, load_torchscript


def whole_system(module, atoms):
    i, j, s = system_neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, module.cutoff)
    return module(
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers),
        torch.tensor(atoms.cell.array),
        torch.tensor(atoms.pbc),
        torch.tensor(np.stack([i, j])),
        torch.tensor(s, dtype=torch.float64),
        torch.tensor(0),
        torch.tensor(1),
    )


@pytest.fixture(scope="module", params=["radius", "knn", "local_only"])
def exported(request, tmp_path_factory):
    kw = {"radius": {}, "knn": {"max_neighbors": 6}, "local_only": {"node_attention": False}}[request.param]
    model = small_model(**kw)
    path = tmp_path_factory.mktemp("export") / "model.pt"
    export_torchscript(model, path, build_metadata(model, "float64", "cpu", "torchscript"))
    module, meta = load_torchscript(path)
    return module, meta


@pytest.mark.parametrize("nranks", [1, 2, 3, 5])
def test_staged_evaluation_is_rank_count_independent(exported, nranks):
    module, _ = exported
    atoms = water_box(2, cell_skew=True, seed=4)
    e, f, w, ea = whole_system(module, atoms)
    frac = atoms.get_scaled_positions()[:, 0]
    # 5 slabs of a 6 Å cell: some ranks own few atoms; rank 0 of the 5-way split is emptied
    owner = split_slabs(frac, nranks)
    if nranks == 5:
        owner[owner == 0] = 1
    out = dd_evaluate(module, atoms.positions, atoms.numbers, atoms.cell.array, owner, nranks)
    assert abs(out["energy"].item() - e.item()) < 1e-10 * abs(e.item())
    np.testing.assert_allclose(out["forces"].numpy(), f.numpy(), atol=1e-10)
    np.testing.assert_allclose(out["virial"].numpy(), w.numpy(), atol=1e-9)
    np.testing.assert_allclose(out["energies"].numpy(), ea.numpy(), atol=1e-10)


def test_metadata_readable_without_running(exported):
    module, meta = exported
    assert meta["elements"] == ["H", "C", "N", "O"]
    assert meta["cutoff"] == pytest.approx(4.0)
    assert meta["ghost_cutoff"] == pytest.approx(4.0)
    assert meta["units"]["energy"] == "eV"
    assert module.num_layers == meta["num_layers"] == 2


# ------------------------------------------------------------------ node encoding (sinc_pairs)

ENCODING = dict(node_encoding="sinc_pairs", encoding_range=7.5, encoding_freqs=8)
ENCODING_BOOST = 10.0
"""Random encoding weights times this: a bias of order one, so that the encoding carries a large
share of the forces (as in tests/test_node_encoding.py)."""
SPEC_TOLERANCE = 1e-12
"""dd_reference against the eager model in float64: the same operations, summed in another order."""


def encoding_model():
    model = small_model(**ENCODING)
    with torch.no_grad():
        model.encoding_weights.mul_(ENCODING_BOOST)
    return model.eval()


def eager_whole_system(model, atoms):
    """Energy, forces, virial W = -dE/dstrain and per-atom energies of the eager model."""
    batch = atoms_to_batch([atoms])
    center, neighbor, shift = batch_neighbor_pairs(batch, model.cutoff)
    index, pshift, mask = pad_neighbors(center, neighbor, shift.double(), len(atoms))
    pair_index, pair_shift = encoding_pairs(batch, model.encoding_range)
    args = (model.species_of(batch.numbers), batch.system, batch.cell, batch.pbc, index, pshift, mask)
    out = model.energy_forces_virial(
        batch.positions, *args, batch.charge, batch.spin, pair_index=pair_index, pair_shift=pair_shift
    )
    return out.energy[0], out.forces, out.virial[0], out.energies


@pytest.fixture(scope="module")
def encoded_file(tmp_path_factory):
    model = encoding_model()
    path = tmp_path_factory.mktemp("export_encoding") / "model.pt"
    export_torchscript(model, path, build_metadata(model, "float64", "cpu", "torchscript"))
    return model, path


@pytest.fixture(scope="module")
def encoded_export(encoded_file):
    model, path = encoded_file
    module, meta = load_torchscript(path)
    return model, module, meta


def encoding_systems():
    """A triclinic periodic cell smaller than the encoding range (several images of each pair
    within it) and a molecule without a cell."""
    water = water_box(2, cell_skew=True, seed=4)
    assert max(water.cell.lengths()) < ENCODING["encoding_range"]
    mol = molecule("CH3CH2OH")
    mol.positions += rng_shift(mol)
    return {"triclinic": water, "molecule": mol}


def rng_shift(atoms):
    return np.random.default_rng(3).normal(0.0, 0.05, atoms.positions.shape)


def test_encoding_metadata(encoded_export):
    _, module, meta = encoded_export
    assert meta["node_encoding"] == "sinc_pairs" and meta["encoding_range"] == pytest.approx(7.5)
    assert meta["ghost_cutoff"] == pytest.approx(7.5)  # ghost atoms out to the encoding range
    assert meta["supports_domain_decomposition"] is True
    assert len(meta["inputs"]) == 10 and meta["inputs"][8].startswith("encoding_index")
    assert meta["interface_version"] == ENCODING_INTERFACE_VERSION == module.interface_version
    assert module.encoding_range == pytest.approx(7.5)


@pytest.mark.parametrize("system", ["triclinic", "molecule"])
def test_torchscript_encoding_equals_eager(encoded_export, system):
    model, module, meta = encoded_export
    atoms = encoding_systems()[system]
    e, f, w, ea = module(*whole_system_inputs(atoms, meta["cutoff"], torch.float64, "cpu", meta["encoding_range"]))
    ref = eager_whole_system(model, atoms)
    assert abs(e.item() - ref[0].item()) <= 1e-10 * abs(ref[0].item())
    np.testing.assert_allclose(f.numpy(), ref[1].numpy(), atol=1e-10)
    np.testing.assert_allclose(w.numpy(), ref[2].numpy(), atol=1e-10)
    np.testing.assert_allclose(ea.numpy(), ref[3].numpy(), atol=1e-10)
    if system == "triclinic":  # stress as the ASE calculator reports it
        stress = compute_properties(model, atoms_to_batch([atoms]), stress=True)["stress"][0]
        np.testing.assert_allclose((-w / atoms.get_volume()).numpy(), stress.numpy(), atol=1e-10)
    with pytest.raises(Exception, match="encoding pairs"):  # the pairs are required
        module(*whole_system_inputs(atoms, meta["cutoff"], torch.float64, "cpu"))


@pytest.mark.parametrize("system,nranks", [("triclinic", 1), ("triclinic", 3), ("triclinic", 5), ("molecule", 3)])
def test_staged_encoding_equals_eager(encoded_export, system, nranks):
    """The executable spec of the staged evaluation (export/dd_reference.py) with the node
    encoding equals AllScAIP.forward to 1e-12 in float64, on any rank split (5: one rank empty)."""
    model, module, _ = encoded_export
    atoms = encoding_systems()[system]
    periodic = bool(atoms.pbc.all())
    frac = atoms.get_scaled_positions()[:, 0] if periodic else (atoms.positions[:, 0] - atoms.positions[:, 0].min())
    owner = split_slabs(frac / (1.0 if periodic else frac.max() + 1e-9), nranks)
    if nranks == 5:
        owner[owner == 0] = 1
    out = dd_evaluate(
        module, atoms.positions, atoms.numbers, atoms.cell.array, owner, nranks, pbc=tuple(bool(p) for p in atoms.pbc)
    )
    e, f, w, ea = eager_whole_system(model, atoms)
    tol = SPEC_TOLERANCE
    assert abs(out["energy"].item() - e.item()) <= tol * abs(e.item())
    np.testing.assert_allclose(out["forces"].numpy(), f.numpy(), atol=tol)
    np.testing.assert_allclose(out["virial"].numpy(), w.numpy(), atol=tol)
    np.testing.assert_allclose(out["energies"].numpy(), ea.numpy(), atol=tol)
    # the encoding matters: without it the numbers differ by far more than the tolerance
    assert np.abs(f.numpy() - eager_without_encoding(model, atoms)).max() > 1e-3


def eager_without_encoding(model, atoms):
    """Forces of the same model with its encoding weights zeroed (to show the encoding matters)."""
    weights = model.encoding_weights.detach().clone()
    with torch.no_grad():
        model.encoding_weights.zero_()
    try:
        return eager_whole_system(model, atoms)[1].numpy()
    finally:
        with torch.no_grad():
            model.encoding_weights.copy_(weights)


def test_ase_calculator_runs_the_encoding_export(encoded_file):
    """AllScAIPCalculator on the .pt passes the encoding pairs (metadata encoding_range)."""
    model, path = encoded_file
    atoms = encoding_systems()["triclinic"]
    atoms.calc = AllScAIPCalculator(path)
    ref = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    assert abs(atoms.get_potential_energy() - ref["energy"].item()) <= 1e-10 * abs(ref["energy"].item())
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy(), atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), ref["stress"][0].numpy(), atol=1e-10)
