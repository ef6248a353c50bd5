"""Energy, conservative forces, stress and per-atom energies of a batch (the eager model)."""

from __future__ import annotations

from typing import Dict, Optional, TypeVar

import torch
from ase.data import chemical_symbols
from torch import nn

from allscaip.data.batch import AtomsBatch
from allscaip.model.allscaip import AllScAIP
from allscaip.model.fairchem_allscaip import FairchemAllScAIP
from allscaip.model.fairchem_batch import fairchem_batch_properties
from allscaip.neighbors import batch_neighbor_pairs, encoding_pairs, pad_neighbors

MIN_VOLUME_A3 = 1e-12
"""Volumes are clamped to this before dividing, so a non-periodic system (zero cell) gives a
finite number, which is then replaced by NaN."""


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen(model: ModuleT) -> ModuleT:
    """``model`` made ready for inference, in place: evaluation mode and no gradients for its weights.
    Forces and stress differentiate the positions and the strain only. While the weights ask for
    gradients, autograd keeps every linear layer's input for a weight gradient that nobody reads:
    at 768 atoms (hidden 256, 4 layers) that was a fifth of the peak memory of a force call
    (docs/benchmarks.md). The calculator (hence OpenMM) and the exports use it, and the LAMMPS plugin
    freezes what it loads in the same way; training never does."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class UnknownElementError(ValueError):
    """A structure contains an element the model was not trained on."""


def species_or_raise(model: AllScAIP, numbers: torch.Tensor) -> torch.Tensor:
    """Model species indices; a clear error naming unknown elements and the model's ones."""
    if int(numbers.min()) < 1 or int(numbers.max()) > 118:
        raise UnknownElementError(
            f"atomic numbers must be in 1..118, got range {int(numbers.min())}..{int(numbers.max())}"
        )
    species = model.species_of(numbers)
    if bool((species < 0).any()):
        bad = sorted({chemical_symbols[int(z)] for z in numbers[species < 0].unique()})
        known = [chemical_symbols[z] for z in model.cfg.elements]
        raise UnknownElementError(
            f"element(s) {bad} are not in this model, which knows {known}; "
            "use a model trained on these elements or remove them from the structure"
        )
    return species


def compute_properties(
    model: AllScAIP,
    batch: AtomsBatch,
    forces: bool = True,
    stress: bool = False,
    training: bool = False,
) -> Dict[str, torch.Tensor]:
    """Evaluate a batch.

    Returns ``energy`` [B] (eV), ``energies`` [N] per-atom (eV), and when asked ``forces``
    [N,3] (eV/Å, = -dE/dx) and ``stress`` [B,3,3] (eV/Å^3, ASE convention (1/V) dE/d strain;
    NaN for non-periodic systems). With ``training`` the graph is kept for a loss on forces.
    A converted fairchem model (:mod:`allscaip.model.fairchem_batch`) always returns forces, and no
    stress when it is a direct-force model.
    """
    if isinstance(model, FairchemAllScAIP):
        return fairchem_batch_properties(model, batch, stress=stress, training=training)
    species = species_or_raise(model, batch.numbers)
    _check_charge_spin(model, batch)
    n = batch.positions.shape[0]
    center, neighbor, shift = batch_neighbor_pairs(batch, model.cutoff)
    index, pshift, mask = pad_neighbors(center, neighbor, shift.to(batch.positions.dtype), n)
    pair_index: Optional[torch.Tensor] = None
    pair_shift: Optional[torch.Tensor] = None
    if model.use_encoding:
        pair_index, pair_shift = encoding_pairs(batch, model.encoding_range)
    with torch.set_grad_enabled(training or forces or stress):
        result = model.energy_forces_virial(
            batch.positions,
            species,
            batch.system,
            batch.cell,
            batch.pbc,
            index,
            pshift,
            mask,
            batch.charge,
            batch.spin,
            forces=forces,
            virial=stress,
            create_graph=training,
            pair_index=pair_index,
            pair_shift=pair_shift,
        )
    out: Dict[str, torch.Tensor] = {"energy": result.energy, "energies": result.energies}
    if result.forces is not None:
        out["forces"] = result.forces
    if result.virial is not None:
        volume = torch.linalg.det(batch.cell).abs()
        periodic = batch.pbc.all(dim=1)
        s = -result.virial / volume.clamp_min(MIN_VOLUME_A3).view(-1, 1, 1)
        out["stress"] = torch.where(periodic.view(-1, 1, 1), s, torch.full_like(s, float("nan")))
    return out


def _check_charge_spin(model: AllScAIP, batch: AtomsBatch) -> None:
    if not model.use_charge_spin:
        return
    q, s = batch.charge, batch.spin
    if bool((q.abs() > model.max_charge).any()):
        raise ValueError(f"total charge {q.tolist()} outside the model's range ±{model.max_charge}")
    if bool(((s < 0) | (s > model.max_spin)).any()):
        raise ValueError(f"spin multiplicity {s.tolist()} outside the model's range 0..{model.max_spin}")
