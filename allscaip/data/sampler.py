"""Batches bounded by a total atom count, deterministic per (seed, epoch), split over replicas.

Contract of :class:`MaxAtomsBatchSampler`:

1. Global batch list: frames are ordered (a permutation seeded by ``(seed, epoch)`` when
   ``shuffle``, else ``0..n-1``) and packed greedily in that order: a batch is closed when the
   next frame would take it above ``max_atoms``. Every batch holds ≤ ``max_atoms`` atoms,
   except a single frame larger than ``max_atoms``, which forms its own batch (warned once).
   With ``drop_last`` the final batch of the list (the packing tail, usually under-filled)
   is dropped. The list depends only on (natoms, max_atoms, shuffle, seed, epoch, drop_last),
   so all ranks compute the same one; its length can change from epoch to epoch.
2. Replica split: with ``R = num_replicas``, global step ``s`` consists of batches
   ``s*R .. s*R+R-1``; rank ``r`` yields batch ``s*R + r``. ``num_steps() = len(batches) // R``;
   the ``len(batches) % R`` remaining batches are dropped this epoch (no padding, so no frame
   is seen twice and every rank runs the same number of steps).
   Hence one process (``num_replicas=1``) accumulating gradients over ``R`` consecutive
   batches sees exactly the data of one ``R``-rank step (apart from the dropped remainder).
"""

from __future__ import annotations

import functools
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from allscaip.data.batch import atoms_to_batch


class MaxAtomsBatchSampler(Sampler[list[int]]):
    """Yields lists of frame indices with at most ``max_atoms`` atoms in total (see module doc)."""

    def __init__(
        self,
        natoms_per_frame: Sequence[int],
        max_atoms: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.natoms = np.asarray(natoms_per_frame, dtype=np.int64)
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.max_atoms, self.shuffle, self.seed = int(max_atoms), bool(shuffle), int(seed)
        self.drop_last, self.num_replicas, self.rank = bool(drop_last), int(num_replicas), int(rank)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        big = self.natoms > self.max_atoms
        if big.any():
            warnings.warn(
                f"{int(big.sum())} frame(s) have more than max_atoms={self.max_atoms} atoms (largest: "
                f"{int(self.natoms.max())}); each forms a batch of its own. Raise max_atoms to avoid this.",
                stacklevel=2,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes the shuffle); call before iterating each epoch."""
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, before the replica split."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = len(self.natoms)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        batches: list[list[int]] = []
        cur: list[int] = []
        total = 0
        for i in order.tolist():
            k = int(self.natoms[i])
            if cur and total + k > self.max_atoms:
                batches.append(cur)
                cur, total = [], 0
            cur.append(i)
            total += k
        if cur:
            batches.append(cur)
        if self.drop_last and len(batches) > 1:
            batches.pop()
        self._cache = (self.epoch, batches)
        return batches

    def num_steps(self) -> int:
        """Optimizer steps (= batches per rank) in the current epoch."""
        return len(self.global_batches()) // self.num_replicas

    def __len__(self) -> int:
        return self.num_steps()

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        r = self.num_replicas
        for s in range(len(batches) // r):
            yield list(batches[s * r + self.rank])


def make_loader(
    dataset, sampler: MaxAtomsBatchSampler, dtype: torch.dtype = torch.float64, num_workers: int = 0, **kwargs
) -> DataLoader:
    """DataLoader yielding :class:`AtomsBatch` es: ``batch_sampler=sampler``, collation by
    :func:`atoms_to_batch`. Extra ``kwargs`` go to ``DataLoader`` (e.g. ``persistent_workers``)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(atoms_to_batch, dtype=dtype),
        num_workers=num_workers,
        **kwargs,
    )
