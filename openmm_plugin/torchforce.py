"""TorchScript modules for openmm-torch's ``TorchForce``.

openmm-torch's contract (its Reference/CPU/CUDA kernels): the module is called as
``forward(positions, boxvectors)`` with ``positions`` [N,3] in nm for *every* particle of the
System, in the platform's precision (float64 on Reference/CPU, float32 on CUDA/OpenCL in
single or mixed precision), and ``boxvectors`` [3,3] in nm (rows a, b, c) only when the
force is periodic. It returns the energy in kJ/mol as a scalar tensor (read with
``item<double>()``) and, with ``TorchForce.setOutputsForces(True)``, also forces [N,3] in
kJ/mol/nm (converted to the platform's precision by the kernel). Without
``setOutputsForces`` the kernel back-propagates the energy to ``positions``.

The modules written here hold everything they need: the allscaip model (TorchScript), the
atomic numbers of the ML atoms and their indices in the System, total charge and spin
multiplicity, and a neighbour-pair search written in TorchScript (:func:`neighbor_pairs`),
so they run without Python (C++ OpenMM, openmm-torch, any TorchScript host).

The neighbour search computes all pair distances for every lattice-image shift it needs
(O(N^2) per shift, 27 shifts for boxes wider than twice the cutoff, more for smaller ones).
It is exact and handles any triclinic box, but it is meant for systems up to a few thousand
atoms; for larger systems use the PythonForce implementation (vesin cell lists, O(N)).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from allscaip.result_checks import DEFAULT_MIN_DISTANCE, min_distance_of_model
from allscaip_export.metadata import dumps
from allscaip_export.torchscript import load_torchscript
from allscaip_openmm.forces import (
    ANGSTROM_PER_NM,
    EV_TO_KJ_PER_MOL,
    check_charge_spin,
    check_elements,
    load_model,
    topology_atomic_numbers,
)

TORCHFORCE_FORMAT_VERSION = 1


def neighbor_pairs(positions: Tensor, cell: Tensor, periodic: bool, cutoff: float) -> Tuple[Tensor, Tensor]:
    """Full neighbour list in TorchScript: ``(edge_index [2,E], cell_shifts [E,3])``.

    Same convention as :func:`allscaip.neighbors.system_neighbor_pairs`: an edge ``(i, j, S)``
    has ``r_ij = x_j - x_i + S @ cell`` with ``|r_ij| < cutoff``; both directions are listed,
    and periodic self-images are included when the cutoff exceeds the box. ``cell`` rows are
    the lattice vectors (any non-degenerate triclinic cell; positions need not be wrapped).
    Shifts are returned in ``positions``' dtype. Call it under ``torch.no_grad()`` (as the
    modules here do) when ``positions`` requires grad.
    """
    dev = positions.device
    dt = positions.dtype
    if not periodic:
        d = torch.cdist(positions, positions, compute_mode="donot_use_mm_for_euclid_dist")
        mask = d < cutoff
        mask.fill_diagonal_(False)
        pairs = mask.nonzero()
        return pairs.t().contiguous(), torch.zeros((pairs.shape[0], 3), dtype=dt, device=dev)
    frac = torch.matmul(positions, torch.linalg.inv(cell))
    wrap = torch.floor(frac)
    wrapped = torch.matmul(frac - wrap, cell)
    # distance between lattice planes along each reciprocal direction
    normals = torch.stack(
        [
            torch.linalg.cross(cell[1], cell[2]),
            torch.linalg.cross(cell[2], cell[0]),
            torch.linalg.cross(cell[0], cell[1]),
        ]
    )
    spacing = torch.abs(torch.linalg.det(cell)) / torch.linalg.norm(normals, dim=1)
    # wrapped fractional differences lie in (-1, 1): |S_k| <= ceil(cutoff / spacing_k) suffices
    nmax = torch.ceil(spacing.reciprocal() * cutoff).to(torch.long)
    n0, n1, n2 = int(nmax[0]), int(nmax[1]), int(nmax[2])
    m1, m2 = 2 * n1 + 1, 2 * n2 + 1
    k = torch.arange((2 * n0 + 1) * m1 * m2, device=dev)
    shifts = torch.stack([k // (m1 * m2) - n0, (k // m2) % m1 - n1, k % m2 - n2], dim=1).to(dt)
    disp = torch.matmul(shifts, cell)
    centers: List[Tensor] = []
    neighbors: List[Tensor] = []
    image: List[Tensor] = []
    for s in range(shifts.shape[0]):
        # d[i, j] = |wrapped_j + disp_s - wrapped_i|
        d = torch.cdist(wrapped, wrapped + disp[s], compute_mode="donot_use_mm_for_euclid_dist")
        mask = d < cutoff
        if bool((shifts[s] == 0).all()):
            mask.fill_diagonal_(False)
        pairs = mask.nonzero()
        centers.append(pairs[:, 0])
        neighbors.append(pairs[:, 1])
        image.append(shifts[s].unsqueeze(0).expand(pairs.shape[0], 3))
    i = torch.cat(centers)
    j = torch.cat(neighbors)
    # back to the caller's (unwrapped) positions: x = wrapped + wrap @ cell
    cell_shifts = torch.cat(image) - wrap[j] + wrap[i]
    return torch.stack([i, j]), cell_shifts


class _AllScAIPTorchForceBase(nn.Module):
    """Shared set-up and evaluation; subclasses fix the return type of ``forward``."""

    def __init__(
        self,
        model: nn.Module,
        atomic_numbers: Sequence[int],
        indices: Optional[Sequence[int]],
        n_particles: int,
        periodic: bool,
        charge: int,
        spin: int,
        cutoff: float,
        dtype: torch.dtype,
        encoding_range: float = 0.0,
        min_distance: float = 0.0,
    ) -> None:
        super().__init__()
        # two ML atoms closer than this (Å) raise an error naming them (0: no check)
        self.min_distance: float = float(min_distance)
        self.model = model
        self.periodic: bool = bool(periodic)
        self.cutoff: float = float(cutoff)
        # a node-encoding model (metadata encoding_range > 0) also takes its pairs within this range
        self.encoding_range: float = float(encoding_range)
        self.n_particles: int = int(n_particles)
        self.subset: bool = indices is not None
        self.ev_to_kj_per_mol: float = float(EV_TO_KJ_PER_MOL)
        self.angstrom_per_nm: float = float(ANGSTROM_PER_NM)
        idx = list(range(n_particles)) if indices is None else [int(i) for i in indices]
        self.register_buffer("numbers", torch.tensor([int(z) for z in atomic_numbers], dtype=torch.long))
        self.register_buffer("indices", torch.tensor(idx, dtype=torch.long))
        self.register_buffer("pbc", torch.tensor([self.periodic] * 3, dtype=torch.bool))
        self.register_buffer("charge", torch.tensor(int(charge), dtype=torch.long))
        self.register_buffer("spin", torch.tensor(int(spin), dtype=torch.long))
        # carries the model's dtype (TorchScript reads it as .dtype)
        self.register_buffer("dtype_ref", torch.zeros((0,), dtype=dtype))

    def _evaluate(self, positions: Tensor, boxvectors: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(energy eV, forces eV/Å on the ML atoms, their positions in Å (differentiable with
        respect to ``positions``), a constant copy of those positions).

        Written to survive ``torch.jit.freeze`` (openmm-torch's Reference/CPU kernels freeze the
        module), which deletes ``detach()`` calls: values that must not carry autograd history
        are made under ``torch.no_grad()`` instead.
        """
        if positions.shape[0] != self.n_particles:
            raise RuntimeError("allscaip TorchForce: wrong number of positions for this module")
        dt = self.dtype_ref.dtype
        x = positions.to(dt) * self.angstrom_per_nm
        if self.subset:
            x = x.index_select(0, self.indices)
        with torch.no_grad():
            if self.periodic:
                if boxvectors is None:
                    raise RuntimeError("allscaip TorchForce: periodic module called without box vectors")
                cell = boxvectors.to(dt) * self.angstrom_per_nm
            else:
                cell = torch.zeros((3, 3), dtype=dt, device=positions.device)
            edge_index, shifts = neighbor_pairs(x, cell, self.periodic, self.cutoff)
            if self.min_distance > 0.0:
                self._check_min_distance(x, cell, edge_index, shifts)
            x_model = x.clone()  # the model differentiates with respect to its own copy
            x_const = x.clone()
        if self.encoding_range > 0.0:
            with torch.no_grad():  # neighbor_pairs leaves out the self pairs of zero shift already
                pair_index, pair_shifts = neighbor_pairs(x, cell, self.periodic, self.encoding_range)
            energy, forces, _virial, _energies = self.model(
                x_model,
                self.numbers,
                cell,
                self.pbc,
                edge_index,
                shifts,
                self.charge,
                self.spin,
                pair_index,
                pair_shifts,
            )
        else:  # the eight-input call of every export (also those made before the node encoding)
            energy, forces, _virial, _energies = self.model(
                x_model, self.numbers, cell, self.pbc, edge_index, shifts, self.charge, self.spin
            )
        with torch.no_grad():
            energy = energy.clone()
            forces = forces.clone()
            if not bool(torch.isfinite(energy + forces.sum())):  # one reduction; NaN/Inf anywhere
                self._stop_non_finite(forces)
        return energy, forces, x, x_const

    def _check_min_distance(self, x: Tensor, cell: Tensor, edge_index: Tensor, shifts: Tensor) -> None:
        """Raise naming the closest pair of ML atoms when it is closer than ``min_distance``."""
        if edge_index.shape[1] == 0:
            return
        d = torch.linalg.norm(x[edge_index[1]] - x[edge_index[0]] + shifts @ cell, dim=1)
        k = int(torch.argmin(d))
        if float(d[k]) < self.min_distance:
            a = int(self.indices[edge_index[0, k]])
            b = int(self.indices[edge_index[1, k]])
            raise RuntimeError(
                "allscaip TorchForce: particles {} and {} are {} A apart, closer than min_distance {} A (a "
                "fraction of the shortest contact in the model's training data). Check the structure for "
                "duplicated or overlapping atoms; in MD, reduce the timestep. To go on anyway: "
                "createSystem(..., min_distance=0)".format(min(a, b), max(a, b), float(d[k]), self.min_distance)
            )

    def _stop_non_finite(self, forces: Tensor) -> None:
        bad = torch.logical_not(torch.isfinite(forces).all(dim=1))
        ids: List[int] = self.indices[bad].tolist()
        raise RuntimeError(
            "allscaip TorchForce: the model gave non-finite (NaN or Inf) energy or forces for particles {}. "
            "These atoms are usually overlapping or far outside the model's training data: check the "
            "structure near them, or in MD reduce the timestep".format(ids[:8])
        )


class AllScAIPTorchForceEnergy(_AllScAIPTorchForceBase):
    """``forward(positions nm, boxvectors nm) -> energy kJ/mol`` (TorchForce default mode).

    The energy is differentiable with respect to ``positions`` (TorchForce back-propagates it
    to get forces): it carries the model's forces as a first-order term
    ``E + sum(-F . (x - x_const))``, whose value is ``E`` and whose gradient is ``-F``
    (first derivatives only: no Hessians through this module).
    """

    def forward(self, positions: Tensor, boxvectors: Optional[Tensor] = None) -> Tensor:
        energy, forces, x, x_const = self._evaluate(positions, boxvectors)
        linear = (forces * (x - x_const)).sum()
        return (energy - linear) * self.ev_to_kj_per_mol


class AllScAIPTorchForceWithForces(_AllScAIPTorchForceBase):
    """``forward(positions nm, boxvectors nm) -> (energy kJ/mol, forces kJ/mol/nm [N,3])``;
    use with ``TorchForce.setOutputsForces(True)``. Forces on non-ML particles are zero."""

    def forward(self, positions: Tensor, boxvectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        energy, forces, _x, _x_const = self._evaluate(positions, boxvectors)
        with torch.no_grad():
            f = forces * (self.ev_to_kj_per_mol * self.angstrom_per_nm)
            if self.subset:
                full = torch.zeros((self.n_particles, 3), dtype=f.dtype, device=f.device)
                full.index_copy_(0, self.indices, f)
                f = full
            e = energy * self.ev_to_kj_per_mol
        return e, f.contiguous()


def _scripted_model(model_path: str | os.PathLike, device: str, dtype: Optional[str]):
    """A fresh TorchScript whole-system module and the loaded model's description."""
    loaded = load_model(model_path, device, dtype)
    if loaded.kind == "torchscript":
        module, _ = load_torchscript(loaded.path, device=str(loaded.device))  # own copy
    elif loaded.kind == "checkpoint":
        # the loaded wrapper's class: ExportedAllScAIP, or ExportedFairchemAllScAIP for fairchem checkpoints
        module = torch.jit.script(type(loaded.module)(loaded.eager.eval(), dumps(loaded.metadata)))
    else:
        raise ValueError(
            f"{loaded.path.name} is an AOTInductor package; a TorchForce module needs a TorchScript "
            "export (.pt) or a checkpoint (.ckpt)"
        )
    return module, loaded


def _resolve_atoms(topology_or_atomic_numbers, atoms, periodic) -> Tuple[List[int], Optional[List[int]], int, bool]:
    if hasattr(topology_or_atomic_numbers, "atoms"):  # an openmm.app.Topology
        topology = topology_or_atomic_numbers
        n_particles = topology.getNumAtoms()
        numbers = topology_atomic_numbers(topology, atoms)
        if periodic is None:
            periodic = topology.getPeriodicBoxVectors() is not None
    else:
        all_numbers = [int(z) for z in topology_or_atomic_numbers]
        n_particles = len(all_numbers)
        numbers = all_numbers if atoms is None else [all_numbers[int(i)] for i in atoms]
        periodic = bool(periodic) if periodic is not None else False
    indices = None if atoms is None else [int(i) for i in atoms]
    if indices is not None and (
        len(set(indices)) != len(indices) or min(indices, default=0) < 0 or max(indices, default=0) >= n_particles
    ):
        raise ValueError(f"atoms must be distinct indices in 0..{n_particles - 1}")
    return numbers, indices, n_particles, bool(periodic)


def build_torchforce_module(
    model_path: str | os.PathLike,
    topology_or_atomic_numbers,
    outputs_forces: bool = True,
    charge: int = 0,
    spin: int = 1,
    atoms: Optional[Sequence[int]] = None,
    periodic: Optional[bool] = None,
    device: str = "cpu",
    dtype: Optional[str] = None,
    min_distance: Optional[float] = None,
) -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """Scripted TorchForce module and its description (see :func:`write_torchforce_module`).
    ``min_distance`` (Å): None takes the model's, 0 turns the check off."""
    numbers, indices, n_particles, periodic = _resolve_atoms(topology_or_atomic_numbers, atoms, periodic)
    module, loaded = _scripted_model(model_path, device, dtype)
    check_elements(numbers, loaded)
    check_charge_spin(loaded, charge, spin)
    cls = AllScAIPTorchForceWithForces if outputs_forces else AllScAIPTorchForceEnergy
    encoding_range = float(loaded.metadata.get("encoding_range", 0.0))
    if min_distance is None:
        min_distance = (
            min_distance_of_model(loaded.eager)
            if loaded.eager is not None
            else float(loaded.metadata.get("min_distance", DEFAULT_MIN_DISTANCE))
        )
    wrapper = cls(
        module,
        numbers,
        indices,
        n_particles,
        periodic,
        charge,
        spin,
        loaded.cutoff,
        loaded.dtype,
        encoding_range,
        min(float(min_distance), loaded.cutoff),  # the check reads the model's neighbour pairs
    )
    scripted = torch.jit.script(wrapper.to(loaded.device).eval())
    info = {
        "torchforce_format_version": TORCHFORCE_FORMAT_VERSION,
        "outputs_forces": bool(outputs_forces),
        "uses_periodic_boundary_conditions": periodic,
        "n_particles": n_particles,
        "atoms": indices,
        "atomic_numbers": numbers,
        "charge": int(charge),
        "spin": int(spin),
        "model_file": loaded.path.name,
        "model_dtype": str(loaded.dtype).replace("torch.", ""),
        "cutoff_angstrom": loaded.cutoff,
        "units": {"positions": "nm", "boxvectors": "nm", "energy": "kJ/mol", "forces": "kJ/mol/nm"},
    }
    return scripted, {"torchforce": info, "model": loaded.metadata}


def write_torchforce_module(
    model_path: str | os.PathLike,
    topology_or_atomic_numbers,
    out_path: str | os.PathLike,
    outputs_forces: bool = True,
    charge: int = 0,
    spin: int = 1,
    atoms: Optional[Sequence[int]] = None,
    periodic: Optional[bool] = None,
    device: str = "cpu",
    dtype: Optional[str] = None,
) -> Path:
    """Write a TorchScript module for ``openmmtorch.TorchForce(out_path)``.

    ``topology_or_atomic_numbers``: an ``openmm.app.Topology`` (periodicity defaults to
    whether it has box vectors) or the atomic numbers of all particles of the System
    (``periodic`` defaults to False then). ``atoms``: indices of the ML atoms (all when
    None); the module still takes the positions of all particles and, with
    ``outputs_forces``, returns forces for all of them (zero on non-ML particles).
    ``charge`` (e) and ``spin`` (multiplicity 2S+1) are baked in.

    ``outputs_forces=True``: ``forward -> (energy kJ/mol, forces kJ/mol/nm)``; create the force
    with ``TorchForce(path)`` and call ``setOutputsForces(True)``. ``False``: ``forward ->
    energy`` (differentiable; TorchForce back-propagates). In both cases call
    ``setUsesPeriodicBoundaryConditions(True)`` for periodic modules.

    The file also carries ``torchforce.json`` (this description) and the model's
    ``metadata.json`` as TorchScript extra files. O(N^2) neighbour search: see the module
    docstring; fine up to a few thousand ML atoms.
    """
    scripted, meta = build_torchforce_module(
        model_path, topology_or_atomic_numbers, outputs_forces, charge, spin, atoms, periodic, device, dtype
    )
    out = Path(out_path)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.jit.save(
        scripted,
        str(tmp),
        _extra_files={
            "torchforce.json": json.dumps(meta["torchforce"], indent=1, sort_keys=True),
            "metadata.json": json.dumps(meta["model"], indent=1, sort_keys=True),
        },
    )
    tmp.replace(out)
    return out
