"""allscaip potentials for OpenMM, the openmm-ml way.

With openmm-ml installed, the ``openmmml.potentials`` entry point declared in pyproject.toml
registers the factory under the name ``allscaip``::

    from openmmml import MLPotential
    potential = MLPotential('allscaip', modelPath='model.pt')
    system = potential.createSystem(topology, charge=0, spin=1)
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)

Without openmm-ml, :class:`MLPotential` of this module offers the same ``createSystem`` and
``createMixedSystem`` (no ``interpolate``); ``allscaip_openmm.MLPotential`` is openmm-ml's
class when that is importable and this one otherwise.

``createSystem``/``createMixedSystem`` keyword arguments understood here:
``charge`` (total charge in e, default 0), ``spin`` (spin multiplicity 2S+1, default 1;
``multiplicity`` is accepted as an alias), ``implementation`` ("pythonforce", the default,
or "torchforce", which needs openmm-torch), ``device`` and ``dtype`` (checkpoints only;
may also be given to the ``MLPotential`` constructor).
"""

from __future__ import annotations

import os
import tempfile
import warnings
import xml.etree.ElementTree as ET
from typing import Iterable, Optional

import openmm
import openmm.app
import torch

from allscaip_openmm.forces import (
    check_charge_spin,
    check_elements,
    load_model,
    make_python_force,
    topology_atomic_numbers,
)
from allscaip_openmm.torchforce import build_torchforce_module

try:  # the real openmm-ml base classes when present, so isinstance checks there pass
    from openmmml.mlpotential import MLPotentialImpl as _ImplBase
    from openmmml.mlpotential import MLPotentialImplFactory as _FactoryBase

    HAVE_OPENMMML = True
except ImportError:  # pragma: no cover - exercised where openmm-ml is absent
    HAVE_OPENMMML = False

    class _FactoryBase:  # type: ignore[no-redef]
        """openmm-ml's MLPotentialImplFactory interface."""

        def createImpl(self, name: str, **args) -> "_ImplBase":
            raise NotImplementedError

    class _ImplBase:  # type: ignore[no-redef]
        """openmm-ml's MLPotentialImpl interface."""

        def addForces(self, topology, system, atoms, forceGroup, **args) -> None:
            raise NotImplementedError


IMPLEMENTATIONS = ("pythonforce", "torchforce")


class AllScAIPPotentialImplFactory(_FactoryBase):
    """Creates :class:`AllScAIPPotentialImpl` objects (openmm-ml ``MLPotentialImplFactory``)."""

    def createImpl(
        self,
        name: str,
        modelPath: Optional[str] = None,
        model_path: Optional[str] = None,
        device: str = "cpu",
        dtype: Optional[str] = None,
        **args,
    ) -> "AllScAIPPotentialImpl":
        path = modelPath if modelPath is not None else model_path
        if path is None:
            raise ValueError("MLPotential('allscaip') needs modelPath='model.pt' (or a .ckpt checkpoint)")
        if args:
            raise TypeError(f"MLPotential('allscaip'): unknown argument(s) {sorted(args)}")
        return AllScAIPPotentialImpl(name, path, device=device, dtype=dtype)


class AllScAIPPotentialImpl(_ImplBase):
    """An allscaip model as OpenMM forces (openmm-ml ``MLPotentialImpl``).

    The model file is loaded (and checked to be an allscaip model) when the impl is created.
    """

    def __init__(self, name: str, modelPath: str | os.PathLike, device: str = "cpu", dtype: Optional[str] = None):
        self.name = name
        self.modelPath = str(modelPath)
        self.device = device
        self.dtype = dtype
        self.model = load_model(self.modelPath, device, dtype)

    def addForces(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Optional[Iterable[int]],
        forceGroup: int,
        charge: int = 0,
        spin: Optional[int] = None,
        multiplicity: Optional[int] = None,
        implementation: str = "pythonforce",
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        embedding: Optional[str] = None,
        min_distance: Optional[float] = None,
        **args,
    ) -> None:
        # recent openmm-ml passes the MLPotential constructor's arguments again (merged with
        # createSystem's): the model path is already ours
        for key in ("modelPath", "model_path"):
            given = args.pop(key, None)
            if given is not None and os.path.realpath(str(given)) != os.path.realpath(self.modelPath):
                raise ValueError(f"{key}={given!r} differs from this potential's model {self.modelPath!r}")
        if embedding not in (None, "mechanical"):
            raise ValueError(f"allscaip supports mechanical embedding only, got embedding={embedding!r}")
        if args:
            warnings.warn(f"allscaip addForces: ignoring unknown argument(s) {sorted(args)}", stacklevel=3)
        if spin is not None and multiplicity is not None and int(spin) != int(multiplicity):
            raise ValueError(f"spin={spin} and multiplicity={multiplicity} disagree (both are 2S+1)")
        spin = int(spin if spin is not None else (multiplicity if multiplicity is not None else 1))
        charge = int(charge)
        impl = (implementation or "pythonforce").lower()
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        device = device or self.device
        dtype = dtype if dtype is not None else self.dtype
        atom_list = None if atoms is None else [int(i) for i in atoms]
        if atom_list is not None and len(atom_list) == 0:
            raise ValueError("no ML atoms given")
        numbers = topology_atomic_numbers(topology, atom_list)
        model = load_model(self.modelPath, device, dtype)
        check_elements(numbers, model)
        check_charge_spin(model, charge, spin)
        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        if impl == "pythonforce":
            force = make_python_force(
                self.modelPath,
                numbers,
                periodic,
                particles=atom_list,
                charge=charge,
                spin=spin,
                device=device,
                dtype=dtype,
                force_group=forceGroup,
                min_distance=min_distance,
            )
        else:
            force = _make_torch_force(
                self.modelPath, topology, atom_list, periodic, charge, spin, device, dtype, forceGroup, min_distance
            )
        system.addForce(force)


def _make_torch_force(model_path, topology, atoms, periodic, charge, spin, device, dtype, force_group, min_distance):
    try:
        import openmmtorch  # optional: only the TorchForce implementation needs it
    except Exception as err:  # ImportError, or an OSError from a binary built for another torch
        raise RuntimeError(
            f"openmmtorch is not importable here ({type(err).__name__}: {err}); use implementation='pythonforce'"
        ) from err
    module, _ = build_torchforce_module(
        model_path,
        topology,
        outputs_forces=True,
        charge=charge,
        spin=spin,
        atoms=atoms,
        periodic=periodic,
        device=device,
        dtype=dtype,
        min_distance=min_distance,
    )
    try:
        force = openmmtorch.TorchForce(module)
    except TypeError:  # older openmm-torch: file paths only
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "allscaip_torchforce.pt")
            torch.jit.save(module, path)
            force = openmmtorch.TorchForce(path)
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setForceGroup(int(force_group))
    return force


# ------------------------------------------------------------------------ MLPotential fallback
class _OwnMLPotential:
    """``MLPotential`` for environments without openmm-ml (same calls, allscaip only).

    >>> potential = MLPotential('allscaip', modelPath='model.pt')
    >>> system = potential.createSystem(topology, charge=0, spin=1)
    >>> mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)
    """

    _implFactories = {"allscaip": AllScAIPPotentialImplFactory()}

    def __init__(self, name: str, **args) -> None:
        if name not in self._implFactories:
            raise ValueError(
                f"unknown potential {name!r}; without openmm-ml only {sorted(self._implFactories)} is available"
            )
        self._impl = self._implFactories[name].createImpl(name, **args)

    @classmethod
    def registerImplFactory(cls, name: str, factory) -> None:
        cls._implFactories[name] = factory

    def createSystem(self, topology: openmm.app.Topology, removeCMMotion: bool = True, **args) -> openmm.System:
        """A System whose only energy is this potential over all atoms of ``topology``, plus a
        CMMotionRemover with ``removeCMMotion`` (the default, as in current openmm-ml)."""
        system = openmm.System()
        box = topology.getPeriodicBoxVectors()
        if box is not None:
            system.setDefaultPeriodicBoxVectors(*box)
        for atom in topology.atoms():
            system.addParticle(0.0 if atom.element is None else atom.element.mass)
        self._impl.addForces(topology, system, None, 0, **args)
        if removeCMMotion:
            system.addForce(openmm.CMMotionRemover())
        return system

    def createMixedSystem(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Iterable[int],
        removeConstraints: bool = True,
        forceGroup: int = 0,
        interpolate: bool = False,
        **args,
    ) -> openmm.System:
        """Copy of ``system`` where the internal energy of ``atoms`` comes from this potential.

        Bonded terms (bonds, angles, torsions of any force with such lists) whose atoms are
        all ML atoms are removed, NonbondedForce/CustomNonbondedForce interactions between ML
        atoms are excluded, and with ``removeConstraints`` constraints between two ML atoms are
        dropped; ML-MM interactions stay with the force field (mechanical embedding).
        """
        if interpolate:
            raise NotImplementedError("interpolate=True needs openmm-ml (pip/conda package openmm-ml)")
        ml = [int(i) for i in atoms]
        if len(set(ml)) != len(ml):
            raise ValueError("atoms contains duplicates")
        new = _without_internal_terms(system, set(ml), removeConstraints)
        for force in new.getForces():
            if isinstance(force, openmm.NonbondedForce):
                for a in range(len(ml)):
                    for b in range(a):
                        force.addException(ml[a], ml[b], 0.0, 1.0, 0.0, True)
            elif isinstance(force, openmm.CustomNonbondedForce):
                have = {tuple(sorted(force.getExclusionParticles(k))) for k in range(force.getNumExclusions())}
                for a in range(len(ml)):
                    for b in range(a):
                        if tuple(sorted((ml[a], ml[b]))) not in have:
                            force.addExclusion(ml[a], ml[b])
        self._impl.addForces(topology, new, ml, forceGroup, **args)
        return new


_NONBONDED_TYPES = {"NonbondedForce", "CustomNonbondedForce", "AmoebaMultipoleForce", "AmoebaVdwForce"}
_TERM_LISTS = {"Bonds", "Angles", "Torsions", "UreyBradleys", "CouplingTorsions"}


def _without_internal_terms(system: openmm.System, ml: set, remove_constraints: bool) -> openmm.System:
    """Copy of ``system`` without bonded terms (and optionally constraints) inside ``ml``."""
    root = ET.fromstring(openmm.XmlSerializer.serialize(system))

    def inside(el: ET.Element) -> bool:
        # particle attributes: p1, p2, ... (bonds, angles, torsions), a1..a4/b1..b4 (CMAP torsions)
        ps = [int(v) for k, v in el.attrib.items() if k[:1] in ("p", "a", "b") and k[1:].isdigit()]
        return bool(ps) and all(p in ml for p in ps)

    if remove_constraints:
        constraints = root.find("Constraints")
        if constraints is not None:
            for c in list(constraints):
                if inside(c):
                    constraints.remove(c)
    forces = root.find("Forces")
    if forces is not None:
        for force in forces:
            if force.get("type") in _NONBONDED_TYPES:
                continue
            for child in force:
                if child.tag in _TERM_LISTS:
                    for term in list(child):
                        if inside(term):
                            child.remove(term)
    return openmm.XmlSerializer.deserialize(ET.tostring(root, encoding="unicode"))


if HAVE_OPENMMML:
    from openmmml import MLPotential  # noqa: F401  (entry point registers 'allscaip')

    if "allscaip" not in getattr(MLPotential, "_implFactories", {}):
        MLPotential.registerImplFactory("allscaip", AllScAIPPotentialImplFactory())
else:
    MLPotential = _OwnMLPotential


__all__ = [
    "AllScAIPPotentialImplFactory",
    "AllScAIPPotentialImpl",
    "MLPotential",
    "HAVE_OPENMMML",
    "IMPLEMENTATIONS",
]
