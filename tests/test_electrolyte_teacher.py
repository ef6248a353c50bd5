"""The aqueous-NaCl teacher (allscaip.workflows.teacher.electrolyte): forces, charges, the ion pair, bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

pytest.importorskip("openmm")

import openmm
from ase import Atoms
from ase.io import read
from ase.neighborlist import neighbor_list
from conftest import small_model

from allscaip.checkpoint import save_checkpoint
from allscaip.engines.ase_calculator import AllScAIPCalculator
from allscaip.units import EV_PER_A3_TO_BAR
from allscaip.units import EV_TO_KJ_PER_MOL as KJMOL_PER_EV
from allscaip.workflows.teacher import cli
from allscaip.workflows.teacher import electrolyte as el
from allscaip.workflows.teacher.electrolyte_sampling import sample_solution_frames
from allscaip.workflows.teacher.labelling import (
    TeacherLabeller,
    crossing_free_perturbation_step,
    cutoff_pairs,
    finite_difference_check,
    teacher_for_atoms,
)
from allscaip.workflows.teacher.stress import STRAIN_STEP, crossing_free_step, pressure_bar, teacher_stress
from allscaip.workflows.teacher.system import CUTOFF_NM, create_system, reference_water_atoms, water_topology


@pytest.fixture(scope="module")
def solution_frame():
    """32 waters + one Na⁺/Cl⁻ pair (1.73 mol/kg) after 0.3 ps of the teacher's MD, labelled."""
    return sample_solution_frames(32, 1, 300.0, 1.0, 1, seed=3, equilibration_ps=0.3)[0]


def test_forces_are_minus_the_energy_gradient(solution_frame):
    res = finite_difference_check(solution_frame, n_components=18, n_directions=3)
    # the stored labels are the teacher's
    assert res["stored_energy_diff_eV"] < 1e-9
    assert res["stored_forces_max_diff_eV_ang"] < 1e-9
    # double precision, h = 1e-5 Å: errors ~1e-8 eV/Å against forces ~1 eV/Å
    assert res["component_rms_force_eV_ang"] > 0.1
    assert res["component_max_abs_err_eV_ang"] < 1e-6
    assert res["directional_max_rel_err"] < 1e-6
    # and the ions' own forces (the last two atoms), which the random components may miss
    lab = teacher_for_atoms(solution_frame)
    x0 = solution_frame.positions / 10.0
    h = 1e-6  # nm
    f = solution_frame.get_forces()
    for i in (len(x0) - 2, len(x0) - 1):
        for k in range(3):
            xp, xm = x0.copy(), x0.copy()
            xp[i, k] += h
            xm[i, k] -= h
            fd = -(lab.energy_kj(xp) - lab.energy_kj(xm)) / (2 * h) / KJMOL_PER_EV / 10.0
            assert fd == pytest.approx(f[i, k], abs=1e-6)


def test_force_difference_where_a_pair_sits_on_the_cutoff(solution_frame):
    """The teacher's energy jumps where a pair crosses its 0.45 nm cutoff. One water moved so
    that an O-O pair, mostly along x, sits within 1e-5 Å of the cutoff: a central difference of
    the first O's x coordinate with that fixed step straddles the jump and misses the force by
    far more than 1e-3 eV/Å; with the step of crossing_free_perturbation_step it agrees to 1e-6."""
    rc, h = CUTOFF_NM * 10.0, 1e-5
    i, j, d, vec = neighbor_list("ijdD", solution_frame, rc + 0.3)
    oxygen = np.array(solution_frame.get_chemical_symbols()) == "O"
    along_x = np.abs(vec[:, 0]) / d
    k = int(np.argmin(np.where(oxygen[i] & oxygen[j] & (along_x > 0.9), np.abs(d - rc), np.inf)))
    # translate j's water (O, H, H) along the pair: the pair then sits at rc + h (x/d) / 2
    frame = solution_frame.copy()
    frame.positions[j[k] : j[k] + 3] += (rc + 0.5 * h * along_x[k] - d[k]) * vec[k] / d[k]
    lab = teacher_for_atoms(frame)
    x0 = frame.positions / 10.0
    force = lab.ev_ang(x0)[1][i[k], 0]
    move = np.zeros_like(x0)
    move[i[k], 0] = 1.0
    step = crossing_free_perturbation_step(cutoff_pairs(frame), lambda a, b, _: move[b] - move[a], h)
    assert step < h

    def fd_force(step_ang):
        e = [lab.energy_kj(x0 + sign * step_ang / 10.0 * move) for sign in (1.0, -1.0)]
        return -(e[0] - e[1]) / (2 * step_ang / 10.0) / KJMOL_PER_EV / 10.0

    assert abs(fd_force(h) - force) > 1e-3
    assert fd_force(step) == pytest.approx(force, abs=1e-6)


def test_charge_neutrality_and_ion_parameters(solution_frame):
    lab = teacher_for_atoms(solution_frame)
    assert el.total_charge(lab.system) == pytest.approx(0.0, abs=1e-12)
    assert solution_frame.info["charge"] == 0
    nb = next(f for f in lab.system.getForces() if isinstance(f, openmm.NonbondedForce))
    n = len(solution_frame)
    for index, symbol in ((n - 2, "Na"), (n - 1, "Cl")):
        q, sigma, eps = (p._value for p in nb.getParticleParameters(index))
        assert (q, sigma, eps) == pytest.approx(el.ION_PARAMETERS[symbol], rel=1e-12)
    # a charged composition is refused, by the teacher and by the box builder alike
    with pytest.raises(ValueError, match="neutral systems only: 1 Na"):
        el.composition(["O", "H", "H", "Na"])
    assert el.molality(32, 1) == pytest.approx(1.0 / (32 * 18.01528e-3), rel=1e-4)


def test_water_is_the_water_teachers(solution_frame):
    """amber14/tip3p.xml's water is tip3p.xml's: same energy and forces on the waters alone."""
    n_w = solution_frame.info["n_molecules"]
    box = np.asarray(solution_frame.cell) / 10.0
    pos = solution_frame.positions[: 3 * n_w] / 10.0
    water = TeacherLabeller(create_system(water_topology(n_w, box[0, 0]), periodic=True), box)
    solvent = TeacherLabeller(el.create_solution_system(el.solution_topology(n_w, 0, 0, box[0, 0]), periodic=True), box)
    (e1, f1), (e2, f2) = water.kj_nm(pos), solvent.kj_nm(pos)
    assert e2 == pytest.approx(e1, rel=1e-12, abs=1e-9)
    assert np.abs(f2 - f1).max() < 1e-8


def test_ion_pair_in_a_big_box_is_the_gas_phase_pair():
    """Na⁺ + Cl⁻ alone: NoCutoff equals Coulomb + LJ (Lorentz-Berthelot) to 1e-4 kJ/mol; in a
    periodic 3 nm box (PME, LJPME) it equals that plus the tin-foil image term of a dipole,
    -2π p² k/(3V), to 0.15 kJ/mol (0.05 % of the energy; the rest is the images' higher
    multipoles, ~r⁴/L⁵). Without the image term the miss is up to 2.7 kJ/mol."""
    L = 3.0
    gas = TeacherLabeller(el.build_gas_ion_pair()[0])
    box = np.eye(3) * L
    periodic = TeacherLabeller(el.create_solution_system(el.solution_topology(0, 1, 1, L), periodic=True), box)
    for r in (0.28, 0.4, 0.5):  # contact (LJ repulsion 8 kJ/mol), inside and beyond the 0.45 nm cutoff
        pos = np.array([[1.0, 1.0, 1.0], [1.0 + r, 1.0, 1.0]])
        assert gas.energy_kj(pos) == pytest.approx(el.ion_pair_energy_kj(r), abs=1e-4)
        image = 2 * math.pi * r**2 / (3 * L**3) * el.COULOMB_KJ_NM
        assert image > 0.3
        expected = el.ion_pair_energy_kj(r, beyond_cutoff_nm=CUTOFF_NM) - image
        assert periodic.energy_kj(pos) == pytest.approx(expected, abs=0.15)
    # the gas-phase force is the derivative of the same formula
    r, h = 0.35, 1e-6
    pos = np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
    _, f = gas.kj_nm(pos)
    dedr = (el.ion_pair_energy_kj(r + h) - el.ion_pair_energy_kj(r - h)) / (2 * h)
    assert f[1, 0] == pytest.approx(-dedr, rel=1e-7)


def _pressure_of_fresh_teachers(atoms, h=1e-5) -> float:
    """Minus the volume derivative of fresh teachers at isotropically scaled boxes, bar, with a
    step that keeps every pair on one side of the cutoff."""
    h = crossing_free_step(atoms, np.eye(3), h)
    e = []
    for f in (1 + h, 1 - h):
        b = atoms.copy()
        b.set_cell(atoms.cell * f, scale_atoms=True)
        e.append(teacher_for_atoms(b).energy_kj(b.positions / 10.0) / KJMOL_PER_EV)
    return -(e[0] - e[1]) / (atoms.get_volume() * ((1 + h) ** 3 - (1 - h) ** 3)) * EV_PER_A3_TO_BAR


def test_stress_of_a_solution_frame(solution_frame):
    """The shared finite-difference stress (stress.py) on the electrolyte teacher: its pressure
    is minus the volume derivative of fresh teachers at scaled boxes."""
    p_fd = _pressure_of_fresh_teachers(solution_frame)
    assert abs(p_fd) > 100.0
    assert pressure_bar(teacher_stress(solution_frame)) == pytest.approx(p_fd, abs=5.0)


def test_stress_where_a_pair_sits_on_the_cutoff(solution_frame):
    """The teacher's energy jumps where a pair crosses its 0.45 nm cutoff. A frame scaled so
    that an O-O pair, mostly along x, sits within the strain step of the cutoff: a fixed step
    straddles the jump and misses the pressure by tens of bar; the stress halves its step
    until no pair crosses, and agrees with the volume derivative again."""
    rc = CUTOFF_NM * 10.0
    step = STRAIN_STEP
    i, j, d, vec = neighbor_list("ijdD", solution_frame, rc + 0.3)
    oxygen = np.array(solution_frame.get_chemical_symbols()) == "O"
    along_x = (vec[:, 0] / d) ** 2
    score = np.where(oxygen[i] & oxygen[j] & (along_x > 0.8), np.abs(d - rc), np.inf)
    k = int(np.argmin(score))
    assert np.isfinite(score[k])
    # under an xx strain ε the pair's length is d (1 + ε a), a = (x/d)²: put it at rc (1 + a step/2)
    scale = rc * (1.0 + 0.5 * along_x[k] * step) / d[k]
    frame = solution_frame.copy()
    frame.set_cell(solution_frame.cell * scale, scale_atoms=True)
    xx = np.zeros((3, 3))
    xx[0, 0] = 1.0
    assert crossing_free_step(frame, xx, step) < step
    assert crossing_free_step(solution_frame, xx, 1e-9) == 1e-9  # nothing near the cutoff there
    p_ref = _pressure_of_fresh_teachers(frame)
    stress = teacher_stress(frame)
    assert pressure_bar(stress) == pytest.approx(p_ref, abs=5.0)
    # the same difference with the step held fixed is off by the jump
    lab = teacher_for_atoms(frame)
    e = []
    for sign in (1.0, -1.0):
        b = frame.copy()
        b.set_cell(np.asarray(frame.cell) @ (np.eye(3) + sign * step * xx), scale_atoms=True)
        lab.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.asarray(b.cell) / 10.0])
        e.append(lab.energy_kj(b.positions / 10.0) / KJMOL_PER_EV)
    sxx_fixed = (e[0] - e[1]) / (2 * step * frame.get_volume())
    assert abs(sxx_fixed - stress[0]) * EV_PER_A3_TO_BAR > 50.0


def test_ion_pair_window_holds_its_separation():
    frames = sample_solution_frames(32, 1, 300.0, 1.0, 2, seed=5, pair_distance_nm=0.45, equilibration_ps=0.3)
    for a in frames:
        assert a.info["config_type"] == "ion_pair" and a.info["pair_target_ang"] == 4.5
        d = a.positions[-1] - a.positions[-2]
        d -= a.cell[0, 0] * np.round(d / a.cell[0, 0])
        assert np.linalg.norm(d) == pytest.approx(a.info["r_NaCl_ang"], abs=1e-3)
        assert abs(a.info["r_NaCl_ang"] - 4.5) < 1.0  # restraint spread 0.2 Å at 300 K
        assert a.get_chemical_symbols()[-2:] == ["Na", "Cl"]


def test_unknown_element_names_the_known_ones():
    w = reference_water_atoms()
    bad = w + Atoms("K", positions=[[3.0, 0, 0]]) + Atoms("Cl", positions=[[-3.0, 0, 0]])
    with pytest.raises(ValueError, match=r"\['K'\] are not in the teacher, which knows O, H, Na, Cl"):
        teacher_for_atoms(bad)
    with pytest.raises(ValueError, match="ordered waters"):
        teacher_for_atoms(Atoms("NaClOHH", positions=np.arange(15.0).reshape(5, 3)))


def test_cli_writes_train_val_and_larger_test_boxes(tmp_path):
    """``cli --system nacl`` on a tiny budget: splits, stress labels, test boxes larger than training."""
    out = {s: tmp_path / f"{s}.extxyz" for s in ("train", "val", "test")}
    argv = ["--system", "nacl", "--compositions", "32:1", "--temperatures", "300", "--frames-per-state", "2"]
    argv += ["--pair-waters", "32", "--pair-windows", "2", "--pair-frames", "1", "--test-compositions", "64:2"]
    argv += ["--test-frames", "1", "--test-pair-waters", "0", "--equilibration-ps", "0.2", "--threads", "1"]
    argv += ["--no-fd-check"] + [x for s, p in out.items() for x in (f"--{s}-out", str(p))]
    assert cli.main(argv) == 0
    frames = {s: read(p, ":") for s, p in out.items()}
    assert [len(frames[s]) for s in ("train", "val", "test")] == [2, 2, 1]
    assert {a.info["config_type"] for a in frames["train"]} == {"solution", "ion_pair"}
    assert max(len(a) for a in frames["train"] + frames["val"]) < min(len(a) for a in frames["test"])
    for a in frames["train"] + frames["test"]:
        assert a.info["teacher"] == el.ELECTROLYTE_TEACHER_NAME and a.info["n_na"] == a.info["n_cl"]
        assert np.abs(a.get_stress()).max() > 0  # the stress label travelled through extxyz
        assert np.abs(a.get_forces()).max() > 0.1
    with pytest.raises(SystemExit):
        cli.main(["--system", "nacl", "--compositions", "32-1", "--train-out", str(out["train"])])


def test_model_refuses_an_element_outside_h_o_na_cl(solution_frame, tmp_path):
    """The model side of the bad input: a long-range (sinc_pairs) model of H, O, Na, Cl labels an
    electrolyte frame, and refuses the same frame with a K in place of the Na, naming its elements."""
    model = small_model(elements=[1, 8, 11, 17], node_encoding="sinc_pairs", core=False)
    path = tmp_path / "nacl.ckpt"
    save_checkpoint(path, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    good = solution_frame.copy()
    good.calc = AllScAIPCalculator(path)
    assert np.isfinite(good.get_potential_energy())
    bad = solution_frame.copy()
    bad.numbers[-2] = 19
    bad.calc = AllScAIPCalculator(path)
    with pytest.raises(ValueError, match=r"\['K'\] are not in model nacl\.ckpt, which knows \['H', 'O', 'Na', 'Cl'\]"):
        bad.get_potential_energy()
