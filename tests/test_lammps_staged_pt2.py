"""A staged AOTInductor package (``allscaip-export --format aoti --staged``) in pair_style allscaip:
domain decomposition through the compiled stages and their VJPs, with the reverse pass run by the
plugin (lammps_plugin/allscaip_staged_pt2.cpp). One rank (the package's whole-system model, or the
stages when per-atom virials are asked for) equals the Python model; 2 and 4 ranks,
each owning a real sub-domain, equal one rank to 1e-10 relative in float64, and so do 4 ranks of
which three own no atom (they run only the communications); the charge and spin the package was
compiled for are enforced."""

from __future__ import annotations

import pytest
from conftest import water_box
from lammps_harness import (
    _cluster_in_big_box,
    activated_env,
    assert_rel,
    lammps_input,
    python_reference,
    run_lammps,
    single_point,
    write_data,
)

pytestmark = pytest.mark.lammps

RANK_TOLERANCE = 1e-10
"""Several ranks against one, relative, float64 (compiled kernels reorder sums)."""
PYTHON_TOLERANCE = 1e-8
"""One rank against the eager Python model, relative, float64 (as for the .pt2 whole-system call)."""


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    """Systems as LAMMPS reads them: triclinic water boxes of 24 and 81 atoms, and three water
    molecules near x = 3 Å of a 24 Å box (on ``processors 4 1 1`` three ranks own no atom)."""
    d = tmp_path_factory.mktemp("staged_pt2_data")
    out = {}
    systems = {
        "w24": water_box(2, cell_skew=True, seed=4),
        "w81": water_box(3, cell_skew=True, seed=7),
        "cluster": _cluster_in_big_box(),
    }
    for name, atoms in systems.items():
        path = d / f"{name}.data"
        out[name] = (path, write_data(atoms, path))
    return out


def test_staged_pt2_ranks_equal_one_rank(staged_package, boxes, tmp_path):
    model, path = staged_package.model, staged_package.path
    env = activated_env()
    for name, (data, atoms) in boxes.items():
        script = lammps_input(data, path, per_atom_virial=False)
        log = run_lammps(env, tmp_path / f"{name}_np1", script)
        assert "on one rank its whole-system model runs" in log, log[-3000:]
        one, ref = single_point(log, tmp_path / f"{name}_np1"), python_reference(model, atoms)
        assert abs(one["energy"] - ref["energy"]) <= PYTHON_TOLERANCE * abs(ref["energy"])
        assert_rel(one["forces"], ref["forces"], PYTHON_TOLERANCE, f"staged .pt2 forces ({name}, 1 rank)")
        assert_rel(one["energies"], ref["energies"], PYTHON_TOLERANCE, f"staged .pt2 per-atom energies ({name})")
        assert_rel(one["virial"], ref["virial"], PYTHON_TOLERANCE, f"staged .pt2 virial ({name})")
        grids = ((4, "4 1 1"),) if name == "cluster" else ((2, "2 1 1"), (4, "2 2 1"))
        for nprocs, grid in grids:
            wd = tmp_path / f"{name}_np{nprocs}"
            log = run_lammps(env, wd, lammps_input(data, path, processors=grid, per_atom_virial=False), nprocs=nprocs)
            assert f"domain decomposition over {nprocs} MPI rank(s)" in log, log[-3000:]
            sp = single_point(log, wd)
            assert abs(sp["energy"] - one["energy"]) <= RANK_TOLERANCE * abs(one["energy"]), f"{name}, {nprocs} ranks"
            assert_rel(sp["forces"], one["forces"], RANK_TOLERANCE, f"staged .pt2 forces on {nprocs} ranks ({name})")
            assert_rel(sp["energies"], one["energies"], RANK_TOLERANCE, f"per-atom energies on {nprocs} ranks ({name})")
            assert_rel(sp["virial"], one["virial"], RANK_TOLERANCE, f"staged .pt2 virial on {nprocs} ranks ({name})")


def test_staged_pt2_one_rank_per_atom_virial(staged_package, boxes, tmp_path):
    """On one rank the package's whole-system model runs; asking for per-atom virials runs the
    stages instead: same energy, forces and virial to 1e-10, and the per-atom virials sum to the
    global one (which the whole-system call cannot split)."""
    data, _ = boxes["w81"]
    env = activated_env()
    whole = single_point(
        run_lammps(env, tmp_path / "whole", lammps_input(data, staged_package.path, per_atom_virial=False)),
        tmp_path / "whole",
    )
    log = run_lammps(env, tmp_path / "staged", lammps_input(data, staged_package.path, per_atom_virial=True))
    staged = single_point(log, tmp_path / "staged")
    assert abs(staged["energy"] - whole["energy"]) <= RANK_TOLERANCE * abs(whole["energy"])
    assert_rel(staged["forces"], whole["forces"], RANK_TOLERANCE, "staged forces against the whole-system model")
    assert_rel(staged["virial"], whole["virial"], RANK_TOLERANCE, "staged virial against the whole-system model")
    assert_rel(staged["atom_virial"].sum(0), staged["virial"], 1e-10, "per-atom virials summed")


def test_staged_pt2_refuses_another_charge(staged_package, boxes, tmp_path):
    data, _ = boxes["w24"]
    script = lammps_input(data, staged_package.path, pair_style="allscaip charge 1 spin 2")
    out = run_lammps(activated_env(), tmp_path, script, expect_fail=True, timeout=120)
    assert "was compiled for charge 0 and spin 1" in out and "--staged --charge 1 --spin 2" in out, out[-3000:]
