"""The staged .pt2 in Python (allscaip_export.aoti_stages): the session's staged package
(``allscaip-export --format aoti --staged``, fixture ``staged_package``: every stage of a two-layer
model and its VJP, 12 named models, compiled once on a generic slab split) run by the manual
reverse pass of allscaip_export.dd_vjp_reference on 1, 2 and 3 ranks and on a rank that owns a
single atom: equal to the eager model to 1e-10 in float64 (dynamic centre, row, kept-width and
edge-token counts). Also the package's metadata and the export's refusals.

The staged compile is the slowest fixture of the test session (about 5 minutes on one thread);
tests/test_lammps_staged_pt2.py runs the same package in LAMMPS."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_model, water_box

from allscaip.checkpoint import save_checkpoint
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip_export import cli
from allscaip_export.aoti import read_metadata
from allscaip_export.aoti_stages import fixed_sizes, generic_example, load_staged
from allscaip_export.dd_reference import rank_layouts, split_slabs
from allscaip_export.dd_vjp_reference import dd_vjp_evaluate
from allscaip_export.metadata import dumps
from allscaip_export.torchscript import ExportedAllScAIP

RANK_TOLERANCE = 1e-10
"""Relative agreement with the eager model in float64 (compiled kernels reorder sums)."""


@pytest.fixture(scope="module")
def staged(staged_package):
    model, path = staged_package
    meta = read_metadata(path)
    return model, ExportedAllScAIP(model, dumps(meta)), path, meta


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max()) / max(float(expected.abs().max()), 1e-30)


def _assert_equals_eager(model, module, path, atoms, owner, nranks):
    stages, vjps = load_staged(path, int(module.num_layers))
    args = (atoms.positions, atoms.numbers, atoms.cell.array, owner, nranks)
    out = dd_vjp_evaluate(module, *args, stage=stages, backward=vjps)
    ref = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    virial = -ref["stress"][0] * atoms.get_volume()
    assert abs(out["energy"].item() - ref["energy"].item()) <= RANK_TOLERANCE * abs(ref["energy"].item())
    assert _rel(out["forces"], ref["forces"]) <= RANK_TOLERANCE
    assert _rel(out["virial"], virial) <= RANK_TOLERANCE
    assert _rel(out["energies"], ref["energies"]) <= RANK_TOLERANCE


@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_compiled_stages_equal_eager(staged, nranks):
    model, module, path, _ = staged
    atoms = water_box(2, cell_skew=True, seed=4)
    owner = split_slabs(atoms.get_scaled_positions()[:, 0], nranks)
    _assert_equals_eager(model, module, path, atoms, owner, nranks)


def test_rank_with_one_atom(staged):
    """Compiled sizes start at 2 (make_fx); one centre, one row of node states, still runs."""
    model, module, path, _ = staged
    atoms = water_box(2, cell_skew=True, seed=5)
    owner = np.zeros(len(atoms), dtype=int)
    owner[-1] = 1
    _assert_equals_eager(model, module, path, atoms, owner, 2)


def test_package_holds_every_stage_and_metadata(staged):
    _, module, path, meta = staged
    assert meta["format"] == "aoti" and meta["num_layers"] == 2
    assert meta["staged_interface"] == "dd_vjp" and meta["supports_domain_decomposition"]
    assert (meta["staged_charge"], meta["staged_spin"], meta["whole_system"]) == (0, 1, True)
    stages, vjps = load_staged(path, 2)
    names = ["finish_0", "finish_1", "local_project_0", "local_project_1", "prepare", "readout"]
    assert sorted(stages) == sorted(vjps) == names


def test_metadata_tool_reads_the_staged_package(staged):
    """The C++ tool allscaip_metadata (no Python) says what the package holds."""
    tool = Path(__file__).resolve().parents[1] / "build" / "lammps_plugin" / "allscaip_metadata"
    assert tool.exists(), f"{tool} missing: build it with scripts/setup.sh (cmake --build build)"
    out = subprocess.run([str(tool), str(staged[2])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "staged package:       stages and VJPs for charge 0, spin 1, with the whole-system model" in out.stdout
    assert "allscaip_metadata equal to extra/metadata.json" in out.stdout


def test_generic_example_avoids_fixed_sizes(staged):
    """The compile example's rank-0 sizes differ from each other and from every weight dimension;
    a split that cannot (a box too small to have distinct sizes) is refused by name."""
    _, module, _, _ = staged
    atoms = water_box(2, cell_skew=True, seed=4)
    args = generic_example(module, atoms)
    rank0 = rank_layouts(module, *args)[0]
    sizes = [len(rank0["owned"]), rank0["z_all"].shape[0], rank0["index"].shape[1], len(atoms)]
    assert len(set(sizes)) == 4 and not set(sizes) & fixed_sizes(module)
    with pytest.raises(ValueError, match="has generic sizes"):
        generic_example(module, atoms[:2])


def test_staged_export_refusals(export_checkpoint, tmp_path, capsys):
    """--staged only with --format aoti on the CPU, --charge/--spin only with --staged, and not for a
    node-encoding model; the message names what to change (before anything is compiled)."""
    assert cli.main([str(export_checkpoint), "--staged", "-o", str(tmp_path / "m.pt")]) == 2
    assert "--staged needs --format aoti --device cpu" in capsys.readouterr().err
    assert cli.main([str(export_checkpoint), "--format", "aoti", "--charge", "1", "-o", str(tmp_path / "m.pt2")]) == 2
    assert "apply to the stages of --staged only" in capsys.readouterr().err
    encoded = small_model(node_encoding="sinc_pairs", encoding_range=6.0, encoding_freqs=8)
    ckpt = tmp_path / "encoded.ckpt"
    save_checkpoint(ckpt, {"model_config": dataclasses.asdict(encoded.cfg), "model_state": encoded.state_dict()})
    assert cli.main([str(ckpt), "--format", "aoti", "--staged", "-o", str(tmp_path / "e.pt2")]) == 2
    assert "has a node encoding (sinc_pairs), which the staged .pt2 does not cover" in capsys.readouterr().err
