"""The core-repulsion prior: a smooth ZBL wall that is exactly zero where the data has atoms."""

from __future__ import annotations

import dataclasses

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import small_model, water_box

from allscaip.checkpoint import load_checkpoint, load_model, save_checkpoint
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip.model.core_repulsion import core_switch, zbl_energy
from allscaip.train.core_radius import fit_core_radius, shortest_distances


def _dimer_energy(model, r: float, z=(1, 1)) -> float:
    a = Atoms(numbers=list(z), positions=[[0, 0, 0], [r, 0, 0]])
    a.info.update(charge=0, spin=1)
    return compute_properties(model, atoms_to_batch([a]), forces=False)["energy"].item()


def test_switch_is_one_inside_zero_outside_and_c2_smooth():
    rc = torch.tensor(1.2, dtype=torch.float64)
    r = torch.tensor([0.1, 0.6, 0.9, 1.2, 1.5], dtype=torch.float64)
    s = core_switch(r, rc)
    assert s[:2].tolist() == [1.0, 1.0] and s[3:].tolist() == [0.0, 0.0] and 0.0 < s[2].item() < 1.0
    for end in (0.6, 1.2):  # first and second derivatives vanish at both ends of the ramp
        x = torch.tensor(end, dtype=torch.float64, requires_grad=True)
        (d1,) = torch.autograd.grad(core_switch(x, rc), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1, x)
        assert abs(d1.item()) < 1e-12 and abs(d2.item()) < 1e-9, end


def test_zbl_values():
    """E_ZBL -> bare nuclear Coulomb at short range; the H-H value at 1 Å from the formula."""
    z1 = torch.tensor(1.0, dtype=torch.float64)
    r = torch.tensor(1e-4, dtype=torch.float64)
    assert zbl_energy(r, z1, z1).item() == pytest.approx(14.399645 / 1e-4, rel=1e-3)
    a = 0.46850 / 2.0
    x = 1.0 / a
    phi = (
        0.18175 * np.exp(-3.1998 * x)
        + 0.50986 * np.exp(-0.94229 * x)
        + 0.28022 * np.exp(-0.4029 * x)
        + 0.02817 * np.exp(-0.20162 * x)
    )
    assert zbl_energy(torch.tensor(1.0, dtype=torch.float64), z1, z1).item() == pytest.approx(
        14.399645 * phi, rel=1e-12
    )


def test_wall_adds_zbl_inside_half_radius_and_nothing_beyond_the_radius():
    walled = small_model(elements=[1, 8])
    bare = small_model(elements=[1, 8], core=False)
    rc = float(walled.core_radius[0, 0])
    z1 = torch.tensor(1.0, dtype=torch.float64)
    for r in (0.2, 0.4, 0.5 * rc):  # full ZBL below r_c / 2 (one pair: both rows' halves)
        added = _dimer_energy(walled, r) - _dimer_energy(bare, r)
        assert added == pytest.approx(zbl_energy(torch.tensor(r, dtype=torch.float64), z1, z1).item(), rel=1e-9)
    for r in (rc, rc + 0.01, 3.0):
        assert _dimer_energy(walled, r) == _dimer_energy(bare, r)
    wall = [_dimer_energy(walled, r) - _dimer_energy(bare, r) for r in np.linspace(0.2, rc, 25)]
    assert all(a > b for a, b in zip(wall[:-1], wall[1:])), "the wall must fall monotonically to zero"


def test_test_models_have_an_active_wall():
    """The premise of running every engine/export test with small_model(): its wall acts on water_box."""
    walled, bare = small_model(), small_model(core=False)
    batch = atoms_to_batch([water_box(2)])
    e_w = compute_properties(walled, batch)
    e_b = compute_properties(bare, batch)
    assert e_w["energy"].item() - e_b["energy"].item() > 0.1
    assert (e_w["forces"] - e_b["forces"]).abs().max().item() > 0.1


def test_fitted_radius_leaves_the_data_untouched(tmp_path):
    frames = [water_box(2, seed=s) for s in range(3)]
    elements = [1, 6, 7, 8]
    shortest = shortest_distances(frames, elements, 4.0)
    d = frames[0].get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    assert shortest[0, 3] == pytest.approx(
        min(
            float(d[np.ix_(frames[0].numbers == 1, frames[0].numbers == 8)].min()),
            *[float(f.get_all_distances(mic=True)[np.ix_(f.numbers == 1, f.numbers == 8)].min()) for f in frames[1:]],
        )
    )
    radius = fit_core_radius(frames, elements, 4.0, 0.9)
    assert np.allclose(radius[0, 3], 0.9 * shortest[0, 3]) and np.allclose(radius, radius.T)
    # C never occurs: margin x the sum of covalent radii
    assert radius[1, 1] == pytest.approx(0.9 * 2 * 0.76)

    bare = small_model(core=False)
    walled = small_model(core=False)
    walled.core_radius.copy_(torch.as_tensor(radius))
    batch = atoms_to_batch(frames)
    a, b = compute_properties(bare, batch), compute_properties(walled, batch)
    assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])


def test_cli_adds_the_wall_to_an_old_checkpoint(tmp_path, capsys):
    from allscaip.cli import main

    model = small_model(elements=[1, 8], core=False)
    state = {k: v for k, v in model.state_dict().items() if k != "core_radius"}  # made before the wall
    cfg = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k not in ("core_repulsion", "core_margin")}
    old = tmp_path / "old.ckpt"
    save_checkpoint(old, {"model_config": cfg, "model_state": state})
    assert torch.count_nonzero(load_model(old).core_radius) == 0  # loads, without a wall

    frames = [water_box(2, seed=s) for s in range(2)]
    for a in frames:
        a.calc = None
    data = tmp_path / "train.extxyz"
    ase.io.write(data, frames)
    with pytest.raises(SystemExit, match="must differ"):
        main(["core-repulsion", str(old), "--data", str(data), "-o", str(old)])
    with pytest.raises(SystemExit, match="core_margin must lie in"):
        main(["core-repulsion", str(old), "--data", str(data), "--margin", "1.2", "-o", str(tmp_path / "x.ckpt")])
    new = tmp_path / "new.ckpt"
    assert main(["core-repulsion", str(old), "--data", str(data), "--margin", "0.8", "-o", str(new)]) == 0
    table = capsys.readouterr().out
    assert "H-H" in table and "H-O" in table and "O-O" in table
    walled = load_model(new)
    expect = fit_core_radius(frames, [1, 8], model.cfg.cutoff, 0.8)
    assert torch.allclose(walled.core_radius, torch.as_tensor(expect))
    assert load_checkpoint(new)["model_config"]["core_margin"] == 0.8
    batch = atoms_to_batch(frames)  # unchanged on the data it was fitted to
    assert torch.equal(
        compute_properties(walled, batch)["energy"], compute_properties(load_model(old), batch)["energy"]
    )
    assert _dimer_energy(walled, 0.5) - _dimer_energy(load_model(old), 0.5) > 1.0  # eV: a wall where data has none
