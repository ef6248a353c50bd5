"""Deterministic seeds and file fingerprints, shared by every workflow that must be rerun
bit for bit (data generation, liquid runs, exports that name their source)."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

_READ_CHUNK_BYTES = 1 << 20  # stream large checkpoints instead of reading them whole


def seed_for(*parts) -> int:
    """A deterministic, non-zero 31-bit seed from arbitrary parts.

    Non-zero because OpenMM treats a seed of 0 as "pick one at random".
    """
    return (zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF) or 1


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_READ_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()
