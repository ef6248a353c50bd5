"""The legacy distance bias of node attention (``distance_bias: true``): O(N^2), minimum image.

Kept so that models trained with it load and give the same numbers. It materialises [N, N, F] and
[heads, N, N] tensors and uses the minimum image (by rounding fractional coordinates), so energy
and forces jump where a pair's image flips at half a box; :mod:`allscaip.model.node_encoding` is
the smooth, linear-memory replacement.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DISTANCE_BIAS_LONGEST_A = 120.0
DISTANCE_BIAS_SHORTEST_A = 0.25
"""The sinc weights ``sin(f r) / (f r)`` of the distance bias first vanish at ``r = π / f``. Their
frequencies are log-spaced so that this distance runs from 120 Å (beyond the systems trained
on) down to 0.25 Å (below any bond)."""

MIN_ATTENTION_WEIGHT = 1e-6
"""Added to the softplus distance weights so that their log, the attention bias, stays finite."""


def distance_bias_freqs(num_freqs: int) -> torch.Tensor:
    """The ``num_freqs`` log-spaced frequencies (1/Å) of the legacy bias."""
    lowest, highest = math.pi / DISTANCE_BIAS_LONGEST_A, math.pi / DISTANCE_BIAS_SHORTEST_A
    return torch.exp(torch.linspace(math.log(lowest), math.log(highest), num_freqs))


def minimum_image_sinc_bias(
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    system: torch.Tensor,
    freqs: torch.Tensor,
    weights: torch.Tensor,
    min_weight: float,
) -> torch.Tensor:
    """Float attention bias [heads, N, N]: log of the sinc distance weights ``softplus(weights @
    sinc(freqs r)) + min_weight`` (``weights`` [heads, F] of one layer; minimum-image ``r``),
    -inf between different systems."""
    d = positions.unsqueeze(0) - positions.unsqueeze(1)  # [N, N, 3]
    cel = cell[system]  # [N, 3, 3]
    per = pbc[system].to(d.dtype)  # [N, 3]
    det = torch.linalg.det(cel)
    safe = torch.where(
        (per.sum(-1) > 0).unsqueeze(-1).unsqueeze(-1) & (det.abs() > 1e-12).unsqueeze(-1).unsqueeze(-1),
        cel,
        torch.eye(3, dtype=cel.dtype, device=cel.device).expand_as(cel),
    )
    frac = torch.einsum("ijx,ixy->ijy", d, torch.linalg.inv(safe))
    frac = frac - torch.round(frac) * per.unsqueeze(1)
    d = torch.einsum("ijx,ixy->ijy", frac, safe)
    r = torch.sqrt((d * d).sum(-1) + 1e-12)
    arg = r.unsqueeze(-1) * freqs  # [N, N, F]
    sinc = torch.where(
        arg.abs() < 1e-8,
        torch.ones_like(arg),
        torch.sin(arg) / torch.where(arg.abs() < 1e-8, torch.ones_like(arg), arg),
    )
    w = F.softplus(torch.einsum("ijf,hf->hij", sinc, weights)) + min_weight
    logw = torch.log(w)
    same = system.unsqueeze(0) == system.unsqueeze(1)
    return torch.where(same.unsqueeze(0), logw, torch.full_like(logw, float("-inf")))
