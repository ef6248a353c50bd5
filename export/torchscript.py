"""TorchScript export: a scripted wrapper with a whole-system call and the staged
(domain-decomposition) methods used by the LAMMPS plugin under MPI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from allscaip.model import AllScAIP, frozen
from allscaip.model.pair_bias_first_order import first_order_pair_bias
from allscaip.neighbors import pad_neighbors
from allscaip_export.metadata import dumps, interface_version


class ExportedAllScAIP(nn.Module):
    """Engine-facing wrapper around :class:`AllScAIP` (TorchScript-compatible).

    ``forward`` is the whole-system call (see ``metadata.json`` for the layout). The ``dd_*``
    methods are the stages of one evaluation on a domain-decomposed rank: centres are the
    rank's owned atoms (first ``Nc`` rows of every all-atom array), neighbours may be ghosts.
    A model with a node encoding (``encoding_range`` > 0) adds ``dd_encoding_basis`` and
    ``dd_global_finish_encoded``, which replace ``dd_global_finish``.
    """

    def __init__(self, model: AllScAIP, metadata_json: str) -> None:
        super().__init__()
        self.model = model
        self.cutoff: float = float(model.cutoff)
        self.num_layers: int = int(model.num_layers)
        self.hidden: int = int(model.hidden)
        self.node_attention: bool = bool(model.node_attention)
        self.interface_version: int = interface_version(model)
        # 0 without a node encoding; otherwise its range (Å): the pairs it needs, and the ghost atoms
        self.encoding_range: float = float(model.encoding_range) if model.use_encoding else 0.0
        self.atomic_numbers: List[int] = [int(z) for z in model.cfg.elements]
        self.metadata_json: str = metadata_json

    @torch.jit.export
    def metadata(self) -> str:
        return self.metadata_json

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        cell_shifts: torch.Tensor,
        charge: torch.Tensor,
        spin: torch.Tensor,
        encoding_index: Optional[torch.Tensor] = None,
        encoding_shifts: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole system -> (energy [], forces [N,3], virial [3,3], energies [N]).

        ``encoding_index`` [2, P] / ``encoding_shifts`` [P, 3]: the pairs (i, j, S) within
        ``encoding_range`` without the self pairs of zero shift, in the layout of ``edge_index`` /
        ``cell_shifts`` (:func:`allscaip.neighbors.whole_system_inputs` with ``encoding_range``);
        needed by a model with a node encoding only, ignored otherwise. Its node attention runs
        dense here: memory O(heads N^2) per layer.
        Callers must not run this under ``no_grad`` (TorchScript has no ``enable_grad`` context)."""
        n = positions.shape[0]
        species = self.model.species_of(numbers)
        if bool((species < 0).any()):
            raise RuntimeError("allscaip: an atomic number is not in this model's elements (see metadata)")
        index, shift, mask = pad_neighbors(edge_index[0], edge_index[1], cell_shifts.to(positions.dtype), n)
        pair_shift: Optional[torch.Tensor] = None
        if encoding_shifts is not None:
            pair_shift = encoding_shifts.to(positions.dtype)
        out = self.model.energy_forces_virial(
            positions,
            species,
            None,  # one system
            cell.unsqueeze(0),
            pbc.unsqueeze(0),
            index,
            shift,
            mask,
            charge.reshape(1).to(torch.long),
            spin.reshape(1).to(torch.long),
            pair_index=encoding_index,
            pair_shift=pair_shift,
        )
        forces = out.forces
        virial = out.virial
        assert forces is not None and virial is not None  # both asked for (TorchScript type refinement)
        return out.energy[0], forces, virial[0], out.energies

    # ---------------------------------------------------------------- staged (MPI) interface
    @torch.jit.export
    def dd_prepare(
        self,
        vec: torch.Tensor,
        mask: torch.Tensor,
        index: torch.Tensor,
        numbers_all: torch.Tensor,
        charge: int,
        spin: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Geometry + embedding for the centres of one rank.

        vec [Nc,K,3] edge vectors (differentiable), mask [Nc,K], index [Nc,K] into all atoms,
        numbers_all [Na] atomic numbers of all atoms (centres first).
        Returns (index, bias, legendre_p, h_c [Nc,H], edges [E,H] (flat, opaque to engines)).
        """
        species_all = self.model.species_of(numbers_all)
        geometry = self.model.neighbor_geometry(vec, mask, index)
        nc = index.shape[0]
        charge_c = torch.full((nc,), charge, dtype=torch.long, device=vec.device)
        spin_c = torch.full((nc,), spin, dtype=torch.long, device=vec.device)
        h, edges = self.model.embed(species_all, geometry, charge_c, spin_c)
        return geometry.index, geometry.bias, geometry.legendre_p, h, edges

    @torch.jit.export
    def dd_local(
        self,
        layer: int,
        h_all: torch.Tensor,
        edges: torch.Tensor,
        index: torch.Tensor,
        legendre_p: torch.Tensor,
        bias: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Local (neighbour) stage of ``layer``; h_all holds fresh ghost node states."""
        return self.model.local_stage(layer, h_all, edges, index, legendre_p, bias)

    @torch.jit.export
    def dd_global_project(self, layer: int, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values [heads, Nc, d] of the owned atoms for node attention."""
        return self.model.global_project(layer, h)

    @torch.jit.export
    def dd_global_finish(
        self, layer: int, h: torch.Tensor, q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor
    ) -> torch.Tensor:
        """Node attention of owned queries over keys/values gathered from every rank, then FFN."""
        return self.model.global_finish(layer, h, q, k_all, v_all, None)

    @torch.jit.export
    def dd_encoding_basis(self, pair_vec: torch.Tensor) -> torch.Tensor:
        """Node encoding: basis [P, F] of the pair vectors ``pair_vec`` [P, 3] (differentiable,
        ``x_j - x_i`` for each owned atom i and every atom j, owned or ghost, within
        ``encoding_range``, self pairs of zero shift left out); computed once per evaluation."""
        return self.model.encoding_basis(pair_vec)

    @torch.jit.export
    def dd_global_finish_encoded(
        self,
        layer: int,
        h: torch.Tensor,
        q: torch.Tensor,
        k_all: torch.Tensor,
        v_all: torch.Tensor,
        basis: torch.Tensor,
        pair_row: torch.Tensor,
        pair_col: torch.Tensor,
    ) -> torch.Tensor:
        """``dd_global_finish`` of a model with a node encoding: owned queries over the gathered
        keys/values with the pair bias of ``basis`` between owned atom ``pair_row`` [P] and gathered
        row ``pair_col`` [P] (the row of atom j's owner in k_all/v_all). Logits [heads, Nc, N]."""
        return self.model.global_finish_encoded(layer, h, q, k_all, v_all, basis, pair_row, pair_col)

    @torch.jit.export
    def dd_encoding_pair_bias(self, layer: int, pair_vec: torch.Tensor) -> torch.Tensor:
        """Node encoding of block ``layer``: the pair bias [P, heads] of the pair vectors
        ``pair_vec`` [P, 3] (as for ``dd_encoding_basis``), to be added to the logits between owned
        atom ``pair_row`` and gathered row ``pair_col``; exact in value and first derivative, with
        O(P·heads) memory (:mod:`allscaip.model.pair_bias_first_order`; no double backward). With
        ``dd_global_finish_heads`` it lets an engine run the encoded attention itself in query
        blocks with a recomputing backward (memory linear in atoms; the plugin does), instead of
        ``dd_encoding_basis`` + ``dd_global_finish_encoded``'s whole logits."""
        return first_order_pair_bias(
            pair_vec, self.model.encoding_weights[layer], self.model.encoding_range, self.model.encoding_freqs
        )

    @torch.jit.export
    def dd_global_finish_heads(self, layer: int, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The rest of block ``layer`` after node attention computed by the engine: residual update
        of ``h`` [Nc, H] from the attention outputs ``o`` [heads, Nc, d], then node FFN."""
        return self.model.global_finish_heads(layer, h, o)

    @torch.jit.export
    def dd_core(
        self, vec: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, numbers_all: torch.Tensor
    ) -> torch.Tensor:
        """Core-repulsion energies (eV) [Nc] of the owned atoms from the same ``vec``/``mask``/``index``
        as ``dd_prepare`` (half of each pair per row, so ranks add up to the whole system).
        Optional for engines: exports made before it have no core repulsion."""
        return self.model.core_energy(vec, mask, index, self.model.species_of(numbers_all))

    @torch.jit.export
    def dd_readout(self, h: torch.Tensor, numbers_c: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (eV) of the owned atoms."""
        return self.model.readout_energy(h, self.model.species_of(numbers_c))


def export_torchscript(model: AllScAIP, path: str | Path, metadata: Dict[str, Any]) -> Path:
    """Script and save ``model`` with ``metadata.json`` as an extra file. The saved weights ask for
    no gradients (:func:`allscaip.model.frozen`, on a copy: the caller's model is left as it was),
    so an engine's force backward keeps no activations for them."""
    path = Path(path)
    meta = dumps(metadata)
    scripted = torch.jit.script(ExportedAllScAIP(frozen(copy.deepcopy(model)), meta))
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={"metadata.json": meta})
    tmp.replace(path)
    return path


def load_torchscript(path: str | Path, device: str = "cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """Load an exported ``.pt`` and its metadata."""
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    if not extra["metadata.json"]:
        raise ValueError(f"{path} is a TorchScript file but not an allscaip export (no metadata.json inside)")
    return module, json.loads(extra["metadata.json"])
