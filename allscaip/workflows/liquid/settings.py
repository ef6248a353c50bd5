"""Settings of a liquid run, the per-sample record layout and small shared helpers.

:class:`Settings` is declared once: each field that is also an ``allscaip liquid`` option
carries its flag, help and unit (:func:`allscaip.config_schema.setting`), and the command line
is built from it (:func:`allscaip.config_schema.add_arguments`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from allscaip.config_schema import from_dict, setting
from allscaip.units import BAR_PER_ATM

#: columns of every per-sample record (CSV files ``<phase>/<segment>.csv``)
COLUMNS = ("step", "time_ps", "potential_kJ_mol", "kinetic_kJ_mol", "temperature_K", "volume_nm3", "density_g_cm3")


@dataclass
class Settings:
    """Everything that defines a run (``settings.json`` in the run directory).

    Fields with a ``flag`` are ``allscaip liquid`` options (:mod:`allscaip.workflows.liquid.cli`).
    """

    molecule: str = setting(flag="--molecule", required=True, help="file (.pdb, .xyz, ...), liquid name, or SMILES")
    #: model file; None for the teacher (the CLI stores the resolved path of --model)
    model: Optional[str] = setting(
        None, flag="--model", help="allscaip model: exported .pt (TorchScript), .pt2 or .ckpt"
    )
    potential: str = "model"  # "model" or "teacher"
    n_molecules: int = setting(216, flag="--n-molecules", help="molecules in the liquid box")
    temperature_K: float = setting(298.15, flag="--temperature", unit="K")
    pressure_atm: float = setting(1.0, flag="--pressure", unit="atm")
    engine: str = setting(
        "openmm",
        flag="--engine",
        choices=("openmm", "lammps"),
        help="MD engine for the model (the teacher always runs in OpenMM)",
    )
    timestep_fs: float = setting(0.5, flag="--timestep-fs", help="MD time step (flexible X-H bonds: 0.5-1 fs)")
    #: None: physical masses; else hydrogen mass repartitioning
    hydrogen_mass_amu: Optional[float] = setting(
        None,
        flag="--hydrogen-mass",
        help="hydrogen mass repartitioning (e.g. 3 with --timestep-fs 1): H bonded to a heavy atom gets this "
        "mass, taken from that atom; density and energies are unaffected",
        unit="amu",
    )
    equilibrate_ps: float = setting(100.0, flag="--equilibrate-ps", help="liquid NPT equilibration")
    production_ps: float = setting(200.0, flag="--production-ps", help="liquid NPT production")
    segment_ps: float = setting(10.0, flag="--segment-ps", help="checkpoint interval (segment length)")
    gas_equilibrate_ps: float = setting(10.0, flag="--gas-equilibrate-ps", help="gas-phase NVT equilibration")
    gas_production_ps: float = setting(100.0, flag="--gas-production-ps", help="gas-phase NVT production")
    sample_every_fs: float = setting(100.0, flag="--sample-every-fs", help="sampling interval of energies/volume")
    #: Langevin (OpenMM; LAMMPS gas phase)
    friction_per_ps: float = setting(1.0, flag="--friction", help="Langevin friction", unit="1/ps")
    barostat_interval: int = setting(
        25, flag="--barostat-interval", help="OpenMM Monte Carlo barostat interval", unit="steps"
    )
    thermostat_damp_ps: float = 0.1  # LAMMPS fix npt Tdamp
    barostat_damp_ps: float = 1.0  # LAMMPS fix npt Pdamp
    #: None: 0.95 x experiment when known, else 0.95
    pack_density_g_cm3: Optional[float] = setting(
        None,
        flag="--pack-density",
        help="density of the packed box (default 0.95 x experiment when known, else 0.95)",
        unit="g/cm^3",
    )
    pack_tolerance_ang: float = 2.0
    packer: str = setting(
        "auto",
        flag="--packer",
        choices=("auto", "packmol", "random"),
        help="box packing: Packmol, random insertion, or Packmol when installed",
    )
    minimise_max_iterations: int = setting(
        1000, flag="--minimise-iterations", help="maximum energy-minimisation iterations (0: no minimisation)"
    )
    #: stop minimising once the RMS force component is below this (OpenMM's convention; LAMMPS gets the
    #: equivalent 2-norm of the global force vector), kJ/mol/nm
    minimise_tolerance_kj_mol_nm: float = setting(
        10.0,
        flag="--minimise-tolerance",
        help="stop minimising at this RMS force component (OpenMM's rule; both engines)",
        unit="kJ/mol/nm",
    )
    seed: int = setting(0, flag="--seed", help="random seed (packing, velocities, thermostats)")
    platform: str = setting("CPU", flag="--platform", help="OpenMM platform (CPU, CUDA, Reference, ...)")
    device: str = setting("cpu", flag="--device", help="torch device of the model (cpu, cuda)")
    threads: Optional[int] = setting(None, flag="--threads", help="torch / OpenMM CPU threads")
    lmp: Optional[str] = setting(None, flag="--lmp", help="LAMMPS executable (default: lmp on PATH)")
    model_sha256: str = ""

    #: fields that must match when a run is resumed
    IDENTITY = (
        "molecule",
        "potential",
        "model_sha256",
        "n_molecules",
        "temperature_K",
        "pressure_atm",
        "engine",
        "timestep_fs",
        "hydrogen_mass_amu",
        "segment_ps",
        "sample_every_fs",
        "friction_per_ps",
        "barostat_interval",
        "thermostat_damp_ps",
        "barostat_damp_ps",
        "seed",
    )

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "settings") -> "Settings":
        """Settings from a mapping (``settings.json``); an unknown key is a
        :class:`~allscaip.config_schema.ConfigError` that lists the valid ones."""
        return from_dict(cls, d, where)

    @property
    def pressure_bar(self) -> float:
        return self.pressure_atm * BAR_PER_ATM

    @property
    def sample_steps(self) -> int:
        return max(1, int(round(self.sample_every_fs / self.timestep_fs)))

    def segment_steps(self) -> int:
        """Steps per segment, a multiple of the sampling interval."""
        s = self.sample_steps
        return max(s, int(round(self.segment_ps * 1000.0 / self.timestep_fs / s)) * s)

    def n_segments(self, length_ps: float) -> int:
        """Segments covering ``length_ps`` (0 for 0 ps)."""
        if length_ps <= 0:
            return 0
        seg_ps = self.segment_steps() * self.timestep_fs / 1000.0
        return max(1, int(math.ceil(length_ps / seg_ps - 1e-9)))

    def mismatches(self, other: "Settings") -> list[str]:
        out = []
        for k in self.IDENTITY:
            a, b = getattr(self, k), getattr(other, k)
            if isinstance(a, float) and isinstance(b, (int, float)) and b is not None:
                same = math.isclose(a, float(b), rel_tol=1e-9, abs_tol=1e-12)
            else:
                same = a == b
            if not same:
                out.append(f"{k}: {b!r} (existing run) vs {a!r} (now)")
        return out


def write_json(path, obj) -> None:
    """Atomic JSON write (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_records(path, records: np.ndarray) -> None:
    """Per-sample records [n, len(COLUMNS)] to CSV (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    np.savetxt(
        tmp,
        np.asarray(records, dtype=float).reshape(-1, len(COLUMNS)),
        delimiter=",",
        header=",".join(COLUMNS),
        comments="",
        fmt="%.12g",
    )
    os.replace(tmp, path)


def read_records(path) -> np.ndarray:
    a = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return a.reshape(-1, len(COLUMNS))
