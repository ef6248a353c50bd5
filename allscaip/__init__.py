"""allscaip: AllScAIP machine-learning interatomic potentials."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "AllScAIPCalculator"]


def __getattr__(name: str):
    # `allscaip.AllScAIPCalculator`, imported when first asked for: the calculator is an engine
    # (allscaip.engines.ase_calculator), and importing the package or any lower layer
    # (allscaip.model, allscaip.data, ...) must not pull in an engine.
    if name == "AllScAIPCalculator":
        from allscaip.calculator import AllScAIPCalculator

        return AllScAIPCalculator
    raise AttributeError(name)
