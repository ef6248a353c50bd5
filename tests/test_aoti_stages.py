"""A stage of the staged evaluation and its VJP compiled with AOTInductor into one .pt2 under two
names (allscaip_export.aoti_stages): compiled once on one rank's sizes, they equal the eager stage
and VJP on every rank's sizes of a 3-slab split (dynamic centre, row, kept-width and edge counts).

Two Inductor compiles (about 2.5 min of CPU time on one thread)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import small_model, water_box

from allscaip_export.aoti import read_metadata
from allscaip_export.aoti_stages import compile_stage, load_stage, package_stages
from allscaip_export.dd_reference import rank_layouts, split_slabs
from allscaip_export.dd_vjp_reference import stage_functions, vjp_function
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import ExportedAllScAIP

STAGE_TOLERANCE = 1e-10
"""Relative agreement of a compiled stage with the eager one in float64 (fusion reorders sums)."""
KNN = 9
"""max_neighbors of the test model: its kept widths (10-13) differ from every other size here."""
STAGE = "local_project_0"


def _stage_inputs(stages, rank, generator):
    """(inputs, constants, cotangents, eager outputs) of layer 0's local stage on one rank's layout;
    the ghost rows of h_all are random (only the stage is compared)."""
    with torch.no_grad():
        (bias, legendre_p, h, edges), pruned = stages["prepare"](
            rank["vec"].detach(), rank["mask"], rank["index"], rank["z_all"]
        )
        ghosts = torch.randn(len(rank["ghost_atom"]), h.shape[1], dtype=h.dtype, generator=generator)
        inputs = (torch.cat([h, ghosts]), edges, legendre_p, bias)
        out = stages[STAGE](*inputs, pruned)
    cotangents = tuple(torch.randn(o.shape, dtype=o.dtype, generator=generator) for o in out)
    return inputs, (pruned,), cotangents, out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    model = small_model(max_neighbors=KNN).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    meta = build_metadata(model, "float64", "cpu", "aoti")
    module = ExportedAllScAIP(model, json.dumps(meta))
    atoms = water_box(2, cell_skew=True, seed=4)
    owner = split_slabs(atoms.get_scaled_positions()[:, 0], 3)
    ranks = rank_layouts(module, atoms.positions, atoms.numbers, atoms.cell.array, owner, 3)
    stages = stage_functions(module, 0, 1)
    generator = torch.Generator().manual_seed(0)
    cases = [_stage_inputs(stages, rk, generator) for rk in ranks]
    inputs, constants, cotangents, _ = cases[0]
    sizes = [s for t in inputs + constants for s in t.shape]
    varying = {inputs[0].shape[0], inputs[1].shape[0], inputs[3].shape[0], inputs[3].shape[1], constants[0].shape[1]}
    assert len(varying) == 5 and not varying & {int(model.cfg.hidden), 1, 4, 5, 8}, f"sizes not generic: {sizes}"
    backward = vjp_function(stages[STAGE])
    files = {
        STAGE: compile_stage(lambda *a: stages[STAGE](*a), inputs + constants),
        STAGE + "_vjp": compile_stage(
            lambda *a: backward(a[:4], a[5:], a[4:5]),
            inputs + constants + cotangents,
        ),
    }
    path = package_stages(tmp_path_factory.mktemp("stages") / "stages.pt2", files, meta)
    return path, stages, cases


def _rel(actual, expected) -> float:
    return max(float((a - e).abs().max()) / max(float(e.abs().max()), 1e-30) for a, e in zip(actual, expected))


def test_compiled_stage_and_vjp_on_every_rank(compiled):
    path, stages, cases = compiled
    forward, backward = load_stage(path, STAGE), load_stage(path, STAGE + "_vjp")
    for inputs, constants, cotangents, out in cases:
        assert _rel(forward(*inputs, *constants), out) <= STAGE_TOLERANCE
        expected = vjp_function(stages[STAGE])(inputs, cotangents, constants)
        got = backward(*inputs, *constants, *cotangents)
        assert len(got) == 4 and _rel(got, expected) <= STAGE_TOLERANCE
    # the three ranks really differ in every dynamic size
    assert len({tuple(c[0][0].shape) for c in cases}) == 3 and len({tuple(c[0][1].shape) for c in cases}) == 3


def test_package_carries_metadata(compiled):
    path = compiled[0]
    meta = read_metadata(path)
    assert meta["format"] == "aoti" and meta["num_layers"] == 2
