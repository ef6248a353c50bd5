"""One AllScAIP block (:class:`AllScAIPLayer`): the local (neighbour) stage and the global (node
attention) stage, as :mod:`allscaip.model.allscaip` describes them and calls them, layer by layer.

Pre-norm residual updates with learned per-channel scales initialised to 1/L (L layers)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from allscaip.config import ModelConfig
from allscaip.model.layers import (
    FeedForward,
    NeighborAttention,
    NodeAttention,
    RMSNorm,
    inductor,
    run_inductor,
    token_layout,
)


def scaled_residual(
    tokens: torch.Tensor,
    is_node: torch.Tensor,
    scale_node: torch.Tensor,
    scale_edge: torch.Tensor,
    update: torch.Tensor,
) -> torch.Tensor:
    """``tokens + scale * update``, the scale per channel and per kind of token (self or edge)."""
    return tokens + torch.where(is_node, scale_node, scale_edge) * update


def scaled_update(
    tokens: torch.Tensor,
    is_node: torch.Tensor,
    scale_node: torch.Tensor,
    scale_edge: torch.Tensor,
    update: torch.Tensor,
    compiled: bool,
) -> torch.Tensor:
    """:func:`scaled_residual`; ``compiled``: through Inductor (eager only), one pass instead of
    three, without the [M, H] scale tensor that eager materialises and keeps for the backward."""
    if not torch.jit.is_scripting():  # the TorchScript compiler skips this block
        if compiled:
            return run_inductor(inductor(scaled_residual), tokens, is_node, scale_node, scale_edge, update)
    return scaled_residual(tokens, is_node, scale_node, scale_edge, update)


class AllScAIPLayer(nn.Module):
    """One AllScAIP block (local stage + global stage)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.hidden
        init = 1.0 / cfg.layers
        self.norm_src = RMSNorm(hidden)
        self.attn_src = NeighborAttention(hidden, cfg.heads, cfg.legendre, cfg.legendre_lmax, cfg.qk_norm)
        self.norm_msg = RMSNorm(hidden)
        self.msg_proj = nn.Linear(hidden, hidden)
        self.norm_dst = RMSNorm(hidden)
        self.attn_dst = NeighborAttention(hidden, cfg.heads, cfg.legendre, cfg.legendre_lmax, cfg.qk_norm)
        self.norm_edge = RMSNorm(hidden)
        self.edge_ffn = FeedForward(hidden, cfg.ffn_ratio)
        self.norm_node_attn = RMSNorm(hidden)
        self.node_attn = NodeAttention(hidden, cfg.heads, cfg.qk_norm)
        self.node_attention = cfg.node_attention
        self.norm_node_ffn = RMSNorm(hidden)
        self.node_ffn = FeedForward(hidden, cfg.ffn_ratio)
        self.scale_src_node = nn.Parameter(torch.full((hidden,), init))
        self.scale_src_edge = nn.Parameter(torch.full((hidden,), init))
        self.scale_dst_node = nn.Parameter(torch.full((hidden,), init))
        self.scale_dst_edge = nn.Parameter(torch.full((hidden,), init))
        self.scale_edge_ffn = nn.Parameter(torch.full((hidden,), init))
        self.scale_node_attn = nn.Parameter(torch.full((hidden,), init))
        self.scale_node_ffn = nn.Parameter(torch.full((hidden,), init))

    def local(
        self,
        nodes_all: torch.Tensor,
        edges: torch.Tensor,
        index: torch.Tensor,
        legendre_p: torch.Tensor,
        bias: torch.Tensor,
        first: int = 0,
        compiled: bool = False,
        last: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Neighbour stage: (nodes_all [Na, H], edges [E, H]) -> (nodes [Nc, H], edges [E, H]).
        The centres are rows ``first .. first + Nc`` of ``nodes_all`` (engines put them first; a
        slice of centres, :func:`recomputed_local`, starts further on). ``compiled``: both
        attentions through their compiled core (:func:`allscaip.model.layers.compiled_attention_core`),
        the norms through :func:`allscaip.model.layers.compiled_rms_norm`.

        ``last``: the last block, after which only the centres' states are read (the energy).
        The destination attention then runs for the self tokens' queries only and the edge
        feed-forward is skipped: the same centre states to rounding, for about one eighth less
        of the neighbour stage's work at 4 blocks; the edges returned are those after the source
        attention, which nothing reads."""
        nc = index.shape[0]
        valid = torch.isfinite(bias[:, 1:])
        tok_index, pad_pos = token_layout(valid)
        n_edges = edges.shape[0]
        is_node = (torch.arange(nc + n_edges, device=edges.device) < nc).unsqueeze(1)
        tokens = torch.cat([nodes_all[first : first + nc], edges], 0)  # [Nc + E, H]: self tokens first
        out = self.attn_src(self.norm_src(tokens, compiled), tok_index, pad_pos, legendre_p, bias, compiled)
        tokens = scaled_update(tokens, is_node, self.scale_src_node, self.scale_src_edge, out, compiled)
        # messages from the neighbours' node states (zero for the self tokens)
        msg = self.msg_proj(self.norm_msg(nodes_all, compiled))
        # index_select, not msg[...]: its backward is an index_add, not a much slower accumulating index_put
        msg = torch.cat([torch.zeros_like(msg[:1]).expand(nc, -1), msg.index_select(0, index[valid])], 0)
        if last:
            out = self.attn_dst.self_queries(
                self.norm_dst(tokens + msg, compiled), tok_index, legendre_p, bias, compiled
            )
            nodes, edges = torch.split(tokens, [nc, n_edges], dim=0)
            return nodes + self.scale_dst_node * out, edges
        out = self.attn_dst(self.norm_dst(tokens + msg, compiled), tok_index, pad_pos, legendre_p, bias, compiled)
        tokens = scaled_update(tokens, is_node, self.scale_dst_node, self.scale_dst_edge, out, compiled)
        nodes, edges = torch.split(tokens, [nc, n_edges], dim=0)
        edges = edges + self.scale_edge_ffn * self.edge_ffn(self.norm_edge(edges, compiled))
        return nodes, edges

    def global_project(self, nodes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values of node attention for atoms ``nodes`` [N, H]."""
        return self.node_attn.project(self.norm_node_attn(nodes))

    def global_finish(
        self, nodes: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Attend with queries of ``nodes`` over (possibly gathered) keys/values, then node FFN."""
        if self.node_attention:
            nodes = nodes + self.scale_node_attn * self.node_attn.attend(q, k, v, mask)
        return self.node_ffn_only(nodes)

    def global_finish_heads(self, nodes: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Residual update from node-attention outputs ``o`` [heads, N, d] computed outside, then node FFN."""
        nodes = nodes + self.scale_node_attn * self.node_attn.merge_heads(o)
        return self.node_ffn_only(nodes)

    def node_ffn_only(self, nodes: torch.Tensor) -> torch.Tensor:
        return nodes + self.scale_node_ffn * self.node_ffn(self.norm_node_ffn(nodes))


LOCAL_RECOMPUTE_ROWS = 128
"""Centres per slice of :func:`recomputed_local`: the neighbour stage of 128 centres with 30
neighbours at hidden 256 holds about 0.25 GB of activations, small next to a large system's
stored edge states, and slices of 128 rows keep the per-slice overhead negligible."""


def recomputed_local(
    block: AllScAIPLayer,
    nodes_all: torch.Tensor,
    edges: torch.Tensor,
    index: torch.Tensor,
    legendre_p: torch.Tensor,
    bias: torch.Tensor,
    rows: int = LOCAL_RECOMPUTE_ROWS,
    compiled: bool = False,
    last: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``block.local`` in slices of ``rows`` centres, each recomputed in the backward
    (:class:`RecomputedLocal`), so the backward holds one slice's activations at a time. The
    neighbour stage of a centre reads only its own edges (a contiguous range, edges being in
    row-major (centre, slot) order) and the node states of all atoms, so slices are independent and
    their results concatenate exactly. Eager only (called where the TorchScript compiler does not
    look)."""
    nc = index.shape[0]
    edge_ends = [0] + torch.cumsum(torch.isfinite(bias[:, 1:]).sum(1), 0).tolist()
    starts = list(range(0, nc, rows))
    edge_sizes = [edge_ends[min(nc, c0 + rows)] - edge_ends[c0] for c0 in starts]
    # split, not slices: the backward of a split is one concatenation, that of each slice a
    # zero-filled gradient of the whole tensor (edges [E, H], legendre_p) to add up
    edge_slices = torch.split(edges, edge_sizes)
    lp_slices = legendre_p.split(rows, 1) if legendre_p.numel() > 0 else [legendre_p] * len(starts)
    node_parts, edge_parts = [], []
    for c0, edges_in, lp, idx, b in zip(starts, edge_slices, lp_slices, index.split(rows), bias.split(rows)):
        n, e = RecomputedLocal.apply(block, (c0, compiled, last), nodes_all, edges_in, idx, lp, b, *block.parameters())
        node_parts.append(n)
        edge_parts.append(e)
    return torch.cat(node_parts), torch.cat(edge_parts)


class RecomputedLocal(torch.autograd.Function):
    """``block.local`` of one slice of centres, run without a graph; the backward runs it again with
    one and differentiates that (activation checkpointing, written out). Unlike
    ``torch.utils.checkpoint``'s non-reentrant form, the first pass builds no graph and computes no
    activations to throw away (the compiled attention takes its inference graph): 3.72 -> 3.61 s
    at 768 atoms, bfloat16 blocks (docs/benchmarks.md). Unlike its reentrant form, it works under
    ``torch.autograd.grad``. The recomputation runs under the autocast of the first pass (bfloat16
    blocks), and keeps its graph when the backward itself is differentiated (``create_graph``)."""

    @staticmethod
    def forward(ctx, block, options, nodes_all, edges, index, legendre_p, bias, *weights):  # type: ignore[override]
        # ``weights``: the block's parameters, which the local stage reads from ``block`` itself; passed
        # so that their gradients (trainable weights, evaluation mode) are not silently lost;
        # ``options``: block.local's (first, compiled, last)
        device = nodes_all.device.type
        ctx.local = block.local, options
        ctx.autocast = device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device)
        ctx.save_for_backward(nodes_all, edges, index, legendre_p, bias)
        ctx.weights = weights
        ctx.set_materialize_grads(False)  # an unused output (the last block's edges) gets None, not zeros
        return block.local(nodes_all, edges, index, legendre_p, bias, *options)

    @staticmethod
    def backward(ctx, grad_nodes, grad_edges):  # type: ignore[override]
        local, options = ctx.local
        device, dtype, enabled = ctx.autocast
        inputs = list(ctx.saved_tensors)
        differentiated = torch.is_grad_enabled()  # create_graph: the gradients keep their graph to the inputs
        if not differentiated:
            inputs = [t.detach().requires_grad_(need) for t, need in zip(inputs, ctx.needs_input_grad[2:])]
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            outputs = local(*inputs, *options)
        pairs = [(o, g) for o, g in zip(outputs, (grad_nodes, grad_edges)) if g is not None]
        wrt = [t for t, need in zip(inputs + list(ctx.weights), ctx.needs_input_grad[2:]) if need]
        grads = iter(
            torch.autograd.grad(
                [o for o, _ in pairs],
                wrt,
                [g for _, g in pairs],
                allow_unused=True,
                create_graph=differentiated,
            )
        )
        return (None, None) + tuple(next(grads) if need else None for need in ctx.needs_input_grad[2:])
