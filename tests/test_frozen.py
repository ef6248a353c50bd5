"""Inference with frozen weights (:func:`allscaip.model.frozen`): the calculator's model and the
TorchScript exports ask for no weight gradients, so a force call keeps no activations for them.
The numbers are those of the trainable model; the exports leave the caller's model trainable."""

from __future__ import annotations

import dataclasses

import torch
from conftest import small_model, water_box

from allscaip.calculator import AllScAIPCalculator
from allscaip.checkpoint import save_checkpoint
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties, frozen
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import export_torchscript, load_torchscript

SAVED_FRACTION_MAX = 0.9
"""A frozen force call keeps less than this fraction of the trainable call's saved bytes (measured
0.75 for this model: every linear layer's input goes, the norms' and products' inputs stay)."""


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages that autograd keeps for the backward of one force call."""
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compute_properties(model, batch, stress=True)
    return sum(seen.values())


def test_frozen_model_keeps_less_for_the_same_forces():
    trainable = small_model(hidden=64).eval()
    batch = atoms_to_batch([water_box(2, seed=3)])
    ref = compute_properties(trainable, batch, stress=True)
    before = saved_bytes(trainable, batch)
    model = frozen(trainable)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = compute_properties(model, batch, stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-13, atol=1e-13)
    after = saved_bytes(model, batch)
    assert after < SAVED_FRACTION_MAX * before, f"saved {after} of {before} bytes"


def test_calculator_and_torchscript_export_are_frozen(tmp_path):
    model = small_model()
    ckpt = tmp_path / "model.ckpt"
    save_checkpoint(ckpt, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    calc = AllScAIPCalculator(ckpt)
    assert not any(p.requires_grad for p in calc._eager.parameters())

    path = tmp_path / "model.pt"
    export_torchscript(model, path, build_metadata(model, "float64", "cpu", "torchscript"))
    assert all(p.requires_grad for p in model.parameters()), "the export must leave the caller's model trainable"
    module, _ = load_torchscript(path)
    assert not any(p.requires_grad for p in module.parameters())
