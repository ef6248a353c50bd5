"""``allscaip convert-fairchem`` and fine-tuning the converted checkpoint with the trainer (issue 24).

The fixture's fairchem checkpoints (tests/fixtures/fairchem) are converted; the converted .ckpt must
compute what the fairchem file computes (float64, 1e-10) in AllScAIPCalculator and allscaip-export,
and ``run.init_from`` must start a fine-tune exactly there and lower the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from ase.io import write
from conftest import torchrun_training
from test_fairchem_ase import FIXTURE, atoms_of, reference
from test_fairchem_fixture import _fixture_fields, _save_as_fairchem

from allscaip.checkpoint import FAIRCHEM_FAMILY, load_checkpoint
from allscaip.checkpoint_fairchem import read_fairchem_checkpoint
from allscaip.cli import main as allscaip_main
from allscaip.config_schema import ConfigError
from allscaip.data import atoms_to_batch
from allscaip.engines.ase_calculator import AllScAIPCalculator
from allscaip.model import compute_properties
from allscaip.model.fairchem_load import converted_weights
from allscaip.structures import water_box
from allscaip.train.config import config_from_dict
from allscaip.train.loss import micro_batch_loss, step_counts, stress_flags
from allscaip.train.trainer import Trainer
from allscaip_export.cli import main as export_main

REPO = FIXTURE.parents[2]
KINDS = ("conserving", "direct")
EXACT = 1e-10  # eV, eV/Å, eV/Å³: float64, the same operations on the same weights
FINE_TUNE_LR = 1e-5  # small enough that each of the few full-batch steps lowers the loss (1e-4 overshoots)


def source(kind: str):
    return FIXTURE / f"allscaip_md_{kind}.pt"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("converted")
    paths = {}
    for kind in KINDS:
        paths[kind] = out / f"{kind}.ckpt"
        assert allscaip_main(["convert-fairchem", str(source(kind)), "-o", str(paths[kind]), "--task", "omol"]) == 0
    return paths


def results(calc: AllScAIPCalculator, atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "energies": calc.results["energies"]}
    if all(atoms.pbc) and "stress" in calc.results:
        out["stress"] = atoms.get_stress()
    return out


def assert_same(a: dict, b: dict, tol: float = EXACT) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=tol, rtol=0, err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_converted_checkpoint_computes_what_the_fairchem_file_computes(converted, kind):
    payload = load_checkpoint(converted[kind])
    assert payload["model_family"] == FAIRCHEM_FAMILY and payload["model_config"]["task"] == "omol"
    ckpt = read_fairchem_checkpoint(source(kind))
    ema = converted_weights(ckpt, use_ema=True)
    assert all(torch.equal(payload["ema_state"][k], v) for k, v in ema.items())
    assert any(not torch.equal(payload["model_state"][k], v) for k, v in ema.items())  # raw weights differ
    from_pt = AllScAIPCalculator(source(kind), dtype="float64")
    from_ckpt = AllScAIPCalculator(converted[kind], dtype="float64")
    assert from_ckpt.fairchem_task == "omol" and from_ckpt.cutoff == from_pt.cutoff
    for name in reference()["structures"]:
        assert_same(results(from_ckpt, atoms_of(name)), results(from_pt, atoms_of(name)))
    with pytest.raises(ValueError, match="converted for fairchem task 'omol'"):
        AllScAIPCalculator(converted[kind], fairchem_task="oc20")


def test_sm_checkpoint_converts_too(tmp_path):
    """sm switches (frequency mask, sinc bias): the converted .ckpt equals the fairchem file."""
    sm = FIXTURE.parent / "fairchem_sm" / "allscaip_sm_conserving.pt"
    assert allscaip_main(["convert-fairchem", str(sm), "-o", str(tmp_path / "sm.ckpt")]) == 0
    atoms = atoms_of("water8_periodic")
    from_ckpt = results(AllScAIPCalculator(tmp_path / "sm.ckpt", dtype="float64"), atoms)
    assert_same(from_ckpt, results(AllScAIPCalculator(sm, dtype="float64"), atoms))


def test_export_of_the_converted_checkpoint_equals_the_fairchem_file(converted, tmp_path, capsys):
    out = tmp_path / "conserving.pt"
    assert export_main([str(converted["conserving"]), "-o", str(out)]) == 0
    exported, from_pt = AllScAIPCalculator(out), AllScAIPCalculator(source("conserving"), dtype="float64")
    assert exported.metadata["fairchem_task"] == "omol" and exported.metadata["weights"] == "ema"
    for name in reference()["structures"]:
        assert_same(results(exported, atoms_of(name)), results(from_pt, atoms_of(name)))
    # a direct-force model has no virial for the whole-system call: refused as for the fairchem file
    assert export_main([str(converted["direct"]), "-o", str(tmp_path / "direct.pt")]) == 2
    assert "direct-force fairchem model" in capsys.readouterr().err


def test_bad_input_gets_the_readers_errors(tmp_path, monkeypatch, capsys, converted):
    def convert(path, *extra) -> str:
        assert allscaip_main(["convert-fairchem", str(path), "-o", str(tmp_path / "x.ckpt"), *extra]) == 2
        return capsys.readouterr().err

    assert "has no task 'oc20'; its tasks are ['omol']" in convert(source("conserving"), "--task", "oc20")
    assert "is not a fairchem inference checkpoint; supported: fairchem AllScAIP" in convert(converted["direct"])
    fields = _fixture_fields()
    uma = "fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone"
    fields["model_config"] = dict(fields["model_config"], backbone={"model": uma})
    _save_as_fairchem(monkeypatch, tmp_path / "uma.pt", **fields)
    assert f"is a fairchem UMA (eSCN mixture of linear experts) checkpoint (backbone {uma})" in convert(
        tmp_path / "uma.pt"
    )
    assert "does not exist" in convert(tmp_path / "missing.pt")
    assert not (tmp_path / "x.ckpt").exists()
    # commands for our own models refuse a converted one, saying why
    for command in (["core-repulsion", "--data", "x.extxyz"], ["constrain-density", "--frames", "x.extxyz"]):
        with pytest.raises(SystemExit, match="fairchem_allscaip model"):
            allscaip_main([command[0], str(converted["direct"]), *command[1:], "-o", str(tmp_path / "x.ckpt")])


# ----------------------------------------------------------------------------- fine-tuning


def labelled_frames(n: int, seed: int) -> list:
    """Small water clusters and one periodic box labelled with the converted conserving model's numbers,
    shifted (energy +20 meV/atom, forces +0.05 eV/Å noise) so that the loss is not zero; one cluster a
    cation doublet (charge/spin in atoms.info, as our readers keep them)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    calc = AllScAIPCalculator(source("conserving"), dtype="float64")
    frames = []
    for i in range(n):
        atoms = water_box(8, spacing=3.0, rng=rng, periodic=i == 0)
        atoms = atoms if i == 0 else atoms[: 3 * (2 + i % 2)]
        atoms.info.update(charge=1 if i == 1 else 0, spin=2 if i == 1 else 1)
        res = results(calc, atoms)
        label = dict(
            energy=res["energy"] + 0.02 * len(atoms), forces=res["forces"] + rng.normal(0, 0.05, res["forces"].shape)
        )
        if "stress" in res:
            label["stress"] = res["stress"]
        atoms.calc = SinglePointCalculator(atoms, **label)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def water_data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("water") / "train.extxyz"
    write(path, labelled_frames(4, 0))
    return str(path)


def finetune_cfg(data: str, init_from, out_dir, steps: int = 3, **optim) -> dict:
    return {
        "data": {"train": [data], "val": [data], "max_atoms": 200},  # every frame in one batch: full-batch steps
        "optim": {"lr": FINE_TUNE_LR, "epochs": steps, "warmup_steps": 0, "seed": 0, **optim},
        "run": {"out_dir": str(out_dir), "init_from": str(init_from), "dtype": "float64", "threads": 1},
    }


def training_loss(trainer: Trainer) -> float:
    """The trainer's loss of its (raw) model on the whole training set (one batch)."""
    batch = atoms_to_batch([trainer.train_set[i] for i in range(len(trainer.train_set))], dtype=torch.float64)
    use_stress = stress_flags([batch], trainer.cfg.optim.stress_coef)
    counts = step_counts([batch], use_stress, 1, torch.device("cpu"))
    trainer.model.train()
    loss = micro_batch_loss(
        trainer.model, batch, use_stress[0], trainer.cfg.optim, trainer.loss_scales, counts, torch.zeros(8)
    )
    return float(loss.detach())


def test_finetune_starts_at_the_converted_model_and_lowers_the_loss(converted, water_data, tmp_path):
    logs: list = []
    trainer = Trainer(
        config_from_dict(finetune_cfg(water_data, converted["conserving"], tmp_path / "ft")), log=logs.append
    )
    assert any("fairchem element references and normalisers kept" in s for s in logs)
    frames = [trainer.train_set[i] for i in range(len(trainer.train_set))]
    assert {int(a.info["charge"]) for a in frames} == {0, 1}  # the reader hands charge/spin on
    calc = AllScAIPCalculator(source("conserving"), dtype="float64")
    start = compute_properties(trainer.model.eval(), atoms_to_batch(frames, dtype=torch.float64), stress=True)
    for k, atoms in enumerate(frames):  # step 0 is the fairchem file's model, charge and spin included
        expected = results(calc, atoms)
        assert abs(float(start["energy"][k]) - expected["energy"]) < EXACT
        if "stress" in expected:
            np.testing.assert_allclose(start["stress"][k].numpy(), _full(expected["stress"]), atol=EXACT, rtol=0)
    losses = [training_loss(trainer)]
    trainer.callbacks.append(lambda t: losses.append(training_loss(t)))
    trainer.fit()
    assert trainer.step == 3 and len(losses) == 4
    assert all(b < a for a, b in zip(losses, losses[1:])), losses

    last = tmp_path / "ft" / "last.ckpt"
    payload = load_checkpoint(last)
    assert payload["model_family"] == FAIRCHEM_FAMILY and payload["model_config"]["task"] == "omol"
    initial = load_checkpoint(converted["conserving"])["ema_state"]
    assert max(float((payload["model_state"][k] - v).abs().max()) for k, v in initial.items()) > 1e-6
    tuned = AllScAIPCalculator(last, dtype="float64")
    ema = compute_properties(trainer.ema.eval(), atoms_to_batch(frames[:1], dtype=torch.float64), stress=True)
    got = results(tuned, frames[0])
    assert abs(got["energy"] - float(ema["energy"][0])) < EXACT
    np.testing.assert_allclose(got["forces"], ema["forces"].numpy(), atol=EXACT, rtol=0)
    assert abs(got["energy"] - results(calc, frames[0])["energy"]) > 1e-6  # it moved
    exported = tmp_path / "tuned.pt"
    assert export_main([str(last), "-o", str(exported)]) == 0
    assert_same(results(AllScAIPCalculator(exported), frames[0]), got)


def _full(voigt) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    return voigt_6_to_full_3x3_stress(np.asarray(voigt))


def test_finetune_direct_model_and_config_errors(converted, water_data, tmp_path):
    logs: list = []
    cfg = finetune_cfg(water_data, converted["direct"], tmp_path / "direct", steps=1)
    trainer = Trainer(config_from_dict(cfg), log=logs.append)
    assert trainer.cfg.optim.stress_coef == 0.0 and any("stress term is off" in s for s in logs)
    trainer.fit()
    assert load_checkpoint(tmp_path / "direct" / "last.ckpt")["model_family"] == FAIRCHEM_FAMILY
    with pytest.raises(ConfigError, match=r"remove model\.hidden from the config"):
        Trainer(
            config_from_dict({**cfg, "model": {"hidden": 32}, "run": {**cfg["run"], "out_dir": str(tmp_path / "b")}})
        )
    dens = {
        **cfg,
        "optim": {**cfg["optim"], "density_constraint": True},
        "run": {**cfg["run"], "out_dir": str(tmp_path / "c")},
    }
    with pytest.raises(ConfigError, match="density_constraint is not available"):
        Trainer(config_from_dict(dens))


def test_ddp_fine_tune_equals_one_process_with_accumulation(converted, water_data, tmp_path):
    """The trainer's DDP (tests/test_train.py): 2 processes x 1 batch = 1 process x 2 accumulated batches."""
    raw = finetune_cfg(water_data, converted["conserving"], tmp_path / "unused", steps=2)
    raw["data"]["max_atoms"] = 24  # the periodic box alone, the three clusters together: two batches
    del raw["run"]["out_dir"]
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    proc = torchrun_training(cfg_file, tmp_path / "ddp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout and "converted fairchem AllScAIP" in proc.stdout
    single = {
        **raw,
        "optim": {**raw["optim"], "accumulate": 2},
        "run": {**raw["run"], "out_dir": str(tmp_path / "one")},
    }
    Trainer(config_from_dict(single), log=lambda s: None).fit()
    a, b = load_checkpoint(tmp_path / "one" / "last.ckpt"), load_checkpoint(tmp_path / "ddp" / "last.ckpt")
    assert a["step"] == b["step"] == 2 and b["world_size"] == 2
    for key in ("model_state", "ema_state"):
        assert max(float((a[key][k] - v).abs().max()) for k, v in b[key].items()) < EXACT
    initial = load_checkpoint(converted["conserving"])["ema_state"]
    assert max(float((b["model_state"][k] - v).abs().max()) for k, v in initial.items()) > 1e-7


def test_resumed_fine_tune_ends_where_an_uninterrupted_one_does(converted, water_data, tmp_path):
    full = finetune_cfg(water_data, converted["conserving"], tmp_path / "full", steps=2)
    Trainer(config_from_dict(full), log=lambda s: None).fit()
    cut = finetune_cfg(water_data, converted["conserving"], tmp_path / "cut", steps=2)
    Trainer(config_from_dict({**cut, "run": {**cut["run"], "max_steps": 1}}), log=lambda s: None).fit()
    resumed = Trainer(config_from_dict({**cut, "run": {**cut["run"], "resume": True}}), log=lambda s: None)
    assert resumed.step == 1 and resumed.model_family == FAIRCHEM_FAMILY
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "full" / "last.ckpt"), load_checkpoint(tmp_path / "cut" / "last.ckpt")
    assert a["step"] == b["step"] == 2
    assert all(torch.equal(a["model_state"][k], v) for k, v in b["model_state"].items())


def test_openmm_runs_the_converted_checkpoint_like_the_fairchem_file(converted):
    openmm = pytest.importorskip("openmm")
    from openmm import unit
    from test_fairchem_export import topology_of

    from allscaip_openmm import MLPotential

    atoms = atoms_of("benzene_cation_doublet")

    def energy_forces(path):
        system = MLPotential("allscaip", modelPath=str(path)).createSystem(topology_of(atoms), charge=1, spin=2)
        integrator = openmm.VerletIntegrator(0.0005)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(atoms.positions * 0.1)
        state = context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        return energy, np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))

    (e_ckpt, f_ckpt), (e_pt, f_pt) = energy_forces(converted["conserving"]), energy_forces(source("conserving"))
    assert abs(e_ckpt - e_pt) < EXACT * 100  # kJ/mol (1e-10 eV is 1e-8 kJ/mol)
    np.testing.assert_allclose(f_ckpt, f_pt, atol=EXACT * 1000, rtol=0)  # kJ/mol/nm
