"""The node encoding's pair bias for engines: lean in memory, exact in value and first derivative.

Engines need the energy and its first derivatives (forces, virial), never a double backward. Under
ordinary autograd the bias ``basis @ weights`` of :mod:`allscaip.model.node_encoding` keeps the
pair basis and its intermediates, several [P, F] tensors (F frequencies) for P pairs: at water
density and a 12 Å range about 700 pairs per atom, the largest part of a node-encoding model's
memory after the local stage. Here each layer's bias [P, heads] is computed without autograd, in
chunks of pairs, together with its radial derivative ``d bias / d r`` [P, heads], and attached
to the pair distances as

    bias + slope * (r - r.detach())

whose value is the bias and whose gradient with respect to the pair vectors is the exact first
derivative (``slope * vec / r``). Autograd then keeps the slope and the distances, O(P·heads).
Second derivatives through it are zero: it is for force evaluation only (the exported staged
methods), not for training.

The derivative of the basis ``s(u) j0(pi f u)``, ``u = r / R``, is

    d/dr = [ s'(u) j0(pi f u) + s(u) pi f j0'(pi f u) ] / R,
    s'(u) = -30 u^2 (1 - u)^2,   j0'(x) = (cos x - j0(x)) / x  (series -x/3 + x^3/30 - x^5/840 for small x).
"""

import math
from typing import List, Tuple

import torch

from allscaip.model.node_encoding import smooth_switch

PAIR_CHUNK = 1 << 20
"""Pairs per chunk of the no-autograd basis: its [chunk, F] temporaries stay near 128 MiB in float64
while each chunk is large enough for the elementwise kernels."""

SERIES_BELOW = 0.1
"""Below this argument j0'(x) takes its Taylor series (error ~x^7/45360 < 1e-11 relative): the closed
form's difference cos x - j0(x) loses about eps/x^2 to cancellation."""


def _j0_and_derivative(x: torch.Tensor, series_below: float = SERIES_BELOW) -> Tuple[torch.Tensor, torch.Tensor]:
    """j0(x) = sin(x)/x and j0'(x) for x >= 0 (j0(0) = 1, j0'(0) = 0)."""
    j0 = torch.sinc(x / math.pi)
    small = x < series_below
    x2 = x * x
    series = -x / 3.0 + x * x2 / 30.0 - x * x2 * x2 / 840.0
    closed = (torch.cos(x) - j0) / torch.where(small, torch.ones_like(x), x)
    return j0, torch.where(small, series, closed)


def _bias_and_slope(
    r: torch.Tensor, weights: torch.Tensor, encoding_range: float, num_freqs: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bias [p, heads] and d bias / d r [p, heads] of distances ``r`` [p] (no autograd)."""
    u = (r / encoding_range).clamp(0.0, 1.0)
    freqs = torch.arange(1, num_freqs + 1, dtype=r.dtype, device=r.device) * math.pi
    x = u.unsqueeze(1) * freqs  # [p, F]
    j0, dj0 = _j0_and_derivative(x)
    switch = smooth_switch(u).unsqueeze(1)
    dswitch = (-30.0 * u * u * (1.0 - u) * (1.0 - u)).unsqueeze(1)
    basis = switch * j0
    dbasis_dr = (dswitch * j0 + switch * freqs * dj0) * (1.0 / encoding_range)
    return torch.matmul(basis, weights), torch.matmul(dbasis_dr, weights)


def first_order_pair_bias(
    pair_vec: torch.Tensor, weights: torch.Tensor, encoding_range: float, num_freqs: int, chunk: int = PAIR_CHUNK
) -> torch.Tensor:
    """Pair bias [P, heads] of pair vectors ``pair_vec`` [P, 3] with the weights [F, heads] of one
    layer; its gradient with respect to ``pair_vec`` is exact to first order (see the module). Pairs
    in chunks of ``chunk``."""
    r = torch.sqrt((pair_vec * pair_vec).sum(-1))
    with torch.no_grad():
        r_value = r.detach()
        weights = weights.detach()
        biases: List[torch.Tensor] = []
        slopes: List[torch.Tensor] = []
        for start in range(0, r_value.shape[0], chunk):
            bias, slope = _bias_and_slope(r_value[start : start + chunk], weights, encoding_range, num_freqs)
            biases.append(bias)
            slopes.append(slope)
        if len(biases) == 0:
            empty = torch.zeros((0, weights.shape[1]), dtype=pair_vec.dtype, device=pair_vec.device)
            biases.append(empty)
            slopes.append(empty)
        bias = torch.cat(biases, 0)
        slope = torch.cat(slopes, 0)
    return bias + slope * (r - r_value).unsqueeze(1)
