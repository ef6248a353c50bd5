"""One active-learning round: student MD frames, rescaled boxes, teacher labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")

from ase.io import read
from conftest import small_model
from openmm import unit

from allscaip.workflows.teacher import active
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import export_torchscript

VAL = Path(__file__).resolve().parents[1] / "examples" / "water" / "data" / "val.extxyz"


@pytest.fixture(scope="module")
def frame():
    return next(a for a in read(VAL, ":") if a.pbc.all() and a.info["n_molecules"] == 32)


def _state_xml(path: Path, pos_ang: np.ndarray, box_ang: np.ndarray) -> Path:
    system = openmm.System()
    for _ in range(len(pos_ang)):
        system.addParticle(1.0)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box_ang / 10.0])
    ctx.setPositions(pos_ang / 10.0 * unit.nanometer)
    path.write_text(openmm.XmlSerializer.serialize(ctx.getState(getPositions=True)))
    return path


def test_label_reproduces_the_bundled_teacher_labels(frame):
    a = active.label(frame.positions, np.asarray(frame.cell), {"frame": 7})
    assert a.get_potential_energy() == pytest.approx(
        frame.get_potential_energy(), abs=1e-6
    )  # extxyz keeps 8 decimals of the positions
    np.testing.assert_allclose(a.get_forces(), frame.get_forces(), atol=1e-5)
    np.testing.assert_allclose(a.get_stress(), frame.calc.results["stress"], atol=1e-9)
    assert a.info["density_g_cm3"] == pytest.approx(frame.info["density_g_cm3"], abs=1e-3)
    assert a.info["config_type"] == "student_md" and a.info["frame"] == 7


def test_scale_to_density_moves_molecules_not_bonds(frame):
    pos, box = active.scale_to_density(frame.positions, np.asarray(frame.cell), 0.8)
    assert active.density_g_cm3(32, abs(np.linalg.det(box))) == pytest.approx(0.8, rel=1e-12)
    old, new = frame.positions.reshape(-1, 3, 3), pos.reshape(-1, 3, 3)
    np.testing.assert_allclose(new - new[:, :1], old - old[:, :1], atol=1e-12)  # rigid translation per molecule
    f = box[0, 0] / frame.cell[0, 0]
    assert f > 1.0
    np.testing.assert_allclose(new.mean(axis=1), f * old.mean(axis=1), atol=1e-12)


def test_read_state_round_trip(tmp_path, frame):
    path = _state_xml(tmp_path / "s.xml", frame.positions, np.asarray(frame.cell))
    pos, box = active.read_state(path)
    np.testing.assert_allclose(pos, frame.positions, atol=1e-9)
    np.testing.assert_allclose(box, np.asarray(frame.cell), atol=1e-9)


def test_fixed_density_sampling_keeps_the_box_and_whole_molecules(tmp_path, frame):

    model = small_model(elements=[1, 8], cutoff=3.0, hidden=16, heads=2, layers=1)
    path = tmp_path / "tiny.pt"
    export_torchscript(model, str(path), build_metadata(model, "float64", "cpu", "torchscript"))
    start = _state_xml(tmp_path / "s.xml", frame.positions, np.asarray(frame.cell))
    snaps = active.sample(
        str(path),
        start,
        "nvt",
        ps=0.03,
        every_fs=6.0,
        temperature=300.0,
        density=1.05,
        skip_ps=0.006,
        seed=3,
        threads=1,
        minimise_iterations=0,
    )  # a random model would pull the molecules apart
    assert len(snaps) == 4
    for pos, box in snaps:
        assert active.density_g_cm3(32, abs(np.linalg.det(box))) == pytest.approx(1.05, rel=1e-9)
        d = pos.reshape(-1, 3, 3)[:, 1:] - pos.reshape(-1, 3, 3)[:, :1]
        frac = d @ np.linalg.inv(box)
        minimum_image = (frac - np.round(frac)) @ box
        # molecules are wrapped whole (the teacher's O-H bonds do not see the periodic boundary)
        np.testing.assert_allclose(d, minimum_image, atol=1e-9)
    assert not np.allclose(snaps[0][0], snaps[-1][0])  # it moved


def test_teacher_sampling_runs_the_teacher_and_labels_without_stress(tmp_path, frame):
    start = _state_xml(tmp_path / "s.xml", frame.positions, np.asarray(frame.cell))
    snaps = active.sample(
        None,
        start,
        "npt",
        ps=0.09,
        every_fs=30.0,
        temperature=298.15,
        density=None,
        skip_ps=0.0,
        seed=5,
        threads=1,
        minimise_iterations=20,
    )
    assert len(snaps) == 3
    a = active.label(*snaps[-1], {"config_type": "teacher_md"}, stress=False)
    assert "stress" not in a.calc.results and a.info["config_type"] == "teacher_md"
    # the teacher's own MD keeps the liquid bound (a random model would not), molecules whole
    assert a.get_potential_energy() / 32 * 96.485 < -30.0  # kJ/mol per molecule
    d = a.positions.reshape(-1, 3, 3)[:, 1:] - a.positions.reshape(-1, 3, 3)[:, :1]
    assert np.linalg.norm(d, axis=-1).max() < 1.2
