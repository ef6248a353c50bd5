"""TorchScript export of a converted fairchem AllScAIP (allscaip.model.fairchem_allscaip): the
whole-system call of every allscaip export, so that the ASE calculator and the OpenMM plugin load it
like our own exports (docs/fairchem.md).

The module takes the usual eight inputs; the neighbour list (metadata ``cutoff``) must reach the
model's ``pair_cutoff`` (fairchem's cutoff plus the soft rank's reach, 6.8 Å for the published
models), from which it builds fairchem's soft-kNN graph (allscaip.model.fairchem_graph). Its
domain-decomposition stages are the submodule ``stages``
(:class:`allscaip.model.fairchem_staged.FairchemStages`: fairchem's destination attention moves edge
tokens between ranks, so they are not our models' ``dd_*`` interface; executable specification
:mod:`allscaip_export.fairchem_dd_reference`); the metadata's ``staged_interface: "fairchem"`` tells
the LAMMPS plugin to run them, on any number of MPI ranks. Conserving models only: a direct-force model has no virial for the
whole-system call to return.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from ase.data import chemical_symbols
from torch import nn

import allscaip
from allscaip.model import frozen
from allscaip.model.fairchem_allscaip import FairchemAllScAIP
from allscaip.model.fairchem_staged import FairchemStages
from allscaip.result_checks import DEFAULT_MIN_DISTANCE
from allscaip_export.metadata import INTERFACE_VERSION, WHOLE_SYSTEM_INPUTS, WHOLE_SYSTEM_OUTPUTS, dumps

NO_STAGES = (
    "a converted fairchem AllScAIP has not our models' staged (dd_*) interface: its destination attention moves "
    "edge tokens between ranks (its stages are the submodule 'stages'); run it on one process (LAMMPS: one MPI rank)"
)
PAIRS_NOTE = (
    "edge_index/cell_shifts: the full neighbour list within 'cutoff', which is fairchem's cutoff plus the soft "
    "rank's reach (fairchem_cutoff + 4 * knn_sigmoid_scale); the model builds fairchem's soft-kNN graph from it"
)


def staged(model: FairchemAllScAIP) -> bool:
    """Whether the staged (multi-rank) evaluation supports ``model``: md, i.e. no frequency or sinc mask."""
    return len(model.frequency_list) == 0 and model.sinc_frequencies == 0


class ExportedFairchemAllScAIP(nn.Module):
    """Engine-facing whole-system wrapper of a conserving :class:`FairchemAllScAIP` (TorchScript)."""

    def __init__(self, model: FairchemAllScAIP, metadata_json: str) -> None:
        super().__init__()
        if model.direct_forces:
            raise ValueError(
                "a direct-force fairchem model has no virial, which the whole-system call returns; "
                "export the conserving checkpoint, or use the direct one through AllScAIPCalculator"
            )
        self.model = model
        #: the staged (domain-decomposition) evaluation, sharing the model's weights (docs/fairchem.md,
        #: *Multi-rank evaluation*; specification: allscaip_export.fairchem_dd_reference)
        #: None for sm models (frequency or sinc mask): one process only
        self.stages = FairchemStages(model) if staged(model) else None
        self.metadata_json: str = metadata_json
        self.no_stages: str = NO_STAGES
        # the attributes engines check against the metadata (lammps_plugin/allscaip_model.cpp)
        self.cutoff: float = float(model.pair_cutoff)
        self.interface_version: int = INTERFACE_VERSION
        self.num_layers: int = int(model.settings.layers)
        self.hidden: int = int(model.settings.hidden)
        self.node_attention: bool = bool(model.settings.use_node_path)
        self.atomic_numbers: List[int] = model.known_elements()

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
        """Whole system -> (energy [], forces [N,3], virial [3,3], energies [N]) in the model's dtype.
        Callers must not run this under ``no_grad`` (forces and virial are autograd derivatives)."""
        out = self.model.evaluate(
            positions, numbers, cell, pbc, int(charge.item()), int(spin.item()), True, edge_index, cell_shifts
        )
        virial = out.virial
        assert virial is not None  # asked for (TorchScript type refinement)
        dtype = positions.dtype
        energy, energies = out.energy.detach().to(dtype), out.energies.detach().to(dtype)
        return energy, out.forces.detach().to(dtype), virial.detach().to(dtype), energies

    # Our models' staged methods exist so that engines which look them up at load time (the LAMMPS
    # plugin) accept the file; its metadata says staged_interface: "fairchem", so they call the
    # submodule 'stages' instead and never these.
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
        raise RuntimeError(self.no_stages)

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
        raise RuntimeError(self.no_stages)

    @torch.jit.export
    def dd_global_project(self, layer: int, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise RuntimeError(self.no_stages)

    @torch.jit.export
    def dd_global_finish(
        self, layer: int, h: torch.Tensor, q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor
    ) -> torch.Tensor:
        raise RuntimeError(self.no_stages)

    @torch.jit.export
    def dd_readout(self, h: torch.Tensor, numbers_c: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(self.no_stages)


def fairchem_metadata(
    model: FairchemAllScAIP, dtype: str, device: str, source_sha256: str, backbone: Dict[str, Any], task: str
) -> Dict[str, Any]:
    """``metadata.json`` of an exported fairchem model (the keys engines read, as for our exports)."""
    s = model.settings
    numbers = model.known_elements()
    return {
        "allscaip_version": allscaip.__version__,
        "interface_version": INTERFACE_VERSION,
        "format": "torchscript",
        "source_family": "fairchem AllScAIP (fairchem-core 2.24)",
        "fairchem_task": task,
        "fairchem_backbone": backbone,
        "elements": [chemical_symbols[z] for z in numbers],
        "atomic_numbers": numbers,
        "cutoff": float(model.pair_cutoff),
        "fairchem_cutoff": float(s.cutoff),
        "ghost_cutoff": float(model.pair_cutoff),
        "node_encoding": "none",
        "encoding_range": 0.0,
        "num_layers": int(s.layers),
        "hidden": int(s.hidden),
        "heads": int(s.heads),
        "node_attention": bool(s.use_node_path),
        "distance_bias": False,
        "max_neighbors": int(s.knn_k),
        "charge_spin": True,
        "core_radius": {},
        "min_distance": DEFAULT_MIN_DISTANCE,
        # md models: engines run the submodule 'stages', not the dd_* methods
        # (lammps_plugin/allscaip_fairchem_staged.cpp); sm models: one process only
        "supports_domain_decomposition": staged(model),
        "staged_interface": "fairchem",
        "units": {"length": "angstrom", "energy": "eV", "forces": "eV/angstrom", "virial": "eV"},
        "dtype": dtype,
        "device": device,
        "source_checkpoint_sha256": source_sha256,
        "model_config": dataclasses.asdict(s) if dataclasses.is_dataclass(s) else s._asdict(),
        "inputs": WHOLE_SYSTEM_INPUTS,
        "inputs_note": PAIRS_NOTE,
        "outputs": WHOLE_SYSTEM_OUTPUTS,
    }


def export_fairchem_torchscript(model: FairchemAllScAIP, path: str | Path, metadata: Dict[str, Any]) -> Path:
    """Script and save the whole-system wrapper of ``model`` with ``metadata.json`` inside; its weights
    ask for no gradients (a frozen copy, as :func:`allscaip_export.torchscript.export_torchscript`)."""
    path = Path(path)
    meta = dumps(metadata)
    scripted = torch.jit.script(ExportedFairchemAllScAIP(frozen(copy.deepcopy(model)), meta))
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={"metadata.json": meta})
    tmp.replace(path)
    return path
