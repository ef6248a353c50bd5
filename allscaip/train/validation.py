"""Validation errors of a model on the validation set, shared out over the processes."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist

from allscaip.data import MaxAtomsBatchSampler
from allscaip.model import compute_properties
from allscaip.train.loss import stress_rows


def validate(
    model: torch.nn.Module,
    val_set: Any,
    max_atoms: int,
    rank: int,
    world: int,
    device: torch.device,
    loader: Callable[[Any, Sequence[Sequence[int]]], Any],
) -> Dict[str, Optional[float]]:
    """Energy (meV/atom), force (meV/Å) and stress (meV/Å^3) errors of ``model`` on ``val_set``;
    this process takes every ``world``-th batch, the sums are all-reduced. ``loader(dataset,
    batches)`` iterates over index batches."""
    model = model.eval()
    sampler = MaxAtomsBatchSampler(val_set.natoms_per_frame, max_atoms, False, 0)
    mine = sampler.global_batches()[rank::world]
    # Σ|ΔE|/N, Σ(ΔE/N)^2, systems, Σ|ΔF|, ΣΔF^2, force comps, Σ|ΔS|, stress comps
    sums = torch.zeros(8, dtype=torch.float64, device=device)
    for b in loader(val_set, mine):
        b = b.to(device)
        rows = stress_rows(b)
        out = compute_properties(model, b, forces=b.forces is not None, stress=bool(rows.any()))
        de = ((out["energy"] - b.energy) / b.natoms.to(out["energy"].dtype)).double()
        sums[0] += de.abs().sum()
        sums[1] += de.pow(2).sum()
        sums[2] += b.num_systems
        if b.forces is not None:
            df = (out["forces"] - b.forces).double()
            sums[3] += df.abs().sum()
            sums[4] += df.pow(2).sum()
            sums[5] += df.numel()
        if rows.any() and "stress" in out:  # a direct-force fairchem model has no stress
            ds = (out["stress"][rows] - b.stress[rows]).double()
            sums[6] += ds.abs().sum()
            sums[7] += ds.numel()
    if world > 1:
        dist.all_reduce(sums)
    s = sums.tolist()
    return {
        "val_energy_mae_meV_atom": 1000.0 * s[0] / s[2] if s[2] else None,
        "val_energy_rmse_meV_atom": 1000.0 * math.sqrt(s[1] / s[2]) if s[2] else None,
        "val_force_mae_meV_A": 1000.0 * s[3] / s[5] if s[5] else None,
        "val_force_rmse_meV_A": 1000.0 * math.sqrt(s[4] / s[5]) if s[5] else None,
        "val_stress_mae_meV_A3": 1000.0 * s[6] / s[7] if s[7] else None,
    }
