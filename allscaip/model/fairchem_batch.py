"""A batch of systems through a converted fairchem AllScAIP, in the shape of our ``compute_properties``.

:class:`~allscaip.model.fairchem_allscaip.FairchemAllScAIP` evaluates one system with one total
charge and spin multiplicity (fairchem's charge/spin embedding is per system), so the batch is
evaluated system by system and concatenated. The energy is the total energy fairchem reports
(network times the normaliser plus the task's element references), so the trainer's loss and the
validation compare it with the labels as they do for our models. Charge and spin come from the
batch (``atoms.info['charge']`` / ``['spin']``, defaults 0 and 1: fairchem's omol defaults).
"""

from __future__ import annotations

from typing import Dict, List

import torch

from allscaip.data.batch import AtomsBatch
from allscaip.model.fairchem_allscaip import FairchemAllScAIP


def fairchem_batch_properties(
    model: FairchemAllScAIP, batch: AtomsBatch, stress: bool = False, training: bool = False
) -> Dict[str, torch.Tensor]:
    """``energy`` [B] and ``energies`` [N] (eV), ``forces`` [N, 3] (eV/Å) and, when asked and the model
    is conserving, ``stress`` [B, 3, 3] (eV/Å³, NaN for systems not periodic in all directions).
    A direct-force model has no stress: the key is then absent. With ``training`` (and the model in
    train mode) the graph is kept for a loss on forces and stress."""
    if training and not model.training:
        raise ValueError("training=True needs the fairchem model in train mode (model.train())")
    with_stress = stress and not model.direct_forces
    energy: List[torch.Tensor] = []
    energies: List[torch.Tensor] = []
    forces: List[torch.Tensor] = []
    stresses: List[torch.Tensor] = []
    start = 0
    for k, n in enumerate(batch.natoms.tolist()):
        atoms = slice(start, start + n)
        start += n
        periodic = bool(batch.pbc[k].all())
        with torch.set_grad_enabled(training or torch.is_grad_enabled()):
            out = model(
                batch.positions[atoms],
                batch.numbers[atoms],
                batch.cell[k],
                batch.pbc[k],
                charge=int(batch.charge[k]),
                spin=int(batch.spin[k]),
                compute_stress=with_stress and periodic,
            )
        energy.append(out.energy)
        energies.append(out.energies)
        forces.append(out.forces)
        if with_stress:
            nan = torch.full((3, 3), float("nan"), dtype=out.forces.dtype, device=out.forces.device)
            stresses.append(out.stress if out.stress is not None else nan)
    result = {"energy": torch.stack(energy), "energies": torch.cat(energies), "forces": torch.cat(forces)}
    if with_stress:
        result["stress"] = torch.stack(stresses)
    return result
