"""Energy, conservative forces, stress and per-atom energies of a batch."""

from __future__ import annotations

from typing import Dict

import torch

from allscaip.data.batch import AtomsBatch
from allscaip.model.allscaip import AllScAIP
from allscaip.neighbors import batch_neighbor_pairs, pad_neighbors


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
        from ase.data import chemical_symbols

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
    """
    species = species_or_raise(model, batch.numbers)
    _check_charge_spin(model, batch)
    n = batch.positions.shape[0]
    center, neighbor, shift = batch_neighbor_pairs(batch, model.cutoff)
    dtype = batch.positions.dtype
    index, pshift, mask = pad_neighbors(center, neighbor, shift.to(dtype), n)

    positions = batch.positions
    cell = batch.cell
    inputs = []
    if forces:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    pos, cel = positions, cell
    if stress:
        strain = torch.zeros_like(cell).requires_grad_(True)
        inputs.append(strain)
        pos = positions + torch.einsum("nx,nxy->ny", positions, strain[batch.system])
        cel = cell + torch.bmm(cell, strain)
    with torch.set_grad_enabled(training or forces or stress):
        e_atom = model(pos, species, batch.system, cel, batch.pbc, index, pshift, mask, batch.charge, batch.spin)
    energy = torch.zeros(batch.num_systems, dtype=e_atom.dtype, device=e_atom.device).index_add(0, batch.system, e_atom)
    out: Dict[str, torch.Tensor] = {"energy": energy, "energies": e_atom}
    if inputs:
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training)
        if forces:
            out["forces"] = -grads[0]
        if stress:
            volume = torch.linalg.det(cell).abs()
            periodic = batch.pbc.all(dim=1)
            s = grads[-1] / volume.clamp_min(1e-12).view(-1, 1, 1)
            out["stress"] = torch.where(periodic.view(-1, 1, 1), s, torch.full_like(s, float("nan")))
    if not training:
        out = {k: v.detach() for k, v in out.items()}
    return out


def _check_charge_spin(model: AllScAIP, batch: AtomsBatch) -> None:
    if not model.use_charge_spin:
        return
    q, s = batch.charge, batch.spin
    if bool((q.abs() > model.max_charge).any()):
        raise ValueError(f"total charge {q.tolist()} outside the model's range ±{model.max_charge}")
    if bool(((s < 0) | (s > model.max_spin)).any()):
        raise ValueError(f"spin multiplicity {s.tolist()} outside the model's range 0..{model.max_spin}")
