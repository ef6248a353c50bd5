"""Trainer, config schema and checkpoints: tiny EMT data sets, tiny float64 models, 1 thread."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import torchrun_training

from allscaip.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from allscaip.config import ConfigError
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip.train.config import config_from_dict, load_config, parse_overrides
from allscaip.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(hidden=16, layers=1, heads=2, cutoff=3.5, num_rbf=8, bond_order_lmax=2, legendre_lmax=2)


def _label(a: Atoms) -> Atoms:
    a.calc = EMT()
    res = dict(energy=a.get_potential_energy(), forces=a.get_forces())
    if a.pbc.all():
        res["stress"] = a.get_stress()
    a.calc = SinglePointCalculator(a, **res)
    return a


def _cluster(rng: np.random.Generator, n: int, box: float = 3.0, dmin: float = 2.1) -> Atoms:
    while True:
        pos = rng.uniform(0.0, box, (n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(n, 1)]
        if d.min() > dmin:
            return Atoms(numbers=rng.choice([29, 79], n), positions=pos)


def emt_frames(n: int, seed: int) -> list[Atoms]:
    """Cu/Au EMT structures: small clusters and (every other one) rattled periodic 4-atom cells with stress."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            a = bulk("Cu", "fcc", a=3.7, cubic=True)
            a.numbers[rng.random(4) < 0.5] = 79
            a.rattle(0.1, seed=int(rng.integers(1 << 30)))
        else:
            a = _cluster(rng, int(rng.integers(3, 6)), box=3.5)
        out.append(_label(a))
    return out


@pytest.fixture(scope="module")
def emt_data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("emt")
    ase.io.write(d / "train.extxyz", emt_frames(8, 0))
    ase.io.write(d / "val.extxyz", emt_frames(3, 1))
    return {"train": str(d / "train.extxyz"), "val": str(d / "val.extxyz")}


def make_cfg(data: dict, out_dir: Path, model=None, data_kw=None, **sections):
    raw = {
        "model": dict(model or TINY_MODEL),
        "data": {"train": [data["train"]], "val": [data["val"]], "max_atoms": 10, **(data_kw or {})},
        "optim": {"lr": 5e-3, "epochs": 2, "seed": 1, **sections.get("optim", {})},
        "run": {
            "out_dir": str(out_dir),
            "dtype": "float64",
            "progress": False,
            "threads": 1,
            **sections.get("run", {}),
        },
    }
    return raw


def quiet(cfg_raw, callbacks=()):
    return Trainer(config_from_dict(cfg_raw), callbacks, log=lambda s: None)


def max_state_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point() and a[k].numel()
    )


# ----------------------------------------------------------------------------- (a) config


def test_config_schema_overrides_and_paths(tmp_path):
    cfg_file = tmp_path / "sub" / "c.yaml"
    cfg_file.parent.mkdir()
    cfg_file.write_text(
        yaml.safe_dump({"model": {"preset": "tiny", "cutoff": 5.0}, "data": {"train": "data/t.extxyz"}})
    )
    cfg = load_config(cfg_file, ["optim.lr=2e-3", "model.elements=[H, O]", "run.max_steps=7", "data.val=v.xyz"])
    assert cfg.optim.lr == 0.002 and isinstance(cfg.optim.lr, float)  # "2e-3" is a string in YAML 1.1
    assert cfg.model.elements == [1, 8] and not cfg.elements_from_data
    assert (cfg.model.hidden, cfg.model.layers, cfg.model.heads, cfg.model.cutoff) == (64, 2, 4, 5.0)
    assert cfg.model_preset == "tiny" and cfg.run.max_steps == 7
    assert cfg.data.train == [str(tmp_path / "sub" / "data" / "t.extxyz")]  # relative to the YAML file
    assert cfg.data.val == ["v.xyz"]  # command-line paths stay relative to the current directory
    assert load_config(cfg_file).elements_from_data
    assert parse_overrides(["run.dtype=float64"]) == [("run", "dtype", "float64")]

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\].*valid keys are.*'lr'.*'weight_decay'"):
        load_config(cfg_file, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"model: unknown key.*'hiden'.*valid keys.*'preset'"):
        load_config(cfg_file, ["model.hiden=8"])
    with pytest.raises(ConfigError, match="unknown section.*valid sections"):
        load_config(cfg_file, ["optimizer.lr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(cfg_file, ["lr=1"])
    with pytest.raises(ConfigError, match="optim.epochs: expected an integer"):
        load_config(cfg_file, ["optim.epochs=many"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(cfg_file, ["model.preset=huge"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['trainer'\]"):
        load_config(bad)


def test_energy_scale_sets_output_scale_and_energy_loss_scale(tmp_path, emt_data):
    """optim.energy_scale: the model's output scale and the loss's σ_E are one number, the force
    RMS (x 1 Å) by default, the referenced per-atom energy RMS with energy_rms, or as given."""
    from allscaip.data import fit_references_and_rms

    frames = ase.io.read(emt_data["train"], ":")
    force_rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2)))
    _, energy_rms = fit_references_and_rms(frames, [29, 79])
    assert energy_rms < force_rms / 2  # the two choices differ on this data
    for choice, expected in (("force_rms", force_rms), ("energy_rms", energy_rms), (0.37, 0.37)):
        raw = make_cfg(emt_data, tmp_path / str(choice), optim={"energy_scale": choice})
        tr = quiet(raw)
        assert float(tr.model.energy_scale) == pytest.approx(expected, rel=1e-12), choice
        assert tr.loss_scales["energy"] == pytest.approx(expected, rel=1e-12), choice
    for bad in ("forces", -1.0):
        with pytest.raises(ConfigError, match="optim.energy_scale"):
            config_from_dict(make_cfg(emt_data, tmp_path / "bad", optim={"energy_scale": bad}))


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys, emt_data):
    from allscaip.train.cli import main

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(make_cfg(emt_data, tmp_path / "run")))
    assert main([str(cfg_file), "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "valid keys are" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([str(cfg_file), f"data.train={tmp_path / 'missing.extxyz'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([str(cfg_file), "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err


# ----------------------------------------------------------------------------- (b) checkpoints


def test_checkpoint_atomic_and_load_errors(tmp_path, monkeypatch):
    import allscaip.checkpoint as ck

    path = tmp_path / "a.ckpt"
    save_checkpoint(path, {"model_config": {}, "model_state": {"w": torch.ones(3)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]
    good = path.read_bytes()
    data = load_checkpoint(path)
    assert data["format"] == "allscaip-checkpoint" and data["checkpoint_version"] == 1

    def broken_save(obj, f):  # dies half-way through writing
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model_config": {}, "model_state": {}})
    monkeypatch.undo()
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    with pytest.raises(
        CheckpointError, match="is not an allscaip checkpoint \\(expected a file written by allscaip-train\\)"
    ):
        load_checkpoint(text)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="is not an allscaip checkpoint"):
        load_model(other)
    future = tmp_path / "future.ckpt"
    save_checkpoint(future, {"checkpoint_version": 2, "allscaip_version": "9.0", "model_config": {}, "model_state": {}})
    with pytest.raises(CheckpointError, match=r"version 2 \(written by allscaip 9.0\).*reads checkpoint version 1"):
        load_checkpoint(future)


# ----------------------------------------------------------------------------- (c) resume


class Killed(Exception):
    pass


def test_resume_is_bit_exact_and_load_model_matches(tmp_path, emt_data):
    # uninterrupted: 2 epochs
    full = quiet(make_cfg(emt_data, tmp_path / "full"))
    full.fit()
    assert full.step >= 6

    # killed after step 3 (mid-epoch checkpoint every step), then resumed
    def kill(tr):
        if tr.step == 3:
            raise Killed

    with pytest.raises(Killed):
        quiet(make_cfg(emt_data, tmp_path / "killed", run={"checkpoint_every_steps": 1}), [kill]).fit()
    assert not list((tmp_path / "killed").glob("*.tmp"))
    ck = load_checkpoint(tmp_path / "killed" / "last.ckpt")
    assert (ck["epoch"], ck["step"], ck["batch_in_epoch"]) == (0, 3, 3)
    resumed = quiet(make_cfg(emt_data, tmp_path / "killed", run={"resume": True}))
    assert resumed.step == 3
    resumed.fit()

    # graceful stop at run.max_steps, then resumed
    quiet(make_cfg(emt_data, tmp_path / "stopped", run={"max_steps": 5})).fit()
    quiet(make_cfg(emt_data, tmp_path / "stopped", run={"resume": True})).fit()

    a = load_checkpoint(tmp_path / "full" / "last.ckpt")
    for name in ("killed", "stopped"):
        b = load_checkpoint(tmp_path / name / "last.ckpt")
        assert b["step"] == a["step"] and b["epoch"] == 2
        for key in ("model_state", "ema_state"):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (name, key, max_state_diff(a[key], b[key]))
        assert [r["val_force_mae_meV_A"] for r in b["metrics"]] == [r["val_force_mae_meV_A"] for r in a["metrics"]]
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 3

    # payload keys; rebuilding the model needs only the checkpoint
    for key in (
        "format",
        "checkpoint_version",
        "allscaip_version",
        "model_config",
        "model_state",
        "ema_state",
        "train_config",
        "optimizer_state",
        "scheduler_state",
        "epoch",
        "step",
        "batch_in_epoch",
        "rng_state",
        "best_val",
        "element_references",
        "metrics",
    ):
        assert key in a, key
    assert set(a["element_references"]) == {29, 79}
    assert (tmp_path / "full" / "best.ckpt").is_file()
    batch = atoms_to_batch(emt_frames(3, 5))
    model = load_model(tmp_path / "full" / "last.ckpt")
    e_ckpt = compute_properties(model, batch)["energy"]
    e_ema = compute_properties(full.ema, batch)["energy"]
    assert torch.equal(e_ckpt, e_ema)
    raw = load_model(tmp_path / "full" / "last.ckpt", use_ema=False)
    # both in evaluation mode: node attention takes another (equal to round-off) path in training mode,
    # and the comparison is about the weights
    full.model.eval()
    assert torch.equal(compute_properties(raw, batch)["energy"], compute_properties(full.model, batch)["energy"])
    assert not torch.equal(e_ckpt, compute_properties(raw, batch)["energy"])

    with pytest.raises(ConfigError, match="already holds a run"):
        quiet(make_cfg(emt_data, tmp_path / "full"))
    with pytest.raises(ConfigError, match="model config differs"):
        quiet(make_cfg(emt_data, tmp_path / "full", model={**TINY_MODEL, "hidden": 8}, run={"resume": True}))


def test_init_from_starts_at_the_checkpoint_weights(tmp_path, emt_data):
    base = quiet(make_cfg(emt_data, tmp_path / "base"))
    base.fit()
    ck = load_checkpoint(tmp_path / "base" / "last.ckpt")
    # fine-tune: the model starts at the checkpoint's EMA weights (references included), with a
    # fresh optimizer and schedule in another out_dir
    ft = quiet(make_cfg(emt_data, tmp_path / "ft", run={"init_from": str(tmp_path / "base" / "last.ckpt")}))
    assert ft.step == 0
    assert max_state_diff(ft.model.state_dict(), ck["ema_state"]) == 0.0
    assert max_state_diff(ft.ema.state_dict(), ck["ema_state"]) == 0.0
    fresh = quiet(make_cfg(emt_data, tmp_path / "fresh"))
    assert max_state_diff(fresh.model.state_dict(), ck["ema_state"]) > 1e-3
    with pytest.raises(ConfigError, match="run.init_from: the model config differs"):
        quiet(
            make_cfg(
                emt_data,
                tmp_path / "ft2",
                model={**TINY_MODEL, "hidden": 8},
                run={"init_from": str(tmp_path / "base" / "last.ckpt")},
            )
        )
    with pytest.raises(ConfigError, match="does not exist"):
        quiet(make_cfg(emt_data, tmp_path / "ft3", run={"init_from": str(tmp_path / "missing.ckpt")}))
    # the neighbour cap shapes the graph, not the weights: a fine-tune may change it and starts
    # from the same weights, but the model (now seeing other neighbours) gives other energies
    logs = []
    capped = Trainer(
        config_from_dict(
            make_cfg(
                emt_data,
                tmp_path / "ft4",
                model={**TINY_MODEL, "max_neighbors": 3},
                run={"init_from": str(tmp_path / "base" / "last.ckpt")},
            )
        ),
        log=logs.append,
    )
    assert max_state_diff(capped.model.state_dict(), ck["ema_state"]) == 0.0
    assert any("model.max_neighbors" in s for s in logs)
    batch = atoms_to_batch(emt_frames(2, 7))
    e_base = compute_properties(ft.model, batch)["energy"]
    assert not torch.allclose(compute_properties(capped.model, batch)["energy"], e_base)


def test_trainer_fits_the_core_wall_below_the_shortest_training_contact(tmp_path, emt_data):
    from allscaip.train.core_radius import shortest_distances

    logs = []
    tr = Trainer(config_from_dict(make_cfg(emt_data, tmp_path / "a")), log=logs.append)
    frames = ase.io.read(emt_data["train"], ":")
    shortest = shortest_distances(frames, tr.cfg.model.elements, tr.cfg.model.cutoff)
    r = tr.model.core_radius.numpy()
    assert np.allclose(r, tr.cfg.model.core_margin * shortest) and (r > 0).all()
    assert any("core repulsion (margin 0.9)" in s for s in logs)
    # a fine-tune keeps the radii of its checkpoint (here the fresh run's, saved as is)
    ck = tmp_path / "a.ckpt"
    save_checkpoint(ck, {"model_config": dataclasses.asdict(tr.cfg.model), "model_state": tr.model.state_dict()})
    ft = quiet(
        make_cfg(emt_data, tmp_path / "ft", model={**TINY_MODEL, "core_margin": 0.5}, run={"init_from": str(ck)})
    )
    assert torch.equal(ft.model.core_radius, tr.model.core_radius)
    off = quiet(make_cfg(emt_data, tmp_path / "off", model={**TINY_MODEL, "core_repulsion": False}))
    assert torch.count_nonzero(off.model.core_radius) == 0


# ----------------------------------------------------------------------------- (d) DDP


def test_ddp_two_processes_equal_one_process_with_accumulation(tmp_path, emt_data):
    cfg_file = tmp_path / "ddp.yaml"
    raw = make_cfg(emt_data, tmp_path / "unused")
    del raw["run"]["out_dir"]
    cfg_file.write_text(yaml.safe_dump(raw))
    proc = torchrun_training(cfg_file, tmp_path / "ddp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout

    single = quiet(make_cfg(emt_data, tmp_path / "single", optim={"accumulate": 2}))
    single.fit()
    a = load_checkpoint(tmp_path / "single" / "last.ckpt")
    b = load_checkpoint(tmp_path / "ddp" / "last.ckpt")
    assert a["step"] == b["step"] and a["step"] >= 2 and b["world_size"] == 2
    assert max_state_diff(a["model_state"], b["model_state"]) < 1e-10
    assert max_state_diff(a["ema_state"], b["ema_state"]) < 1e-10
    va, vb = a["metrics"][-1], b["metrics"][-1]
    assert abs(va["val_force_mae_meV_A"] - vb["val_force_mae_meV_A"]) < 1e-8


# ----------------------------------------------------------------------------- (e) overfitting


def test_overfit_tiny_set_drops_force_mae_100x(tmp_path):
    rng = np.random.default_rng(0)
    frames = [_label(_cluster(rng, 3)) for _ in range(6)]
    ase.io.write(tmp_path / "six.extxyz", frames)
    data = {"train": str(tmp_path / "six.extxyz"), "val": str(tmp_path / "six.extxyz")}
    model = {**TINY_MODEL, "cutoff": 4.0, "legendre": False, "bond_order_lmax": 1}
    raw = make_cfg(
        data,
        tmp_path / "run",
        model=model,
        data_kw={"max_atoms": 18},
        optim={"lr": 2e-2, "epochs": 250, "seed": 0, "ema_decay": 0.9, "warmup_fraction": 0.02, "weight_decay": 0.0},
        run={"eval_every_epochs": 125},
    )
    tr = quiet(raw)
    assert tr.steps_per_epoch == 1
    before = tr.validate(tr.model)["val_force_mae_meV_A"]
    tr.fit()
    after = tr.history[-1]["val_force_mae_meV_A"]
    assert after < before / 100, (before, after)
