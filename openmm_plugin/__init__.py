"""allscaip models in OpenMM: openmm-ml potential ``'allscaip'`` (PythonForce by default,
openmm-torch TorchForce optionally) and standalone TorchForce modules.

    from allscaip_openmm import MLPotential   # openmm-ml's class when installed, else ours
    system = MLPotential('allscaip', modelPath='model.pt').createSystem(topology, charge=0, spin=1)

Importing this package imports OpenMM.
"""

from allscaip_openmm.forces import (
    ANGSTROM_PER_NM,
    EV_TO_KJ_PER_MOL,
    AllScAIPComputation,
    NotAnAllScAIPModelError,
    load_model,
    make_python_force,
)
from allscaip_openmm.potential import (
    HAVE_OPENMMML,
    AllScAIPPotentialImpl,
    AllScAIPPotentialImplFactory,
    MLPotential,
)
from allscaip_openmm.torchforce import build_torchforce_module, neighbor_pairs, write_torchforce_module

__all__ = [
    "ANGSTROM_PER_NM",
    "EV_TO_KJ_PER_MOL",
    "AllScAIPComputation",
    "AllScAIPPotentialImpl",
    "AllScAIPPotentialImplFactory",
    "HAVE_OPENMMML",
    "MLPotential",
    "NotAnAllScAIPModelError",
    "build_torchforce_module",
    "load_model",
    "make_python_force",
    "neighbor_pairs",
    "write_torchforce_module",
]
