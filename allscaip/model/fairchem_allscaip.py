"""fairchem's AllScAIP (fairchem-core 2.24; md_NeNo and sm_NeAnNoSi) as an eager PyTorch module.

It computes what fairchem computes from a fairchem inference checkpoint (read by
:mod:`allscaip.checkpoint_fairchem`), without fairchem, in float32 or float64
(docs/fairchem.md lists each difference from our own AllScAIP):

1. the graph and its features (:mod:`allscaip.model.fairchem_graph`): soft-kNN envelope with a
   self loop in slot 0 of every row, source and destination layouts;
2. :class:`InputBlock`: node token from the atomic-number table and the bond-order features, plus
   one charge/spin vector per system; every slot's token from the row atom's node token and the
   edge's Gaussians and harmonics (the self loop's token is the node token of the layers);
3. :class:`GraphAttentionBlock` × L: attention within each source row, the same tokens moved to
   the destination layout and attended there, moved back; edge feed-forward on slots 1..; node
   attention over all atoms and node feed-forward on slot 0;
   (sm models: frequency mask and sinc bias, :mod:`allscaip.model.fairchem_masks`);
4. heads on slot 0: energy (per-atom, summed) and, for direct models, forces; then fairchem's
   normalisers and element references of the chosen task.

Parameter names follow fairchem's state dict (``backbone.`` dropped, heads renamed), so the
weights load one to one. Forces and stress of conserving models come from autograd.
"""

# no ``from __future__ import annotations``: TorchScript reads the class annotation of
# ``frequency_list`` (the type of a possibly empty list) as a type, not as a string
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from allscaip.model.fairchem_graph import (
    EdgeAndNodeFeatures,
    FairchemGraph,
    build_fairchem_graph,
    build_fairchem_graph_from_pairs,
    candidate_cutoff,
    edge_and_node_features,
    safe_direction,
)
from allscaip.model.fairchem_masks import (
    expand_by_frequency,
    frequency_vectors,
    min_image_distances,
    sinc_basis,
    sinc_bias,
)
from allscaip.model.fairchem_settings import FairchemSettings
from allscaip.neighbors import system_neighbor_pairs

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
"""fairchem's ``nn.RMSNorm`` takes its dtype's machine epsilon; fairchem runs float32, so the
float64 model keeps float32's epsilon and computes the same function."""

CHARGE_OFFSET, CHARGE_RANGE = 100, (-100, 100)  # fairchem's charge table: rows 0..200 hold -100..100
SPIN_RANGE = (0, 100)  # fairchem's spin table: rows 0..100 hold multiplicity 0..100


class FairchemOutput(NamedTuple):
    """fairchem's reported numbers (after normalisers and element references)."""

    energy: torch.Tensor  # [] eV
    energies: torch.Tensor  # [N] eV per atom (network, normaliser and reference shares)
    forces: torch.Tensor  # [N, 3] eV/Å
    stress: Optional[torch.Tensor]  # [3, 3] eV/Å³ (conserving, periodic, when asked), else None
    virial: Optional[torch.Tensor]  # [3, 3] eV, -dE/dstrain (conserving, when asked; molecules too), else None


def dense(n_in: int, n_out: int, gelu: bool = True) -> nn.Sequential:
    """fairchem's ``get_linear``: Linear, then GELU when asked (state keys ``.0.weight``, ``.0.bias``)."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.GELU()) if gelu else nn.Sequential(nn.Linear(n_in, n_out))


def feed_forward(hidden: int, multiplier: int, n_out: int) -> nn.Sequential:
    """Linear(H → mH) + GELU, Linear(mH → n_out)."""
    return nn.Sequential(dense(hidden, multiplier * hidden), dense(multiplier * hidden, n_out, gelu=False))


def rms_norm(size: int) -> nn.RMSNorm:
    return nn.RMSNorm(size, eps=FLOAT32_EPS)


class Attention(nn.Module):
    """Multi-head attention with separate q, k, v, out projections (bias), no q/k norm, scale 1/sqrt(d);
    with a ``frequency_list``, queries and keys expanded by the frequency mask (sm)."""

    frequency_list: List[int]  # empty for md; TorchScript cannot infer an empty list's type

    def __init__(self, hidden: int, heads: int, frequency_list: Optional[List[int]] = None):
        super().__init__()
        self.heads = heads
        self.frequency_list = list(frequency_list) if frequency_list else []
        self.scale: float = 1.0 / math.sqrt(hidden // heads)
        self.attn_in_proj_q = nn.Linear(hidden, hidden)
        self.attn_in_proj_k = nn.Linear(hidden, hidden)
        self.attn_in_proj_v = nn.Linear(hidden, hidden)
        self.attn_out_proj = nn.Linear(hidden, hidden)

    def forward(
        self, x: torch.Tensor, key_bias: Optional[torch.Tensor], frequency: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        mask: Optional[torch.Tensor] = None
        if key_bias is not None:
            mask = key_bias[:, None, None, :]
        return self.attend(x, mask, frequency)

    def attend(self, x: torch.Tensor, mask: Optional[torch.Tensor], frequency: Optional[torch.Tensor]) -> torch.Tensor:
        """``x [B, S, H]``, additive ``mask`` broadcastable to ``[B, heads, S, S]`` (or None), frequency
        vectors ``[B, S, F]`` (sm, or None) -> ``[B, S, H]``."""
        b, s, h = x.shape[0], x.shape[1], x.shape[2]
        shape = [b, s, self.heads, h // self.heads]
        q = self.attn_in_proj_q(x).view(shape).transpose(1, 2)
        k = self.attn_in_proj_k(x).view(shape).transpose(1, 2)
        v = self.attn_in_proj_v(x).view(shape).transpose(1, 2)
        if frequency is not None and len(self.frequency_list) > 0:
            q = expand_by_frequency(q, self.frequency_list, frequency)
            k = expand_by_frequency(k, self.frequency_list, frequency)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.attn_out_proj(out.transpose(1, 2).reshape(b, s, h))


class NeighborhoodAttention(nn.Module):
    """Attention within source rows, then within destination rows, of the same edge tokens."""

    def __init__(self, hidden: int, heads: int, frequency_list: List[int]):
        super().__init__()
        self.src_attn = Attention(hidden, heads, frequency_list)
        self.dst_attn = Attention(hidden, heads, frequency_list)
        self.src_attn_norm, self.dst_attn_norm = rms_norm(hidden), rms_norm(hidden)
        self.src_attn_res_scale = nn.Parameter(torch.tensor(1.0))
        self.dst_attn_res_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, tokens: torch.Tensor, graph: FairchemGraph, frequency: Optional[torch.Tensor]) -> torch.Tensor:
        src_frequency, dst_frequency = frequency, frequency
        if frequency is not None:
            dst_frequency = frequency[graph.src_of_dst[0], graph.src_of_dst[1]]
        src = self.src_attn(self.src_attn_norm(tokens), graph.src_bias, src_frequency)
        tokens = tokens + self.src_attn_res_scale * src
        tokens = tokens[graph.src_of_dst[0], graph.src_of_dst[1]]
        dst = self.dst_attn(self.dst_attn_norm(tokens), graph.dst_bias, dst_frequency)
        tokens = tokens + self.dst_attn_res_scale * dst
        return tokens[graph.dst_of_src[0], graph.dst_of_src[1]]


class FeedForwardNetwork(nn.Module):
    """Pre-RMSNorm feed-forward with a scalar residual scale."""

    def __init__(self, hidden: int, multiplier: int):
        super().__init__()
        self.ffn = feed_forward(hidden, multiplier, hidden)
        self.ffn_norm = rms_norm(hidden)
        self.ffn_res_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_res_scale * self.ffn(self.ffn_norm(x)) + x


class NodeAttention(Attention):
    """Pre-RMSNorm attention of every atom to every atom of the system (periodic: the cell's atoms);
    sm models add the sinc bias of the pair distances (``radial_weight``)."""

    frequency_list: List[int]  # always empty here (TorchScript does not inherit class annotations)

    def __init__(self, hidden: int, heads: int, sinc_frequencies: int):
        super().__init__(hidden, heads)
        self.node_norm = rms_norm(hidden)
        self.node_attn_res_scale = nn.Parameter(torch.tensor(1.0))
        self.radial_weight = nn.Parameter(torch.zeros(heads, sinc_frequencies)) if sinc_frequencies else None

    def forward(
        self, nodes: torch.Tensor, key_bias: Optional[torch.Tensor] = None, basis: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        mask: Optional[torch.Tensor] = None
        radial_weight = self.radial_weight
        if radial_weight is not None and basis is not None:
            mask = sinc_bias(basis, radial_weight)[None]
        out = self.attend(self.node_norm(nodes)[None], mask, None)[0]
        return self.node_attn_res_scale * out + nodes


class GraphAttentionBlock(nn.Module):
    """One layer: neighbourhood attention, edge FFN (slots 1..), node attention and node FFN (slot 0)."""

    def __init__(self, s: FairchemSettings):
        super().__init__()
        self.neighborhood_attention = NeighborhoodAttention(s.hidden, s.heads, s.frequency_list)
        self.edge_ffn = FeedForwardNetwork(s.hidden, s.ffn_multiplier)
        self.node_attention = NodeAttention(s.hidden, s.heads, s.sinc_frequencies) if s.use_node_path else None
        self.node_ffn = FeedForwardNetwork(s.hidden, s.ffn_multiplier)

    def forward(
        self,
        tokens: torch.Tensor,
        graph: FairchemGraph,
        frequency: Optional[torch.Tensor] = None,
        basis: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``frequency [N, K, F]``: frequency vectors of the source slots; ``basis [N, N, F']``: sinc
        basis of the pair distances (sm models; None for md)."""
        tokens = self.neighborhood_attention(tokens, graph, frequency)
        nodes, edges = tokens[:, 0], self.edge_ffn(tokens[:, 1:])
        if self.node_attention is not None:
            nodes = self.node_attention(nodes, None, basis)
        return torch.cat([self.node_ffn(nodes)[:, None], edges], dim=1)


class ChargeSpinTable(nn.Module):
    """fairchem's ``ChgSpinEmbedding('rand_emb')``: one learned vector per charge or multiplicity."""

    def __init__(self, rows: int, hidden: int):
        super().__init__()
        self.rand_emb = nn.Embedding(rows, hidden)


class InputBlock(nn.Module):
    """Initial tokens of every slot (module docstring, step 2)."""

    def __init__(self, s: FairchemSettings):
        super().__init__()
        h = s.hidden
        self.atomic_embedding = nn.Embedding(s.max_elements, h)
        self.node_direction_embedding = dense(s.node_lmax + 1, h)
        self.node_norm = rms_norm(2 * h)
        self.node_linear = dense(2 * h, h)
        self.edge_attr_linear = dense(s.num_gaussians + (s.edge_lmax + 1) ** 2, h)
        self.edge_feature_linear = dense(2 * h, h)
        self.charge_embedding = ChargeSpinTable(CHARGE_RANGE[1] - CHARGE_RANGE[0] + 1, h)
        self.spin_embedding = ChargeSpinTable(SPIN_RANGE[1] + 1, h)
        self.charge_spin_linear = dense(2 * h, h)
        self.charge_offset: int = CHARGE_OFFSET

    def forward(
        self, numbers: torch.Tensor, charge: int, spin: int, features: EdgeAndNodeFeatures, graph: FairchemGraph
    ) -> torch.Tensor:
        direction = self.node_direction_embedding(features.bond_order)
        nodes = self.node_linear(self.node_norm(torch.cat([self.atomic_embedding(numbers), direction], -1)))
        index = torch.tensor([charge + self.charge_offset, spin], device=numbers.device)
        charge_spin = torch.cat(
            [self.charge_embedding.rand_emb(index[:1]), self.spin_embedding.rand_emb(index[1:])], -1
        )
        nodes = nodes + self.charge_spin_linear(charge_spin)
        edge_attr = self.edge_attr_linear(torch.cat([features.distance_expansion, features.direction_expansion], -1))
        # every slot of row i starts from atom i's node token (fairchem's neighbor_index[0])
        row_nodes = nodes[:, None, :].expand(-1, edge_attr.shape[1], -1)
        return self.edge_feature_linear(torch.cat([row_nodes, edge_attr], -1))


class OutputHead(nn.Module):
    """RMSNorm, Linear(H → mH) + GELU, Linear(mH → n_out) per atom: fairchem's energy head
    (``energy_ffn``) and direct-force head (``force_ffn``), both loaded as ``ffn``."""

    def __init__(self, hidden: int, multiplier: int, n_out: int):
        super().__init__()
        self.node_norm = rms_norm(hidden)
        self.ffn = feed_forward(hidden, multiplier, n_out)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.node_norm(nodes))


class FairchemAllScAIP(nn.Module):
    """fairchem's AllScAIP backbone and heads for one task, with its normalisers and element references.

    Build it with :func:`allscaip.model.fairchem_load.fairchem_model` from a checkpoint.
    ``forward`` takes one system and returns fairchem's reported numbers (:class:`FairchemOutput`).
    TorchScript-compatible (``allscaip_export.fairchem_torchscript``); scripted, it computes the
    gradients of a conserving model only when called with gradients enabled.
    """

    frequency_list: List[int]  # empty for md

    def __init__(self, settings: FairchemSettings, element_references: torch.Tensor, normalizers: Dict[str, tuple]):
        super().__init__()
        s = settings
        self.cutoff, self.knn_k, self.rank_scale, self.lse_scale = s.cutoff, s.knn_k, s.rank_scale, s.lse_scale
        #: radius of the neighbour list the graph is built from (the envelope's cutoff plus the soft
        #: rank's reach); engines pass pairs within it
        self.pair_cutoff: float = candidate_cutoff(s.cutoff, s.rank_scale)
        self.num_gaussians, self.edge_lmax, self.node_lmax = s.num_gaussians, s.edge_lmax, s.node_lmax
        self.frequency_list = list(s.frequency_list)
        self.sinc_frequencies: int = s.sinc_frequencies
        self.input_block = InputBlock(s)
        self.transformer_blocks = nn.ModuleList([GraphAttentionBlock(s) for _ in range(s.layers)])
        self.energy_head = OutputHead(s.hidden, s.output_multiplier, 1)
        self.force_head = OutputHead(s.hidden, s.output_multiplier, 3) if s.direct_forces else None
        self.direct_forces: bool = s.direct_forces
        #: per-element reference energies (eV) by atomic number: float64 as fairchem adds them, hence
        #: not a buffer (``model.to(float32)`` would round them: 1e-4 eV on a 1300 eV reference sum)
        self.element_references = element_references.detach().to(torch.float64)
        #: the largest atomic number the tables and the element references cover
        self.max_atomic_number: int = min(s.max_elements, len(element_references)) - 1
        self.energy_mean, self.energy_rmsd = float(normalizers["energy"][0]), float(normalizers["energy"][1])
        self.forces_mean, self.forces_rmsd = float(normalizers["forces"][0]), float(normalizers["forces"][1])
        self.settings = s  # for Python callers (stage-by-stage tests)
        self.charge_range: Tuple[int, int] = CHARGE_RANGE
        self.spin_range: Tuple[int, int] = SPIN_RANGE

    @torch.jit.unused
    def known_elements(self) -> List[int]:
        """Atomic numbers the tables and element references cover (fairchem lists no training elements)."""
        return list(range(1, self.max_atomic_number + 1))

    def graph(
        self,
        positions: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: Optional[torch.Tensor] = None,
        cell_shifts: Optional[torch.Tensor] = None,
    ) -> FairchemGraph:
        """fairchem's graph: from the neighbour pairs within ``pair_cutoff`` when given, else dense."""
        if edge_index is not None and cell_shifts is not None:
            return build_fairchem_graph_from_pairs(
                positions, cell, edge_index, cell_shifts, self.cutoff, self.knn_k, self.rank_scale, self.lse_scale
            )
        return build_fairchem_graph(positions, cell, pbc, self.cutoff, self.knn_k, self.rank_scale, self.lse_scale)

    def node_tokens(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        charge: int,
        spin: int,
        edge_index: Optional[torch.Tensor] = None,
        cell_shifts: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The final node tokens ``[N, H]`` (slot 0 of every row)."""
        graph = self.graph(positions, cell, pbc, edge_index, cell_shifts)
        features = edge_and_node_features(graph, self.cutoff, self.num_gaussians, self.edge_lmax, self.node_lmax)
        frequency: Optional[torch.Tensor] = None
        if len(self.frequency_list) > 0:
            frequency = frequency_vectors(safe_direction(graph.disp), self.frequency_list)
        basis: Optional[torch.Tensor] = None
        if self.sinc_frequencies > 0:
            basis = sinc_basis(min_image_distances(positions, cell, pbc, self.cutoff), self.sinc_frequencies)
        tokens = self.input_block(numbers, charge, spin, features, graph)
        for block in self.transformer_blocks:
            tokens = block(tokens, graph, frequency, basis)
        return tokens[:, 0]

    def check_inputs(self, numbers: torch.Tensor, charge: int, spin: int) -> None:
        """Errors for inputs the tables cannot index, naming the value and the allowed range."""
        if charge < self.charge_range[0] or charge > self.charge_range[1]:
            raise ValueError(f"charge {charge} is outside fairchem's range -100..100; pass a total charge in it")
        if spin < self.spin_range[0] or spin > self.spin_range[1]:
            raise ValueError(f"spin multiplicity {spin} is outside fairchem's range 0..100; pass one in it")
        top = self.max_atomic_number
        if numbers.numel() > 0:
            low, high = int(numbers.min()), int(numbers.max())
            if low < 1 or high > top:
                raise ValueError(
                    f"atomic numbers must lie in 1..{top} for this fairchem model (its tables and element "
                    f"references); got {low}..{high}"
                )

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        charge: int = 0,
        spin: int = 1,
        compute_stress: bool = False,
        edge_index: Optional[torch.Tensor] = None,
        cell_shifts: Optional[torch.Tensor] = None,
    ) -> FairchemOutput:
        """One system: positions [N, 3] (Å), atomic numbers [N], cell [3, 3] (Å, rows), pbc [3] bool,
        total charge, spin multiplicity. ``compute_stress``: the virial, and the stress when all three
        axes are periodic (fairchem's stress is the strain derivative over the volume, then its energy
        normaliser: ``stress · rmsd + mean``). ``edge_index [2, E]`` / ``cell_shifts [E, 3]``: the full
        neighbour list within ``pair_cutoff`` (integer shifts S, ``r_ij = x_j - x_i + S @ cell``); eager
        calls compute it when absent, scripted calls then build the dense graph (same numbers)."""
        if torch.jit.is_scripting():
            return self.evaluate(positions, numbers, cell, pbc, charge, spin, compute_stress, edge_index, cell_shifts)
        if edge_index is None:
            edge_index, cell_shifts = self.neighbor_pairs(positions, cell, pbc)
        return self._evaluate_with_gradients(
            positions, numbers, cell, pbc, charge, spin, compute_stress, edge_index, cell_shifts
        )

    @torch.jit.unused
    def neighbor_pairs(self, positions, cell, pbc) -> Tuple[torch.Tensor, torch.Tensor]:
        """The full neighbour list within ``pair_cutoff`` (vesin, as for our models)."""
        i, j, shift = system_neighbor_pairs(
            positions.detach().cpu().double().numpy(),
            cell.detach().cpu().double().numpy(),
            pbc.cpu().numpy(),
            self.pair_cutoff,
        )
        device = positions.device
        return torch.stack([torch.from_numpy(i), torch.from_numpy(j)]).to(device), torch.from_numpy(shift).to(device)

    @torch.jit.unused
    def _evaluate_with_gradients(self, positions, numbers, cell, pbc, charge, spin, compute_stress, edge_index, shifts):
        with torch.set_grad_enabled(not self.direct_forces or torch.is_grad_enabled()):
            out = self.evaluate(positions, numbers, cell, pbc, charge, spin, compute_stress, edge_index, shifts)
        if self.training:
            return out
        return FairchemOutput(*(None if t is None else t.detach() for t in out))

    def evaluate(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        charge: int,
        spin: int,
        compute_stress: bool,
        edge_index: Optional[torch.Tensor] = None,
        cell_shifts: Optional[torch.Tensor] = None,
    ) -> FairchemOutput:
        """``forward`` without managing the gradient mode (conserving models need it enabled) or
        computing the neighbour list."""
        self.check_inputs(numbers, charge, spin)
        dtype = self.input_block.atomic_embedding.weight.dtype
        positions, cell = positions.to(dtype), cell.to(dtype)
        conserving = not self.direct_forces
        if compute_stress and not conserving:
            raise ValueError("a direct-force fairchem model has no stress; use a conserving checkpoint")
        if conserving:
            positions = positions.detach().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=dtype, device=positions.device)
        if compute_stress:
            strain.requires_grad_(True)
        symmetric = 0.5 * (strain + strain.transpose(0, 1))
        strained_positions, strained_cell = positions + positions @ symmetric, cell + cell @ symmetric
        nodes = self.node_tokens(strained_positions, numbers, strained_cell, pbc, charge, spin, edge_index, cell_shifts)
        per_atom = self.energy_head(nodes)[:, 0]
        raw = per_atom.sum()
        stress: Optional[torch.Tensor] = None
        virial: Optional[torch.Tensor] = None
        force_head = self.force_head
        if force_head is not None:
            forces = force_head(nodes) * self.forces_rmsd + self.forces_mean
        else:
            wrt = [positions, strain] if compute_stress else [positions]
            grads = torch.autograd.grad([raw], wrt, create_graph=self.training)
            gradient = grads[0]
            assert gradient is not None  # positions enter the energy (TorchScript type refinement)
            forces = -gradient * self.forces_rmsd + self.forces_mean
            if compute_stress:
                strain_gradient = grads[1]
                assert strain_gradient is not None
                virial = -strain_gradient * self.energy_rmsd
                if bool(pbc.all()):
                    stress = strain_gradient / torch.linalg.det(cell).abs() * self.energy_rmsd + self.energy_mean
        references = self.element_references.to(numbers.device)[numbers]
        energies = (per_atom * self.energy_rmsd).to(torch.float64) + references + self.energy_mean / numbers.shape[0]
        energy = (raw * self.energy_rmsd + self.energy_mean).to(torch.float64) + references.sum()
        return FairchemOutput(energy=energy, energies=energies, forces=forces, stress=stress, virial=virial)
