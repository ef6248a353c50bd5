"""The graph and geometric features of fairchem's AllScAIP (fairchem-core 2.24, md_NeNo), as it builds them.

Input: one system (positions, cell, periodic flags). Output: the padded layouts the network reads
(docs/fairchem.md, items 1 to 5), in the order :func:`build_fairchem_graph` and
:func:`edge_and_node_features` compute them:

1. :func:`periodic_shifts`: every lattice shift up to ``ceil(cutoff·|b_k|)`` along each periodic axis;
2. distances from every atom ``i`` to every image of every atom ``j``: dense (O(N² M) memory, as
   fairchem; :func:`build_fairchem_graph`) or from a neighbour list within
   :func:`candidate_cutoff` (O(E); :func:`build_fairchem_graph_from_pairs`), the same graph;
3. soft ranks: the source rank of (i → j) sums a smooth step (:func:`bump_step`) of
   ``(d_ij - d_ic)/scale`` over the ``k + 20`` nearest candidates ``c`` of ``i``; the destination
   rank the same over the ``k + 20`` nearest sources of ``j``; an edge outside either list is dropped;
4. the envelope argument ``x = t·logsumexp([src_rank/k, dst_rank/k, d/cutoff]/t)``, forced to 0
   for the zero-length self pair, so that every row starts with a self loop; edges with ``x < 1``
   are kept, with the attention key bias ``-x²/(1 - x²)``;
5. two padded layouts of the same edges: the source layout (row i: edges leaving i) and the
   destination layout (row j: edges arriving at j), each sorted by ``x`` (self loop first), and the
   index maps between them;
6. features: 512 Gaussians of the length, e3nn-convention harmonics (l ≤ 5) of the direction,
   and the bond-order features of each row (l ≤ 9).

Everything is differentiable in the positions and the cell (forces and stress by autograd); the
choice of kept edges is not, and needs none: the bias reaches -inf where an edge leaves.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Tuple

import torch

from allscaip.model.spherical import spherical_harmonics

KNN_CANDIDATE_MARGIN = 20
"""fairchem's ``delta``: soft ranks sum over the ``k + 20`` nearest candidates only (its low-memory
soft kNN); an edge beyond them has an infinite rank, hence is dropped."""

BUMP_HALF_WIDTH = 4.0
"""The smooth step of the soft rank is exactly 0 below ``-4`` and 1 above ``+4`` (units of the scale)."""

SAFE_NORM_EPS = 1e-12
"""fairchem's ``safe_norm``/``safe_normalize``: a squared length at or below this counts as zero
(length 0, direction the zero vector): only the self pair is that short."""

BOND_ORDER_FLOOR = 1e-6
"""fairchem clamps each bond-order feature's square from below before the square root."""

GAUSSIAN_WIDTH_FACTOR = 2.0
"""fairchem's ``basis_width_scalar``: each Gaussian's width is twice the spacing of the centres."""


class FairchemGraph(NamedTuple):
    """fairchem's padded neighbour layouts of one system (N atoms, K slots; slot 0 = self loop)."""

    disp: torch.Tensor  # [N, K, 3] edge vector r_j + shift - r_i of each source slot; 0 on padding
    src_bias: torch.Tensor  # [N, K] key bias of the source layout; -inf on padding
    dst_bias: torch.Tensor  # [N, K] key bias of the destination layout; -inf on padding
    src_of_dst: torch.Tensor  # [2, N, K] (row, slot) of the source layout read by each destination slot
    dst_of_src: torch.Tensor  # [2, N, K] (row, slot) of the destination layout read by each source slot
    neighbor: torch.Tensor  # [N, K] atom j of each source slot (the row atom on padding)


class EdgeAndNodeFeatures(NamedTuple):
    """The network's geometric inputs on the source layout."""

    distance_expansion: torch.Tensor  # [N, K, G] Gaussians of the edge length
    direction_expansion: torch.Tensor  # [N, K, (L+1)²] harmonics of the edge direction (l ≤ L)
    bond_order: torch.Tensor  # [N, lmax+1] bond-order features of each row


def safe_norm(vec: torch.Tensor, eps: float = SAFE_NORM_EPS) -> torch.Tensor:
    """Length of ``vec [..., 3]``, exactly 0 (with zero gradient) for a zero-length vector."""
    square = (vec * vec).sum(-1)
    length = square.clamp_min(eps).sqrt()
    return torch.where(square <= eps, torch.zeros_like(length), length)


def safe_direction(vec: torch.Tensor, eps: float = SAFE_NORM_EPS) -> torch.Tensor:
    """Unit vector of ``vec [..., 3]``; the zero vector for a zero-length one."""
    square = (vec * vec).sum(-1, keepdim=True)
    unit = vec / square.clamp_min(eps).sqrt()
    return torch.where(square <= eps, torch.zeros_like(vec), unit)


def bump_step(x: torch.Tensor, half_width: float = BUMP_HALF_WIDTH) -> torch.Tensor:
    """Smooth step: 0 for x ≤ -4, 1 for x ≥ 4, 1/2 at 0, C∞ in between (fairchem's ``bump_function``)."""
    inside = x.abs() < half_width
    t = torch.where(inside, x / half_width, torch.zeros_like(x))
    rise = torch.exp(-2.0 / (t + 1.0))
    fall = torch.exp(-2.0 / (1.0 - t))
    return torch.where(inside, rise / (rise + fall), (x >= 0).to(x.dtype))


def periodic_shifts(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Cartesian lattice shifts ``[M, 3]`` (``n @ cell`` for integer ``n``, |n_k| ≤ ceil(cutoff·|b_k|)
    along periodic axes); the zero shift alone without periodicity. Differentiable in ``cell``."""
    if not bool(pbc.any()):
        return torch.zeros(1, 3, dtype=cell.dtype, device=cell.device)
    box = cell.detach()
    volume = torch.dot(box[0], torch.linalg.cross(box[1], box[2]))
    if not bool(volume.abs() > 0):
        raise ValueError(
            "the cell spans no volume; fairchem's periodic images come from the reciprocal cell, so give every "
            "axis a non-zero cell vector (a vacuum length along non-periodic axes)"
        )
    ranges: List[torch.Tensor] = []
    for k in range(3):
        reciprocal = torch.linalg.cross(box[(k + 1) % 3], box[(k + 2) % 3]) / volume
        reps = int(math.ceil(cutoff * float(torch.linalg.vector_norm(reciprocal)))) if bool(pbc[k]) else 0
        ranges.append(torch.arange(-reps, reps + 1, dtype=cell.dtype, device=cell.device))
    grid = torch.meshgrid(ranges, indexing="ij")
    images = torch.stack([grid[0].reshape(-1), grid[1].reshape(-1), grid[2].reshape(-1)], dim=-1)
    return images @ cell


def _nearest_candidates(dist: torch.Tensor, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``dist [N, C]``: the ``count`` smallest distances ``[N, count]`` (with gradient)
    and a mask ``[N, C]`` of the candidates among them."""
    order = torch.argsort(dist.detach(), dim=1)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(dist.shape[1], device=dist.device).expand_as(order))
    return torch.gather(dist, 1, order[:, :count]), position < count


def _slots(row: torch.Tensor, key: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Slot of each edge in its row (rows sorted by ``key``, ascending) and the row lengths ``[n]``."""
    by_key = torch.argsort(key, stable=True)
    order = by_key[torch.argsort(row[by_key], stable=True)]
    counts = torch.bincount(row, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(row)
    slot[order] = torch.arange(row.numel(), device=row.device) - starts[row[order]]
    return slot, counts


def _row_nearest(row: torch.Tensor, dist: torch.Tensor, n: int, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sparse form of :func:`_nearest_candidates` over pairs grouped by ``row``: the ``count`` smallest
    distances of each row ``[n, count]`` (+inf where a row has fewer) and a mask of the pairs among them."""
    position, _ = _slots(row, dist.detach(), n)
    listed = position < count
    top = torch.full((n, count), math.inf, dtype=dist.dtype, device=dist.device)
    return top.index_put([row[listed], position[listed]], dist[listed]), listed


def _graph_of_candidates(
    n: int,
    i: torch.Tensor,
    j: torch.Tensor,
    disp: torch.Tensor,
    src_top: torch.Tensor,
    dst_top: torch.Tensor,
    cutoff: float,
    knn_k: int,
    rank_scale: float,
    lse_scale: float,
) -> FairchemGraph:
    """Steps 3 (rank sums) to 5 of the module docstring for the candidate pairs ``i -> j`` (edge vectors
    ``disp [E, 3]``) that are among the nearest of both their source and destination rows, whose
    nearest distances are ``src_top [n, T]`` and ``dst_top [n, T]``."""
    d = safe_norm(disp)
    src_rank = bump_step((d[:, None] - src_top[i]) / rank_scale).sum(-1)
    dst_rank = bump_step((d[:, None] - dst_top[j]) / rank_scale).sum(-1)
    terms = torch.stack([src_rank / knn_k, dst_rank / knn_k, d / cutoff], dim=-1)
    x = lse_scale * torch.logsumexp(terms / lse_scale, dim=-1)
    x = torch.where(d == 0, torch.zeros_like(x), x)
    kept = (x < 1.0).detach()
    i, j, disp, x = i[kept], j[kept], disp[kept], x[kept]
    bias = -x * x / (1.0 - x * x)
    src_slot, src_counts = _slots(i, x.detach(), n)
    dst_slot, dst_counts = _slots(j, x.detach(), n)
    width = int(max(int(src_counts.max()), int(dst_counts.max())))
    rows = torch.arange(n, device=disp.device)[:, None].expand(n, width)
    cols = torch.arange(width, device=disp.device)[None, :].expand(n, width)
    identity = torch.stack([rows, cols]).clone()
    src_of_dst, dst_of_src = identity.clone(), identity.clone()
    src_of_dst[0, j, dst_slot] = i
    src_of_dst[1, j, dst_slot] = src_slot
    dst_of_src[0, i, src_slot] = j
    dst_of_src[1, i, src_slot] = dst_slot
    neighbor = rows.clone()
    neighbor[i, src_slot] = j
    blank = torch.full((n, width), -math.inf, dtype=disp.dtype, device=disp.device)
    return FairchemGraph(
        disp=torch.zeros(n, width, 3, dtype=disp.dtype, device=disp.device).index_put([i, src_slot], disp),
        src_bias=blank.index_put([i, src_slot], bias),
        dst_bias=blank.index_put([j, dst_slot], bias),
        src_of_dst=src_of_dst,
        dst_of_src=dst_of_src,
        neighbor=neighbor,
    )


def build_fairchem_graph(
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    cutoff: float,
    knn_k: int,
    rank_scale: float,
    lse_scale: float,
    candidate_margin: int = KNN_CANDIDATE_MARGIN,
) -> FairchemGraph:
    """fairchem's soft-kNN graph of one system, built as fairchem builds it: from the dense distances
    of every atom to every image of every atom (O(N² M) memory; module docstring, steps 1 to 5)."""
    n = positions.shape[0]
    shifts = periodic_shifts(cell, pbc, cutoff)
    m = shifts.shape[0]
    # disp[i, j, s] = r_j + shift_s - r_i
    disp = positions[None, :, None, :] + shifts[None, None, :, :] - positions[:, None, None, :]
    dist = safe_norm(disp)
    count = min(knn_k + candidate_margin, n * m)
    src_top, src_listed = _nearest_candidates(dist.reshape(n, n * m), count)
    dst_top, dst_listed = _nearest_candidates(dist.transpose(0, 1).reshape(n, n * m), count)
    listed = src_listed.view(n, n, m) & dst_listed.view(n, n, m).transpose(0, 1)
    pairs = listed.nonzero()
    i, j, s = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    return _graph_of_candidates(n, i, j, disp[i, j, s], src_top, dst_top, cutoff, knn_k, rank_scale, lse_scale)


def candidate_cutoff(cutoff: float, rank_scale: float, half_width: float = BUMP_HALF_WIDTH) -> float:
    """Radius of the neighbour list :func:`build_fairchem_graph_from_pairs` needs: a candidate farther
    than ``d + half_width·scale`` adds exactly 0 to the rank of an edge of length ``d < cutoff``, and
    only nearer candidates move an edge down its row."""
    return cutoff + half_width * rank_scale


def build_fairchem_graph_from_pairs(
    positions: torch.Tensor,
    cell: torch.Tensor,
    edge_index: torch.Tensor,
    cell_shifts: torch.Tensor,
    cutoff: float,
    knn_k: int,
    rank_scale: float,
    lse_scale: float,
    candidate_margin: int = KNN_CANDIDATE_MARGIN,
) -> FairchemGraph:
    """The graph of :func:`build_fairchem_graph` from a full neighbour list within
    :func:`candidate_cutoff` (``edge_index [2, E]``: i, j; ``cell_shifts [E, 3]``: integer shifts S,
    ``r_ij = x_j - x_i + S @ cell``; both directions, no self pair of zero shift): memory O(E).

    Equal to the dense graph: every candidate that can change a kept edge's ranks or row position is
    in the list, and the destination row of j (pairs arriving at j) holds the same distances as its
    source row. Where fairchem's image range (:func:`periodic_shifts`) misses an image between the
    cutoff and the candidate cutoff, this graph counts it: the ranks of edges near the cutoff, whose
    bias is below -3, can then differ slightly from fairchem's."""
    n = positions.shape[0]
    self_loop = torch.arange(n, device=positions.device)
    i = torch.cat([edge_index[0], self_loop])
    j = torch.cat([edge_index[1], self_loop])
    shifts = torch.cat(
        [cell_shifts.to(positions.dtype), torch.zeros(n, 3, dtype=positions.dtype, device=positions.device)]
    )
    disp = positions[j] + shifts @ cell - positions[i]
    dist = safe_norm(disp)
    count = knn_k + candidate_margin
    src_top, src_listed = _row_nearest(i, dist, n, count)
    dst_top, dst_listed = _row_nearest(j, dist, n, count)
    listed = src_listed & dst_listed
    return _graph_of_candidates(
        n, i[listed], j[listed], disp[listed], src_top, dst_top, cutoff, knn_k, rank_scale, lse_scale
    )


def harmonic_degrees(lmax: int, device: torch.device) -> torch.Tensor:
    """Degree l of each of the (lmax+1)² harmonic components (int64)."""
    blocks: List[torch.Tensor] = []
    for l in range(lmax + 1):
        blocks.append(torch.full((2 * l + 1,), l, dtype=torch.long, device=device))
    return torch.cat(blocks)


def e3nn_harmonics(direction: torch.Tensor, lmax: int) -> torch.Tensor:
    """e3nn's component-normalised real harmonics ``[..., (lmax+1)²]`` of unit or zero vectors (the
    zero vector gives 1 for l = 0 and 0 above, as e3nn's homogeneous polynomials do).

    e3nn's polar axis is y: with (x, y, z) read as (z, x, y), our Schmidt harmonics
    (:mod:`allscaip.model.spherical`, polar axis z) equal e3nn's divided by sqrt(2l+1), component
    for component and sign for sign (checked against e3nn 0.5 for l ≤ 9)."""
    axes = torch.stack([direction[..., 2], direction[..., 0], direction[..., 1]], dim=-1)
    schmidt = spherical_harmonics(axes, lmax)
    degree = harmonic_degrees(lmax, direction.device).to(direction.dtype)
    nonzero = (direction * direction).sum(-1, keepdim=True) > 0
    return torch.where(nonzero | (degree == 0), schmidt * (2.0 * degree + 1.0).sqrt(), torch.zeros_like(schmidt))


def gaussian_expansion(
    dist: torch.Tensor, cutoff: float, count: int, width_factor: float = GAUSSIAN_WIDTH_FACTOR
) -> torch.Tensor:
    """fairchem's ``GaussianSmearing(0, cutoff, count, basis_width_scalar=2)`` of ``dist [...]``."""
    centres = torch.linspace(0.0, cutoff, count, dtype=dist.dtype, device=dist.device)
    coeff = -0.5 / (width_factor * cutoff / (count - 1)) ** 2
    return torch.exp(coeff * (dist[..., None] - centres) ** 2)


def bond_order_features(
    direction: torch.Tensor, valid: torch.Tensor, lmax: int, floor: float = BOND_ORDER_FLOOR
) -> torch.Tensor:
    """fairchem's bond-order features ``[N, lmax+1]``: the plain mean over each row's kept slots (self
    loop included) of the harmonics divided by sqrt(2l+1), then per l ``sqrt(max(Σ_m mean², 1e-6))``."""
    harmonics = e3nn_harmonics(direction, lmax)
    degree = harmonic_degrees(lmax, direction.device)
    scaled = harmonics / (2.0 * degree.to(harmonics.dtype) + 1.0).sqrt()
    weight = valid.to(harmonics.dtype)[..., None]
    mean = (scaled * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    per_degree = torch.zeros(mean.shape[0], lmax + 1, dtype=mean.dtype, device=mean.device)
    per_degree = per_degree.index_add(1, degree, mean * mean)
    return per_degree.clamp_min(floor).sqrt()


def edge_and_node_features(
    graph: FairchemGraph, cutoff: float, num_gaussians: int, edge_lmax: int, node_lmax: int
) -> EdgeAndNodeFeatures:
    """The features of step 6 on the source layout."""
    direction = safe_direction(graph.disp)
    return EdgeAndNodeFeatures(
        distance_expansion=gaussian_expansion(safe_norm(graph.disp), cutoff, num_gaussians),
        direction_expansion=e3nn_harmonics(direction, edge_lmax),
        bond_order=bond_order_features(direction, torch.isfinite(graph.src_bias), node_lmax),
    )
