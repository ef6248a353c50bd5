"""The floating-point types a model may run in, by the names configs, metadata and CLIs use."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""Name -> torch dtype. float64 for reference numbers and tests, float32 for production MD."""


def dtype_from_name(name: str, what: str = "dtype") -> torch.dtype:
    """The torch dtype called ``name``; a ValueError naming ``what`` and the valid names otherwise."""
    if name not in DTYPES:
        raise ValueError(f"{what} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]
