"""A staged .pt2 in Python (allscaip_export.aoti_stages): every stage of a two-layer model and its VJP
compiled with AOTInductor into one package (12 named models), compiled once on the sizes of rank 0
of a 3-slab split, then run by the manual reverse pass of allscaip_export.dd_vjp_reference on 1, 2
and 3 ranks: equal to the eager model to 1e-10 in float64 (dynamic centre, row, kept-width and
edge-token counts).

Twelve Inductor compiles: the slowest test module of the export tests (about 10 minutes of CPU
time on one thread)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import small_model, water_box

from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip_export.aoti import read_metadata
from allscaip_export.aoti_stages import compile_staged, load_staged
from allscaip_export.dd_reference import rank_layouts, split_slabs
from allscaip_export.dd_vjp_reference import dd_vjp_evaluate
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import ExportedAllScAIP

RANK_TOLERANCE = 1e-10
"""Relative agreement with the eager model in float64 (compiled kernels reorder sums)."""
KNN = 9
"""max_neighbors of the test model: on rank 0 of the 3-slab split its sizes (7 centres, 84 rows,
kept width 10, 55 edge tokens, 24 atoms) differ from each other and from the model's fixed sizes,
as make_fx needs to keep them apart."""


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    model = small_model(max_neighbors=KNN).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    meta = build_metadata(model, "float64", "cpu", "aoti")
    module = ExportedAllScAIP(model, json.dumps(meta))
    atoms = water_box(2, cell_skew=True, seed=4)
    owner = split_slabs(atoms.get_scaled_positions()[:, 0], 3)
    rank0 = rank_layouts(module, atoms.positions, atoms.numbers, atoms.cell.array, owner, 3)[0]
    sizes = {len(rank0["owned"]), rank0["z_all"].shape[0], rank0["index"].shape[1], len(atoms)}
    assert len(sizes) == 4 and not sizes & {1, 4, 5, 8, 32}, f"example sizes not generic: {sizes}"
    path = tmp_path_factory.mktemp("staged") / "staged.pt2"
    compile_staged(module, path, meta, (atoms.positions, atoms.numbers, atoms.cell.array, owner, 3))
    return model, module, path, atoms


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max()) / max(float(expected.abs().max()), 1e-30)


@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_compiled_stages_equal_eager(package, nranks):
    model, module, path, atoms = package
    stages, vjps = load_staged(path, int(module.num_layers))
    owner = split_slabs(atoms.get_scaled_positions()[:, 0], nranks)
    args = (atoms.positions, atoms.numbers, atoms.cell.array, owner, nranks)
    out = dd_vjp_evaluate(module, *args, stage=stages, backward=vjps)
    ref = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    virial = -ref["stress"][0] * atoms.get_volume()
    assert abs(out["energy"].item() - ref["energy"].item()) <= RANK_TOLERANCE * abs(ref["energy"].item())
    assert _rel(out["forces"], ref["forces"]) <= RANK_TOLERANCE
    assert _rel(out["virial"], virial) <= RANK_TOLERANCE
    assert _rel(out["energies"], ref["energies"]) <= RANK_TOLERANCE


def test_package_holds_every_stage_and_metadata(package):
    path = package[2]
    meta = read_metadata(path)
    assert meta["format"] == "aoti" and meta["num_layers"] == 2
    stages, vjps = load_staged(path, 2)
    assert (
        sorted(stages)
        == sorted(vjps)
        == ["finish_0", "finish_1", "local_project_0", "local_project_1"]
        + [
            "prepare",
            "readout",
        ]
    )
