"""``attention_kernel="compiled"``: the neighbour attention's norms, Legendre logits, softmax and
values through Inductor in eager inference. Same numbers as the eager operators (float64, to
round-off), with recompute too; with bfloat16 blocks within the bfloat16 bound against float64;
training keeps the eager operators (its force loss differentiates the backward again); bad requests
are refused with the fix. Each distinct model and dtype compiles once (about 30 s here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from allscaip.checkpoint import load_model
from allscaip.data import atoms_to_batch
from allscaip.engines.ase_calculator import AllScAIPCalculator
from allscaip.model import block, compute_properties, layers
from allscaip.structures import water_box

REPO = Path(__file__).resolve().parents[1]
WATER_MODEL = REPO / "examples/water/model.ckpt"
SAME_RTOL = 1e-10
"""Compiled against eager in float64: the same sums in another order (measured 1e-15 relative)."""
BF16_FORCE_RTOL = 0.02  # as tests/test_block_precision.py: bfloat16 products, measured 0.4 %


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def liquid():
    """A 96-atom water box and the shipped model's float64 energy, forces and stress on it."""
    atoms = water_box(32, seed=4)
    ref = compute_properties(load_model(WATER_MODEL).double().eval(), atoms_to_batch([atoms]), stress=True)
    return atoms, ref


def count_compiled_calls(monkeypatch, fn) -> list:
    """A list that grows by one at each call of ``fn``'s compiled form (:data:`layers.INDUCTOR`)."""
    calls = []
    real = layers.inductor(fn)
    monkeypatch.setitem(layers.INDUCTOR, fn.__name__, lambda *a: calls.append(1) or real(*a))
    return calls


def test_compiled_equals_eager_in_float64_with_and_without_recompute(liquid, monkeypatch):
    atoms, ref = liquid
    compiled_calls = count_compiled_calls(monkeypatch, layers.attention_core)
    compiled_norms = count_compiled_calls(monkeypatch, layers.rms_norm)
    compiled_residuals = count_compiled_calls(monkeypatch, block.scaled_residual)
    model = load_model(WATER_MODEL).double().eval()
    model.attention_kernel = "compiled"
    batch = atoms_to_batch([atoms])
    for recompute in ("none", "layers"):
        model.recompute = recompute
        out = compute_properties(model, batch, stress=True)
        for key in ("energy", "forces", "stress"):
            assert max_relative(out[key], ref[key]) < SAME_RTOL, (recompute, key)
    # the compiled kernel ran, for both attentions of every layer but the last one's destination
    # attention (the self tokens' queries only, eager: block.local's ``last``): once stored; with
    # recompute in the forward and once more in the backward (the local stage's checkpoint)
    n_attention = 2 * model.num_layers - 1
    assert len(compiled_calls) == n_attention + 2 * n_attention
    # and the norms of source, messages, destination and edges (none for the last block's edges)
    n_norm = 4 * model.num_layers - 1
    assert len(compiled_norms) == n_norm + 2 * n_norm
    # and the scaled residual updates, one per attention
    assert len(compiled_residuals) == n_attention + 2 * n_attention


def test_compiled_with_bfloat16_blocks_is_within_the_bfloat16_bound(liquid):
    atoms, ref = liquid
    model = load_model(WATER_MODEL).float().eval()
    model.block_precision, model.attention_kernel = "bfloat16", "compiled"
    out = compute_properties(model, atoms_to_batch([atoms], dtype=torch.float32), stress=True)
    assert relative_rms(out["forces"], ref["forces"]) < BF16_FORCE_RTOL
    assert relative_rms(out["stress"], ref["stress"]) < BF16_FORCE_RTOL


def test_training_keeps_the_eager_kernel_and_a_force_loss_backward_is_refused_in_eval(monkeypatch):
    compiled_calls = [
        count_compiled_calls(monkeypatch, fn) for fn in (layers.attention_core, layers.rms_norm, block.scaled_residual)
    ]
    atoms = water_box(4, seed=2)
    model = load_model(WATER_MODEL).double()
    model.attention_kernel = "compiled"
    batch = atoms_to_batch([atoms])
    model.train()  # training mode: eager operators, so the force loss differentiates twice
    assert not model.compiling()
    forces = compute_properties(model, batch, training=True)["forces"]
    forces.pow(2).sum().backward()
    assert compiled_calls == [[], [], []]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with pytest.raises(ValueError, match="attention_kernel = 'eager'"):
        compute_properties(model, batch, training=True)
    model.attention_kernel = "inductor"
    with pytest.raises(ValueError, match=r"one of \('eager', 'compiled'\), got 'inductor'"):
        compute_properties(model, batch)


def test_calculator_attention_kernel_and_its_errors(tmp_path):
    atoms = water_box(8, seed=1)
    atoms.calc = AllScAIPCalculator(WATER_MODEL, attention_kernel="compiled")
    f_compiled = torch.as_tensor(atoms.get_forces())
    atoms.calc = AllScAIPCalculator(WATER_MODEL)
    assert max_relative(f_compiled, torch.as_tensor(atoms.get_forces())) < SAME_RTOL
    with pytest.raises(ValueError, match=r"one of \('eager', 'compiled'\)"):
        AllScAIPCalculator(WATER_MODEL, attention_kernel="fused")
    export = tmp_path / "model.pt"
    export.write_bytes(b"not read: the option is refused first")
    with pytest.raises(ValueError, match="attention_kernel='compiled' applies to checkpoints"):
        AllScAIPCalculator(export, attention_kernel="compiled")


def test_a_failed_compile_names_the_fix(monkeypatch):
    """Without a working C++ compiler Inductor fails deep inside; the error says what to do."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(layers, "INDUCTOR", {})
    torch._dynamo.reset()
    model = load_model(WATER_MODEL).double().eval()
    model.attention_kernel = "compiled"
    # Inductor's own patch (a config attribute set and deleted by monkeypatch stays hidden afterwards);
    # no graph cache, so that the compiler is really asked for
    try:
        with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
            with pytest.raises(RuntimeError, match=r"install a C\+\+ compiler .* or use attention_kernel='eager'"):
                compute_properties(model, atoms_to_batch([water_box(4, seed=2)]))
    finally:
        torch._dynamo.reset()
    assert inductor_config.cpp.cxx != ("/nonexistent/g++",) and inductor_config.fx_graph_cache is not None
