"""Engines: the MD codes and calculators that run an exported allscaip model (LAMMPS, OpenMM, ASE)."""
