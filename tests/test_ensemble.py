"""The ensemble density constraint (allscaip.train.ensemble, allscaip constrain-density)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from allscaip.config import ConfigError
from allscaip.train.config import config_from_dict
from allscaip.train.ensemble import DensityTerm, density_scores
from allscaip.train.trainer import Trainer
from allscaip.workflows.teacher import reweight

VAL = Path(__file__).resolve().parents[1] / "examples" / "water" / "data" / "val.extxyz"
MODEL = dict(hidden=16, layers=1, heads=2, cutoff=3.5, num_rbf=8, bond_order_lmax=2, legendre_lmax=2, elements=[1, 8])


@pytest.fixture(scope="module")
def ensemble_file(tmp_path_factory) -> str:
    """Nine 32-molecule teacher boxes at 300 K and 0.90/1.00/1.10 g/cm³, marked as one NPT trajectory."""
    frames = [a for a in ase.io.read(VAL, ":") if a.info.get("n_molecules") == 32 and a.info["temperature_K"] == 300]
    assert len(frames) == 9
    for a in frames:
        a.info.update(config_type="teacher_md", traj="npt_300")
    path = tmp_path_factory.mktemp("ens") / "npt.extxyz"
    ase.io.write(path, frames)
    return str(path)


def _cfg(path: str, out: Path, constraint: bool = True, epochs: int = 6) -> dict:
    return {
        "model": dict(MODEL),
        "data": {"train": [path], "val": [path], "max_atoms": 100},
        "optim": {
            "lr": 3e-3,
            "epochs": epochs,
            "seed": 2,
            "energy_coef": 1.0,
            "force_coef": 0.1,
            "stress_coef": 0.0,
            "density_constraint": constraint,
            "density_every_steps": 3,
            "warmup_fraction": 0.0,
        },
        "run": {"out_dir": str(out), "dtype": "float64", "progress": False, "threads": 1},
    }


def _shift_percent(ckpt: Path, path: str) -> float:
    """The first-order density shift of a checkpoint on the ensemble frames, by allscaip.workflows.teacher.reweight."""
    frames = ase.io.read(path, ":")
    du = (
        reweight.model_energies_ev(str(ckpt), frames, dtype="float64")
        - np.array([a.get_potential_energy() for a in frames])
    ) * 96.48533212331
    return reweight.predict(reweight.frame_densities(frames), du, 300.0, 32).cumulant_shift_percent


def test_scores_are_relative_density_over_kT_per_trajectory():
    frames = [a for a in ase.io.read(VAL, ":") if a.pbc.all()][:6]
    for i, a in enumerate(frames):
        a.info["traj"] = "a" if i < 3 else "b"
    s = density_scores(frames)
    for grp in (slice(0, 3), slice(3, 6)):
        rho = reweight.frame_densities(frames[grp])
        kt = 8.617333262e-5 * np.array([a.info["temperature_K"] for a in frames[grp]])
        np.testing.assert_allclose(s[grp], 100 * (rho / rho.mean() - 1) / kt, rtol=1e-12)


def test_density_term_equals_the_reweighting_prediction(ensemble_file, tmp_path):
    trainer = Trainer(config_from_dict(_cfg(ensemble_file, tmp_path / "r", epochs=1)), log=lambda s: None)
    assert isinstance(trainer.density, DensityTerm) and len(trainer.density.indices) == 9
    m = trainer.density.evaluate(trainer.model, trainer.device, trainer.dtype)
    assert trainer.density.refresh(trainer.model, trainer.params, trainer.device, trainer.dtype) == pytest.approx(
        m, rel=1e-10
    )
    trainer.save("init.ckpt")
    # same frames, same model: the trainer's -m is allscaip.workflows.teacher.reweight's second-cumulant shift
    assert -m == pytest.approx(_shift_percent(tmp_path / "r" / "init.ckpt", ensemble_file), rel=1e-8, abs=1e-9)
    assert abs(m) > 0.1  # an untrained model does shift the density


def test_gradient_is_that_of_m_and_a_newton_step_zeroes_it(ensemble_file, tmp_path):
    from allscaip.data import atoms_to_batch
    from allscaip.model import compute_properties

    t = Trainer(config_from_dict(_cfg(ensemble_file, tmp_path / "g", epochs=1)), log=lambda s: None)
    model, term, params = t.model, t.density, t.params
    m0 = term.refresh(model, params, t.device, t.dtype)
    # m with all frames at once, differentiated by autograd
    m = sum(
        float(s) * (compute_properties(model, b, forces=False, training=True)["energy"] - b.energy).sum()
        for s, b in zip(term.scores, (atoms_to_batch([a], dtype=t.dtype) for a in term.frames))
    ) / len(term.frames)
    assert float(m.detach()) == pytest.approx(m0, rel=1e-10)
    exact = torch.autograd.grad(m, params, allow_unused=True)
    exact = [torch.zeros_like(p) if g is None else g for p, g in zip(params, exact)]
    norm = torch.sqrt(sum((g * g).sum() for g in exact))
    assert norm > 0
    for a, b in zip(term.grad, exact):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * float(norm))
    before = [p.detach().clone() for p in params]
    assert term.project(model, params, t.device, t.dtype, max_iter=1) == [pytest.approx(m0)]
    # the step is -m ∇m/|∇m|^2; from an untrained model m is far from linear over it, but
    # the Newton steps converge
    moved = torch.sqrt(sum(((p - q).detach() ** 2).sum() for p, q in zip(params, before)))
    assert float(moved) == pytest.approx(abs(m0) / float(norm), rel=1e-6)
    m1 = term.evaluate(model, t.device, t.dtype)
    assert abs(m1) < abs(m0)
    history = term.project(model, params, t.device, t.dtype, max_iter=8, tol=1e-3)
    assert history[0] == pytest.approx(m1, rel=1e-10)
    assert abs(history[-1]) <= 1e-3 and abs(term.evaluate(model, t.device, t.dtype)) <= 1e-3


def test_training_under_the_constraint_keeps_the_density(ensemble_file, tmp_path):
    free = Trainer(
        config_from_dict(_cfg(ensemble_file, tmp_path / "free", constraint=False, epochs=2)), log=lambda s: None
    )
    free.fit()
    assert abs(_shift_percent(tmp_path / "free" / "last.ckpt", ensemble_file)) > 0.5  # left alone, it moves
    t = Trainer(config_from_dict(_cfg(ensemble_file, tmp_path / "f", epochs=2)), log=lambda s: None)
    t.fit()
    logged = t.history[-1]["density_shift_pct"]
    assert logged == pytest.approx(_shift_percent(tmp_path / "f" / "last.ckpt", ensemble_file), rel=1e-6, abs=1e-9)
    assert abs(logged) < 0.01
    assert t.history[-1]["val_force_mae_meV_A"] < 2 * free.history[-1]["val_force_mae_meV_A"]


def test_constrain_density_command(ensemble_file, tmp_path, capsys):
    from allscaip.cli import main

    t = Trainer(config_from_dict(_cfg(ensemble_file, tmp_path / "c", constraint=False, epochs=1)), log=lambda s: None)
    t.fit()
    src, out = tmp_path / "c" / "last.ckpt", tmp_path / "c" / "constrained.ckpt"
    shift0 = _shift_percent(src, ensemble_file)
    assert abs(shift0) > 0.5
    assert (
        main(
            [
                "constrain-density",
                str(src),
                "--frames",
                ensemble_file,
                "--val",
                ensemble_file,
                "--dtype",
                "float64",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert f"density shift {shift0:+.3f} %" in text and "validation frames, after:" in text
    assert abs(_shift_percent(out, ensemble_file)) < 0.01
    rec = torch.load(out, weights_only=True)["density_constraint"]
    assert rec["shift_pct_before"] == pytest.approx(shift0, rel=1e-6) and rec["n_frames"] == 9
    with pytest.raises(SystemExit, match="config_type='teacher_md'"):
        main(["constrain-density", str(src), "--frames", str(VAL), "-o", str(tmp_path / "x.ckpt")])
    held = tmp_path / "c" / "held.ckpt"
    assert (
        main(
            [
                "constrain-density",
                str(src),
                "--frames",
                ensemble_file,
                "--dtype",
                "float64",
                "-o",
                str(held),
                "--hold-offset",
                "monomer:bulk",
                "--hold-frames",
                str(VAL),
                "--hold-max-frames",
                "4",
                "--max-iter",
                "12",
            ]
        )
        == 0
    )
    assert "offset monomer:bulk:" in capsys.readouterr().out
    rec = torch.load(held, weights_only=True)["density_constraint"]["hold_offset"]
    assert rec["after_meV_atom"] == pytest.approx(rec["before_meV_atom"], abs=0.1)
    assert abs(_shift_percent(held, ensemble_file)) < 0.01
    with pytest.raises(SystemExit, match="--hold-frames"):
        main(
            ["constrain-density", str(src), "--frames", ensemble_file, "-o", str(held), "--hold-offset", "monomer:bulk"]
        )


def test_density_term_without_ensemble_frames_is_a_clear_error(tmp_path):
    with pytest.raises(
        ConfigError, match="config_type='teacher_md'.*python -m allscaip.workflows.teacher.active --teacher"
    ):
        Trainer(config_from_dict(_cfg(str(VAL), tmp_path / "x")), log=lambda s: None)


def test_projection_can_hold_the_monomer_bulk_offset(ensemble_file, tmp_path):
    """With ``hold``, the Newton steps zero the density shift and keep the held offset where it was;
    without it the same projection moves the offset (so holding it is not a no-op)."""
    from allscaip.train.ensemble import OffsetTerm

    val = ase.io.read(VAL, ":")
    offset = OffsetTerm.from_frames([a for a in val if len(a) <= 3 or len(a) == 96], "monomer:bulk")
    assert len(offset.first) > 0 and all(len(a) == 96 for a in offset.second)
    moved = {}
    for held in (False, True):
        t = Trainer(config_from_dict(_cfg(ensemble_file, tmp_path / f"h{held}", epochs=1)), log=lambda s: None)
        model, term, params = t.model, t.density, t.params
        v0 = offset.refresh(model, params, t.device, t.dtype)[0]
        history = term.project(
            model, params, t.device, t.dtype, max_iter=8, tol=1e-3, hold=[offset] if held else [], hold_tol=1e-4
        )
        assert abs(term.evaluate(model, t.device, t.dtype)) <= 1e-3 and abs(history[0]) > 0.1
        moved[held] = abs(offset.refresh(model, params, t.device, t.dtype)[0] - v0)
        if held:
            assert term.hold_history[0] == [pytest.approx(v0, rel=1e-10)]
    assert moved[True] <= 1e-4 and moved[False] > 100 * moved[True] + 1e-3
    with pytest.raises(ConfigError, match="config_type='dimerx'"):
        OffsetTerm.from_frames(val, "dimerx:bulk")
    with pytest.raises(ConfigError, match="'A:B'"):
        OffsetTerm.from_frames(val, "monomer")
