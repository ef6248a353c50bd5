"""The AllScAIP model: neighbour attention inside a cutoff + all-to-all node attention.

Layout: every quantity lives on *centres* (the atoms whose energy is computed) in a padded
per-centre neighbour layout ``[Nc, K]``. Neighbour indices point into an array of *all*
atoms, whose first ``Nc`` entries are the centres (a whole system: all atoms; a LAMMPS rank:
owned atoms first, then ghosts). Each layer's local stage reads the node states of atoms
within one cutoff only, so a domain-decomposed engine refreshes ghost node states once per
layer and gets results identical to a whole-system evaluation.

Layer (pre-norm residual blocks with learned per-channel scales initialised to 1/L):
  1. source-layout neighbour attention over ``[h_i, E_ij]`` (updates node and edge streams);
  2. destination-layout neighbour attention over ``[h_i, E_ij + P h_j]``: the messages
     arriving at ``i`` from its neighbours' current node states;
  3. edge feed-forward;
  4. all-to-all node attention over the atoms of the same system;
  5. node feed-forward.
Direction enters only through the Legendre-modulated attention logits and Steinhardt bond
order parameters, so the energy is exactly rotation invariant.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from allscaip.config import ModelConfig
from allscaip.model.core_repulsion import core_repulsion_energy
from allscaip.model.layers import FeedForward, NeighborAttention, NodeAttention, RMSNorm, token_layout
from allscaip.model.spherical import spherical_harmonics

NeighborGeometry = Tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]


class AllScAIPLayer(nn.Module):
    """One AllScAIP block (local stage + global stage)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden
        init = 1.0 / cfg.layers
        self.norm_src = RMSNorm(h)
        self.attn_src = NeighborAttention(h, cfg.heads, cfg.legendre, cfg.legendre_lmax, cfg.qk_norm)
        self.norm_msg = RMSNorm(h)
        self.msg_proj = nn.Linear(h, h)
        self.norm_dst = RMSNorm(h)
        self.attn_dst = NeighborAttention(h, cfg.heads, cfg.legendre, cfg.legendre_lmax, cfg.qk_norm)
        self.norm_edge = RMSNorm(h)
        self.edge_ffn = FeedForward(h, cfg.ffn_ratio)
        self.norm_node_attn = RMSNorm(h)
        self.node_attn = NodeAttention(h, cfg.heads, cfg.qk_norm)
        self.node_attention = cfg.node_attention
        self.norm_node_ffn = RMSNorm(h)
        self.node_ffn = FeedForward(h, cfg.ffn_ratio)
        self.scale_src_node = nn.Parameter(torch.full((h,), init))
        self.scale_src_edge = nn.Parameter(torch.full((h,), init))
        self.scale_dst_node = nn.Parameter(torch.full((h,), init))
        self.scale_dst_edge = nn.Parameter(torch.full((h,), init))
        self.scale_edge_ffn = nn.Parameter(torch.full((h,), init))
        self.scale_node_attn = nn.Parameter(torch.full((h,), init))
        self.scale_node_ffn = nn.Parameter(torch.full((h,), init))

    def local(
        self,
        h_all: torch.Tensor,
        edges: torch.Tensor,
        index: torch.Tensor,
        legendre_p: torch.Tensor,
        bias: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Neighbour stage. h_all [Na, H] (centres first), edges [E, H] (real edges of the
        padded layout, row-major) -> (h_c [Nc, H], edges [E, H])."""
        nc = index.shape[0]
        valid = torch.isfinite(bias[:, 1:])
        tok_index, pad_pos = token_layout(valid)
        n_edges = edges.shape[0]
        is_node = (torch.arange(nc + n_edges, device=edges.device) < nc).unsqueeze(1)
        tokens = torch.cat([h_all[:nc], edges], 0)  # [Nc + E, H]: self tokens first
        out = self.attn_src(self.norm_src(tokens), tok_index, pad_pos, legendre_p, bias)
        tokens = tokens + torch.where(is_node, self.scale_src_node, self.scale_src_edge) * out
        # messages from the neighbours' node states (zero for the self tokens)
        msg = self.msg_proj(self.norm_msg(h_all))
        msg = torch.cat([torch.zeros_like(msg[:1]).expand(nc, -1), msg[index[valid]]], 0)
        out = self.attn_dst(self.norm_dst(tokens + msg), tok_index, pad_pos, legendre_p, bias)
        tokens = tokens + torch.where(is_node, self.scale_dst_node, self.scale_dst_edge) * out
        h, edges = torch.split(tokens, [nc, n_edges], dim=0)
        edges = edges + self.scale_edge_ffn * self.edge_ffn(self.norm_edge(edges))
        return h, edges

    def global_project(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values of node attention for atoms ``h`` [N, H]."""
        return self.node_attn.project(self.norm_node_attn(h))

    def global_finish(
        self, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Attend with queries of ``h`` over (possibly gathered) keys/values, then node FFN."""
        if self.node_attention:
            h = h + self.scale_node_attn * self.node_attn.attend(q, k, v, mask)
        return h + self.scale_node_ffn * self.node_ffn(self.norm_node_ffn(h))

    def node_ffn_only(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.scale_node_ffn * self.node_ffn(self.norm_node_ffn(h))


class AllScAIP(nn.Module):
    """AllScAIP energy model. ``forward`` returns per-atom energies (eV)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.hidden = h
        self.num_layers = cfg.layers
        self.cutoff = float(cfg.cutoff)
        self.max_neighbors = int(cfg.max_neighbors) if cfg.max_neighbors is not None else 0
        self.rank_temperature = float(cfg.rank_temperature)
        self.bo_lmax = int(cfg.bond_order_lmax)
        self.legendre_lmax = int(cfg.legendre_lmax) if cfg.legendre else 0
        self.node_attention = bool(cfg.node_attention)
        self.use_distance_bias = bool(cfg.distance_bias) and bool(cfg.node_attention)
        self.use_charge_spin = bool(cfg.charge_spin)
        self.max_charge = int(cfg.max_charge)
        self.max_spin = int(cfg.max_spin)
        nspecies = len(cfg.elements)

        z_to_species = torch.full((119,), -1, dtype=torch.long)
        for s, z in enumerate(cfg.elements):
            z_to_species[z] = s
        self.register_buffer("z_to_species", z_to_species)
        self.register_buffer("element_energy", torch.zeros(nspecies))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("rbf_centers", torch.linspace(0.0, cfg.cutoff, cfg.num_rbf))
        # core repulsion (allscaip.model.core_repulsion): radius per species pair, 0 = no wall;
        # fitted from the training data (allscaip.train.core_radius), stored with the weights
        self.register_buffer("core_radius", torch.zeros(nspecies, nspecies))
        self.register_buffer("species_z", torch.tensor([float(z) for z in cfg.elements]), persistent=False)
        self.rbf_width = cfg.cutoff / cfg.num_rbf

        self.species_embed = nn.Embedding(nspecies, h)
        nq = self.bo_lmax + 1 if self.bo_lmax >= 0 else 0
        self.node_in_norm = RMSNorm(h + nq)
        self.node_in = nn.Linear(h + nq, h)
        self.charge_embed = nn.Embedding(2 * cfg.max_charge + 1, h)
        self.spin_embed = nn.Embedding(cfg.max_spin + 1, h)
        nn.init.normal_(self.charge_embed.weight, std=0.1)
        nn.init.normal_(self.spin_embed.weight, std=0.1)
        self.edge_species = nn.Embedding(nspecies, h)
        self.edge_in = nn.Linear(2 * h + cfg.num_rbf, h)
        self.blocks = nn.ModuleList([AllScAIPLayer(cfg) for _ in range(cfg.layers)])
        if self.use_distance_bias:
            nf = cfg.distance_bias_freqs
            freqs = torch.exp(torch.linspace(math.log(math.pi / 120.0), math.log(math.pi / 0.25), nf))
            self.register_buffer("bias_freqs", freqs)
            self.bias_weights = nn.Parameter(torch.full((cfg.layers, cfg.heads, nf), 1.0 / nf))
        else:
            self.register_buffer("bias_freqs", torch.zeros(0))
            self.bias_weights = nn.Parameter(torch.zeros(0))
        self.out_norm = RMSNorm(h)
        self.readout = FeedForward(h, cfg.ffn_ratio, out=1)

    # ------------------------------------------------------------------ geometry
    @torch.jit.export
    def neighbor_geometry(self, vec: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> NeighborGeometry:
        """Envelope, angular and radial encodings of the padded neighbour layout.

        vec [Nc, K, 3] edge vectors, mask [Nc, K] real edges, index [Nc, K].
        With ``max_neighbors`` set, the soft-rank envelope drops edges whose envelope reached 1
        (their weight and all its derivatives are already zero there).
        Returns (index, mask, bias [Nc,1+K], weight [Nc,K], bond_order [Nc,lmax+1],
        legendre_p [L+1,Nc,1,1+K,1+K], rbf [Nc,K,R]).
        """
        safe = torch.where(mask.unsqueeze(-1), vec, torch.ones_like(vec))
        dist = torch.linalg.vector_norm(safe, dim=-1)
        x = dist / self.cutoff
        if self.max_neighbors > 0:
            diff = (dist.unsqueeze(2) - dist.unsqueeze(1)) / self.rank_temperature
            rank = (torch.sigmoid(diff) * mask.unsqueeze(1).to(dist.dtype)).sum(-1) - 0.5
            tau = 0.1
            x = tau * torch.logsumexp(torch.stack([rank / self.max_neighbors, x], -1) / tau, -1)
            keep = mask & (x < 1.0)
            kmax = max(int(keep.sum(1).max().item()), 1) if keep.numel() > 0 else 1
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :kmax]
            index = torch.gather(index, 1, order)
            mask = torch.gather(keep, 1, order)
            x = torch.gather(x, 1, order)
            dist = torch.gather(dist, 1, order)
            safe = torch.gather(safe, 1, order.unsqueeze(-1).expand(-1, -1, 3))
        valid = mask & (x < 1.0)
        xs = torch.where(valid, x, torch.zeros_like(x))
        env = -xs * xs / (1.0 - xs * xs)
        bias = torch.where(valid, env, torch.full_like(env, float("-inf")))
        weight = torch.where(valid, torch.exp(env), torch.zeros_like(env))
        unit = safe / dist.unsqueeze(-1)
        nc, k = mask.shape
        if self.bo_lmax >= 0:
            # Steinhardt bond-order parameters: sum_m |sum_j w_ij Y_lm(r_ij)|^2 / (1 + sum_j w_ij)^2
            ylm = spherical_harmonics(unit, self.bo_lmax)
            qlm = (weight.unsqueeze(-1) * ylm).sum(1) / (1.0 + weight.sum(1, keepdim=True))
            feats: List[torch.Tensor] = []
            for l in range(self.bo_lmax + 1):
                feats.append(qlm[:, l * l : (l + 1) * (l + 1)].pow(2).sum(-1))
            bond_order = torch.stack(feats, -1)
        else:
            bond_order = torch.zeros((nc, 0), dtype=vec.dtype, device=vec.device)
        if self.legendre_lmax > 0:
            # Legendre polynomials of the angle between every two tokens [L+1, Nc, 1, T, T];
            # the self token (slot 0) has no direction: only l = 0 couples to it.
            cos = torch.matmul(unit, unit.transpose(1, 2))
            cos = torch.nn.functional.pad(cos, (1, 0, 1, 0))
            edge_pair = torch.ones_like(cos)
            edge_pair[:, 0, :] = 0.0
            edge_pair[:, :, 0] = 0.0
            polys: List[torch.Tensor] = [torch.ones_like(cos), cos]
            for l in range(2, self.legendre_lmax + 1):
                polys.append(((2 * l - 1) * cos * polys[l - 1] - (l - 1) * polys[l - 2]) / l)
            coupled: List[torch.Tensor] = [polys[0]]
            for l in range(1, self.legendre_lmax + 1):
                coupled.append(polys[l] * edge_pair)
            legendre_p = torch.stack(coupled, 0).unsqueeze(2)
        else:
            legendre_p = torch.zeros(0, dtype=vec.dtype, device=vec.device)
        bias = torch.cat([torch.zeros_like(bias[:, :1]), bias], 1)
        rbf = torch.exp(-(((dist.unsqueeze(-1) - self.rbf_centers) / self.rbf_width) ** 2))
        return index, valid, bias, weight, bond_order, legendre_p, rbf

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "core_radius"
        if key not in state_dict:  # checkpoints from before the core repulsion: no wall
            state_dict[key] = torch.zeros_like(self.core_radius)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.jit.export
    def core_energy(
        self, vec: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, species_all: torch.Tensor
    ) -> torch.Tensor:
        """Core-repulsion energies [Nc] (eV) of the centres of a padded layout (zero beyond
        ``core_radius``, so zero wherever the training data has atoms)."""
        nc = index.shape[0]
        return core_repulsion_energy(vec, mask, species_all[:nc], species_all[index], self.core_radius, self.species_z)

    # ------------------------------------------------------------------ stages
    @torch.jit.export
    def species_of(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers -> model species indices (-1 where the element is unknown)."""
        return self.z_to_species[numbers]

    @torch.jit.export
    def embed(
        self,
        species_all: torch.Tensor,
        index: torch.Tensor,
        valid: torch.Tensor,
        bond_order: torch.Tensor,
        rbf: torch.Tensor,
        charge_c: torch.Tensor,
        spin_c: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Initial node states of centres [Nc, H] and flat edge states [E, H] of the real
        edges (``valid`` [Nc, K]) in row-major order.

        charge_c / spin_c: total charge and spin multiplicity of each centre's system.
        """
        nc = index.shape[0]
        sp = species_all[:nc]
        h = torch.cat([self.species_embed(sp), bond_order], -1)
        h = F.gelu(self.node_in(self.node_in_norm(h)))
        if self.use_charge_spin:
            h = h + self.charge_embed(charge_c + self.max_charge) + self.spin_embed(spin_c)
        # flat edge tokens: the real edges of the padded layout in row-major order
        centre = torch.arange(nc, device=index.device).unsqueeze(1).expand(-1, index.shape[1])[valid]
        zc = self.edge_species(sp[centre])
        zn = self.edge_species(species_all[index[valid]])
        edges = self.edge_in(torch.cat([zc, zn, rbf[valid]], -1))
        return h, edges

    @torch.jit.export
    def local_stage(
        self,
        layer: int,
        h_all: torch.Tensor,
        edges: torch.Tensor,
        index: torch.Tensor,
        legendre_p: torch.Tensor,
        bias: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Neighbour stage of block ``layer``: reads h of centres and their neighbours."""
        for i, block in enumerate(self.blocks):
            if i == layer:
                return block.local(h_all, edges, index, legendre_p, bias)
        raise RuntimeError("layer index out of range")

    @torch.jit.export
    def global_project(self, layer: int, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Node-attention queries, keys and values [heads, N, d] of block ``layer``."""
        for i, block in enumerate(self.blocks):
            if i == layer:
                return block.global_project(h)
        raise RuntimeError("layer index out of range")

    @torch.jit.export
    def global_finish(
        self,
        layer: int,
        h: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Node attention of ``h``'s queries over keys/values of all atoms, then node FFN."""
        for i, block in enumerate(self.blocks):
            if i == layer:
                return block.global_finish(h, q, k, v, mask)
        raise RuntimeError("layer index out of range")

    @torch.jit.export
    def readout_energy(self, h: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (eV) of centres: scaled readout plus element references."""
        e = self.readout(self.out_norm(h)).squeeze(-1)
        return e * self.energy_scale + self.element_energy[species]

    @torch.jit.export
    def distance_bias_mask(
        self, layer: int, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, system: torch.Tensor
    ) -> torch.Tensor:
        """Float attention bias [heads, N, N]: log of the sinc distance weights (minimum image,
        by rounding fractional coordinates), -inf between different systems."""
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
        arg = r.unsqueeze(-1) * self.bias_freqs  # [N, N, F]
        sinc = torch.where(
            arg.abs() < 1e-8,
            torch.ones_like(arg),
            torch.sin(arg) / torch.where(arg.abs() < 1e-8, torch.ones_like(arg), arg),
        )
        w = F.softplus(torch.einsum("ijf,hf->hij", sinc, self.bias_weights[layer])) + 1e-6
        logw = torch.log(w)
        same = system.unsqueeze(0) == system.unsqueeze(1)
        return torch.where(same.unsqueeze(0), logw, torch.full_like(logw, float("-inf")))

    # ------------------------------------------------------------------ whole system
    def forward(
        self,
        positions: torch.Tensor,
        species: torch.Tensor,
        system: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        index: torch.Tensor,
        shift: torch.Tensor,
        mask: torch.Tensor,
        charge: torch.Tensor,
        spin: torch.Tensor,
    ) -> torch.Tensor:
        """Per-atom energies [N] of whole systems.

        positions [N,3], species [N] (model species indices), system [N], cell [B,3,3],
        pbc [B,3], padded neighbours ``index``/``shift`` (integer lattice shifts, float)/``mask``
        [N,K(,3)], charge/spin [B].
        """
        vec = positions[index] - positions.unsqueeze(1) + torch.einsum("ikx,ixy->iky", shift, cell[system])
        e_core = self.core_energy(vec, mask, index, species)
        index, valid, bias, weight, bond_order, legendre_p, rbf = self.neighbor_geometry(vec, mask, index)
        h, edges = self.embed(species, index, valid, bond_order, rbf, charge[system], spin[system])
        multi = bool(cell.shape[0] > 1)
        attn_mask: Optional[torch.Tensor] = None
        if multi and not self.use_distance_bias:
            attn_mask = system.unsqueeze(0) == system.unsqueeze(1)
        for i, block in enumerate(self.blocks):
            h, edges = block.local(h, edges, index, legendre_p, bias)
            if self.node_attention:
                if self.use_distance_bias:
                    attn_mask = self.distance_bias_mask(i, positions, cell, pbc, system)
                q, k, v = block.global_project(h)
                h = block.global_finish(h, q, k, v, attn_mask)
            else:
                h = block.node_ffn_only(h)
        return self.readout_energy(h, species) + e_core
