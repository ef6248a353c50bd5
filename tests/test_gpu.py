"""GPU checks (marker ``gpu``; skipped where torch sees no CUDA GPU, as in CI). Run them with
``bash bench/gpu_check.sh`` on a machine with a GPU: the eager model on CUDA against the CPU,
float32 as the GPU default, the compiled attention, exports for CUDA, and ``pair_style allscaip device cuda`` on 1 and 2
ranks against Python."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import small_model, water_box
from lammps_harness import (
    _export_as,
    activated_env,
    assert_rel,
    lammps_input,
    python_reference,
    run_lammps,
    single_point,
    write_data,
)

from allscaip.calculator import AllScAIPCalculator
from allscaip.checkpoint import save_checkpoint
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip_export.cli import main as export_main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU"),
]


def _checkpoint(model, path):
    save_checkpoint(path, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    return path


@pytest.mark.parametrize("encoding", [False, True])
def test_eager_cuda_equals_cpu_in_float64(encoding):
    overrides = dict(node_encoding="sinc_pairs", encoding_range=7.0) if encoding else {}
    model = small_model(**overrides)
    atoms = water_box(3, cell_skew=True, seed=2)
    cpu = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    gpu = compute_properties(model.to("cuda"), atoms_to_batch([atoms]).to("cuda"), stress=True)
    for key in ("energy", "forces", "stress"):
        assert (gpu[key].cpu() - cpu[key]).abs().max() <= 1e-10 * max(1.0, cpu[key].abs().max()), key


def test_compiled_attention_on_cuda_equals_eager_in_float64():
    """attention_kernel='compiled' on CUDA (Inductor's Triton kernels) gives the eager CUDA numbers."""
    model = small_model().to("cuda").eval()
    batch = atoms_to_batch([water_box(3, cell_skew=True, seed=2)]).to("cuda")
    eager = compute_properties(model, batch, stress=True)
    model.attention_kernel = "compiled"
    compiled = compute_properties(model, batch, stress=True)
    for key in ("energy", "forces", "stress"):
        assert (compiled[key] - eager[key]).abs().max() <= 1e-10 * max(1.0, eager[key].abs().max()), key


def test_calculator_defaults_to_float32_on_cuda(tmp_path):
    model = small_model()
    path = _checkpoint(model, tmp_path / "m.ckpt")
    calc = AllScAIPCalculator(str(path), device="cuda")
    assert calc.dtype == torch.float32
    atoms = water_box(3, seed=1)
    atoms.calc = calc
    ref = compute_properties(model, atoms_to_batch([atoms]))
    assert abs(atoms.get_potential_energy() - float(ref["energy"][0])) < 1e-4 * len(atoms)
    assert np.abs(atoms.get_forces() - ref["forces"].numpy()).max() < 1e-3


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
def test_export_for_cuda_is_float32_and_verified(tmp_path, fmt):
    model = small_model()
    path = _checkpoint(model, tmp_path / "m.ckpt")
    assert export_main([str(path), "--device", "cuda", "--format", fmt]) == 0  # verifies against eager
    suffix = ".pt" if fmt == "torchscript" else ".pt2"
    calc = AllScAIPCalculator(str(path.with_suffix(suffix)), device="cuda")
    assert calc.dtype == torch.float32


@pytest.mark.lammps
def test_lammps_device_cuda_on_one_and_two_ranks(tmp_path):
    model = small_model()
    atoms = water_box(5, cell_skew=True, seed=3)  # 375 atoms: two ranks own real slabs
    exported = _export_as(model, tmp_path / "m.pt", "float64")
    env = activated_env()
    results = {}
    for ranks in (1, 2):
        work = tmp_path / f"np{ranks}"
        work.mkdir()
        data = work / "data.lmp"
        back = write_data(atoms, data)
        script = lammps_input(data, exported, pair_style="allscaip device cuda")
        results[ranks] = single_point(run_lammps(env, work, script, nprocs=ranks), work)
    ref = python_reference(model, back)
    for ranks, out in results.items():
        assert_rel(out["energy"], ref["energy"], 1e-10, f"energy, {ranks} rank(s)")
        assert_rel(out["forces"], ref["forces"], 1e-10, f"forces, {ranks} rank(s)")
        assert_rel(out["virial"], ref["virial"], 1e-10, f"virial, {ranks} rank(s)")
