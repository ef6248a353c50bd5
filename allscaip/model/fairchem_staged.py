"""The stages of a converted fairchem AllScAIP (md: no frequency or sinc mask) on one rank of a
domain decomposition (docs/fairchem.md, *Multi-rank evaluation*; executable specification:
export/fairchem_dd_reference.py).

A rank owns ``Nc`` atoms (the first rows of every all-atom array) and holds ghosts (periodic images
and other ranks' atoms) out to the model's ``pair_cutoff``. It keeps the **source rows** of its owned
atoms (slot 0 = self loop = node token, then the kept edges leaving the atom) and computes the
**destination attention** of its owned atoms; an edge whose endpoints have different owners has its
token moved once each way per layer. The calls, with the communications between them:

1. ``nearest(vec, mask)`` -> the ``k + 20`` nearest distances of each owned atom (self loop first);
   forward communication gives every ghost its owner's row (``top_all [Na, T]``).
2. ``rows(vec, mask, index, top_all)`` -> the kept edges of each owned source row (both soft ranks,
   envelope, fairchem's candidate lists); the width of the widest row, maximised over ranks, is the
   common row width ``W``.
3. ``prepare(...)`` -> initial tokens ``[Nc, W, H]``, source key bias, and the row descriptor
   ``[Nc, W, 4]`` (edge vectors and a kept flag, no gradient); forward communication gives every
   ghost its owner's descriptor.
4. ``destinations(vec, mask, index, top_all, desc_all)`` -> the destination rows of the owned atoms:
   (row, slot) in the all-atom token rows of every edge arriving at an owned atom, found by matching
   the descriptor's edge vector (the owner's decision to keep the edge) against the owned atom's own
   candidate vector; the destination key bias is recomputed here from that vector (differentiable).
5. per layer: ``source_attention`` (owned rows) -> forward communication of the rows to the ghosts
   -> ``destination_attention`` (writes the tokens of edges arriving at owned atoms into an all-atom
   buffer, zero elsewhere) -> owned rows + reverse (summing) communication of the ghost rows ->
   ``node_project`` -> all-gather of keys and values -> ``node_finish`` (node attention, node and
   edge feed-forward).
6. ``readout`` -> per-atom energies of the owned atoms (eV).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from allscaip.model.fairchem_allscaip import FairchemAllScAIP
from allscaip.model.fairchem_graph import (
    KNN_CANDIDATE_MARGIN,
    FairchemGraph,
    bump_step,
    edge_and_node_features,
    safe_norm,
)

ROW_MATCH_TOLERANCE = 1e-3
"""Å: an owned atom's candidate vector and a descriptor's edge vector name the same edge when they
differ by less than this. Ranks compute one vector from different images: equal to ~1e-14 Å in
float64, to one float32 rounding (~1e-6 Å on a 7 Å vector) in float32; distinct atoms are never
this close (engines stop at their minimum distance, 0.1 Å or more), so the match is unique."""

LISTED_RELATIVE_TOLERANCE = 1e-6
"""An edge counts as among its destination's ``k + 20`` nearest when its length is at most the
destination's ``(k + 20)``-th distance (computed by that atom's owner) times ``1 +`` this: the two
ranks round the same length differently (float32 included). Only a candidate within this of that
boundary distance, i.e. a tie, is affected, and such an edge is dropped either way (soft rank
above ``k``, ``x > 1``) unless most of its ``k + 20`` nearer candidates lie within 4 rank scales of
its own length (a dense shell)."""


MATCH_BLOCK_ROWS = 256
"""Owned rows whose candidates are matched against the descriptors at once: bounds that step's
memory to 256 · Kc · W · 4 values (about 40 MB for md in water) whatever the rank's atom count."""


def _key_bias(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """fairchem's envelope bias ``-x²/(1 - x²)`` where ``kept``, -inf elsewhere; the left-out entries
    enter as 0 so that their (possibly infinite) derivative never meets a zero gradient."""
    safe = torch.where(kept, x, torch.zeros_like(x))
    return torch.where(kept, -safe * safe / (1.0 - safe * safe), torch.full_like(x, float("-inf")))


def _pad_columns(t: torch.Tensor, pad: int, value: float) -> torch.Tensor:
    """``t [N, W]`` with ``pad`` columns of ``value`` appended."""
    return torch.cat([t, torch.full((t.shape[0], pad), value, dtype=t.dtype, device=t.device)], 1)


class FairchemStages(nn.Module):
    """Staged (domain-decomposition) evaluation of a :class:`FairchemAllScAIP` (TorchScript-compatible;
    module docstring). ``vec [Nc, Kc, 3]``: ``x_j - x_i`` for each owned atom i and each candidate j
    (owned or ghost) within ``pair_cutoff``, the self pair of zero shift left out (differentiable);
    ``mask [Nc, Kc]``: real candidates; ``index [Nc, Kc]``: row of j among all atoms (owned first)."""

    def __init__(self, model: FairchemAllScAIP):
        super().__init__()
        if len(model.frequency_list) > 0 or model.sinc_frequencies > 0:
            raise ValueError(
                "the staged fairchem evaluation supports md models (no frequency or sinc mask); run sm models "
                "on one process"
            )
        if model.direct_forces:
            raise ValueError("the staged fairchem evaluation needs a conserving model (forces by gradients)")
        self.model = model
        self.candidates: int = int(model.knn_k) + KNN_CANDIDATE_MARGIN
        self.heads: int = int(model.settings.heads)
        self.num_layers: int = len(model.transformer_blocks)
        #: radius of the candidate lists (``vec``) and of the ghost shell
        self.pair_cutoff: float = float(model.pair_cutoff)
        self.match_tolerance: float = ROW_MATCH_TOLERANCE
        self.listed_tolerance: float = LISTED_RELATIVE_TOLERANCE
        self.match_block_rows: int = MATCH_BLOCK_ROWS

    @torch.jit.export
    def nearest(self, vec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The ``k + 20`` smallest distances of each owned atom, the self loop's 0 first, ``+inf``
        where a row has fewer: ``[Nc, k + 20]`` (fairchem's candidate list, with gradient)."""
        nc = vec.shape[0]
        d = torch.where(mask, safe_norm(vec), torch.full_like(mask, float("inf"), dtype=vec.dtype))
        d = torch.cat([torch.zeros(nc, 1, dtype=vec.dtype, device=vec.device), d], 1)
        if d.shape[1] < self.candidates:
            pad = torch.full((nc, self.candidates - d.shape[1]), float("inf"), dtype=d.dtype, device=d.device)
            d = torch.cat([d, pad], 1)
        order = torch.argsort(d.detach(), dim=1, stable=True)[:, : self.candidates]
        return torch.gather(d, 1, order)

    def _envelope(self, d: torch.Tensor, top_source: torch.Tensor, top_destination: torch.Tensor) -> torch.Tensor:
        """Envelope argument x of edges of length ``d [...]`` from their sources' and destinations'
        candidate distances ``[..., T]`` (fairchem_graph._graph_of_candidates, same term order)."""
        m = self.model
        src_rank = bump_step((d[..., None] - top_source) / m.rank_scale).sum(-1)
        dst_rank = bump_step((d[..., None] - top_destination) / m.rank_scale).sum(-1)
        terms = torch.stack([src_rank / m.knn_k, dst_rank / m.knn_k, d / m.cutoff], dim=-1)
        return m.lse_scale * torch.logsumexp(terms / m.lse_scale, dim=-1)

    @torch.jit.export
    def rows(
        self, vec: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, top_all: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept edges of the owned source rows: (candidate column of each slot ``[Nc, W]``, -1 for the
        self loop in slot 0 and for padding; kept ``[Nc, W]``; key bias ``[Nc, W]``, -inf on padding)."""
        nc = vec.shape[0]
        d = safe_norm(vec)
        far = torch.full_like(d, float("inf"))
        # position among the row's candidates (the self loop, distance 0, takes position 0)
        order = torch.argsort(torch.where(mask, d, far).detach(), dim=1, stable=True)
        position = torch.empty_like(order)
        position.scatter_(1, order, torch.arange(d.shape[1], device=d.device).expand_as(order))
        src_listed = position + 1 < self.candidates
        threshold = top_all[index][..., -1]
        dst_listed = d.detach() <= threshold * (1.0 + self.listed_tolerance)
        x = self._envelope(d, top_all[:nc, None, :], top_all[index])
        kept = mask & src_listed & dst_listed & (x < 1.0).detach()
        count = kept.sum(1)
        width = 1 + (int(count.max()) if nc > 0 else 0)
        # kept candidates first, in the order of x (fairchem's row order; attention does not depend on it)
        key = torch.where(kept, x.detach(), far)
        by_x = torch.argsort(key, dim=1, stable=True)[:, : width - 1]
        filled = torch.arange(width - 1, device=d.device)[None, :] < count[:, None]
        column = torch.where(filled, by_x, torch.full_like(by_x, -1))
        bias = _key_bias(x.gather(1, by_x.clamp_min(0)), filled)
        self_column = torch.full((nc, 1), -1, dtype=torch.long, device=d.device)
        self_bias = torch.zeros(nc, 1, dtype=d.dtype, device=d.device)
        self_kept = torch.ones(nc, 1, dtype=torch.bool, device=d.device)
        return torch.cat([self_column, column], 1), torch.cat([self_kept, filled], 1), torch.cat([self_bias, bias], 1)

    @torch.jit.export
    def prepare(
        self,
        vec: torch.Tensor,
        column: torch.Tensor,
        kept: torch.Tensor,
        bias: torch.Tensor,
        numbers_c: torch.Tensor,
        charge: int,
        spin: int,
        width: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows padded to the common ``width`` -> (tokens ``[Nc, W, H]``, source key bias ``[Nc, W]``,
        descriptor ``[Nc, W, 4]``: each slot's edge vector and 1 where kept, detached)."""
        m = self.model
        m.check_inputs(numbers_c, charge, spin)
        pad = width - column.shape[1]
        if pad < 0:
            raise RuntimeError(f"row width {width} is below this rank's widest row {column.shape[1]}")
        column = _pad_columns(column, pad, -1.0)
        kept = _pad_columns(kept, pad, 0.0)
        bias = _pad_columns(bias, pad, float("-inf"))
        row_vec = vec.gather(1, column.clamp_min(0)[..., None].expand(-1, -1, 3))
        row_vec = torch.where((column >= 0)[..., None], row_vec, torch.zeros_like(row_vec))
        rows = torch.arange(column.shape[0], device=vec.device)[:, None].expand_as(column)
        identity = torch.stack([rows, column])
        graph = FairchemGraph(row_vec, bias, bias, identity, identity, rows)
        features = edge_and_node_features(graph, m.cutoff, m.num_gaussians, m.edge_lmax, m.node_lmax)
        tokens = m.input_block(numbers_c, charge, spin, features, graph)
        descriptor = torch.cat([row_vec.detach(), kept[..., None].to(vec.dtype)], -1)
        return tokens, bias, descriptor

    @torch.jit.export
    def destinations(
        self, vec: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, top_all: torch.Tensor, desc_all: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Destination rows of the owned atoms: (source row ``[Nc, D]`` and slot ``[Nc, D]`` in the
        all-atom token rows, key bias ``[Nc, D]``, -inf on padding; slot 0 = own self loop).
        ``desc_all [Na, W, 4]``: every atom's row descriptor (ghosts: their owner's)."""
        nc = vec.shape[0]
        # the edge index[j, c] -> j is kept by its source when its row holds the vector x_j - x_source;
        # compared in blocks of rows: [block, Kc, W, 4] at a time instead of [Nc, Kc, W, 4]
        found_blocks: List[torch.Tensor] = []
        slot_blocks: List[torch.Tensor] = []
        target = vec.detach()
        for start in range(0, nc, self.match_block_rows):
            stop = min(start + self.match_block_rows, nc)
            row_desc = desc_all[index[start:stop]]
            gap = (row_desc[..., :3] + target[start:stop, :, None, :]).abs().amax(-1)
            match = (gap < self.match_tolerance) & (row_desc[..., 3] > 0.5) & mask[start:stop, :, None]
            found_blocks.append(match.any(-1))
            slot_blocks.append(match.to(torch.int64).argmax(-1))
        found = torch.cat(found_blocks) if nc > 0 else mask
        slot = torch.cat(slot_blocks) if nc > 0 else index
        count = found.sum(1)
        depth = int(count.max()) if nc > 0 else 0
        order = torch.argsort((~found).to(torch.int64), dim=1, stable=True)[:, :depth]
        filled = torch.arange(depth, device=vec.device)[None, :] < count[:, None]
        own = torch.arange(nc, device=vec.device)[:, None]
        source_row = torch.where(filled, index.gather(1, order), own.expand(-1, depth))
        source_slot = torch.where(filled, slot.gather(1, order), torch.zeros_like(order))
        d = safe_norm(vec.gather(1, order[..., None].expand(-1, -1, 3)))
        x = self._envelope(d, top_all[source_row], top_all[:nc, None, :])
        bias = _key_bias(x, filled)
        zero_bias = torch.zeros(nc, 1, dtype=vec.dtype, device=vec.device)
        return (
            torch.cat([own, source_row], 1),
            torch.cat([torch.zeros_like(own), source_slot], 1),
            torch.cat([zero_bias, bias], 1),
        )

    @torch.jit.export
    def source_attention(self, layer: int, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attention within the owned source rows ``[Nc, W, H]`` of block ``layer``."""
        for i, block in enumerate(self.model.transformer_blocks):
            if i == layer:
                na = block.neighborhood_attention
                return tokens + na.src_attn_res_scale * na.src_attn(na.src_attn_norm(tokens), bias, None)
        raise RuntimeError(f"layer {layer} is outside this model's {len(self.model.transformer_blocks)} blocks")

    @torch.jit.export
    def destination_attention(
        self,
        layer: int,
        rows_all: torch.Tensor,
        source_row: torch.Tensor,
        source_slot: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """Attention within the destination rows of the owned atoms, reading the source-attended rows of
        all atoms ``rows_all [Na, W, H]``; returns ``[Na, W, H]`` holding the updated tokens of the edges
        arriving at owned atoms and zero elsewhere (the rows of ghosts go back to their owners)."""
        for i, block in enumerate(self.model.transformer_blocks):
            if i == layer:
                na = block.neighborhood_attention
                x = rows_all[source_row, source_slot]
                y = x + na.dst_attn_res_scale * na.dst_attn(na.dst_attn_norm(x), bias, None)
                valid = torch.isfinite(bias)
                out = torch.zeros_like(rows_all)
                return out.index_put([source_row[valid], source_slot[valid]], y[valid])
        raise RuntimeError(f"layer {layer} is outside this model's {len(self.model.transformer_blocks)} blocks")

    @torch.jit.export
    def node_project(self, layer: int, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values ``[heads, Nc, d]`` of the owned node tokens (slot 0) for node attention."""
        for i, block in enumerate(self.model.transformer_blocks):
            if i == layer:
                attention = block.node_attention
                if attention is None:
                    raise RuntimeError("this fairchem model has no node attention (use_node_path false)")
                x = attention.node_norm(tokens[:, 0])
                shape = [x.shape[0], self.heads, x.shape[1] // self.heads]
                q = attention.attn_in_proj_q(x).view(shape).transpose(0, 1)
                k = attention.attn_in_proj_k(x).view(shape).transpose(0, 1)
                v = attention.attn_in_proj_v(x).view(shape).transpose(0, 1)
                return q, k, v
        raise RuntimeError(f"layer {layer} is outside this model's {len(self.model.transformer_blocks)} blocks")

    @torch.jit.export
    def node_finish(
        self, layer: int, tokens: torch.Tensor, q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor
    ) -> torch.Tensor:
        """Node attention of the owned queries over the keys and values of all atoms (gathered from every
        rank), node feed-forward on slot 0, edge feed-forward on the other slots."""
        for i, block in enumerate(self.model.transformer_blocks):
            if i == layer:
                attention = block.node_attention
                if attention is None:
                    raise RuntimeError("this fairchem model has no node attention (use_node_path false)")
                out = F.scaled_dot_product_attention(q[None], k_all[None], v_all[None], scale=attention.scale)[0]
                out = attention.attn_out_proj(out.transpose(0, 1).reshape(tokens.shape[0], tokens.shape[2]))
                nodes = attention.node_attn_res_scale * out + tokens[:, 0]
                return torch.cat([block.node_ffn(nodes)[:, None], block.edge_ffn(tokens[:, 1:])], 1)
        raise RuntimeError(f"layer {layer} is outside this model's {len(self.model.transformer_blocks)} blocks")

    @torch.jit.export
    def readout(self, tokens: torch.Tensor, numbers_c: torch.Tensor, natoms: int) -> torch.Tensor:
        """Per-atom energies (eV, float64) of the owned atoms: network share times fairchem's normaliser,
        element references, and the normaliser's mean spread over the ``natoms`` of the system."""
        m = self.model
        per_atom = m.energy_head(tokens[:, 0])[:, 0]
        references = m.element_references.to(numbers_c.device)[numbers_c]
        return (per_atom * m.energy_rmsd).to(torch.float64) + references + m.energy_mean / natoms
