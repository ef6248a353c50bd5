"""Building blocks: RMSNorm, feed-forward, neighbour attention with the Legendre angular
encoding, and all-to-all node attention. All TorchScript-compatible."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """``compiled``: through Inductor (:func:`compiled_rms_norm`, eager only)."""
        if not torch.jit.is_scripting():  # the TorchScript compiler skips this block
            if compiled:
                return compiled_rms_norm(x, self.weight, self.eps)
        # in the weight's dtype: under bfloat16 autocast (AllScAIP.block_precision) the statistics stay
        # float32; otherwise a no-op
        return F.rms_norm(x.to(self.weight.dtype), [x.shape[-1]], self.weight, self.eps)


class FeedForward(nn.Module):
    """dim -> ratio*dim -> out with GELU."""

    def __init__(self, dim: int, ratio: int = 2, out: int = -1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.fc2 = nn.Linear(ratio * dim, dim if out < 0 else out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def legendre_groups(head_dim: int, lmax: int) -> List[int]:
    """Split a head's query/key channels into groups for l = 0..lmax.

    For lmax = 4 the published proportions [20, 10, 4, 10, 20] / 64 are used; otherwise
    equal shares. Every group gets at least one channel when ``head_dim > lmax``.
    """
    weights = [20.0, 10.0, 4.0, 10.0, 20.0] if lmax == 4 else [1.0] * (lmax + 1)
    total = sum(weights)
    sizes = [max(1, int(round(head_dim * w / total))) for w in weights]
    while sum(sizes) > head_dim:
        sizes[sizes.index(max(sizes))] -= 1
    while sum(sizes) < head_dim:
        sizes[sizes.index(min(sizes))] += 1
    return sizes


class NeighborAttention(nn.Module):
    """Attention inside each centre's token sequence ``[self, edge_1 .. edge_K]``.

    With the Legendre encoding, channel group ``l`` of queries and keys is modulated by the
    spherical harmonics of the token's edge direction; by the addition theorem the logit
    between edges ``ij`` and ``ik`` is ``sum_l P_l(cos theta_jik) q_l . k_l``, a function of
    the angle only. It is computed in that contracted form (one small matmul per ``l``), so
    the harmonics are never materialised per channel. The self token carries only ``l = 0``.
    Values are not modulated.
    """

    def __init__(self, hidden: int, heads: int, legendre: bool, lmax: int, qk_norm: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        # RMS-normalised queries/keys (per head, learned gain) bound the logits: without it the
        # softmax can saturate early in training and the forces collapse to zero
        self.q_norm: nn.Module = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.legendre = legendre
        self.groups: List[int] = legendre_groups(self.head_dim, lmax) if legendre else [self.head_dim]
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        tok_index: torch.Tensor,
        pad_pos: torch.Tensor,
        legendre_p: torch.Tensor,
        bias: torch.Tensor,
        compiled: bool = False,
    ) -> torch.Tensor:
        """x [M, H] normalised tokens in flat layout (see :func:`token_layout`); projections
        run on real tokens only, attention on the padded per-centre layout [Nc, T].
        legendre_p [L+1, Nc, 1, T, T] Legendre polynomials of the angles between tokens;
        bias [Nc, T] additive key bias (envelope, -inf on padding). ``compiled``: the attention
        itself through :func:`compiled_attention_core` (eager only). Returns [M, H]."""
        nc, t = tok_index.shape
        hid = x.shape[1]
        qkv, q_gain, k_gain, eps = self.project(x, tok_index)
        if not torch.jit.is_scripting():  # the TorchScript compiler skips this block
            if compiled:
                o = compiled_attention_core(
                    qkv, q_gain, k_gain, eps, legendre_p, bias, self.groups, self.scale, self.legendre
                )
                return self.out(o.reshape(nc * t, hid).index_select(0, pad_pos))
        o = attention_core(qkv, q_gain, k_gain, eps, legendre_p, bias, self.groups, self.scale, self.legendre)
        return self.out(o.reshape(nc * t, hid).index_select(0, pad_pos))

    def project(
        self, x: torch.Tensor, tok_index: torch.Tensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], float]:
        """Projected tokens qkv [Nc, T, 3, h, d] in the padded layout, and the query and key
        norms' gains and epsilon (None, None, 0 without norms)."""
        nc, t = tok_index.shape
        # Gather the tokens into the padded layout before projecting them: a gather of H columns
        # (index_select, whose backward is an index_add) instead of 3H, and q, k, v come out in
        # [Nc, T, h, d] without a permuted copy. Padding slots read token 0 (see token_layout).
        qkv = self.qkv(x.index_select(0, tok_index.view(-1))).view(nc, t, 3, self.heads, self.head_dim)
        q_norm, k_norm = self.q_norm, self.k_norm
        if isinstance(q_norm, RMSNorm) and isinstance(k_norm, RMSNorm):
            return qkv, q_norm.weight, k_norm.weight, q_norm.eps
        return qkv, None, None, 0.0

    def self_queries(
        self, x: torch.Tensor, tok_index: torch.Tensor, legendre_p: torch.Tensor, bias: torch.Tensor, compiled: bool
    ) -> torch.Tensor:
        """:meth:`forward`'s outputs for the self tokens only [Nc, H]: each centre's own query
        over all its tokens, for a block whose edge outputs nothing reads (the last one). The
        logits are [Nc, h, 1, T], 1/T of the full attention's, so this runs eagerly even where the
        full attention is compiled; ``compiled`` keeps that path's precision (float32 attention
        under bfloat16 blocks). Equal to ``forward(...)[:Nc]`` to rounding."""
        qkv, q_gain, k_gain, eps = self.project(x, tok_index)
        if not torch.jit.is_scripting():  # the TorchScript compiler skips this block (no autocast there)
            if compiled:
                o = run_inductor(
                    attention_core,
                    attention_input(qkv),
                    q_gain,
                    k_gain,
                    eps,
                    legendre_p,
                    bias,
                    self.groups,
                    self.scale,
                    self.legendre,
                    True,
                )
                return self.out(o.reshape(tok_index.shape[0], x.shape[1]))
        o = attention_core(qkv, q_gain, k_gain, eps, legendre_p, bias, self.groups, self.scale, self.legendre, True)
        return self.out(o.reshape(tok_index.shape[0], x.shape[1]))


def attention_core(
    qkv: torch.Tensor,
    q_gain: Optional[torch.Tensor],
    k_gain: Optional[torch.Tensor],
    eps: float,
    legendre_p: torch.Tensor,
    bias: torch.Tensor,
    groups: List[int],
    scale: float,
    legendre: bool,
    self_only: bool = False,
) -> torch.Tensor:
    """The attention of :class:`NeighborAttention` inside each centre's tokens: projected tokens
    qkv [Nc, T, 3, h, d] -> outputs [Nc, T, h, d]. Queries and keys are RMS-normalised with their
    gains (none: no norm), then attend with the Legendre-weighted logits over the channel
    ``groups`` (``legendre``) or plain ones; ``bias`` [Nc, T] is the keys' additive bias.
    ``self_only``: the self tokens' queries only (slot 0 of each centre), outputs [Nc, 1, h, d]."""
    q, k, v = qkv.unbind(2)  # [Nc, T, h, d]; unbind (not indexing) keeps the backward one copy
    if self_only:
        q = q[:, :1]
        if legendre:
            legendre_p = legendre_p[:, :, :, :1]  # [L+1, Nc, 1, 1, T]: the self query's row
    if q_gain is not None and k_gain is not None:
        # in the gain's dtype: under bfloat16 autocast (AllScAIP.block_precision) the norms stay float32
        q = F.rms_norm(q.to(q_gain.dtype), [q.shape[-1]], q_gain, eps)
        k = F.rms_norm(k.to(k_gain.dtype), [k.shape[-1]], k_gain, eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [Nc, h, T, d]
    if legendre:
        # split (backward: one concatenation), not narrow (backward: a zero-filled copy per group)
        # (and unbind, not legendre_p[l]: one stacked gradient instead of a zero-filled one per l)
        q_groups = torch.split(q, groups, -1)
        k_groups = torch.split(k, groups, -1)
        p_l = legendre_p.unbind(0)
        logits = p_l[0] * torch.matmul(q_groups[0], k_groups[0].transpose(-1, -2))
        for l in range(1, len(groups)):
            logits = logits + p_l[l] * torch.matmul(q_groups[l], k_groups[l].transpose(-1, -2))
        logits = logits * scale + bias.unsqueeze(1).unsqueeze(1)
        o = torch.matmul(torch.softmax(logits, dim=-1), v)
    else:
        # plain logits: the fused kernel (no materialised attention matrix)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(1).unsqueeze(1), scale=scale)
    return o.transpose(1, 2)  # [Nc, T, h, d]


INDUCTOR: Dict[str, Callable[..., torch.Tensor]] = {}
"""The neighbour stage's functions under ``torch.compile`` (dynamic sizes), by name, each made on
first use; Inductor compiles each on its first call for each model and dtype."""


def inductor(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` under ``torch.compile`` (dynamic sizes), made once per process (:data:`INDUCTOR`)."""
    compiled = INDUCTOR.get(fn.__name__)
    if compiled is None:
        compiled = INDUCTOR[fn.__name__] = torch.compile(fn, dynamic=True)
    return compiled


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, [x.shape[-1]], weight, eps)


def compiled_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:class:`RMSNorm` through Inductor: eager ``rms_norm`` is six passes over the tokens
    forward and more backward, and keeps the squares for the backward; compiled, one pass
    forward, and it keeps the input and one scale per row. On [23807, 256] float32 tokens (768
    atoms), 2 threads: forward 10.6 -> 6.1 ms, forward and backward 30.6 -> 12.4 ms. In the
    weight's dtype, with autocast off, as the eager norm."""
    return run_inductor(inductor(rms_norm), x.to(weight.dtype), weight, eps)


def run_inductor(compiled: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any) -> torch.Tensor:
    """``compiled(x, *args)`` with autocast off, and Inductor's compile failure (e.g. no C++
    compiler) turned into an error that names the fix. (Also the way the compiled path runs
    an eager function in its own precision: :meth:`NeighborAttention.self_queries`.)"""
    try:
        with torch.autocast(x.device.type, enabled=False):
            return compiled(x, *args)
    except torch._dynamo.exc.BackendCompilerFailed as err:
        reason = str(err).strip().splitlines()[0]
        raise RuntimeError(
            f"attention_kernel='compiled': Inductor could not compile the neighbour stage ({reason}); "
            "install a C++ compiler (Debian: apt install g++), or use attention_kernel='eager' "
            "(the same numbers, slower for large systems)"
        ) from err


def compiled_attention_core(qkv: torch.Tensor, *args: Any) -> torch.Tensor:
    """:func:`attention_core` (the same arguments) compiled by Inductor (``torch.compile``, dynamic sizes; compiled on the
    first call of each model and dtype, about 30 s on 2 cores): the norms, the Legendre-weighted
    logits, the softmax and their backward fused into a few loops instead of some fifty passes over
    [Nc, T, h, d] and [Nc, h, T, T] tensors (``AllScAIP.attention_kernel = "compiled"``). It runs in
    the model's dtype with autocast off: under ``block_precision = "bfloat16"`` the projections
    stay in bfloat16, these small memory-bound products in float32. Inductor's backward cannot be
    differentiated again, so the training double backward uses :func:`attention_core`."""
    return run_inductor(inductor(attention_core), attention_input(qkv), *args)


def attention_input(qkv: torch.Tensor) -> torch.Tensor:
    """The compiled path's attention precision: bfloat16 q, k, v (under autocast) -> float32; a
    float32 or float64 model's own dtype otherwise."""
    return qkv.to(torch.promote_types(qkv.dtype, torch.float32))


def token_layout(valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat token layout of a padded neighbour layout ``valid [Nc, K]``.

    Flat tokens are the ``Nc`` node (self) tokens followed by the real edge tokens in
    row-major (centre, slot) order. Returns ``tok_index [Nc, 1+K]`` (flat row of each padded
    slot; padding reads row 0) and ``pad_pos [M]`` (padded position ``c*(1+K)+slot`` of each flat
    token). A padding slot's copy of token 0 adds exactly zero to every result and gradient: as a
    key it is masked (bias -inf, softmax weight exactly 0), and as a query its output is never read
    back (``pad_pos`` skips it).
    """
    nc, k = valid.shape
    t = k + 1
    edge_pos = torch.nonzero(valid.reshape(-1)).squeeze(1)
    node_pos = torch.arange(nc, device=valid.device) * t
    pad_pos = torch.cat([node_pos, torch.div(edge_pos, k, rounding_mode="floor") * t + 1 + edge_pos % k])
    m = pad_pos.shape[0]
    tok_index = torch.zeros((nc * t,), dtype=torch.long, device=valid.device)
    tok_index[pad_pos] = torch.arange(m, device=valid.device)
    return tok_index.view(nc, t), pad_pos


class NodeAttention(nn.Module):
    """All-to-all attention between the atoms of one system.

    Split into :meth:`project` and :meth:`attend` so that a domain-decomposed engine can
    gather keys and values of every rank's atoms between the two.
    """

    def __init__(self, hidden: int, heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.q_norm: nn.Module = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] normalised -> q, k, v each [heads, N, head_dim]."""
        n = x.shape[0]
        qkv = self.qkv(x).view(n, 3, self.heads, self.head_dim).permute(1, 2, 0, 3)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """q [h, Nq, d], k/v [h, Nk, d]; mask None, bool [Nq, Nk] or float [h, Nq, Nk]."""
        o = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask)
        return self.merge_heads(o.squeeze(0))

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        """Attention outputs o [h, N, d] -> output projection [N, H]."""
        return self.out(o.transpose(0, 1).reshape(o.shape[1], self.heads * self.head_dim))


def per_system_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: List[int]) -> torch.Tensor:
    """Node attention within each system: q/k/v [h, N, d], atoms of system ``b`` are rows
    ``bounds[b]:bounds[b + 1]`` -> [h, N, d]. Equals attention with a same-system mask, without the
    [N, N] mask."""
    parts: List[torch.Tensor] = []
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        qb, kb, vb = q[:, lo:hi].unsqueeze(0), k[:, lo:hi].unsqueeze(0), v[:, lo:hi].unsqueeze(0)
        parts.append(F.scaled_dot_product_attention(qb, kb, vb).squeeze(0))
    return torch.cat(parts, 1)
