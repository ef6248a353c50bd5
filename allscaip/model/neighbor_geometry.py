"""What the model reads from the geometry of a padded neighbour layout.

Input: edge vectors ``vec [Nc, K, 3]``, real-edge ``mask [Nc, K]`` and neighbour ``index [Nc, K]``
(see :mod:`allscaip.model.allscaip` for the layout). Each job is one function, in the order
:meth:`allscaip.model.allscaip.AllScAIP.neighbor_geometry` runs them:

1. :func:`edge_lengths`: safe edge vectors and their lengths (the envelope argument is ``x = d / cutoff``);
2. :func:`soft_rank_prune` (only with ``max_neighbors``): the soft-rank kNN envelope argument,
   and the columns whose envelope reached 1 dropped;
3. :func:`envelope`: the attention key bias ``-x²/(1-x²)`` (``-inf`` beyond the envelope) and the
   edge weights ``exp`` of it;
4. :func:`bond_order_parameters`: Steinhardt ``q_l`` of each centre;
5. :func:`legendre_couplings`: Legendre polynomials of the angle between every two tokens;
6. :func:`radial_basis`: Gaussian radial basis of the edge lengths.

Everything here is TorchScript-compatible and traceable by ``torch.export``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple

import torch
import torch.nn.functional as F

from allscaip.model.spherical import spherical_harmonics

SOFT_MAX_TEMPERATURE = 0.1
"""Temperature ``t`` of the soft maximum ``t·logsumexp([rank/k, d/cutoff]/t)`` of the kNN envelope.
It exceeds the larger argument by at most ``t·ln 2 ≈ 0.07`` (where the two are equal), so an edge
leaves a little before either criterion alone would drop it, and the envelope stays smooth where
the distance and the rank criteria cross."""

TRACED_MIN_WIDTH = 2
"""Fewest columns the kNN-pruned layout keeps in a traced graph (the AOTInductor export). There
the width is an unbacked symbolic size; one extra all-padding column changes no number but lets
Inductor's CPU ``bmm`` lowering prove that a dimension is not 1. Eager and TorchScript keep 1."""


class NeighborGeometry(NamedTuple):
    """The geometric inputs of every layer, on the (possibly kNN-pruned) padded layout ``[Nc, K]``."""

    index: torch.Tensor  # [Nc, K] neighbour atom of each column (pruned like the others)
    valid: torch.Tensor  # [Nc, K] real edges inside the envelope
    bias: torch.Tensor  # [Nc, 1+K] attention key bias: 0 for the self token, envelope, -inf on padding
    bond_order: torch.Tensor  # [Nc, lmax+1] Steinhardt q_l ([Nc, 0] when off)
    legendre_p: torch.Tensor  # [L+1, Nc, 1, 1+K, 1+K] Legendre couplings of token pairs ([0] when off)
    rbf: torch.Tensor  # [Nc, K, R] Gaussian radial basis of the edge lengths


def edge_lengths(vec: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(safe edge vectors [Nc, K, 3] (ones on padding, so no zero length), lengths [Nc, K])."""
    safe = torch.where(mask.unsqueeze(-1), vec, torch.ones_like(vec))
    return safe, torch.linalg.vector_norm(safe, dim=-1)


@torch.jit.unused
def _width_outside_torchscript(count: int) -> int:
    # ``count`` comes from ``Tensor.item()``: a Python int when eager, an unbacked SymInt while
    # tracing, which int() and max() would force to one concrete value
    if isinstance(count, torch.SymInt):
        return torch.sym_max(count, TRACED_MIN_WIDTH)
    return max(int(count), 1)


def kept_width(keep: torch.Tensor) -> int:
    """Columns needed to hold every row's kept edges of ``keep [Nc, K]`` (at least 1; see
    :data:`TRACED_MIN_WIDTH` for traced graphs)."""
    if keep.numel() == 0:
        return 1
    count = keep.sum(1).max().item()
    if torch.jit.is_scripting():
        return max(int(count), 1)
    return _width_outside_torchscript(count)


def soft_rank_prune(
    x: torch.Tensor,
    dist: torch.Tensor,
    safe: torch.Tensor,
    mask: torch.Tensor,
    index: torch.Tensor,
    max_neighbors: int,
    rank_temperature: float,
    soft_max_temperature: float = SOFT_MAX_TEMPERATURE,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft-rank kNN envelope: ``x = t·logsumexp([rank/k, x]/t)`` with the centre's soft rank
    ``rank_ij = Σ_k σ((d_ij - d_ik)/T) - 1/2``; then the columns whose ``x`` reached 1 are dropped
    (their weight and all its derivatives are already zero there).

    Returns (x, dist, safe, mask, index), all gathered to the kept columns.
    """
    diff = (dist.unsqueeze(2) - dist.unsqueeze(1)) / rank_temperature
    rank = (torch.sigmoid(diff) * mask.unsqueeze(1).to(dist.dtype)).sum(-1) - 0.5
    t = soft_max_temperature
    x = t * torch.logsumexp(torch.stack([rank / max_neighbors, x], -1) / t, -1)
    keep = mask & (x < 1.0)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : kept_width(keep)]
    return (
        torch.gather(x, 1, order),
        torch.gather(dist, 1, order),
        torch.gather(safe, 1, order.unsqueeze(-1).expand(-1, -1, 3)),
        torch.gather(keep, 1, order),
        torch.gather(index, 1, order),
    )


def envelope(x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid [Nc, K], attention bias [Nc, 1+K], edge weights [Nc, K]) of envelope argument ``x``.

    The bias ``-x²/(1-x²)`` goes smoothly to ``-inf`` at ``x = 1`` (energy and forces continuous
    when atoms cross the cutoff); the self token (column 0) gets bias 0.
    """
    valid = mask & (x < 1.0)
    xs = torch.where(valid, x, torch.zeros_like(x))
    log_weight = -xs * xs / (1.0 - xs * xs)
    edge_bias = torch.where(valid, log_weight, torch.full_like(log_weight, float("-inf")))
    weight = torch.where(valid, torch.exp(log_weight), torch.zeros_like(log_weight))
    bias = torch.cat([torch.zeros_like(edge_bias[:, :1]), edge_bias], 1)
    return valid, bias, weight


def bond_order_parameters(unit: torch.Tensor, weight: torch.Tensor, lmax: int) -> torch.Tensor:
    """Steinhardt bond-order parameters [Nc, lmax+1]: ``Σ_m |Σ_j w_ij Y_lm(r̂_ij)|² / (1 + Σ_j w_ij)²``
    (the ``1 +`` keeps them continuous when the last neighbour leaves)."""
    ylm = spherical_harmonics(unit, lmax)
    qlm = (weight.unsqueeze(-1) * ylm).sum(1) / (1.0 + weight.sum(1, keepdim=True))
    feats: List[torch.Tensor] = []
    for l in range(lmax + 1):
        feats.append(qlm[:, l * l : (l + 1) * (l + 1)].pow(2).sum(-1))
    return torch.stack(feats, -1)


def legendre_couplings(unit: torch.Tensor, lmax: int) -> torch.Tensor:
    """Legendre polynomials ``P_l`` of the angle between every two tokens [L+1, Nc, 1, T, T].

    The self token (slot 0) has no direction: only ``l = 0`` couples to it.
    """
    cos = torch.matmul(unit, unit.transpose(1, 2))
    cos = F.pad(cos, (1, 0, 1, 0))
    edge_pair = torch.ones_like(cos)
    edge_pair[:, 0, :] = 0.0
    edge_pair[:, :, 0] = 0.0
    polys: List[torch.Tensor] = [torch.ones_like(cos), cos]
    for l in range(2, lmax + 1):
        polys.append(((2 * l - 1) * cos * polys[l - 1] - (l - 1) * polys[l - 2]) / l)
    coupled: List[torch.Tensor] = [polys[0]]
    for l in range(1, lmax + 1):
        coupled.append(polys[l] * edge_pair)
    return torch.stack(coupled, 0).unsqueeze(2)


def radial_basis(dist: torch.Tensor, centers: torch.Tensor, width: float) -> torch.Tensor:
    """Gaussian radial basis [Nc, K, R] of edge lengths ``dist`` [Nc, K]."""
    return torch.exp(-(((dist.unsqueeze(-1) - centers) / width) ** 2))
