"""Reading labelled structures (extxyz, ASE db, OMol25 ASE-LMDB) and validating them.

Every structure returned here is an ``ase.Atoms`` with its labels in a
``SinglePointCalculator`` (``atoms.calc.results``: energy, forces, stress), total charge and
spin multiplicity in ``atoms.info['charge']`` / ``['spin']`` and its origin in
``atoms.info['source'] = "<file>:<frame index>"`` (0-based frame index within the file). A
``source`` key already present in the file (OMol25 uses one) is kept as ``info['data_source']``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase_db_backends.aselmdb import LMDBDatabase

PathLike = Union[str, os.PathLike]
XYZ_SUFFIXES = (".xyz", ".extxyz")
DB_SUFFIXES = (".db", ".json", ".aselmdb")
SUPPORTED_SUFFIXES = XYZ_SUFFIXES + DB_SUFFIXES


class DataError(ValueError):
    """A data file or structure cannot be used for training (message says where and why)."""


# ----------------------------------------------------------------------------- files


def list_data_files(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """Expand a file, a directory (its supported files, sorted, not recursive) or a list."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
            if not found:
                raise DataError(f"{p}: directory holds no data files (supported: {', '.join(SUPPORTED_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise DataError(f"{p}: unsupported file type '{p.suffix}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    if not out:
        raise DataError(f"{paths}: no data files given")
    return out


def _kind(path: Path) -> str:
    s = path.suffix.lower()
    return "xyz" if s in XYZ_SUFFIXES else s[1:]


def _set_source(atoms: Atoms, path: Path, frame: int) -> Atoms:
    if "source" in atoms.info:
        atoms.info["data_source"] = atoms.info.pop("source")
    atoms.info["source"] = f"{path}:{frame}"
    return atoms


# ----------------------------------------------------------------------------- databases

_DB_CACHE: dict = {}


def _forget_inherited_dbs() -> None:
    """In a forked child (DataLoader worker): close LMDB environments inherited from the parent.

    py-lmdb refuses to open an environment that is already open in the process, and an
    inherited handle must not be used after fork, so each worker opens its own.
    """
    for db in _DB_CACHE.values():
        env = getattr(db, "_env", None)
        if env is not None:
            try:
                env.close()
            except Exception:  # pragma: no cover - best effort
                pass
            db._env_pid = os.getpid()  # so the backend's __del__ does not try to reopen it
    _DB_CACHE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_dbs)


def open_db(path: PathLike, readonly: bool = True):
    """Open an ASE database (``.db`` SQLite, ``.json``, ``.aselmdb`` via ``ase_db_backends``).

    Connections are cached per process (forked DataLoader workers reopen). ``.aselmdb``
    is opened read-only without a lock file, as OMol25 training data usually is.
    """
    path = Path(path)
    key = (os.getpid(), str(path.resolve()), readonly)
    db = _DB_CACHE.get(key)
    if db is None:
        if _kind(path) == "aselmdb":
            db = LMDBDatabase(path, readonly=readonly, use_lock_file=not readonly)
        else:
            db = ase.db.connect(str(path), use_lock_file=False)
        if readonly:
            _DB_CACHE[key] = db
    return db


def row_to_atoms(row) -> Atoms:
    """ASE db row -> Atoms with single-point labels; ``row.data`` then key-value pairs go to
    ``atoms.info`` (OMol25 keeps ``charge``/``spin`` in ``data``)."""
    atoms = row.toatoms()
    data = row.get("data") or {}
    if isinstance(data, dict):
        atoms.info.update(data)
    atoms.info.update(row.key_value_pairs)
    return atoms


# ----------------------------------------------------------------------------- extxyz index


def index_xyz(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Byte offset of each frame's first line and its atom count, by scanning the file once."""
    offsets, counts = [], []
    with open(path, "rb") as f:
        lineno = 0
        while True:
            pos = f.tell()
            line = f.readline()
            lineno += 1
            if not line:
                break
            if not line.strip():
                continue
            try:
                n = int(line.split()[0])
            except ValueError:
                raise DataError(
                    f"{path}:{len(offsets)}: line {lineno} should hold the atom count of a frame, "
                    f"got {line[:60]!r}; is this an (ext)xyz file?"
                ) from None
            offsets.append(pos)
            counts.append(n)
            for _ in range(n + 1):
                if not f.readline():
                    raise DataError(f"{path}:{len(offsets) - 1}: file ends inside this frame (truncated file?)")
            lineno += n + 1
    return np.asarray(offsets, dtype=np.int64), np.asarray(counts, dtype=np.int64)


def _read_xyz_at(path: Path, offset: int) -> Atoms:
    with open(path, "rb") as f:
        f.seek(offset)
        first = f.readline()
        n = int(first.split()[0])
        lines = [first] + [f.readline() for _ in range(n + 1)]
    return ase.io.read(io.StringIO(b"".join(lines).decode()), format="extxyz", index=0)


# ----------------------------------------------------------------------------- public readers


def index_file(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, natoms)`` per frame: byte offsets (xyz) or row ids (databases)."""
    path = Path(path)
    if _kind(path) == "xyz":
        return index_xyz(path)
    db = open_db(path)
    keys, counts = [], []
    for row in db.select(include_data=False):
        keys.append(row.id)
        counts.append(row.natoms)
    return np.asarray(keys, dtype=np.int64), np.asarray(counts, dtype=np.int64)


def read_frame(path: PathLike, key: int, frame: int) -> Atoms:
    """Read one frame by index key (byte offset or row id); ``frame`` is only for ``source``."""
    path = Path(path)
    if _kind(path) == "xyz":
        atoms = _read_xyz_at(path, int(key))
    else:
        atoms = row_to_atoms(open_db(path).get(id=int(key)))
    return _set_source(atoms, path, frame)


def iter_file(path: PathLike) -> Iterator[Atoms]:
    """All frames of one file, in order."""
    path = Path(path)
    if _kind(path) == "xyz":
        frames: Iterable[Atoms] = ase.io.iread(str(path), index=":", format="extxyz")
    else:
        frames = (row_to_atoms(row) for row in open_db(path).select())
    for i, atoms in enumerate(frames):
        yield _set_source(atoms, path, i)


def iter_structures(paths: PathLike | Sequence[PathLike]) -> Iterator[Atoms]:
    """Lazily iterate over all frames of a file, directory or list of those."""
    for p in list_data_files(paths):
        yield from iter_file(p)


def read_structures(paths: PathLike | Sequence[PathLike]) -> list[Atoms]:
    """Read all frames; an empty data set is a :class:`DataError` naming the path."""
    out = list(iter_structures(paths))
    if not out:
        raise DataError(f"{paths}: data set holds no structures")
    return out


# ----------------------------------------------------------------------------- validation


def validate_structure(
    atoms: Atoms, where: str | None = None, require_forces: bool = True, elements: set[int] | None = None
) -> None:
    """Raise :class:`DataError` (naming ``where``, default ``atoms.info['source']``) if the
    structure cannot be trained on: empty, non-finite values, missing/misshapen labels,
    elements outside ``elements``, degenerate periodic cell."""
    where = where or str(atoms.info.get("source", "<structure>"))
    fix = "fix or remove this frame"
    n = len(atoms)
    if n == 0:
        raise DataError(f"{where}: empty structure (0 atoms); {fix}")
    if not np.all(np.isfinite(atoms.positions)):
        raise DataError(f"{where}: non-finite (NaN/inf) positions; {fix}")
    if elements is not None:
        bad = sorted(set(int(z) for z in atoms.numbers) - set(elements))
        if bad:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in bad)
            allowed = ", ".join(chemical_symbols[z] for z in sorted(elements))
            raise DataError(
                f"{where}: element(s) {names} not supported by the model (model elements: {allowed}); "
                f"add them to the model's element list or remove this frame"
            )
    cell, pbc = np.asarray(atoms.cell, dtype=float), np.asarray(atoms.pbc, dtype=bool)
    if not np.all(np.isfinite(cell)):
        raise DataError(f"{where}: non-finite (NaN/inf) cell; {fix}")
    if pbc.any():
        per = cell[pbc]
        sv = np.linalg.svd(per, compute_uv=False)
        if sv.min() < 1e-6 * max(1.0, sv.max()):
            raise DataError(
                f"{where}: periodic cell (pbc={pbc.tolist()}) has zero volume / degenerate lattice vectors "
                f"{per.tolist()}; set a valid cell or pbc=False for the non-periodic directions"
            )
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    energy = results.get("energy")
    if energy is None:
        raise DataError(
            f"{where}: missing energy label (expected 'energy' in the extxyz comment line or the db row); {fix}"
        )
    if not np.all(np.isfinite(np.asarray(energy, dtype=float))):
        raise DataError(f"{where}: non-finite energy {energy}; {fix}")
    forces = results.get("forces")
    if forces is None:
        if require_forces:
            raise DataError(
                f"{where}: missing forces label (expected a 'forces' per-atom array); {fix}, "
                f"or train without force labels"
            )
    else:
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (n, 3):
            raise DataError(f"{where}: forces have shape {forces.shape}, expected ({n}, 3); {fix}")
        if not np.all(np.isfinite(forces)):
            raise DataError(f"{where}: non-finite (NaN/inf) forces; {fix}")
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        if stress.shape not in ((6,), (3, 3)):
            raise DataError(f"{where}: stress has shape {stress.shape}, expected (6,) Voigt or (3, 3); {fix}")
        if not np.all(np.isfinite(stress)):
            raise DataError(f"{where}: non-finite (NaN/inf) stress; {fix}")
