"""ASE calculator for allscaip models: checkpoints (.ckpt), TorchScript (.pt) and
AOTInductor packages (.pt2) alike, and fairchem AllScAIP inference checkpoints (detected by content;
docs/fairchem.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from allscaip.checkpoint import FAIRCHEM_FAMILY, load_checkpoint, model_family_of, model_from_payload
from allscaip.checkpoint_fairchem import is_fairchem_checkpoint
from allscaip.data import atoms_to_batch
from allscaip.dtypes import DTYPES, default_dtype_name, dtype_from_name
from allscaip.heap import keep_heap_resident
from allscaip.model import compute_properties, frozen
from allscaip.model.eager_options import ATTENTION_KERNEL_CHOICES, BLOCK_PRECISION_CHOICES, check_choice
from allscaip.model.fairchem_allscaip import FairchemAllScAIP
from allscaip.model.fairchem_load import fairchem_model
from allscaip.neighbors import whole_system_inputs
from allscaip.result_checks import DEFAULT_MIN_DISTANCE, check_finite, check_min_distance, min_distance_of_model
from allscaip_export.aoti import load_aoti
from allscaip_export.staged_whole_system import StagedWholeSystem, runs_staged
from allscaip_export.torchscript import load_torchscript

DEFAULT_FAIRCHEM_TASK = "omol"  # the published AllScAIP checkpoints' task


def check_device(device: str) -> torch.device:
    """``device`` as a torch device; a ValueError when it asks for a GPU that torch does not see."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU; use device='cpu'")
    return dev


def own_model_options(recompute: bool, block_precision: str, attention_kernel: str) -> str:
    """The options asked for that only our own checkpoints (.ckpt) take, as the user wrote them
    ("" when none): exports and fairchem models refuse them, naming them."""
    asked = [
        ("recompute=True", recompute),
        (f"block_precision={block_precision!r}", block_precision != "float32"),
        (f"attention_kernel={attention_kernel!r}", attention_kernel != "eager"),
    ]
    return " and ".join(name for name, on in asked if on)


class AllScAIPCalculator(Calculator):
    """Energy, forces, stress and per-atom energies from an allscaip model.

    ``model``: path to a checkpoint (``.ckpt``), an exported TorchScript file (``.pt``), an
    AOTInductor package (``.pt2``) or a fairchem AllScAIP inference checkpoint (recognised by its
    content whatever its suffix; ``fairchem_task`` (default omol) picks its normalisers and element
    references, ``dtype`` applies; it has no per-element list, so every element of its tables is
    accepted). A checkpoint converted from fairchem (``allscaip convert-fairchem``) computes the same
    numbers as its fairchem file, with the task it was converted for. Total charge and spin multiplicity are read from
    ``atoms.info['charge']`` (default 0) and ``atoms.info['spin']`` (default 1).
    Exported artefacts compute in the dtype they were exported with; ``dtype`` applies to
    checkpoints (default float64 on the CPU, float32 on a GPU). A TorchScript export with a node encoding runs through its staged methods with
    the blocked attention (:mod:`allscaip_export.staged_whole_system`), so its memory is linear in
    atoms like the checkpoint's. ``min_distance`` (Å): two atoms closer than this raise
    :class:`allscaip.result_checks.AtomsTooCloseError`; None takes the model's own (a fraction of
    its training data's shortest contact), 0 turns the check off. NaN or Inf results raise
    :class:`allscaip.result_checks.NonFiniteResultError` (docs/errors.md). ``recompute`` (checkpoints
    only): keep only each layer's inputs in the forward and run the layer again in the force
    backward (activation checkpointing): about a third to a half of the peak memory of a large
    system, for one more forward pass (docs/benchmarks.md). ``block_precision="bfloat16"`` (float32
    checkpoints only) runs the blocks' matrix products in bfloat16 with float32 geometry and residual
    stream: faster for large hidden sizes, at a force error of about 0.5 % (docs/model.md, "Precision").
    ``attention_kernel="compiled"`` (checkpoints only) runs the neighbour attention through Inductor:
    the same numbers to round-off, faster for large systems, after a compile of about 30 s on the
    first call (docs/model.md, "Speed").
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: str | Path,
        device: str = "cpu",
        dtype: Optional[str] = None,
        min_distance: Optional[float] = None,
        recompute: bool = False,
        fairchem_task: Optional[str] = None,
        block_precision: str = "float32",
        attention_kernel: str = "eager",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: what happened to malloc's settings (allscaip/heap.py: freed tensor memory stays resident)
        self.heap_note = keep_heap_resident()
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model file {path} does not exist")
        self.dtype = dtype_from_name(dtype if dtype is not None else default_dtype_name(device))
        self.device = check_device(device)
        self.path = path
        self._eager = None
        self._module = None
        self.metadata: Dict[str, Any] = {}
        suffix = path.suffix.lower()
        check_choice("block_precision", block_precision, BLOCK_PRECISION_CHOICES)
        check_choice("attention_kernel", attention_kernel, ATTENTION_KERNEL_CHOICES)
        own_options = own_model_options(recompute, block_precision, attention_kernel)
        if own_options and suffix in (".pt", ".pt2"):
            raise ValueError(
                f"{own_options} applies to checkpoints (.ckpt), not to the export {path.name}; "
                f"load the checkpoint it was exported from, or leave out {own_options}"
            )
        #: the converted fairchem model when ``model`` is a fairchem checkpoint, else None
        self._fairchem = None
        #: the fairchem task whose normalisers and element references a fairchem checkpoint uses
        self.fairchem_task = fairchem_task or DEFAULT_FAIRCHEM_TASK
        if is_fairchem_checkpoint(path):
            if own_options:
                raise ValueError(f"{own_options} applies to allscaip checkpoints, not to the fairchem file {path.name}")
            self._fairchem = frozen(fairchem_model(path, task=self.fairchem_task, dtype=self.dtype).to(self.device))
            self._eager = self._fairchem
        elif suffix == ".pt":
            self._module, self.metadata = load_torchscript(path, device=str(self.device))
            self.dtype = DTYPES[self.metadata.get("dtype", "float64")]
            if runs_staged(self._module):  # node encoding: blocked attention, memory linear in atoms
                self._module = StagedWholeSystem(self._module)
        elif suffix == ".pt2":
            self._module, self.metadata = load_aoti(path, device=str(self.device))
            self.dtype = DTYPES[self.metadata.get("dtype", "float64")]
        else:
            payload = load_checkpoint(path)
            if model_family_of(payload) == FAIRCHEM_FAMILY:
                self.fairchem_task = self._converted_task(payload, fairchem_task, own_options)
            self._eager = frozen(model_from_payload(payload, dtype=self.dtype, device=str(self.device)))
            if isinstance(self._eager, FairchemAllScAIP):
                self._fairchem = self._eager
            else:
                if block_precision != "float32" and self.dtype != torch.float32:
                    raise ValueError(
                        f"block_precision={block_precision!r} needs dtype='float32' (the geometry and residual "
                        f"stream stay float32), got {str(self.dtype).replace('torch.', '')}: pass dtype='float32'"
                    )
                self._eager.recompute = "layers" if recompute else "none"
                self._eager.block_precision = block_precision
                self._eager.attention_kernel = attention_kernel
        self.cutoff = float(self.metadata["cutoff"]) if self.metadata else float(self._eager.cutoff)
        if self._fairchem is not None:
            self.elements: List[int] = self._fairchem.known_elements()
        else:
            self.elements = list(self.metadata["atomic_numbers"]) if self.metadata else list(self._eager.cfg.elements)
        if min_distance is not None and not min_distance >= 0:
            raise ValueError(
                f"min_distance must be a distance >= 0 in Å (0 turns the check off) or None for the model's, "
                f"got {min_distance!r}"
            )
        #: two atoms closer than this (Å) raise AtomsTooCloseError; 0 = no check
        self.min_distance = float(min_distance) if min_distance is not None else self.model_min_distance()

    def _converted_task(self, payload: Dict[str, Any], asked: Optional[str], own_options: str) -> str:
        """The task a converted fairchem checkpoint was converted for (``asked`` must agree; ``own_options``,
        from :func:`own_model_options`, must be empty)."""
        task = str(payload["model_config"]["task"])
        if asked is not None and asked != task:
            raise ValueError(
                f"{self.path.name} was converted for fairchem task {task!r}; convert the fairchem file again "
                f"with --task {asked} for task {asked!r}, or leave fairchem_task out"
            )
        if own_options:
            raise ValueError(f"{own_options} applies to our own models, not to the converted fairchem {self.path.name}")
        return task

    def model_min_distance(self) -> float:
        """The model's own min_distance (Å): from the export metadata, or the checkpoint's model."""
        if self.metadata:
            return float(self.metadata.get("min_distance", DEFAULT_MIN_DISTANCE))
        return min_distance_of_model(self._eager)

    def _check_elements(self, numbers: np.ndarray) -> None:
        unknown = sorted(set(int(z) for z in numbers) - set(self.elements))
        if unknown:
            raise ValueError(
                f"element(s) {[chemical_symbols[z] for z in unknown]} are not in model {self.path.name}, "
                f"which knows {[chemical_symbols[z] for z in self.elements]}"
            )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self._check_elements(atoms.numbers)
        where = f"AllScAIPCalculator({self.path.name})"
        check_min_distance(atoms.positions, atoms.cell.array, atoms.pbc, self.min_distance, where, "atoms (0-based)")
        periodic = bool(np.all(atoms.pbc))
        if self._fairchem is not None:
            energy, forces, energies, stress = self._fairchem_results(atoms, periodic)
        elif self._eager is not None:
            batch = atoms_to_batch([atoms], dtype=self.dtype).to(self.device)
            out = compute_properties(self._eager, batch, forces=True, stress=periodic)
            energy = out["energy"][0]
            forces = out["forces"]
            energies = out["energies"]
            stress = out["stress"][0] if periodic else None
        else:
            energy, forces, virial, energies = self._module(
                *whole_system_inputs(
                    atoms, self.cutoff, self.dtype, self.device, float(self.metadata.get("encoding_range", 0.0))
                )
            )
            stress = -virial / atoms.get_volume() if periodic else None
        check_finite(energy, forces, energies, stress, where, "atoms (0-based)")
        self.results["energy"] = float(energy)
        self.results["free_energy"] = float(energy)
        self.results["forces"] = forces.detach().cpu().double().numpy()
        self.results["energies"] = energies.detach().cpu().double().numpy()
        if stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress.detach().cpu().double().numpy())

    def _fairchem_results(self, atoms, periodic: bool):
        """(energy, forces, per-atom energies, stress or None) of the converted fairchem model; stress
        only from a conserving model (a direct-force model has none)."""
        dev = self.device
        out = self._fairchem(
            torch.as_tensor(atoms.positions, dtype=self.dtype, device=dev),
            torch.as_tensor(atoms.numbers, device=dev),
            torch.as_tensor(atoms.cell.array, dtype=self.dtype, device=dev),
            torch.as_tensor(atoms.pbc, device=dev),
            charge=int(atoms.info.get("charge", 0)),
            spin=int(atoms.info.get("spin", 1)),
            compute_stress=periodic and not self._fairchem.direct_forces,
        )
        return out.energy, out.forces, out.energies, out.stress
