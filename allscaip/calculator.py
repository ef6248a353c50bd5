"""The ASE calculator's original import path: ``from allscaip.calculator import AllScAIPCalculator``.

The calculator is an engine and lives in :mod:`allscaip.engines.ase_calculator`.
"""

from allscaip.engines.ase_calculator import AllScAIPCalculator, check_device

__all__ = ["AllScAIPCalculator", "check_device"]
