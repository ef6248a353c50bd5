"""The exported staged (domain-decomposition) interface equals the whole-system call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_model, water_box

from allscaip.neighbors import system_neighbor_pairs
from allscaip_export.dd_reference import dd_evaluate, split_slabs
from allscaip_export.metadata import build_metadata
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
