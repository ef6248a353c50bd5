"""The NaCl evaluation (allscaip.workflows.electrolyte): distances, binned errors, the pair scan
and the command end to end on tiny inputs with random-weight models (nothing is trained)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmm")

from ase import Atoms
from ase.io import read, write
from conftest import small_model

from allscaip.checkpoint import save_checkpoint
from allscaip.engines.ase_calculator import AllScAIPCalculator
from allscaip.workflows.electrolyte import cli, forces, pair_curve
from allscaip.workflows.teacher.labelling import teacher_for_atoms

VAL = Path(__file__).resolve().parents[1] / "examples" / "electrolyte" / "data" / "val.extxyz"
COULOMB_EV_A = 14.399645  # e^2 / (4 pi eps0) in eV Å


@pytest.fixture(scope="module")
def val_frames():
    frames = read(VAL, ":")
    pair = next(a for a in frames if a.info["config_type"] == "ion_pair" and len(a) < 200)
    # two pairs, so that the pair scan has to pick the ion-pair frame
    solution = min((a for a in frames if a.info["config_type"] == "solution" and a.info["n_na"] == 2), key=len)
    return pair, solution


def test_nearest_ion_distance_uses_the_minimum_image():
    a = Atoms("NaClOH", positions=[[1, 1, 1], [9, 1, 1], [5, 1, 1], [1, 4, 1]], cell=[10, 10, 10], pbc=True)
    # Na-Cl through the boundary: 2 Å; O is 4 Å from Na and 4 Å from Cl; H is 3 Å above Na
    assert forces.nearest_ion_distance(a) == pytest.approx([2.0, 2.0, 4.0, 3.0], abs=1e-12)
    assert forces.is_ion(a).tolist() == [True, True, False, False]
    assert np.isinf(forces.nearest_ion_distance(Atoms("OH2", positions=np.eye(3), cell=[9] * 3, pbc=True))).all()


def test_binned_mae_and_summary_by_hand():
    err = forces.FrameErrors(
        abs_force_error=np.array([0.1, 0.3, 0.02, 0.04, 0.06]),
        distance=np.array([2.5, 9.0, 2.9, 3.5, 3.9]),
        ion=np.array([True, True, False, False, False]),
        energy_error_per_atom=np.array([0.001, -0.003]),
    )
    bins = forces.binned_mae(err, edges=(0.0, 3.0, 4.0, np.inf))
    assert [b["n_atoms"] for b in bins["ion"]] == [1, 0, 1]
    assert bins["ion"][0]["mae_meV_A"] == pytest.approx(100.0)
    assert np.isnan(bins["ion"][1]["mae_meV_A"])
    assert bins["water"][1]["mae_meV_A"] == pytest.approx(50.0)  # the atoms at 3.5 and 3.9 Å
    s = forces.summary(err)
    assert s["ion_force_mae_meV_A"] == pytest.approx(200.0)
    assert s["water_force_mae_meV_A"] == pytest.approx(40.0)
    assert s["energy_mae_meV_atom"] == pytest.approx(2.0)


def test_frame_errors_against_the_stored_labels(val_frames):
    pair, _ = val_frames
    shift = np.zeros((len(pair), 3))
    shift[-1] = [0.3, -0.6, 0.0]  # the Cl's force off by a mean |error| of 0.3 eV/Å
    err = forces.frame_errors([pair], lambda a: (a.get_potential_energy() + 0.194, a.get_forces() + shift))
    assert err.abs_force_error[-1] == pytest.approx(0.3)
    assert err.abs_force_error[:-1].max() == 0.0
    assert err.energy_error_per_atom[0] == pytest.approx(0.194 / len(pair))
    assert err.distance[-1] == pytest.approx(pair.info["r_NaCl_ang"], abs=1e-3)


def test_channel_frame_clears_the_path_and_keeps_the_order(val_frames):
    pair, _ = val_frames
    r = np.arange(3.0, 6.01, 0.5)
    frame, cl_pos = pair_curve.channel_frame(pair, r)
    sym = frame.get_chemical_symbols()
    n_w = frame.info["n_molecules"]
    assert frame.info["removed_waters"] > 0 and len(frame) == len(pair) - 3 * frame.info["removed_waters"]
    assert sym[: 3 * n_w] == ["O", "H", "H"] * n_w and sym[3 * n_w :] == ["Na", "Cl"]
    na = frame.positions[-2]
    assert np.linalg.norm(cl_pos - na, axis=1) == pytest.approx(r, abs=1e-12)
    for p in cl_pos:  # no water atom in the Cl's way at any point of the scan
        a = frame.copy()
        a.positions[-1] = p
        d = a.get_distances(len(a) - 1, range(3 * n_w), mic=True).reshape(-1, 3)
        assert d[:, 0].min() >= pair_curve.CHANNEL_O_A and d[:, 1:].min() >= pair_curve.CHANNEL_H_A
    with pytest.raises(ValueError, match=r"separations must lie in \(0, 6\.2"):
        pair_curve.channel_frame(pair, [3.0, 7.0])
    two_na = pair.copy()
    two_na.numbers[-1] = 11
    with pytest.raises(ValueError, match="exactly one Na and one Cl, got 2 Na and 0 Cl"):
        pair_curve.channel_frame(two_na, r)


def test_scan_direction_is_perpendicular_to_the_pair(val_frames):
    pair, _ = val_frames
    _, _, u = pair_curve.pair_direction(pair)
    v = pair_curve.scan_direction(pair)
    assert abs(u @ v) < 1e-12 and np.linalg.norm(v) == pytest.approx(1.0)
    frame, cl_pos = pair_curve.channel_frame(pair, [3.0, 5.0], v)
    assert (cl_pos[1] - frame.positions[-2]) == pytest.approx(5.0 * v)


def test_scan_of_a_coulomb_pair_and_the_edge_check(val_frames):
    pair, _ = val_frames
    r = np.arange(3.0, 6.01, 0.5)
    frame, cl_pos = pair_curve.channel_frame(pair, r)

    def coulomb(a):
        return -COULOMB_EV_A / a.get_distance(-2, -1, mic=True)

    curves = pair_curve.scan(frame, cl_pos, {"teacher": coulomb, "flat": lambda a: 1.5})
    exact = -COULOMB_EV_A * (1 / r - 1 / r[-1])
    assert curves["teacher"] == pytest.approx(exact, abs=1e-12)
    assert curves["flat"] == pytest.approx(np.zeros_like(r))
    same = pair_curve.edge_check(r, curves["teacher"], curves["teacher"], edge_a=4.1)
    assert same["edge_A"] == 4.0 and same["error_over_edge_value"] == 0.0
    flat = pair_curve.edge_check(r, curves["teacher"], curves["flat"], edge_a=4.1)
    # a flat model misses the whole tail; its worst error is the teacher's value at the edge
    assert flat["error_over_edge_value"] == pytest.approx(1.0)
    assert flat["teacher_at_edge_eV"] == pytest.approx(-COULOMB_EV_A * (1 / 4.0 - 1 / 6.0))
    assert flat["model_span_beyond_edge_eV"] == pytest.approx(0.0)


def _checkpoint(path: Path, **overrides) -> Path:
    model = small_model(elements=[1, 8, 11, 17], core=False, **overrides)
    save_checkpoint(path, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    return path


def test_command_end_to_end_with_random_weight_models(val_frames, tmp_path):
    pair, solution = val_frames
    write(tmp_path / "test.extxyz", [solution, pair])
    ckpt = {
        "local": _checkpoint(tmp_path / "local.ckpt", node_attention=False),
        "longrange": _checkpoint(tmp_path / "longrange.ckpt", node_attention=True, node_encoding="sinc_pairs"),
    }
    (tmp_path / "notes.md").write_text("A note on the numbers.\n")
    doc = tmp_path / "docs" / "electrolyte.md"
    argv = [
        "--local",
        str(ckpt["local"]),
        "--longrange",
        str(ckpt["longrange"]),
        "--test",
        str(tmp_path / "test.extxyz"),
    ]
    argv += ["--separations", "3:5.5:1.25", "--doc", str(doc), "--img-dir", str(tmp_path / "docs" / "img")]
    argv += ["--json", str(tmp_path / "eval.json"), "--notes", str(tmp_path / "notes.md"), "--dtype", "float64"]
    assert cli.main(argv) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["receptive_field_A"] == 8.0 and res["pair"]["separations_A"] == [3.0, 4.25, 5.5]

    # the ion force MAE is the calculator's error on the two frames' ions, recomputed here
    calc = AllScAIPCalculator(ckpt["local"], dtype="float64")
    errs = []
    for a in (solution, pair):
        b = a.copy()
        b.calc = calc
        ions = forces.is_ion(a)
        errs.append(np.abs(b.get_forces() - a.get_forces())[ions].mean(axis=1))
    assert res["models"]["local"]["forces"]["ion_force_mae_meV_A"] == pytest.approx(1000 * np.concatenate(errs).mean())
    loc, lr = res["models"]["local"]["forces"], res["models"]["longrange"]["forces"]
    assert res["checks"]["ion_force_mae_ratio"] == pytest.approx(loc["ion_force_mae_meV_A"] / lr["ion_force_mae_meV_A"])

    # the teacher's curve: zero at the largest separation, and the first point is the teacher's own energy difference
    frame, cl_pos = pair_curve.channel_frame(pair, [3.0, 4.25, 5.5], pair_curve.scan_direction(pair))
    e = []
    for p in cl_pos[[0, -1]]:
        a = frame.copy()
        a.positions[-1] = p
        e.append(teacher_for_atoms(a).ev_ang(a.positions / 10.0)[0])  # a fresh teacher each time
    teacher = res["pair"]["curves"]["teacher"]
    assert teacher[-1] == 0.0 and teacher[0] == pytest.approx(e[0] - e[1], abs=1e-9)
    assert res["pair"]["n_atoms"] == len(frame)
    bare = res["pair"]["curves"][cli.BARE_PAIR]  # the two ions alone: attraction from 5.5 to 3 Å
    assert bare[-1] == 0.0 and bare[0] < -1.0

    text = doc.read_text()
    assert "## Acceptance checks of issue 25" in text and "A note on the numbers." in text
    for img in ("electrolyte_force_mae.png", "electrolyte_pair_energy.png"):
        assert f"(img/{img})" in text and (tmp_path / "docs" / "img" / img).stat().st_size > 1000
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(argv[:1] + [str(tmp_path / "missing.ckpt")] + argv[2:])
