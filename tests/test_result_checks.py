"""Nothing wrong passes silently (docs/errors.md): atoms closer than the model's min_distance and
NaN/Inf results stop LAMMPS (1 and 2 ranks), the ASE calculator and both OpenMM forces with the
atoms named; the threshold follows from the training data's shortest contact."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from conftest import small_model, water_box
from lammps_harness import _export, activated_env, lammps_input, run_lammps, write_data

from allscaip.calculator import AllScAIPCalculator
from allscaip.checkpoint import load_model, save_checkpoint
from allscaip.result_checks import (
    DEFAULT_MIN_DISTANCE,
    MIN_DISTANCE_FRACTION,
    AtomsTooCloseError,
    NonFiniteResultError,
    closest_pair,
    min_distance_of_model,
)
from allscaip.train.fitting import fit_core_radius_of_model
from allscaip_export.metadata import build_metadata

# the test model's core radii (conftest.TEST_CORE_RADIUS) end at core_margin x the shortest contact;
# its shortest wall (O-H 0.9 Å) at the default margin 0.9 says: shortest contact 1.0 Å
TEST_MODEL_MIN_DISTANCE = MIN_DISTANCE_FRACTION * 0.9 / 0.9


def _box_with_h_on_o() -> "object":
    """27 waters; atom 1 (a hydrogen) exactly on atom 0 (its oxygen): LAMMPS IDs 1 and 2."""
    atoms = water_box(3, seed=3)
    assert atoms.get_chemical_symbols()[:2] == ["O", "H"]
    atoms.positions[1] = atoms.positions[0]
    return atoms


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    return _export(small_model(), tmp_path_factory.mktemp("checks") / "model.pt")


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory):
    model = small_model()
    path = tmp_path_factory.mktemp("checks") / "model.ckpt"
    save_checkpoint(path, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    return path


# ------------------------------------------------------------------------------ the threshold
def test_min_distance_follows_the_shortest_contact_of_the_training_data():
    model = small_model(core=False)
    assert min_distance_of_model(model) == DEFAULT_MIN_DISTANCE  # nothing recorded, no wall
    frames = [water_box(2, seed=s) for s in range(3)]
    shortest = min(closest_pair(a.positions, a.cell.array, a.pbc, 3.0)[2] for a in frames)
    fit_core_radius_of_model(model, frames, dataclasses.replace(model.cfg, core_repulsion=False), print)
    assert float(model.shortest_contact) == pytest.approx(shortest, rel=1e-12)
    assert min_distance_of_model(model) == pytest.approx(MIN_DISTANCE_FRACTION * shortest, rel=1e-12)
    meta = build_metadata(model, "float64", "cpu", "torchscript")
    assert meta["min_distance"] == pytest.approx(MIN_DISTANCE_FRACTION * shortest, abs=1e-6)
    # a model saved with the wall but before the record: inferred from the wall's radii
    assert min_distance_of_model(small_model()) == pytest.approx(TEST_MODEL_MIN_DISTANCE)


def test_old_checkpoints_load_without_the_record(model_ckpt, tmp_path):
    payload = torch.load(model_ckpt, weights_only=False)
    del payload["model_state"]["shortest_contact"]
    old = tmp_path / "old.ckpt"
    save_checkpoint(old, payload)
    assert float(load_model(old).shortest_contact) == 0.0


# ------------------------------------------------------------------------------ LAMMPS
@pytest.mark.parametrize("nprocs", [1, 2])
def test_lammps_stops_on_a_hydrogen_on_its_oxygen(model_pt, tmp_path, nprocs):
    data = tmp_path / "h_on_o.data"
    write_data(_box_with_h_on_o(), data)
    env = activated_env()
    out = run_lammps(env, tmp_path / "on", lammps_input(data, model_pt), nprocs=nprocs, timeout=300, expect_fail=True)
    assert "atoms 1 and 2 are 0 A apart at step 0, closer than min_distance 0.5 A" in out, out[-3000:]
    assert "pair_style allscaip min_distance off" in out
    # with the check off the model's NaN stops it, naming the pair that caused it
    script = lammps_input(data, model_pt, pair_style="allscaip min_distance off")
    out = run_lammps(env, tmp_path / "off", script, nprocs=nprocs, timeout=300, expect_fail=True)
    assert "non-finite (NaN or Inf) energies or forces at step 0" in out, out[-3000:]
    assert re.search(r"atom IDs 1, 2\b", out) and "the closest pair: atoms 1 and 2, 0 A apart" in out, out[-3000:]
    assert not [line for line in out.splitlines() if line[:1].isdigit() and "nan" in line.lower()]  # no thermo row


def _jittered_box():
    """Eight waters with unequal bond lengths (water_box's molecules are rigid: no ties)."""
    atoms = water_box(2, seed=4)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.03, atoms.positions.shape)
    return atoms


def test_lammps_min_distance_keyword_names_the_pair_and_distance(model_pt, tmp_path):
    atoms = _jittered_box()
    data = tmp_path / "w.data"
    atoms = write_data(atoms, data)
    a, b, d = closest_pair(atoms.positions, atoms.cell.array, atoms.pbc, 2.0)
    limit = round(d + 0.01, 3)
    out = run_lammps(
        activated_env(),
        tmp_path / "run",
        lammps_input(data, model_pt, pair_style=f"allscaip min_distance {limit}"),
        timeout=300,
        expect_fail=True,
    )
    assert f"atoms {a + 1} and {b + 1} are {d:.4g} A apart at step 0, closer than min_distance {limit:.4g} A" in out
    out = run_lammps(
        activated_env(),
        tmp_path / "bad",
        lammps_input(data, model_pt, pair_style="allscaip min_distance -1"),
        timeout=300,
        expect_fail=True,
    )
    assert "min_distance must be a positive distance in Angstrom, 'model' (the model's own) or 'off', got -1" in out


# the staged path with a node encoding (its pair gradients are checked too) and the whole-system
# path (distance_bias: one rank, forces and virial from the model)
OTHER_MODELS = {
    "encoding": (dict(node_encoding="sinc_pairs", encoding_range=6.0, encoding_freqs=8), 2),
    "distance_bias": (dict(distance_bias=True), 1),
}


@pytest.mark.parametrize("kind", sorted(OTHER_MODELS))
def test_lammps_other_evaluation_paths_stop_on_nan(tmp_path, kind):
    overrides, nprocs = OTHER_MODELS[kind]
    model = _export(small_model(**overrides), tmp_path / f"{kind}.pt")
    data = tmp_path / "h_on_o.data"
    write_data(_box_with_h_on_o(), data)
    env = activated_env()
    script = lammps_input(data, model, per_atom_virial=False)
    out = run_lammps(env, tmp_path / "on", script, nprocs=nprocs, timeout=300, expect_fail=True)
    assert "atoms 1 and 2 are 0 A apart at step 0" in out, out[-3000:]
    script = lammps_input(data, model, per_atom_virial=False, pair_style="allscaip min_distance off")
    out = run_lammps(env, tmp_path / "off", script, nprocs=nprocs, timeout=300, expect_fail=True)
    assert "non-finite (NaN or Inf) energies or forces at step 0" in out, out[-3000:]
    assert re.search(r"atom IDs 1, 2\b", out) and "the closest pair: atoms 1 and 2, 0 A apart" in out, out[-3000:]


# ------------------------------------------------------------------------------ ASE
@pytest.mark.parametrize("kind", ["pt", "ckpt"])
def test_ase_calculator_names_the_close_pair_and_the_nan_atoms(model_pt, model_ckpt, kind):
    path = model_pt if kind == "pt" else model_ckpt
    atoms = _box_with_h_on_o()
    atoms.calc = AllScAIPCalculator(path)
    assert atoms.calc.min_distance == pytest.approx(TEST_MODEL_MIN_DISTANCE)
    with pytest.raises(AtomsTooCloseError, match=r"atoms \(0-based\) 0 and 1 are 0 Å apart, closer than min_dis"):
        atoms.get_potential_energy()
    atoms.calc = AllScAIPCalculator(path, min_distance=0)
    with pytest.raises(NonFiniteResultError, match=r"non-finite \(NaN or Inf\).*atoms \(0-based\) 0, 1, "):
        atoms.get_forces()
    near = _jittered_box()
    a, b, d = closest_pair(near.positions, near.cell.array, near.pbc, 2.0)
    near.calc = AllScAIPCalculator(path, min_distance=d + 0.01)
    with pytest.raises(AtomsTooCloseError, match=rf"atoms \(0-based\) {a} and {b} are {d:.4g} Å apart"):
        near.get_potential_energy()
    with pytest.raises(ValueError, match=r"min_distance must be a distance >= 0 in Å.*got -1"):
        AllScAIPCalculator(path, min_distance=-1)


# ------------------------------------------------------------------------------ OpenMM
def test_openmm_forces_name_the_particles(model_pt, tmp_path):
    pytest.importorskip("openmm")
    from allscaip_openmm.forces import AllScAIPComputation
    from allscaip_openmm.torchforce import build_torchforce_module

    atoms = _box_with_h_on_o()
    box_nm = atoms.cell.array * 0.1
    # ML atoms 10.. of a larger System: the messages name System particle indices
    particles = list(range(10, 10 + len(atoms)))
    comp = AllScAIPComputation(model_pt, atoms.numbers, True, particles=particles)
    with pytest.raises(AtomsTooCloseError, match=r"particles 10 and 11 are 0 Å apart"):
        comp.evaluate(atoms.positions * 0.1, box_nm)
    comp = AllScAIPComputation(model_pt, atoms.numbers, True, min_distance=0, particles=particles)
    with pytest.raises(NonFiniteResultError, match=r"particles 10, 11, "):
        comp.evaluate(atoms.positions * 0.1, box_nm)
    numbers = [8] * 10 + list(atoms.numbers)
    pos = torch.tensor(np.concatenate([np.zeros((10, 3)), atoms.positions * 0.1]))
    box = torch.tensor(box_nm)
    module, _ = build_torchforce_module(model_pt, numbers, atoms=particles, periodic=True)
    with pytest.raises(
        torch.jit.Error, match=r"particles 10 and 11 are 0\.0* A apart, closer than min_distance 0\.5 A"
    ):
        module(pos, box)
    module, _ = build_torchforce_module(model_pt, numbers, atoms=particles, periodic=True, min_distance=0)
    with pytest.raises(torch.jit.Error, match=r"non-finite \(NaN or Inf\).*particles \[10, 11, "):
        module(pos, box)


# ------------------------------------------------------------------------------ trainer
def test_trainer_stops_on_a_nan_step_naming_the_frames_and_keeps_the_last_good_checkpoint(tmp_path):
    import ase.io
    from test_train import emt_frames, make_cfg, quiet

    from allscaip.checkpoint import load_checkpoint
    from allscaip.train.finite_step import NonFiniteLossError

    frames = emt_frames(8, 0)
    frames[5].positions[1] = frames[5].positions[0]  # finite (stale) labels, two atoms on one spot
    data = {"train": str(tmp_path / "train.extxyz"), "val": str(tmp_path / "val.extxyz")}
    ase.io.write(data["train"], frames)
    ase.io.write(data["val"], emt_frames(2, 1))
    # in file order the bad frame comes after some good steps (each writes last.ckpt)
    raw = make_cfg(data, tmp_path / "run", data_kw={"shuffle": False}, run={"checkpoint_every_steps": 1})
    trainer = quiet(raw)
    with pytest.raises(NonFiniteLossError, match=r"not finite \(NaN or Inf\) at epoch 1, optimizer step \d+") as err:
        trainer.fit()
    msg = str(err.value)
    assert f"{data['train']}:5" in msg and "continue with --resume" in msg
    failed_step = int(re.search(r"optimizer step (\d+)", msg).group(1))
    # the weights were not updated by the failing step; last.ckpt is the state before it, finite
    state = trainer.model.state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    assert failed_step > 1
    saved = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert saved["step"] == failed_step - 1
    assert all(bool(torch.isfinite(v).all()) for v in saved["model_state"].values() if v.is_floating_point())
    assert all(torch.equal(saved["model_state"][k], state[k]) for k in state)
