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


def default_dtype_name(device: str) -> str:
    """The dtype a model runs in when none is asked for: float32 on a GPU (its fused attention
    kernels and tensor cores; float64 falls back to the math attention kernel at a fraction of the
    speed), float64 on the CPU (reference numbers, and the CPU's float64 costs about 2x, not 30x)."""
    return "float32" if str(device).startswith("cuda") else "float64"
