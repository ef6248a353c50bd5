"""Real spherical harmonics in Schmidt semi-normalisation.

With this normalisation the addition theorem reads
``sum_m Y_lm(a) Y_lm(b) = P_l(a . b)`` for unit vectors ``a`` and ``b``, so any contraction
over ``m`` is a function of the angle between the vectors only (exactly rotation invariant).
Everything is a polynomial in the Cartesian components: smooth, autograd- and
TorchScript-friendly, no ``atan2``.
"""

from __future__ import annotations

import math
from typing import List

import torch


def _coefficients(lmax: int) -> List[List[float]]:
    """sqrt(2 (l-m)!/(l+m)!) for m > 0 and 1 for m = 0, indexed [l][m]."""
    out: List[List[float]] = []
    for l in range(lmax + 1):
        row = [1.0]
        for m in range(1, l + 1):
            row.append(math.sqrt(2.0 * math.factorial(l - m) / math.factorial(l + m)))
        out.append(row)
    return out


def spherical_harmonics(unit: torch.Tensor, lmax: int) -> torch.Tensor:
    """Real spherical harmonics of unit vectors ``[..., 3]`` for l = 0..lmax.

    Returns ``[..., (lmax+1)**2]``; block ``l`` occupies ``l*l : (l+1)*(l+1)`` and is ordered
    ``sin(l phi) ... sin(phi), m=0, cos(phi) ... cos(l phi)`` components.
    """
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
    coef = _coefficients(lmax)
    # Re/Im of (x + i y)^m
    cos_m: List[torch.Tensor] = [torch.ones_like(x)]
    sin_m: List[torch.Tensor] = [torch.zeros_like(x)]
    for m in range(1, lmax + 1):
        c_prev, s_prev = cos_m[m - 1], sin_m[m - 1]
        cos_m.append(x * c_prev - y * s_prev)
        sin_m.append(x * s_prev + y * c_prev)
    # P~_l^m(z) = P_l^m(z) / sin^m(theta): polynomials in z (no Condon-Shortley phase)
    # ptilde[l][m] for m <= l, filled column by column (m outer)
    ptilde: List[List[torch.Tensor]] = [[] for _ in range(lmax + 1)]
    for m in range(0, lmax + 1):
        dfact = 1.0
        for k in range(1, 2 * m, 2):
            dfact *= k
        pmm = torch.full_like(z, dfact)
        ptilde[m].append(pmm)
        if m + 1 <= lmax:
            ptilde[m + 1].append((2 * m + 1) * z * pmm)
        for l in range(m + 2, lmax + 1):
            p1 = ptilde[l - 1][m]
            p2 = ptilde[l - 2][m]
            ptilde[l].append(((2 * l - 1) * z * p1 - (l + m - 1) * p2) / (l - m))
    comps: List[torch.Tensor] = []
    for l in range(lmax + 1):
        for m in range(l, 0, -1):
            comps.append(coef[l][m] * ptilde[l][m] * sin_m[m])
        comps.append(ptilde[l][0])
        for m in range(1, l + 1):
            comps.append(coef[l][m] * ptilde[l][m] * cos_m[m])
    return torch.stack(comps, dim=-1)
