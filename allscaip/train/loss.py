"""The training loss of one optimizer step (the published AllScAIP choice: L1 per-atom energy +
L2-norm forces, plus squared stress errors).

With sums over all systems/atoms the step sees on *all* processes and the counts all-reduced
first, ``R`` processes × ``A`` accumulated batches equal one process with ``R·A`` batches::

    L = energy_coef * Σ_sys |E - E_ref| / N_sys / σ_E / n_sys
      + force_coef  * Σ_atoms ‖F - F_ref‖_2 / σ_F / n_atoms
      + stress_coef * Σ_labelled mean_9((S - S_ref) / σ_S)^2 / n_stress

σ_E: the model's ``energy_scale`` (``optim.energy_scale``: by default the RMS force component
times 1 Å; ``energy_rms``: the per-atom energy RMS after the fitted element references),
σ_F: RMS force component, σ_S: RMS stress component (training set).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel

from allscaip.data.batch import AtomsBatch
from allscaip.model import compute_properties
from allscaip.train.config import OptimConfig


def stress_rows(b: AtomsBatch) -> torch.Tensor:
    """The systems of ``b`` whose stress is a label: periodic in all directions and not masked."""
    if b.stress is None:
        return torch.zeros(b.num_systems, dtype=torch.bool, device=b.natoms.device)
    rows = b.pbc.all(dim=1)
    return rows & b.stress_mask if b.stress_mask is not None else rows


def stress_flags(micro: Sequence[AtomsBatch], stress_coef: float) -> List[bool]:
    """Per micro-batch: does its loss have a stress term?"""
    return [stress_coef > 0 and b.stress is not None and bool(stress_rows(b).any()) for b in micro]


def step_counts(
    micro: Sequence[AtomsBatch], use_stress: Sequence[bool], world: int, device: torch.device
) -> Tuple[float, float, float]:
    """Systems, atoms and stress-labelled systems of one optimizer step on all processes."""
    counts = torch.tensor(
        [
            sum(b.num_systems for b in micro),
            sum(int(b.natoms.sum()) for b in micro),
            sum(int(stress_rows(b).sum()) for b, u in zip(micro, use_stress) if u),
        ],
        dtype=torch.float64,
        device=device,
    )
    if world > 1:
        dist.all_reduce(counts)
    n_sys, n_atoms, n_stress = counts.tolist()
    return n_sys, n_atoms, n_stress


def micro_batch_loss(
    model: torch.nn.Module,
    b: AtomsBatch,
    use_stress: bool,
    o: OptimConfig,
    scales: Dict[str, float],
    counts: Tuple[float, float, float],
    stats: torch.Tensor,
) -> torch.Tensor:
    """The share of micro-batch ``b`` in the step's loss (``counts`` from :func:`step_counts`).
    Adds Σ|ΔE|/N, systems, Σ|ΔF_c| and force components to ``stats`` (indices 1-4 of
    :data:`allscaip.train.metrics.SUM_KEYS`)."""
    n_sys, n_atoms, n_stress = counts
    # fused SDPA kernels (flash / efficient) have no double backward: the force loss needs it
    with sdpa_kernel(SDPBackend.MATH):
        out = compute_properties(model, b, forces=True, stress=use_stress, training=True)
    de = (out["energy"] - b.energy) / b.natoms.to(out["energy"].dtype)
    loss = o.energy_coef / (scales["energy"] * n_sys) * de.abs().sum()
    if b.forces is not None:
        dfv = out["forces"] - b.forces
        loss = loss + o.force_coef / (scales["force"] * n_atoms) * torch.linalg.vector_norm(dfv, dim=1).sum()
        stats[3] += float(dfv.detach().abs().sum())
        stats[4] += dfv.numel()
    if use_stress:
        rows = stress_rows(b)
        ds = (out["stress"][rows] - b.stress[rows]) / scales["stress"]
        loss = loss + o.stress_coef / n_stress * ds.pow(2).mean(dim=(1, 2)).sum()
    stats[1] += float(de.detach().abs().sum())
    stats[2] += b.num_systems
    return loss
