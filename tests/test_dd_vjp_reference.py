"""The staged evaluation with a manual reverse pass over per-stage VJPs (the executable specification
of a staged .pt2, allscaip_export.dd_vjp_reference) equals the eager model and the autograd staged
reference on slabs of a periodic triclinic water box (float64), and a float32 model its float32 self."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import small_model, water_box

from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip_export import dd_vjp_reference
from allscaip_export.dd_reference import dd_evaluate, split_slabs
from allscaip_export.dd_vjp_reference import dd_vjp_evaluate
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import ExportedAllScAIP

RANK_TOLERANCE = 1e-10
"""Relative agreement in float64: the stages and their VJPs only reorder sums."""


@pytest.fixture(scope="module", params=["radius", "knn", "local_only"])
def module(request):
    kw = {"radius": {}, "knn": {"max_neighbors": 6}, "local_only": {"node_attention": False}}[request.param]
    model = small_model(**kw).eval()
    # the unscripted export module: the Python functions a compiled stage would be traced from
    return model, ExportedAllScAIP(model, json.dumps(build_metadata(model, "float64", "cpu", "torchscript")))


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max()) / max(float(expected.abs().max()), 1e-12)


@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_vjp_reverse_pass_equals_eager(module, nranks):
    model, exported = module
    atoms = water_box(2, cell_skew=True, seed=4)
    owner = split_slabs(atoms.get_scaled_positions()[:, 0], nranks)
    if nranks == 3:  # a rank that owns no atom still runs every stage and communication
        owner[owner == 1] = 2
    args = (atoms.positions, atoms.numbers, atoms.cell.array, owner, nranks)
    out = dd_vjp_evaluate(exported, *args)
    ref = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    virial = -ref["stress"][0] * atoms.get_volume()
    assert abs(out["energy"].item() - ref["energy"].item()) <= RANK_TOLERANCE * abs(ref["energy"].item())
    assert _rel(out["forces"], ref["forces"]) <= RANK_TOLERANCE
    assert _rel(out["virial"], virial) <= RANK_TOLERANCE
    assert _rel(out["energies"], ref["energies"]) <= RANK_TOLERANCE
    # the same numbers as the autograd staged reference (what the .pt path runs)
    auto = dd_evaluate(exported, *args)
    assert _rel(out["forces"], auto["forces"]) <= RANK_TOLERANCE
    assert _rel(out["virial"], auto["virial"]) <= RANK_TOLERANCE


def test_reverse_ghost_communication_is_needed(module, monkeypatch):
    """Without the reverse ghost communication (ghost rows' gradients dropped instead of summed
    into their owners) the forces are wrong by far more than the tolerance: the comparison above
    can fail, and the reverse pass really carries gradients between ranks."""
    model, exported = module
    atoms = water_box(2, cell_skew=True, seed=4)
    owner = split_slabs(atoms.get_scaled_positions()[:, 0], 2)
    ref = compute_properties(model, atoms_to_batch([atoms]))

    def owned_rows_only(g_all, ranks, n):
        return [g[: len(rk["owned"])] for rk, g in zip(ranks, g_all)]

    monkeypatch.setattr(dd_vjp_reference, "_reverse_ghost_rows", owned_rows_only)
    out = dd_vjp_evaluate(exported, atoms.positions, atoms.numbers, atoms.cell.array, owner, 2)
    assert _rel(out["forces"], ref["forces"]) > 1e-4


FLOAT32_TOLERANCE = 1e-5
"""Relative agreement of a float32 model with its eager self: the layouts' edge vectors are made in
float64 and rounded once, the eager model rounds positions first (measured: 1.5e-6)."""


@pytest.mark.parametrize("kw", [{"max_neighbors": 6}, {"node_attention": False}], ids=["knn", "local_only"])
def test_float32_model(kw):
    """A float32 model (what ``allscaip-export --staged --dtype float32`` compiles) takes float32 edge
    vectors; its gradients are tallied as the layouts' float64."""
    model32 = small_model(**kw).float().eval()
    exported = ExportedAllScAIP(model32, "{}")
    atoms = water_box(2, cell_skew=True, seed=4)
    ref = compute_properties(model32, atoms_to_batch([atoms], dtype=torch.float32), stress=True)
    owner = split_slabs(atoms.get_scaled_positions()[:, 0], 2)
    out = dd_vjp_evaluate(exported, atoms.positions, atoms.numbers, atoms.cell.array, owner, 2)
    assert out["energy"].dtype == torch.float32
    assert _rel(out["forces"].float(), ref["forces"]) <= FLOAT32_TOLERANCE
    assert abs(float(out["energy"]) - float(ref["energy"])) <= FLOAT32_TOLERANCE * abs(float(ref["energy"]))
