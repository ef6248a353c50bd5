"""The water teacher's stress labels (finite differences of its double-precision energy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmm")

from ase.io import read

from allscaip.units import EV_PER_A3_TO_BAR
from allscaip.units import EV_TO_KJ_PER_MOL as KJMOL_PER_EV
from allscaip.workflows.teacher.labelling import teacher_for_atoms
from allscaip.workflows.teacher.stress import pressure_bar, teacher_stress

VAL = Path(__file__).resolve().parents[1] / "examples" / "water" / "data" / "val.extxyz"


@pytest.fixture(scope="module")
def frame():
    return next(a for a in read(VAL, ":") if a.pbc.all() and a.info["n_molecules"] == 32)


def _energy_ev(atoms) -> float:
    return teacher_for_atoms(atoms).energy_kj(atoms.positions / 10.0) / KJMOL_PER_EV


def test_pressure_is_minus_volume_derivative_of_fresh_teachers(frame):
    s = teacher_stress(frame)
    # independent route: separate teacher systems at two box sizes (atoms scaled with the box)
    h = 1e-5
    e = []
    for f in (1 + h, 1 - h):
        b = frame.copy()
        b.set_cell(frame.cell * f, scale_atoms=True)
        e.append(_energy_ev(b))
    v = frame.get_volume()
    p_fd = -(e[0] - e[1]) / (v * ((1 + h) ** 3 - (1 - h) ** 3)) * EV_PER_A3_TO_BAR
    assert abs(p_fd) > 100.0  # a real, non-zero pressure
    assert pressure_bar(s) == pytest.approx(p_fd, abs=5.0)
    # shear: a lower-triangular strain (b tilts along x) keeps the box in OpenMM's form; for a
    # rotation-invariant energy dE/dε_yx / V is the symmetric σ_xy
    e = []
    for d in (h, -h):
        m = np.eye(3)
        m[1, 0] = d
        b = frame.copy()
        b.set_cell(np.asarray(frame.cell) @ m, scale_atoms=True)
        e.append(_energy_ev(b))
    sxy = (e[0] - e[1]) / (2 * h * v)
    assert abs(sxy) * EV_PER_A3_TO_BAR > 50.0
    assert s[5] * EV_PER_A3_TO_BAR == pytest.approx(sxy * EV_PER_A3_TO_BAR, abs=5.0)
    # the step is small enough: halving it changes nothing that matters (< 2 bar)
    assert np.abs(teacher_stress(frame, step=5e-6) - s).max() * EV_PER_A3_TO_BAR < 2.0


def test_stress_rotates_as_a_tensor(frame):
    """A 90° turn about z of a cubic periodic box is the same box: σ' = R σ Rᵀ component by component."""
    s = teacher_stress(frame)
    full = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
    assert np.abs(full[np.triu_indices(3, 1)]).max() * EV_PER_A3_TO_BAR > 50.0  # shear parts are not trivially zero
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    turned = frame.copy()
    L = float(frame.cell[0, 0])
    pos = (frame.positions @ rot.T).reshape(-1, 3, 3)  # whole molecules back into the box (bonds are not periodic)
    turned.positions = (pos - L * np.floor(pos[:, :1] / L)).reshape(-1, 3)
    t = teacher_stress(turned)
    got = np.array([[t[0], t[5], t[4]], [t[5], t[1], t[3]], [t[4], t[3], t[2]]])
    assert np.abs(got - rot @ full @ rot.T).max() * EV_PER_A3_TO_BAR < 2.0
