"""Map-style dataset of labelled structures over one or more files (in memory or streaming)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from allscaip.data.readers import (
    DataError,
    PathLike,
    index_file,
    iter_file,
    list_data_files,
    read_frame,
    validate_structure,
)

DEFAULT_STREAM_THRESHOLD = 1 << 30  # bytes of data files above which streaming is chosen


class StructureDataset(torch.utils.data.Dataset):
    """Frames from extxyz / ASE db / ASE-LMDB files; ``dataset[i]`` is an ``ase.Atoms``.

    * in-memory (``stream=False``): every frame is read and validated at construction;
    * streaming (``stream=True``): an index of ``(file, key, natoms)`` is built once (key = byte
      offset of the frame in extxyz files, row id in databases) and each ``__getitem__`` reads
      and validates one frame. Nothing else is kept in memory. With ``index_cache`` (a
      directory) the index is stored there and reused while the files' sizes and mtimes match.

    ``stream=None`` streams when the files total more than ``stream_threshold`` bytes.
    ``natoms(i)`` / ``natoms_per_frame`` never read frames.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        stream: Optional[bool] = None,
        elements: Optional[set[int]] = None,
        require_forces: bool = True,
        stream_threshold: int = DEFAULT_STREAM_THRESHOLD,
        index_cache: Optional[PathLike] = None,
        progress: bool = True,
    ) -> None:
        self.files = list_data_files(paths)
        self.elements = set(int(z) for z in elements) if elements is not None else None
        self.require_forces = require_forces
        size = sum(f.stat().st_size for f in self.files)
        self.streaming = bool(size > stream_threshold if stream is None else stream)
        self._frames: Optional[list[Atoms]] = None
        if self.streaming:
            self._build_index(index_cache, progress)
        else:
            self._load_all(progress)
        if len(self) == 0:
            raise DataError(f"{paths}: data set holds no structures")

    # ------------------------------------------------------------------ construction
    def _load_all(self, progress: bool) -> None:
        frames: list[Atoms] = []
        file_idx, frame_idx = [], []
        bar = tqdm(desc="reading structures", unit="frame", disable=not progress)
        for fi, path in enumerate(self.files):
            for j, atoms in enumerate(iter_file(path)):
                validate_structure(atoms, atoms.info["source"], self.require_forces, self.elements)
                frames.append(atoms)
                file_idx.append(fi)
                frame_idx.append(j)
                bar.update(1)
        bar.close()
        self._frames = frames
        self._file = np.asarray(file_idx, dtype=np.int64)
        self._frame = np.asarray(frame_idx, dtype=np.int64)
        self._key = self._frame.copy()
        self._natoms = np.asarray([len(a) for a in frames], dtype=np.int64)

    def _build_index(self, index_cache: Optional[PathLike], progress: bool) -> None:
        cache = None
        if index_cache is not None:
            stamp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]
            digest = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]
            cache = Path(index_cache) / f"allscaip_index_{digest}.npz"
            if cache.is_file():
                z = np.load(cache)
                self._file, self._frame, self._key, self._natoms = z["file_idx"], z["frame"], z["key"], z["natoms"]
                return
        parts = []
        for fi, path in enumerate(tqdm(self.files, desc="indexing data files", unit="file", disable=not progress)):
            keys, counts = index_file(path)
            parts.append((np.full(len(keys), fi), np.arange(len(keys)), keys, counts))
        cat = [np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(4)]
        self._file, self._frame, self._key, self._natoms = cat
        if cache is not None and len(self._natoms):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, file_idx=self._file, frame=self._frame, key=self._key, natoms=self._natoms)
            tmp.replace(cache)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self._natoms.shape[0])

    def natoms(self, i: int) -> int:
        """Atom count of frame ``i`` (from the index; reads nothing)."""
        return int(self._natoms[i])

    @property
    def natoms_per_frame(self) -> np.ndarray:
        """Atom counts of all frames, ``int64 [len]`` (pass to :class:`MaxAtomsBatchSampler`)."""
        return self._natoms

    def source(self, i: int) -> str:
        """``"<file>:<frame index>"`` of frame ``i``."""
        return f"{self.files[self._file[i]]}:{self._frame[i]}"

    def __getitem__(self, i: int) -> Atoms:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range for a data set of {len(self)} frames")
        if self._frames is not None:
            return self._frames[i]
        atoms = read_frame(self.files[self._file[i]], int(self._key[i]), int(self._frame[i]))
        if len(atoms) != self._natoms[i]:
            raise DataError(f"{atoms.info['source']}: file changed since it was indexed; rebuild the index")
        validate_structure(atoms, atoms.info["source"], self.require_forces, self.elements)
        return atoms
