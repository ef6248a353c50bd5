"""Distance-aware node attention ("sinc_pairs"): a smooth pair bias with a finite range, O(N) memory.

Node attention of block ``l``, head ``h`` adds to the logit between atoms ``i`` and ``j`` of one
system the bias

    b_lh(i, j) = sum over periodic images T with 0 < |r_ij + T| < R of g_lh(|r_ij + T|)
    g_lh(r)    = s(r / R) * sum_f a_lhf * j0(f * pi * r / R),   f = 1..F

with ``j0(x) = sin(x) / x`` and the C2 switch ``s(u) = 1 - 10u^3 + 15u^4 - 6u^5`` on [0, 1] (zero
beyond). ``R`` is ``encoding_range``, ``F`` is ``encoding_freqs``, ``a`` the parameter
``encoding_weights`` [layers, F, heads].

The pairs within ``R`` (with their lattice shifts) come from the neighbour list of the local graph
(:mod:`allscaip.neighbors`) called with cutoff ``R``; a pair enters or leaves it where ``g`` and its
first two derivatives vanish, so energy and forces are continuous, and no minimum image is used
anywhere. The content logits ``q_i . k_j / sqrt(d)`` stay dense over the system's atoms; the bias is
sparse ([P, heads]) and scattered into them.

Two evaluations of the same attention, equal to rounding:

* :func:`dense_pair_bias_attention`: the whole ``[heads, n, n]`` logits of one system under
  ordinary autograd (small systems).
* :class:`BlockedPairBiasAttention`: query blocks whose logits stay under a fixed number of
  elements; the backward recomputes each block from ``q, k, v``, the pair bias and the output, so
  nothing ``n x n`` is kept between forward and backward. The backward is a function of its own
  (:class:`BlockedAttentionGradients`) with a blocked, recomputing backward too, so training's
  double backward (a loss on forces) is linear in ``n`` as well.
"""

import math
from typing import List, NamedTuple, Tuple

import torch
from torch.autograd.function import once_differentiable

BLOCK_LOGITS_ELEMENTS = 1 << 24
"""Largest logits block [heads, rows, n] of the blocked attention: 128 MiB in float64, so one block
is cheap next to a large system's other buffers and yet holds thousands of query rows."""

DENSE_LOGITS_ELEMENTS = 1 << 18
"""Systems whose logits [heads, n, n] hold at most this many values (n = 256 at four heads) take the
dense evaluation: one block either way, and no Python block loop."""


def smooth_switch(u: torch.Tensor) -> torch.Tensor:
    """``1 - 10u^3 + 15u^4 - 6u^5`` on [0, 1], 1 below and 0 above: value, first and second
    derivative are continuous everywhere (zero at u = 1)."""
    u = u.clamp(0.0, 1.0)
    return 1.0 - u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)


def sinc_pair_basis(vec: torch.Tensor, encoding_range: float, num_freqs: int) -> torch.Tensor:
    """Switched spherical Bessel functions ``s(r/R) j0(f pi r / R)``, f = 1..F, of pair vectors
    ``vec`` [P, 3] -> [P, F]. ``torch.sinc(x) = sin(pi x) / (pi x)`` is j0 of ``pi x``."""
    u = torch.sqrt((vec * vec).sum(-1)) / encoding_range
    freqs = torch.arange(1, num_freqs + 1, dtype=vec.dtype, device=vec.device)
    return smooth_switch(u).unsqueeze(1) * torch.sinc(u.unsqueeze(1) * freqs)


def add_pair_bias(logits: torch.Tensor, pair_bias: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``logits`` [h, rows, n] plus the pair biases ``pair_bias`` [P, h] at flat positions
    ``flat`` [P] (``row * n + column``); several images of one pair add up. In place: callers pass
    freshly computed logits that nothing else holds (a copy of a block costs as much as its
    product ``q k^T``; autograd allows it, since the product and the scaling save their inputs,
    not their outputs)."""
    h, rows, n = logits.shape
    return logits.view(h, rows * n).index_add_(1, flat, pair_bias.t()).view(h, rows, n)


def dense_pair_bias_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pair_bias: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Attention of one system with the whole logits materialised: q [h, m, d] over k/v [h, n, d], pair
    bias [P, h] between query ``rows`` [P] and key ``cols`` [P] (indices within q and k) -> [h, m, d].
    A whole system has m = n; a domain-decomposed rank has its m owned queries over the n keys
    gathered from every rank (memory O(m n) per layer)."""
    n = k.shape[1]
    logits = torch.matmul(q, k.transpose(1, 2)) * (1.0 / math.sqrt(q.shape[-1]))
    logits = add_pair_bias(logits, pair_bias, rows * n + cols)
    return torch.matmul(torch.softmax(logits, dim=-1), v)


def block_rows_for(heads: int, n: int, block_elements: int) -> int:
    """Query rows per block so that a block's logits [heads, rows, n] hold at most
    ``block_elements`` values (at least one row)."""
    return max(1, block_elements // max(1, heads * n))


def _blocks(n: int, block_rows: int, rows: torch.Tensor) -> List[Tuple[int, int, int, int]]:
    """(first row, end row, first pair, end pair) of each query block; ``rows`` sorted."""
    starts = torch.arange(0, n + block_rows, block_rows, device=rows.device).clamp_max(n)
    pair_ends = torch.searchsorted(rows, starts).tolist()
    row_ends = starts.tolist()
    return [
        (row_ends[b], row_ends[b + 1], pair_ends[b], pair_ends[b + 1])
        for b in range(len(row_ends) - 1)
        if row_ends[b + 1] > row_ends[b]
    ]


def _block_probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    pair_bias: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    block: Tuple[int, int, int, int],
) -> torch.Tensor:
    """Attention probabilities [h, r1 - r0, n] of the query rows of ``block``. A block holds whole
    rows, so its softmax is exact without a running normalisation."""
    r0, r1, p0, p1 = block
    n = k.shape[1]
    logits = torch.matmul(q[:, r0:r1], k.transpose(1, 2)) * (1.0 / math.sqrt(q.shape[-1]))
    flat = (rows[p0:p1] - r0) * n + cols[p0:p1]
    return torch.softmax(add_pair_bias(logits, pair_bias[p0:p1], flat), dim=-1)


class BlockGradients(NamedTuple):
    """Gradients of one query block's attention: ``dq`` [h, rows, d] of its queries, ``dk``/``dv``
    [h, n, d] contributions to every key and value, ``dbias`` [P_block, h] of its pairs."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dbias: torch.Tensor


def _block_gradients(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pair_bias: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out: torch.Tensor,
    grad_out: torch.Tensor,
    block: Tuple[int, int, int, int],
) -> BlockGradients:
    """The backward of one query block, recomputed from q, k, v and the pair bias, with
    ``D_i = sum(dO_i * O_i)`` from the output ``out``. Plain differentiable torch operations, so
    :class:`BlockedAttentionGradients` can differentiate them once more, block by block."""
    r0, r1, p0, p1 = block
    n = k.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1])
    prob = _block_probabilities(q, k, pair_bias, rows, cols, block)
    g = grad_out[:, r0:r1]
    row_dot = (g * out[:, r0:r1]).sum(-1, keepdim=True)
    dlogits = prob * (torch.matmul(g, v.transpose(1, 2)) - row_dot)
    flat = (rows[p0:p1] - r0) * n + cols[p0:p1]
    return BlockGradients(
        dq=torch.matmul(dlogits, k) * scale,
        dk=torch.matmul(dlogits.transpose(1, 2), q[:, r0:r1]) * scale,
        dv=torch.matmul(prob.transpose(1, 2), g),
        dbias=dlogits.reshape(dlogits.shape[0], -1).index_select(1, flat).t(),
    )


class BlockedPairBiasAttention(torch.autograd.Function):
    """Pair-biased attention of one system in query blocks, recomputed in the backward.

    Inputs as :func:`dense_pair_bias_attention`, with ``rows`` sorted ascending, plus
    ``block_rows``. Saved for the backward: q, k, v, the pair bias and indices, and the output
    (all O(n d + P)). The backward (:class:`BlockedAttentionGradients`) returns dq, dk, dv and the
    gradient of the pair bias [P, h] (read from the block's logit gradients at the pairs); the pair
    bias itself is computed outside, under ordinary autograd, so its gradient reaches positions and
    strain through the pair vectors.
    """

    @staticmethod
    def forward(ctx, q, k, v, pair_bias, rows, cols, block_rows):  # type: ignore[override]
        out = torch.empty(q.shape[:2] + v.shape[2:], dtype=v.dtype, device=v.device)
        for block in _blocks(q.shape[1], block_rows, rows):
            out[:, block[0] : block[1]] = torch.matmul(_block_probabilities(q, k, pair_bias, rows, cols, block), v)
        ctx.save_for_backward(q, k, v, pair_bias, rows, cols, out)
        ctx.block_rows = block_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, pair_bias, rows, cols, out = ctx.saved_tensors
        grads = BlockedAttentionGradients.apply(q, k, v, pair_bias, out, grad_out, rows, cols, ctx.block_rows)
        return grads[0], grads[1], grads[2], grads[3], None, None, None


class BlockedAttentionGradients(torch.autograd.Function):
    """The backward of :class:`BlockedPairBiasAttention` as a function of its own, so that a
    double backward (training on forces) is blocked as well: q, k, v, pair bias, output and output
    gradient -> (dq, dk, dv, dbias), block by block (:func:`_block_gradients`). Its own backward
    recomputes each block's gradients under autograd and differentiates them with the incoming
    gradients, one block at a time, so neither derivative keeps anything ``n x n``. Through
    ``out``, which is the forward's output, the second derivative reaches the forward again.
    Differentiable twice in all (forces, then a loss on forces), not three times."""

    @staticmethod
    def forward(ctx, q, k, v, pair_bias, out, grad_out, rows, cols, block_rows):  # type: ignore[override]
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        dbias = torch.zeros_like(pair_bias)
        for block in _blocks(q.shape[1], block_rows, rows):
            r0, r1, p0, p1 = block
            part = _block_gradients(q, k, v, pair_bias, rows, cols, out, grad_out, block)
            dq[:, r0:r1] = part.dq
            dk += part.dk
            dv += part.dv
            dbias[p0:p1] = part.dbias
        ctx.save_for_backward(q, k, v, pair_bias, out, grad_out, rows, cols)
        ctx.block_rows = block_rows
        return dq, dk, dv, dbias

    @staticmethod
    @once_differentiable
    def backward(ctx, g_dq, g_dk, g_dv, g_dbias):  # type: ignore[override]
        saved = ctx.saved_tensors
        rows, cols = saved[6], saved[7]
        inputs = [t.detach().requires_grad_(True) for t in saved[:6]]  # q, k, v, pair_bias, out, grad_out
        totals = [torch.zeros_like(t) for t in inputs]
        for block in _blocks(inputs[0].shape[1], ctx.block_rows, rows):
            r0, r1, p0, p1 = block
            with torch.enable_grad():
                part = _block_gradients(*inputs[:4], rows, cols, *inputs[4:], block)
            outputs = (part.dq, part.dk, part.dv, part.dbias)
            incoming = (g_dq[:, r0:r1], g_dk, g_dv, g_dbias[p0:p1])
            used = [(o, g) for o, g in zip(outputs, incoming) if g is not None]
            found = torch.autograd.grad([o for o, _ in used], inputs, [g for _, g in used], allow_unused=True)
            for total, grad in zip(totals, found):
                if grad is not None:
                    total += grad
        return totals[0], totals[1], totals[2], totals[3], totals[4], totals[5], None, None, None


def blocked_pair_bias_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pair_bias: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    block_elements: int = BLOCK_LOGITS_ELEMENTS,
) -> torch.Tensor:
    """:class:`BlockedPairBiasAttention` with blocks of at most ``block_elements`` logits; ``rows`` sorted."""
    block_rows = block_rows_for(q.shape[0], q.shape[1], block_elements)
    return BlockedPairBiasAttention.apply(q, k, v, pair_bias, rows, cols, block_rows)


def system_bounds(system: torch.Tensor, num_systems: int) -> List[int]:
    """First atom of each system and one past the last atom of the batch ([B + 1]); the atoms of
    a system are contiguous (:class:`allscaip.data.batch.AtomsBatch`)."""
    counts = torch.bincount(system, minlength=num_systems)
    ends: List[int] = torch.cumsum(counts, 0).tolist()
    return [0] + ends


def sorted_pairs(pair_index: torch.Tensor, pair_shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Encoding pairs ``pair_index`` [2, P] (global atom indices) and lattice shifts [P, 3] in
    ascending order of the query atom, which the per-system and per-block slices need."""
    order = torch.argsort(pair_index[0], stable=True)
    return pair_index[:, order], pair_shift[order]


class EncodingPairs(NamedTuple):
    """The encoding pairs of a batch, ready for every layer: ``basis`` [P, F] (see
    :func:`sinc_pair_basis`), ``rows``/``cols`` [P] global query/key atoms in ascending ``rows``,
    ``pair_bounds`` [B + 1] the first pair of each system (and P)."""

    basis: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    pair_bounds: List[int]


def encoding_pair_inputs(
    positions: torch.Tensor,
    cell: torch.Tensor,
    system: torch.Tensor,
    pair_index: torch.Tensor,
    pair_shift: torch.Tensor,
    bounds: List[int],
    encoding_range: float,
    num_freqs: int,
) -> EncodingPairs:
    """Pair vectors ``x_j - x_i + S @ cell`` (differentiable in positions and cell, so forces and the
    strain derivative flow through them as through the local graph) and their basis.

    TorchScript compiles it as it is (the TorchScript export's whole-system call); one system
    (``bounds`` of two entries) needs no ``.tolist()``, so make_fx traces it with a symbolic pair
    count (the AOTInductor export)."""
    index, shift = sorted_pairs(pair_index, pair_shift)
    rows, cols = index[0], index[1]
    vec = positions[cols] - positions[rows] + torch.einsum("px,pxy->py", shift, cell[system[rows]])
    # one system holds every pair: no data-dependent bounds, so the AOTInductor trace keeps P symbolic
    pair_bounds: List[int] = [0, rows.shape[0]]
    if len(bounds) != 2:
        found: List[int] = torch.searchsorted(rows, torch.tensor(bounds, device=rows.device)).tolist()
        pair_bounds = found
    return EncodingPairs(sinc_pair_basis(vec, encoding_range, num_freqs), rows, cols, pair_bounds)


def use_dense(path: str, heads: int, n: int) -> bool:
    """Dense (materialised) encoded attention for a system of ``n`` atoms? Only for small systems,
    where one block would hold the whole logits anyway and the Python block loop costs more than it
    saves; otherwise the blocked evaluation, whose memory is linear in ``n`` in the forward, the
    force backward and the double backward of training alike. ``path`` "dense" or "blocked" forces
    one (tests, benchmarks); "auto" chooses."""
    if path != "auto":
        return path == "dense"
    return heads * n * n <= DENSE_LOGITS_ELEMENTS


@torch.jit.unused
def _eager_system_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pair_bias: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    path: str,
    block_elements: int,
) -> torch.Tensor:
    """Encoded attention of one system in the eager model: dense or blocked (:func:`use_dense`).
    Behind ``torch.jit.unused``, since the blocked autograd Function does not script; scripted code
    takes the dense evaluation instead (see :func:`encoded_attention`)."""
    if use_dense(path, q.shape[0], q.shape[1]):
        return dense_pair_bias_attention(q, k, v, pair_bias, rows, cols)
    return blocked_pair_bias_attention(q, k, v, pair_bias, rows, cols, block_elements=block_elements)


def encoded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weights: torch.Tensor,
    pairs: EncodingPairs,
    bounds: List[int],
    path: str,
    block_elements: int,
) -> torch.Tensor:
    """Node attention of every system of a batch with its pair bias ``basis @ weights`` (``weights``
    [F, heads] of one layer): q/k/v [h, N, d] -> [h, N, d]. ``path`` chooses the
    evaluation per system (:func:`use_dense`); blocks of at most ``block_elements`` logits.

    Scripted (the TorchScript export) every system takes the dense evaluation: memory
    O(heads n^2) per system and layer, the price of an export without custom autograd Functions.
    The AOTInductor export traces one system with ``path`` "dense" (no Python block loop, whose
    bounds would be data-dependent), at the same memory."""
    pair_bias = torch.matmul(pairs.basis, weights)  # [P, heads]
    parts: List[torch.Tensor] = []
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        p0, p1 = pairs.pair_bounds[b], pairs.pair_bounds[b + 1]
        qb, kb, vb, bias_b = q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], pair_bias[p0:p1]
        rows_b, cols_b = pairs.rows[p0:p1] - lo, pairs.cols[p0:p1] - lo
        if torch.jit.is_scripting():
            parts.append(dense_pair_bias_attention(qb, kb, vb, bias_b, rows_b, cols_b))
        else:
            parts.append(_eager_system_attention(qb, kb, vb, bias_b, rows_b, cols_b, path, block_elements))
    return torch.cat(parts, 1)


@torch.jit.unused
def training_content_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: List[int], path: str, block_elements: int
) -> torch.Tensor:
    """Node attention without a bias (models without the encoding), per system, while training:
    q/k/v [h, N, d] -> [h, N, d]. The force loss's double backward needs a differentiable backward,
    which on the CPU only SDPA's math kernel has, and that kernel materialises [h, n, n] per system;
    here systems above :data:`DENSE_LOGITS_ELEMENTS` take the blocked evaluation with no pairs
    instead, so training memory is linear in atoms with or without the encoding."""
    no_pairs = torch.zeros(0, dtype=torch.long, device=q.device)
    no_bias = q.new_zeros(0, q.shape[0])
    parts: List[torch.Tensor] = []
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        qb, kb, vb = q[:, lo:hi], k[:, lo:hi], v[:, lo:hi]
        if use_dense(path, q.shape[0], hi - lo):
            parts.append(dense_pair_bias_attention(qb, kb, vb, no_bias, no_pairs, no_pairs))
        else:
            parts.append(blocked_pair_bias_attention(qb, kb, vb, no_bias, no_pairs, no_pairs, block_elements))
    return torch.cat(parts, 1)
