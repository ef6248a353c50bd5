"""allscaip: AllScAIP machine-learning interatomic potentials."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "AllScAIPCalculator"]


def __getattr__(name: str):
    # Lazy import so that `import allscaip` stays light (no ASE import for C++-facing tools).
    if name == "AllScAIPCalculator":
        from allscaip.calculator import AllScAIPCalculator

        return AllScAIPCalculator
    raise AttributeError(name)
