"""The long-range benchmark's definition: the point-charge boxes' and the dimers' parameters.

Shared by the OpenMM labelling (:mod:`.generate`) and the independent numpy references
(:mod:`.reference`), so that both compute the same interactions. Lengths in Å, energies in eV
unless a name says otherwise.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

# --------------------------------------------------------------------------- physical constants
E_CHARGE = 1.602176634e-19  # C
EPS0 = 8.8541878128e-12  # F/m
COULOMB_EV_A = E_CHARGE / (4.0 * math.pi * EPS0) / 1e-10  # e^2/(4 pi eps0) in eV Å (14.3996)

# --------------------------------------------------------------------------- parameters
# point charges
BOX_DENSITY = 0.012  # ions per Å^3 (mean spacing ~4.4 Å)
BOX_DMIN = 2.3  # Å, minimum ion-ion distance of the random placements
REP_A = 2870.0  # eV, Born-Mayer prefactor (force balances the +-1 Coulomb attraction near 2.5 Å)
REP_RHO = 0.30  # Å
REP_SWITCH = (2.6, 3.0)  # Å, OpenMM switching function on, cutoff
EWALD_TOL = 1e-6

# monomers: (element, charge e, LJ sigma Å, LJ epsilon kJ/mol, position Å); the first atom is the
# centre the separation d is measured from
R_OH, THETA_HOH = 0.9572, np.deg2rad(104.52)  # TIP3P
WATER = [
    ("O", -0.834, 3.15061, 0.6364, (0.0, 0.0, 0.0)),
    ("H", 0.417, 1.0, 0.0, (R_OH * np.sin(THETA_HOH / 2), 0.0, R_OH * np.cos(THETA_HOH / 2))),
    ("H", 0.417, 1.0, 0.0, (-R_OH * np.sin(THETA_HOH / 2), 0.0, R_OH * np.cos(THETA_HOH / 2))),
]
NA_ION = [("Na", 1.0, 2.439, 0.3658, (0.0, 0.0, 0.0))]
NA_ATOM = [("Na", 0.0, 2.439, 0.3658, (0.0, 0.0, 0.0))]
_T = 1.01 / np.sqrt(3.0)  # tetrahedral N-H 1.01 Å
AMMONIUM = [
    ("N", -0.40, 3.25, 0.7113, (0.0, 0.0, 0.0)),
    ("H", 0.35, 1.07, 0.0657, (_T, _T, _T)),
    ("H", 0.35, 1.07, 0.0657, (_T, -_T, -_T)),
    ("H", 0.35, 1.07, 0.0657, (-_T, _T, -_T)),
    ("H", 0.35, 1.07, 0.0657, (-_T, -_T, _T)),
]
_A = np.deg2rad(126.0 / 2)  # O-C-O 126°, C-O 1.25 Å, C-H 1.10 Å
FORMATE = [
    ("C", 0.60, 3.40, 0.3598, (0.0, 0.0, 0.0)),
    ("O", -0.75, 2.96, 0.8786, (1.25 * np.sin(_A), 0.0, 1.25 * np.cos(_A))),
    ("O", -0.75, 2.96, 0.8786, (-1.25 * np.sin(_A), 0.0, 1.25 * np.cos(_A))),
    ("H", -0.10, 2.42, 0.1255, (0.0, 0.0, -1.10)),
]
DIMER_KINDS: Dict[str, Tuple[list, list]] = {
    "na_water": (NA_ION, WATER),
    "nh4_formate": (AMMONIUM, FORMATE),
    "na0_water": (NA_ATOM, WATER),
}
CONTACT_H = 1.6  # Å, rejection: closest intermolecular distance involving an H
CONTACT_HEAVY = 2.3  # Å, between heavy atoms
MAX_INTERACTION = 1.0  # eV, rejection of strongly repulsive placements
D_MIN, D_MAX = 2.0, 15.0  # Å, range of centre-centre separations sampled
TAIL_DMIN = 6.0  # Å, lower end of the extra held-out tail frames
