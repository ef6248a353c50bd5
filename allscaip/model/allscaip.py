"""The AllScAIP model: neighbour attention inside a cutoff + all-to-all node attention.

Layout: every quantity lives on *centres* (the atoms whose energy is computed) in a padded
per-centre neighbour layout ``[Nc, K]``. Neighbour indices point into an array of *all*
atoms, whose first ``Nc`` entries are the centres (a whole system: all atoms; a LAMMPS rank:
owned atoms first, then ghosts). Each layer's local stage reads the node states of atoms
within one cutoff only, so a domain-decomposed engine refreshes ghost node states once per
layer and gets results identical to a whole-system evaluation.

Layer (pre-norm residual blocks with learned per-channel scales initialised to 1/L):
  1. source-layout neighbour attention over ``[n_i, E_ij]`` (updates node and edge streams);
  2. destination-layout neighbour attention over ``[n_i, E_ij + P n_j]``: the messages
     arriving at ``i`` from its neighbours' current node states;
  3. edge feed-forward;
  4. all-to-all node attention over the atoms of the same system;
  5. node feed-forward.
Direction enters only through the Legendre-modulated attention logits and Steinhardt bond
order parameters, so the energy is exactly rotation invariant.

Names: ``hidden`` is the width of the node and edge states; ``nodes`` [Nc, hidden] are the
node states of the centres, ``nodes_all`` [Na, hidden] those of all atoms (centres first),
``edges`` [E, hidden] the states of the real edges in row-major (centre, slot) order.

TorchScript: the per-layer stages (:meth:`AllScAIP.local_stage`, ``global_project``,
``global_finish``) take the layer as an integer. TorchScript cannot index an ``nn.ModuleList``
with a value known only at run time, so each of them finds block ``layer`` by iterating over
the blocks (the loop is unrolled when the module is compiled).
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from allscaip.config import ModelConfig
from allscaip.model.block import LOCAL_RECOMPUTE_ROWS, AllScAIPLayer, recomputed_local
from allscaip.model.core_repulsion import core_repulsion_energy
from allscaip.model.eager_options import (
    ATTENTION_KERNEL_CHOICES,
    BLOCK_PRECISION_CHOICES,
    RECOMPUTE_CHOICES,
    bfloat16_products,
    check_choice,
)
from allscaip.model.layers import FeedForward, RMSNorm, per_system_attention
from allscaip.model.legacy_distance_bias import MIN_ATTENTION_WEIGHT, distance_bias_freqs, minimum_image_sinc_bias
from allscaip.model.neighbor_geometry import (
    NeighborGeometry,
    bond_order_parameters,
    edge_lengths,
    envelope,
    legendre_couplings,
    radial_basis,
    soft_rank_prune,
)
from allscaip.model.node_encoding import (
    BLOCK_LOGITS_ELEMENTS,
    EncodingPairs,
    dense_pair_bias_attention,
    encoded_attention,
    encoding_pair_inputs,
    sinc_pair_basis,
    system_bounds,
    training_content_attention,
)

ATOMIC_NUMBER_SLOTS = 119
"""Rows of the atomic number -> species table: Z = 0..118."""

ENCODING_INIT_STD = 0.1
"""Standard deviation of the random initial encoding weights, divided by sqrt(encoding_freqs): a
bias of order 0.1 at the start, so that random-weight models already exercise the encoding."""


class WholeSystemOutput(NamedTuple):
    """What :meth:`AllScAIP.energy_forces_virial` returns for ``B`` systems of ``N`` atoms."""

    energy: torch.Tensor  # [B] eV
    energies: torch.Tensor  # [N] eV per atom
    forces: Optional[torch.Tensor]  # [N, 3] eV/Å, -dE/dx (None unless asked)
    virial: Optional[torch.Tensor]  # [B, 3, 3] eV, -dE/dstrain (None unless asked)


def per_system_sum(values: torch.Tensor, system: Optional[torch.Tensor], num_systems: int) -> torch.Tensor:
    """Sum of per-atom ``values`` [N] over each system [B]; ``system`` None: one system, a plain
    sum (see :meth:`AllScAIP.energy_forces_virial`)."""
    if system is None:
        return values.sum().unsqueeze(0)
    return torch.zeros(num_systems, dtype=values.dtype, device=values.device).index_add(0, system, values)


def apply_strain(
    positions: torch.Tensor, cell: torch.Tensor, system: Optional[torch.Tensor], strain: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Positions and cells deformed by each system's strain ``e`` [B, 3, 3]: ``x (1 + e)`` and
    ``cell (1 + e)``; ``system`` None: one system, plain matrix products."""
    if system is None:
        e = strain[0]
        return positions + torch.matmul(positions, e), (cell[0] + torch.matmul(cell[0], e)).unsqueeze(0)
    return positions + torch.einsum("nx,nxy->ny", positions, strain[system]), cell + torch.bmm(cell, strain)


class AllScAIP(nn.Module):
    """AllScAIP energy model. ``forward`` returns per-atom energies (eV)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden
        self.hidden = hidden
        self.num_layers = cfg.layers
        self.cutoff = float(cfg.cutoff)
        self.max_neighbors = int(cfg.max_neighbors) if cfg.max_neighbors is not None else 0
        self.rank_temperature = float(cfg.rank_temperature)
        self.bo_lmax = int(cfg.bond_order_lmax)
        self.legendre_lmax = int(cfg.legendre_lmax) if cfg.legendre else 0
        self.node_attention = bool(cfg.node_attention)
        self.use_distance_bias = bool(cfg.distance_bias) and bool(cfg.node_attention)
        self.min_attention_weight = MIN_ATTENTION_WEIGHT  # an attribute: TorchScript reads no global floats
        self.use_charge_spin = bool(cfg.charge_spin)
        self.max_charge = int(cfg.max_charge)
        self.max_spin = int(cfg.max_spin)
        nspecies = len(cfg.elements)

        z_to_species = torch.full((ATOMIC_NUMBER_SLOTS,), -1, dtype=torch.long)
        for s, z in enumerate(cfg.elements):
            z_to_species[z] = s
        self.register_buffer("z_to_species", z_to_species)
        self.register_buffer("element_energy", torch.zeros(nspecies))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("rbf_centers", torch.linspace(0.0, cfg.cutoff, cfg.num_rbf))
        # core repulsion (allscaip.model.core_repulsion): radius per species pair, 0 = no wall;
        # fitted from the training data (allscaip.train.core_radius), stored with the weights
        self.register_buffer("core_radius", torch.zeros(nspecies, nspecies))
        # shortest contact (Å) of any element pair in the training data, 0 = not recorded; engines
        # stop on atoms closer than a fraction of it (allscaip.result_checks.min_distance_of_model)
        self.register_buffer("shortest_contact", torch.zeros(()))
        self.register_buffer("species_z", torch.tensor([float(z) for z in cfg.elements]), persistent=False)
        self.rbf_width = cfg.cutoff / cfg.num_rbf

        self.species_embed = nn.Embedding(nspecies, hidden)
        n_bond_order = self.bo_lmax + 1 if self.bo_lmax >= 0 else 0
        self.node_in_norm = RMSNorm(hidden + n_bond_order)
        self.node_in = nn.Linear(hidden + n_bond_order, hidden)
        self.charge_embed = nn.Embedding(2 * cfg.max_charge + 1, hidden)
        self.spin_embed = nn.Embedding(cfg.max_spin + 1, hidden)
        nn.init.normal_(self.charge_embed.weight, std=0.1)
        nn.init.normal_(self.spin_embed.weight, std=0.1)
        self.edge_species = nn.Embedding(nspecies, hidden)
        self.edge_in = nn.Linear(2 * hidden + cfg.num_rbf, hidden)
        self.blocks = nn.ModuleList([AllScAIPLayer(cfg) for _ in range(cfg.layers)])
        if self.use_distance_bias:
            nf = cfg.distance_bias_freqs
            self.register_buffer("bias_freqs", distance_bias_freqs(nf))
            self.bias_weights = nn.Parameter(torch.full((cfg.layers, cfg.heads, nf), 1.0 / nf))
        else:
            self.register_buffer("bias_freqs", torch.zeros(0))
            self.bias_weights = nn.Parameter(torch.zeros(0))
        self.out_norm = RMSNorm(hidden)
        self.readout = FeedForward(hidden, cfg.ffn_ratio, out=1)
        # distance-aware node attention (allscaip.model.node_encoding); created last, so that models
        # without it draw the same random initial weights as before it existed
        self.use_encoding = cfg.node_encoding == "sinc_pairs"
        self.encoding_range = float(cfg.encoding_range)
        self.encoding_freqs = int(cfg.encoding_freqs)
        self.encoding_block_elements = BLOCK_LOGITS_ELEMENTS
        self.encoding_path = "auto"  # "dense" or "blocked" force one evaluation (tests, benchmarks)
        # "layers": outside training, each block's activations are recomputed in the backward
        # instead of kept (activation checkpointing; see recomputing)
        self.recompute = "none"
        self.block_precision = "float32"  # or "bfloat16" (BLOCK_PRECISION_CHOICES; eager float32 models only)
        # "compiled": the neighbour attention through Inductor in eager inference (ATTENTION_KERNEL_CHOICES)
        self.attention_kernel = "eager"
        self.recompute_rows = LOCAL_RECOMPUTE_ROWS  # centres per recomputed slice of a local stage
        if self.use_encoding:
            std = ENCODING_INIT_STD / math.sqrt(cfg.encoding_freqs)
            self.encoding_weights = nn.Parameter(torch.randn(cfg.layers, cfg.encoding_freqs, cfg.heads) * std)
        else:  # not saved (no new state_dict key); TorchScript needs the attribute to exist
            self.register_buffer("encoding_weights", torch.zeros(0), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "core_radius"
        if key not in state_dict:  # checkpoints from before the core repulsion: no wall
            state_dict[key] = torch.zeros_like(self.core_radius)
        if prefix + "shortest_contact" not in state_dict:  # saved before it was recorded
            state_dict[prefix + "shortest_contact"] = torch.zeros_like(self.shortest_contact)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ geometry
    @torch.jit.export
    def neighbor_geometry(self, vec: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> NeighborGeometry:
        """Envelope, angular and radial encodings of the padded neighbour layout
        (``vec [Nc, K, 3]`` edge vectors, ``mask [Nc, K]`` real edges, ``index [Nc, K]``).

        With ``max_neighbors`` set, the soft-rank envelope drops edges whose envelope reached 1,
        so the returned layout may be narrower than ``K`` (see :mod:`allscaip.model.neighbor_geometry`).
        """
        safe, dist = edge_lengths(vec, mask)
        x = dist / self.cutoff
        if self.max_neighbors > 0:
            x, dist, safe, mask, index = soft_rank_prune(
                x, dist, safe, mask, index, self.max_neighbors, self.rank_temperature
            )
        valid, bias, weight = envelope(x, mask)
        unit = safe / dist.unsqueeze(-1)
        if self.bo_lmax >= 0:
            bond_order = bond_order_parameters(unit, weight, self.bo_lmax)
        else:
            bond_order = torch.zeros((mask.shape[0], 0), dtype=vec.dtype, device=vec.device)
        if self.legendre_lmax > 0:
            legendre_p = legendre_couplings(unit, self.legendre_lmax)
        else:
            legendre_p = torch.zeros(0, dtype=vec.dtype, device=vec.device)
        rbf = radial_basis(dist, self.rbf_centers, self.rbf_width)
        return NeighborGeometry(index, valid, bias, bond_order, legendre_p, rbf)

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
        geometry: NeighborGeometry,
        charge_c: torch.Tensor,
        spin_c: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Initial node states of the centres [Nc, H] and edge states [E, H] of the real edges
        (``geometry.valid``) in row-major order.

        charge_c / spin_c: total charge and spin multiplicity of each centre's system.
        """
        index, valid = geometry.index, geometry.valid
        nc = index.shape[0]
        species_c = species_all[:nc]
        nodes = torch.cat([self.species_embed(species_c), geometry.bond_order], -1)
        nodes = F.gelu(self.node_in(self.node_in_norm(nodes)))
        if self.use_charge_spin:
            nodes = nodes + self.charge_embed(charge_c + self.max_charge) + self.spin_embed(spin_c)
        centre = torch.arange(nc, device=index.device).unsqueeze(1).expand(-1, index.shape[1])[valid]
        zc = self.edge_species(species_c[centre])
        zn = self.edge_species(species_all[index[valid]])
        edges = self.edge_in(torch.cat([zc, zn, geometry.rbf[valid]], -1))
        return nodes, edges

    # The three per-layer stages below find block ``layer`` by iterating (see the module docstring).
    @torch.jit.export
    def local_stage(
        self,
        layer: int,
        nodes_all: torch.Tensor,
        edges: torch.Tensor,
        index: torch.Tensor,
        legendre_p: torch.Tensor,
        bias: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Neighbour stage of block ``layer``: reads the node states of centres and their neighbours."""
        for i, block in enumerate(self.blocks):
            if i == layer:
                return block.local(nodes_all, edges, index, legendre_p, bias)
        raise RuntimeError("layer index out of range")

    @torch.jit.export
    def global_project(self, layer: int, nodes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Node-attention queries, keys and values [heads, N, d] of block ``layer``."""
        for i, block in enumerate(self.blocks):
            if i == layer:
                return block.global_project(nodes)
        raise RuntimeError("layer index out of range")

    @torch.jit.export
    def global_finish(
        self,
        layer: int,
        nodes: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Node attention of ``nodes``' queries over keys/values of all atoms, then node FFN."""
        for i, block in enumerate(self.blocks):
            if i == layer:
                return block.global_finish(nodes, q, k, v, mask)
        raise RuntimeError("layer index out of range")

    @torch.jit.export
    def encoding_basis(self, pair_vec: torch.Tensor) -> torch.Tensor:
        """Basis [P, F] of the node encoding (:func:`sinc_pair_basis`) of pair vectors ``pair_vec``
        [P, 3] (``x_j - x_i`` of pairs within ``encoding_range``); the same for every layer."""
        return sinc_pair_basis(pair_vec, self.encoding_range, self.encoding_freqs)

    @torch.jit.export
    def global_finish_encoded(
        self,
        layer: int,
        nodes: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        basis: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """Node attention of ``nodes``' queries q [heads, m, d] over keys/values [heads, n, d] of all
        atoms with the encoding's pair bias ``basis @ encoding_weights[layer]`` between query ``rows``
        and key ``cols`` [P] (dense: logits [heads, m, n]), then node FFN."""
        o = dense_pair_bias_attention(q, k, v, self.encoding_pair_bias(layer, basis), rows, cols)
        return self.global_finish_heads(layer, nodes, o)

    @torch.jit.export
    def encoding_pair_bias(self, layer: int, basis: torch.Tensor) -> torch.Tensor:
        """Pair bias [P, heads] of block ``layer`` from the encoding basis [P, F]."""
        return torch.matmul(basis, self.encoding_weights[layer])

    @torch.jit.export
    def global_finish_heads(self, layer: int, nodes: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Residual update of ``nodes`` from node-attention outputs ``o`` [heads, N, d] computed
        outside, then node FFN."""
        for i, block in enumerate(self.blocks):
            if i == layer:
                return block.global_finish_heads(nodes, o)
        raise RuntimeError("layer index out of range")

    @torch.jit.export
    def readout_energy(self, nodes: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (eV) of centres: scaled readout plus element references."""
        e = self.readout(self.out_norm(nodes)).squeeze(-1)
        return e * self.energy_scale + self.element_energy[species]

    @torch.jit.export
    def distance_attention_bias(
        self, layer: int, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, system: torch.Tensor
    ) -> torch.Tensor:
        """Float attention bias [heads, N, N] of node attention in block ``layer``: the legacy
        minimum-image sinc bias (:mod:`allscaip.model.legacy_distance_bias`), -inf between
        different systems."""
        return minimum_image_sinc_bias(
            positions, cell, pbc, system, self.bias_freqs, self.bias_weights[layer], self.min_attention_weight
        )

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
        pair_index: Optional[torch.Tensor] = None,
        pair_shift: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Per-atom energies [N] of whole systems.

        positions [N,3], species [N] (model species indices), system [N], cell [B,3,3],
        pbc [B,3], padded neighbours ``index``/``shift`` (integer lattice shifts, float)/``mask``
        [N,K(,3)], charge/spin [B]. With a node encoding, its pairs within ``encoding_range``:
        ``pair_index`` [2, P] and integer lattice shifts ``pair_shift`` [P, 3] (float), from
        :func:`allscaip.neighbors.encoding_pairs`.
        """
        if self.use_encoding and (pair_index is None or pair_shift is None):
            raise ValueError(
                "this model has node_encoding='sinc_pairs': pass its encoding pairs (pair_index, pair_shift; "
                "allscaip.neighbors.encoding_pairs, as allscaip.model.compute_properties does)"
            )
        vec = positions[index] - positions.unsqueeze(1) + torch.einsum("ikx,ixy->iky", shift, cell[system])
        e_core = self.core_energy(vec, mask, index, species)
        geometry = self.neighbor_geometry(vec, mask, index)
        nodes, edges = self.embed(species, geometry, charge[system], spin[system])
        num_systems = cell.shape[0]
        # node attention within each system's rows (one system: all rows, no slicing)
        bounds: List[int] = [0, positions.shape[0]]
        if num_systems > 1 and not self.use_distance_bias:
            bounds = system_bounds(system, num_systems)
        pairs: Optional[EncodingPairs] = None
        if self.use_encoding and pair_index is not None and pair_shift is not None:
            pairs = encoding_pair_inputs(
                positions, cell, system, pair_index, pair_shift, bounds, self.encoding_range, self.encoding_freqs
            )
        # The layer loop is written five times: here (whole systems, with the block in
        # AllScAIP.layer), in allscaip_export.dd_reference.staged_energies (the staged dd_* calls, one
        # process), in lammps_plugin/allscaip_staged.cpp, evaluate_staged (the same calls under
        # MPI) and in allscaip_export.dd_vjp_reference (the stages with a manual reverse pass, the
        # specification of a staged .pt2) and in lammps_plugin/allscaip_staged_pt2.cpp (that pass under
        # MPI). A change here goes to all five.
        for i in range(len(self.blocks)):
            if not torch.jit.is_scripting():  # the TorchScript compiler skips this block
                check_choice("block_precision", self.block_precision, BLOCK_PRECISION_CHOICES)
                if self.block_precision == "bfloat16":  # float32 in and out, bfloat16 products inside
                    with bfloat16_products(nodes):
                        nodes, edges = self.layer(
                            i, nodes, edges, geometry, pairs, bounds, positions, cell, pbc, system
                        )
                    nodes, edges = nodes.float(), edges.float()
                    continue
            nodes, edges = self.layer(i, nodes, edges, geometry, pairs, bounds, positions, cell, pbc, system)
        return self.readout_energy(nodes, species) + e_core

    def recomputing(self) -> bool:
        """Is this call under activation checkpointing (``model.recompute = "layers"``, eager
        inference with gradients)? Then each block's local stage runs in slices of ``recompute_rows``
        centres, each keeping only its inputs, and the force backward runs each slice again
        (:func:`allscaip.model.block.recomputed_local`): peak memory falls from all local stages'
        activations to one slice's, for one more forward pass of the local stage. What the rest of a
        block keeps (node attention and feed-forward over [N, hidden]) is small beside it: checkpointing
        whole blocks as well saved 0.05 GiB of 1.4 at 768 atoms, hidden 256, for 23 % more time
        (docs/benchmarks.md). The training double backward and the scripted export keep the stored
        activations (TorchScript never compiles the places that ask)."""
        check_choice("recompute", self.recompute, RECOMPUTE_CHOICES)
        return self.recompute != "none" and not self.training and torch.is_grad_enabled()

    def compiling(self) -> bool:
        """Does this call run the neighbour attention through its compiled core
        (``model.attention_kernel = "compiled"``, eager inference)? Checked against unknown values, and
        never in training: Inductor's backward cannot be differentiated again (the force loss)."""
        check_choice("attention_kernel", self.attention_kernel, ATTENTION_KERNEL_CHOICES)
        return self.attention_kernel == "compiled" and not self.training

    def layer(
        self,
        i: int,
        nodes: torch.Tensor,
        edges: torch.Tensor,
        geometry: NeighborGeometry,
        pairs: Optional[EncodingPairs],
        bounds: List[int],
        positions: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        system: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Block ``i`` of :meth:`forward`: its local stage, then node attention within each system
        (``bounds``) with the encoding's pair bias, the legacy distance bias or none."""
        # TorchScript indexes a ModuleList with literals only: find block i by iterating
        for j, block in enumerate(self.blocks):
            if j == i:
                ran_local = False  # by one of the eager-only paths below
                if not torch.jit.is_scripting():  # the TorchScript compiler skips this block
                    local_inputs = (nodes, edges, geometry.index, geometry.legendre_p, geometry.bias)
                    last = i == len(self.blocks) - 1  # only its centre states are read: see block.local
                    if self.recomputing():
                        nodes, edges = recomputed_local(
                            block, *local_inputs, self.recompute_rows, self.compiling(), last
                        )
                    else:
                        nodes, edges = block.local(*local_inputs, 0, self.compiling(), last)
                    ran_local = True
                if not ran_local:
                    nodes, edges = block.local(nodes, edges, geometry.index, geometry.legendre_p, geometry.bias)
                if not self.node_attention:
                    return block.node_ffn_only(nodes), edges
                q, k, v = block.global_project(nodes)
                if pairs is not None:
                    o = encoded_attention(
                        q,
                        k,
                        v,
                        self.encoding_weights[i],
                        pairs,
                        bounds,
                        self.encoding_path,
                        self.encoding_block_elements,
                    )
                    return block.global_finish_heads(nodes, o), edges
                if self.use_distance_bias:
                    return block.global_finish(
                        nodes, q, k, v, self.distance_attention_bias(i, positions, cell, pbc, system)
                    ), edges
                if self.training and not torch.jit.is_scripting():
                    o = training_content_attention(q, k, v, bounds, self.encoding_path, self.encoding_block_elements)
                    return block.global_finish_heads(nodes, o), edges
                if len(bounds) > 2:
                    return block.global_finish_heads(nodes, per_system_attention(q, k, v, bounds)), edges
                return block.global_finish(nodes, q, k, v, None), edges
        raise RuntimeError("layer index out of range")

    def energy_forces_virial(
        self,
        positions: torch.Tensor,
        species: torch.Tensor,
        system: Optional[torch.Tensor],
        cell: torch.Tensor,
        pbc: torch.Tensor,
        index: torch.Tensor,
        shift: torch.Tensor,
        mask: torch.Tensor,
        charge: torch.Tensor,
        spin: torch.Tensor,
        forces: bool = True,
        virial: bool = True,
        create_graph: bool = False,
        pair_index: Optional[torch.Tensor] = None,
        pair_shift: Optional[torch.Tensor] = None,
    ) -> WholeSystemOutput:
        """Energy, forces and virial of whole systems: the one evaluation behind the eager model
        (:func:`allscaip.model.compute_properties`), the TorchScript export and the AOTInductor
        export. Inputs as :meth:`forward`, except ``system``: None for one system (the exported
        call), whose sums and strain are then plain reductions and matrix products, with no
        gather or scatter in the graph (an AOTInductor scatter-add may sum in a thread-dependent
        order). ``pair_index``/``pair_shift``: the node encoding's pairs (see :meth:`forward`); the
        strain reaches them through the strained positions and cell, as it reaches the local graph.

        Forces are ``-dE/dx``; the virial is ``-dE/de`` for a homogeneous strain ``e`` of each
        system (:func:`apply_strain`), so stress = -virial / volume. ``create_graph`` keeps the
        graph of every output (training: a loss on forces); otherwise energies come back detached.
        Grad mode must be on (TorchScript has no ``enable_grad`` context, so callers see to it).
        """
        if not torch.jit.is_scripting():  # the TorchScript compiler skips this block
            if create_graph and self.compiling():
                raise ValueError(
                    "create_graph=True (a loss on forces, or second derivatives) needs the eager neighbour "
                    "attention: Inductor's backward of attention_kernel='compiled' cannot be differentiated "
                    "again; set model.attention_kernel = 'eager', or call model.train()"
                )
        num_systems = cell.shape[0]
        if system is None:
            atom_system = torch.zeros((positions.shape[0],), dtype=torch.long, device=positions.device)
        else:
            atom_system = system
        grad_inputs: List[torch.Tensor] = []
        if forces:
            positions = positions.detach().requires_grad_(True)
            grad_inputs.append(positions)
        strained_positions, strained_cell = positions, cell
        if virial:
            strain = torch.zeros_like(cell).requires_grad_(True)
            grad_inputs.append(strain)
            strained_positions, strained_cell = apply_strain(positions, cell, system, strain)
        energies = self.forward(
            strained_positions,
            species,
            atom_system,
            strained_cell,
            pbc,
            index,
            shift,
            mask,
            charge,
            spin,
            pair_index,
            pair_shift,
        )
        energy = per_system_sum(energies, system, num_systems)
        forces_out: Optional[torch.Tensor] = None
        virial_out: Optional[torch.Tensor] = None
        if len(grad_inputs) > 0:
            grads = torch.autograd.grad([energy.sum()], grad_inputs, create_graph=create_graph)
            if forces:
                g_pos = grads[0]
                forces_out = -g_pos if g_pos is not None else torch.zeros_like(positions)
            if virial:
                g_strain = grads[len(grad_inputs) - 1]
                virial_out = -g_strain if g_strain is not None else torch.zeros_like(cell)
        if not create_graph:
            energy, energies = energy.detach(), energies.detach()
        return WholeSystemOutput(energy, energies, forces_out, virial_out)
