"""allscaip models as ``openmm.PythonForce`` forces.

The computation object handed to :class:`openmm.PythonForce` receives an OpenMM ``State``
(positions in nm, box vectors in nm when the force is periodic), builds a vesin neighbour
list in Å, calls the model (exported TorchScript ``.pt``, AOTInductor ``.pt2`` or a
training checkpoint ``.ckpt``, loaded by :class:`allscaip.engines.ase_calculator.AllScAIPCalculator`)
and returns energy in kJ/mol and forces in kJ/mol/nm.

ML/MM: the force is restricted to the ML atoms with ``PythonForce.setParticles``, so the
State it receives holds only their positions and it returns forces on those atoms only.
Periodic box vectors are read from every State, so barostats (``MonteCarloBarostat``,
anisotropic and triclinic ones included) see the current box.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import openmm
import torch
from ase.data import chemical_symbols

from allscaip.dtypes import DTYPES
from allscaip.engines.ase_calculator import AllScAIPCalculator, check_device
from allscaip.neighbors import system_encoding_pairs, system_neighbor_pairs
from allscaip.result_checks import DEFAULT_MIN_DISTANCE, check_finite, check_min_distance, min_distance_of_model
from allscaip.units import ANGSTROM_PER_NM, EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL  # also re-exported
from allscaip_export.fairchem_torchscript import ExportedFairchemAllScAIP, fairchem_metadata
from allscaip_export.metadata import build_metadata, dumps
from allscaip_export.torchscript import ExportedAllScAIP


class NotAnAllScAIPModelError(ValueError):
    """The model file exists but is not an allscaip model."""


@dataclass
class LoadedModel:
    """A model ready for whole-system calls (the exported calling convention).

    ``module(positions Å, numbers, cell Å, pbc, edge_index [2,E], cell_shifts [E,3], charge,
    spin) -> (energy eV, forces eV/Å, virial eV, energies eV)``; for checkpoints the eager
    model is wrapped in :class:`allscaip_export.torchscript.ExportedAllScAIP` (not scripted).
    """

    path: Path
    module: Any
    metadata: Dict[str, Any]
    dtype: torch.dtype
    device: torch.device
    cutoff: float
    atomic_numbers: List[int]
    kind: str  # "torchscript", "aoti" or "checkpoint"
    eager: Any = field(default=None, repr=False)  # the AllScAIP nn.Module for checkpoints


_CACHE: Dict[Tuple[str, int, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(model_path: str | os.PathLike, device: str = "cpu", dtype: Optional[str] = None) -> LoadedModel:
    """Load an allscaip model file through :class:`AllScAIPCalculator`'s loading logic.

    ``dtype`` applies to checkpoints only (default float64 on cpu, float32 on cuda); exported artefacts compute in
    the dtype they were exported with. Results are cached per (file, mtime, device, dtype),
    so building several Systems (or unpickling a serialized PythonForce) loads the file once.
    Raises ``FileNotFoundError`` for a missing file and :class:`NotAnAllScAIPModelError`
    for a file that is not an allscaip model.
    """
    path = Path(model_path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"allscaip model file {model_path} does not exist")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {dtype!r}")
    key = (str(path), path.stat().st_mtime_ns, str(device), str(dtype))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        loaded = _load_uncached(path, device, dtype)
        _CACHE[key] = loaded
        return loaded


def _load_uncached(path: Path, device: str, dtype: Optional[str]) -> LoadedModel:
    check_device(device)  # a device error is not the file's fault
    what = (
        "an allscaip model (an exported TorchScript .pt with metadata.json inside, "
        "an AOTInductor .pt2 package, or a training checkpoint .ckpt)"
    )
    try:
        calc = AllScAIPCalculator(path, device=device, dtype=dtype)  # None: float64 on cpu, float32 on cuda
    except ModuleNotFoundError as err:
        # a missing allscaip submodule (e.g. checkpoint or AOTI support) is not the file's fault
        if err.name and err.name.startswith(("allscaip", "allscaip_export")):
            raise
        raise NotAnAllScAIPModelError(f"{path} could not be loaded as {what}: {err}") from err
    except (FileNotFoundError, NotAnAllScAIPModelError):
        raise
    except ValueError as err:  # allscaip's own loaders say clearly what is wrong
        if "not an allscaip" in str(err):
            raise NotAnAllScAIPModelError(str(err)) from err
        raise  # e.g. a .pt2 compiled for another device, a checkpoint of another version
    except Exception as err:  # torch.jit.load / unpickling errors are RuntimeError, KeyError, ...
        raise NotAnAllScAIPModelError(f"{path} is not {what}: {type(err).__name__}: {err}") from err
    if calc._module is not None:
        module = calc._module
        metadata = dict(calc.metadata)
        kind = "aoti" if path.suffix.lower() == ".pt2" else "torchscript"
        eager = None
        if not metadata.get("atomic_numbers") or "cutoff" not in metadata:
            raise NotAnAllScAIPModelError(f"{path} has allscaip metadata without atomic_numbers/cutoff")
    else:
        eager = calc._eager
        dt = "float64" if calc.dtype == torch.float64 else "float32"
        if calc._fairchem is not None:  # a fairchem checkpoint (docs/fairchem.md): its own wrapper
            metadata = fairchem_metadata(eager, dt, str(calc.device), "", {}, calc.fairchem_task)
            metadata["format"] = "checkpoint"
            module = ExportedFairchemAllScAIP(eager.eval(), dumps(metadata))
        else:
            metadata = build_metadata(eager, dt, str(calc.device), "checkpoint")
            module = ExportedAllScAIP(eager.eval(), dumps(metadata))
        kind = "checkpoint"
    return LoadedModel(
        path=path,
        module=module,
        metadata=metadata,
        dtype=calc.dtype,
        device=calc.device,
        cutoff=float(calc.cutoff),
        atomic_numbers=[int(z) for z in calc.elements],
        kind=kind,
        eager=eager,
    )


# ------------------------------------------------------------------------ topology helpers
def topology_atomic_numbers(topology, atoms: Optional[Iterable[int]] = None) -> List[int]:
    """Atomic numbers of ``atoms`` (all atoms when None) of an OpenMM Topology.

    Raises a ValueError naming the first atoms without an element (e.g. virtual sites or
    coarse-grained particles), which an allscaip model cannot treat.
    """
    all_atoms = list(topology.atoms())
    chosen = all_atoms if atoms is None else [all_atoms[int(i)] for i in atoms]
    missing = [a for a in chosen if a.element is None]
    if missing:
        names = ", ".join(f"{a.index} ({a.residue.name}{a.residue.id}:{a.name})" for a in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"the topology has atoms with no element: {names}{more}; an allscaip model needs an "
            "element for every atom it treats (give elements in the PDB/topology, or leave these "
            "atoms out of the ML atoms)"
        )
    return [int(a.element.atomic_number) for a in chosen]


def check_elements(numbers: Sequence[int], model: LoadedModel) -> None:
    """ValueError naming the elements not in ``model`` and listing the model's elements."""
    unknown = sorted(set(int(z) for z in numbers) - set(model.atomic_numbers))
    if unknown:
        raise ValueError(
            f"element(s) {[chemical_symbols[z] for z in unknown]} are not in allscaip model "
            f"{model.path.name}, which knows {[chemical_symbols[z] for z in model.atomic_numbers]}"
        )


def check_charge_spin(model: LoadedModel, charge: int, spin: int) -> None:
    if int(spin) < 1:
        raise ValueError(f"spin is the multiplicity 2S+1 and must be >= 1, got {spin}")
    if not model.metadata.get("charge_spin", False) and (int(charge) != 0 or int(spin) != 1):
        warnings.warn(
            f"allscaip model {model.path.name} was trained without charge/spin inputs; "
            f"charge={charge}, spin={spin} are ignored",
            stacklevel=3,
        )


# ------------------------------------------------------------------------ PythonForce
class AllScAIPComputation:
    """The callable given to ``openmm.PythonForce``: ``state -> (energy kJ/mol, forces kJ/mol/nm)``.

    Parameters: ``model_path``, ``atomic_numbers`` of the atoms the force applies to (in
    ``setParticles`` order), ``periodic``, total ``charge`` (e) and ``spin`` multiplicity,
    ``device`` and ``dtype`` (checkpoints only), ``min_distance`` (Å; None: the model's, 0: no
    check) and ``particles`` (the OpenMM particle indices of the atoms, named in error messages).
    Two atoms closer than min_distance or a NaN/Inf result raise an exception naming the
    particles (docs/errors.md).

    Pickling stores only these settings (the model is re-loaded from ``model_path``), so a
    System holding this force can be written with ``XmlSerializer`` and read back on a machine
    where the same model file exists.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        atomic_numbers: Sequence[int],
        periodic: bool,
        charge: int = 0,
        spin: int = 1,
        device: str = "cpu",
        dtype: Optional[str] = None,
        min_distance: Optional[float] = None,
        particles: Optional[Sequence[int]] = None,
    ) -> None:
        if min_distance is not None and not min_distance >= 0:
            raise ValueError(
                f"min_distance must be a distance >= 0 in Å (0 turns the check off) or None for the model's, "
                f"got {min_distance!r}"
            )
        self._settings = dict(
            model_path=str(Path(model_path).expanduser().resolve()),
            atomic_numbers=[int(z) for z in atomic_numbers],
            periodic=bool(periodic),
            charge=int(charge),
            spin=int(spin),
            device=str(device),
            dtype=dtype,
            min_distance=min_distance,
            particles=None if particles is None else [int(p) for p in particles],
        )
        self._setup()

    def _setup(self) -> None:
        s = self._settings
        self.model = load_model(s["model_path"], s["device"], s["dtype"])
        check_elements(s["atomic_numbers"], self.model)
        dev, dt = self.model.device, self.model.dtype
        self.periodic: bool = s["periodic"]
        self.cutoff = self.model.cutoff
        # a node-encoding model (metadata encoding_range > 0) also takes its pairs within this range
        self.encoding_range = float(self.model.metadata.get("encoding_range", 0.0))
        self.n_atoms = len(s["atomic_numbers"])
        self._numbers = torch.tensor(s["atomic_numbers"], dtype=torch.long, device=dev)
        self._pbc_np = np.array([self.periodic] * 3, dtype=bool)
        self._pbc = torch.tensor(self._pbc_np, device=dev)
        self._charge = torch.tensor(s["charge"], dtype=torch.long, device=dev)
        self._spin = torch.tensor(s["spin"], dtype=torch.long, device=dev)
        self._zero_cell_np = np.zeros((3, 3))
        self._zero_cell = torch.zeros((3, 3), dtype=dt, device=dev)
        self._on_cpu = dev.type == "cpu"
        self.min_distance = s.get("min_distance")
        if self.min_distance is None:
            m = self.model
            self.min_distance = (
                min_distance_of_model(m.eager)
                if m.eager is not None
                else float(m.metadata.get("min_distance", DEFAULT_MIN_DISTANCE))
            )
        self._names = s.get("particles") or list(range(self.n_atoms))

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self._settings)

    def __setstate__(self, settings: Dict[str, Any]) -> None:
        self._settings = dict(settings)
        self._setup()

    def evaluate(self, positions_nm: np.ndarray, box_nm: Optional[np.ndarray]) -> Tuple[float, np.ndarray]:
        """Energy (kJ/mol) and forces (kJ/mol/nm, float64 [N,3]) for positions/box in nm."""
        if positions_nm.shape[0] != self.n_atoms:
            raise ValueError(
                f"allscaip force set up for {self.n_atoms} atoms was given {positions_nm.shape[0]} positions"
            )
        dev, dt = self.model.device, self.model.dtype
        pos_a = np.multiply(positions_nm, ANGSTROM_PER_NM)
        if self.periodic:
            cell_a = np.multiply(box_nm, ANGSTROM_PER_NM)
        else:
            cell_a = self._zero_cell_np
        i, j, s = system_neighbor_pairs(pos_a, cell_a, self._pbc_np, self.cutoff)
        where, who = "allscaip OpenMM force", "particles"
        if self.min_distance > 0:  # the neighbour list reaches further than min_distance
            pairs = (i, j, s) if self.min_distance <= self.cutoff else None
            check_min_distance(pos_a, cell_a, self._pbc_np, self.min_distance, where, who, pairs, self._names)
        pos_t = torch.from_numpy(pos_a).to(device=dev, dtype=dt)
        cell_t = torch.from_numpy(cell_a).to(device=dev, dtype=dt) if self.periodic else self._zero_cell
        edge_index = torch.from_numpy(np.stack((i, j))).to(dev)
        shifts = torch.from_numpy(s).to(device=dev, dtype=dt)
        args = [pos_t, self._numbers, cell_t, self._pbc, edge_index, shifts, self._charge, self._spin]
        if self.encoding_range > 0.0:
            pi, pj, ps = system_encoding_pairs(pos_a, cell_a, self._pbc_np, self.encoding_range)
            args.append(torch.from_numpy(np.stack((pi, pj))).to(dev))
            args.append(torch.from_numpy(ps).to(device=dev, dtype=dt))
        energy, forces, _, energies = self.model.module(*args)
        check_finite(energy, forces, energies, None, where, who, self._names)
        f = forces.detach()
        if not self._on_cpu:
            f = f.cpu()
        f = f.double().numpy() * EV_PER_A_TO_KJ_PER_MOL_NM
        return float(energy) * EV_TO_KJ_PER_MOL, f

    def __call__(self, state) -> Tuple[float, np.ndarray]:
        # OpenMM States hold nm; ``_value`` skips the unit machinery (a copy and a conversion)
        positions = np.asarray(state.getPositions(asNumpy=True)._value, dtype=np.float64)
        box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value, dtype=np.float64) if self.periodic else None
        return self.evaluate(positions, box)


def make_python_force(
    model_path: str | os.PathLike,
    atomic_numbers: Sequence[int],
    periodic: bool,
    particles: Optional[Sequence[int]] = None,
    charge: int = 0,
    spin: int = 1,
    device: str = "cpu",
    dtype: Optional[str] = None,
    force_group: int = 0,
    min_distance: Optional[float] = None,
):
    """An ``openmm.PythonForce`` evaluating the allscaip model on ``particles`` (all when None)."""
    computation = AllScAIPComputation(
        model_path, atomic_numbers, periodic, charge, spin, device, dtype, min_distance, particles
    )
    force = openmm.PythonForce(computation)
    if particles is not None:
        force.setParticles([int(p) for p in particles])
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setForceGroup(int(force_group))
    force.setName("AllScAIP")
    return force
