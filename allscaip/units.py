"""Physical constants and unit conversions: the one place the Python side keeps them.

The model works in eV, Å and amu (ASE's units). OpenMM works in kJ/mol, nm and ps; LAMMPS
``units metal`` is eV, Å and ps, ``units real`` kcal/mol and Å (the C++ side keeps its own
table in ``lammps_plugin/allscaip_units.h``). Everything else converts through the names below.
"""

from __future__ import annotations

AVOGADRO = 6.02214076e23
"""Avogadro's number, 1/mol (exact since the 2019 SI)."""

EV_TO_KJ_PER_MOL = 96.48533212331002
"""1 eV per particle in kJ/mol: e * N_A / 1000 (CODATA 2018)."""

ANGSTROM_PER_NM = 10.0
EV_PER_A_TO_KJ_PER_MOL_NM = EV_TO_KJ_PER_MOL * ANGSTROM_PER_NM
"""A force of 1 eV/Å in kJ/mol/nm (OpenMM's force unit)."""

BOLTZMANN_KJ_PER_MOL_K = 0.00831446261815324
"""Boltzmann's constant per mole (the gas constant R), kJ/mol/K (exact since the 2019 SI)."""

BOLTZMANN_EV_PER_K = 8.617333262e-5
"""Boltzmann's constant in eV/K (exact since the 2019 SI)."""

BAR_PER_ATM = 1.01325
"""One standard atmosphere in bar (exact)."""

EV_PER_A3_TO_BAR = 1.602176634e6
"""A pressure (or stress) of 1 eV/Å³ in bar: e * 1e30 / 1e5."""

CM3_PER_A3 = 1e-24
CM3_PER_NM3 = 1e-21


def mass_density_g_cm3(mass_amu: float, volume_A3: float) -> float:
    """Mass density in g/cm³ of ``mass_amu`` (amu, i.e. g/mol) filling ``volume_A3`` (Å³).

    One amu is taken as 1 g/mol divided by Avogadro's number, the convention of OpenMM's and
    ASE's masses.
    """
    return float(mass_amu) / AVOGADRO / (float(volume_A3) * CM3_PER_A3)


def volume_A3_at_density(mass_amu: float, density_g_cm3: float) -> float:
    """The volume (Å³) that ``mass_amu`` fills at ``density_g_cm3``: the inverse of
    :func:`mass_density_g_cm3`."""
    return float(mass_amu) / AVOGADRO / float(density_g_cm3) / CM3_PER_A3
