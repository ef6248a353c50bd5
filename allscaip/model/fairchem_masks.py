"""The two attention masks of fairchem's AllScAIP **sm** models (docs/fairchem.md, items 7 and 8), as
fairchem-core 2.24 computes them:

1. frequency mask (``use_freq_mask``) of the neighbourhood attention: in every head, the query and
   key channels are split into groups of ``frequency_list[l]`` channels for l = 0, 1, ...; each
   channel of group l is repeated 2l+1 times and multiplied by the e3nn harmonics Y_lm of the edge
   direction divided by sqrt(2l+1) (:func:`frequency_vectors`, :func:`expand_by_frequency`), so a
   logit sums ``P_l(cos θ) q_l·k_l`` over the groups (the self loop's zero direction keeps l = 0);
2. sinc mask (``use_sincx_mask``) of the node attention: a per-head bias
   ``log(normalised(softplus(Σ_f a_hf sinc(ω_f r_ij)) + 1e-6))`` with r_ij the minimum distance
   over fairchem's periodic images (:func:`min_image_distances`, :func:`sinc_basis`,
   :func:`sinc_bias`); the normalisation divides by the head's sum over all pairs of the system.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F

from allscaip.model.fairchem_graph import e3nn_harmonics, periodic_shifts, safe_norm

SINC_R_MIN, SINC_R_MAX = 0.25, 30.0
"""Å: fairchem's sinc frequencies are log-spaced from π/(4·30) to π/0.25 Å⁻¹."""

SINC_SERIES_BELOW = 1e-4
"""Below this |x| fairchem evaluates sinc(x) by its series 1 - x²/6 + x⁴/120."""

SINC_WEIGHT_FLOOR = 1e-6
"""fairchem adds it to the softplus weights, and clamps each head's sum from below by it."""


def frequency_vectors(direction: torch.Tensor, frequency_list: List[int]) -> torch.Tensor:
    """``[..., Σ_l n_l (2l+1)]``: for each degree l with n_l = frequency_list[l] > 0, the harmonics
    Y_lm(direction)/sqrt(2l+1) repeated n_l times (channel-major: all m of the first channel first)."""
    lmax = len(frequency_list) - 1
    harmonics = e3nn_harmonics(direction, lmax)
    parts: List[torch.Tensor] = []
    start = 0
    for l in range(lmax + 1):
        width = 2 * l + 1
        count = frequency_list[l]
        if count > 0:
            block = harmonics[..., start : start + width] / math.sqrt(width)
            shape = list(block.shape[:-1]) + [count, width]
            parts.append(block.unsqueeze(-2).expand(shape).reshape(list(block.shape[:-1]) + [count * width]))
        start += width
    return torch.cat(parts, dim=-1)


def expand_by_frequency(x: torch.Tensor, frequency_list: List[int], vectors: torch.Tensor) -> torch.Tensor:
    """Queries or keys ``x [B, heads, S, d]`` with channel c of group l repeated 2l+1 times and
    multiplied by ``vectors [B, S, F]`` (:func:`frequency_vectors`): ``[B, heads, S, F]``."""
    parts: List[torch.Tensor] = []
    start = 0
    for l in range(len(frequency_list)):
        count = frequency_list[l]
        if count > 0:
            group = x[..., start : start + count]
            shape = list(group.shape) + [2 * l + 1]
            parts.append(group.unsqueeze(-1).expand(shape).reshape(list(group.shape[:-1]) + [count * (2 * l + 1)]))
            start += count
    return torch.cat(parts, dim=-1) * vectors.unsqueeze(1)


def min_image_distances(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``[N, N]`` distances, the minimum over fairchem's periodic images (:func:`periodic_shifts`),
    0 on the diagonal. Dense: O(N² M), as fairchem."""
    shifts = periodic_shifts(cell, pbc, cutoff)
    disp = positions[None, :, None, :] + shifts[None, None, :, :] - positions[:, None, None, :]
    return safe_norm(disp).min(dim=-1).values


def sinc_basis(
    dist: torch.Tensor,
    num_freq: int,
    series_below: float = SINC_SERIES_BELOW,
    r_min: float = SINC_R_MIN,
    r_max: float = SINC_R_MAX,
) -> torch.Tensor:
    """``sinc(ω_f r)`` ``[..., num_freq]`` for fairchem's log-spaced ω (module constants)."""
    omega_min, omega_max = math.pi / (4.0 * r_max), math.pi / r_min
    omega = torch.logspace(math.log10(omega_min), math.log10(omega_max), num_freq, dtype=dist.dtype, device=dist.device)
    x = dist.unsqueeze(-1) * omega
    small = x.abs() < series_below
    safe = torch.where(small, torch.ones_like(x), x)
    x2 = x * x
    return torch.where(small, 1.0 - x2 / 6.0 + x2 * x2 / 120.0, torch.sin(safe) / safe)


def sinc_bias(basis: torch.Tensor, radial_weight: torch.Tensor, floor: float = SINC_WEIGHT_FLOOR) -> torch.Tensor:
    """Node-attention bias ``[heads, N, N]`` of one system from ``basis [N, N, F]`` and the layer's
    ``radial_weight [heads, F]``: each head's positive weights rescaled to mean 1 over the N² pairs."""
    weight = F.softplus(torch.einsum("ijk,hk->hij", basis, radial_weight)) + floor
    total = weight.sum(dim=(1, 2), keepdim=True).clamp_min(floor)
    pairs = basis.shape[0] * basis.shape[1]
    return (weight * (pairs / total)).log()
