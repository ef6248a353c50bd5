"""Settings of a liquid run, the per-sample record layout and small shared helpers."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np

KJ_MOL_PER_EV = 96.48533212331002  # CODATA 2018 e N_A / 1000
BAR_PER_ATM = 1.01325
AVOGADRO = 6.02214076e23

#: columns of every per-sample record (CSV files ``<phase>/<segment>.csv``)
COLUMNS = ("step", "time_ps", "potential_kJ_mol", "kinetic_kJ_mol", "temperature_K", "volume_nm3", "density_g_cm3")


@dataclass
class Settings:
    """Everything that defines a run (``settings.json`` in the run directory)."""

    molecule: str
    model: Optional[str] = None  # model file; None for the teacher
    potential: str = "model"  # "model" or "teacher"
    n_molecules: int = 216
    temperature_K: float = 298.15
    pressure_atm: float = 1.0
    engine: str = "openmm"  # "openmm" or "lammps"
    timestep_fs: float = 0.5
    hydrogen_mass_amu: Optional[float] = None  # None: physical masses; else hydrogen mass repartitioning
    equilibrate_ps: float = 100.0
    production_ps: float = 200.0
    segment_ps: float = 10.0
    gas_equilibrate_ps: float = 10.0
    gas_production_ps: float = 100.0
    sample_every_fs: float = 100.0
    friction_per_ps: float = 1.0  # Langevin (OpenMM; LAMMPS gas phase)
    barostat_interval: int = 25  # OpenMM MonteCarloBarostat attempts (steps)
    thermostat_damp_ps: float = 0.1  # LAMMPS fix npt Tdamp
    barostat_damp_ps: float = 1.0  # LAMMPS fix npt Pdamp
    pack_density_g_cm3: Optional[float] = None  # None: 0.95 x experiment when known, else 0.95
    pack_tolerance_ang: float = 2.0
    packer: str = "auto"
    minimise_max_iterations: int = 1000
    #: stop minimising once the RMS force component is below this (OpenMM's convention; LAMMPS gets the
    #: equivalent 2-norm of the global force vector), kJ/mol/nm
    minimise_tolerance_kj_mol_nm: float = 10.0
    seed: int = 0
    platform: str = "CPU"  # OpenMM platform
    device: str = "cpu"  # torch device of the model
    threads: Optional[int] = None
    lmp: Optional[str] = None  # LAMMPS executable
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
    def from_dict(cls, d: dict) -> "Settings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

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


def density_g_cm3(total_mass_g_mol: float, volume_nm3: float) -> float:
    return total_mass_g_mol / AVOGADRO / (volume_nm3 * 1e-21)
