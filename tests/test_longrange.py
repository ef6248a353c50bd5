"""Long-range benchmark (allscaip/workflows/longrange): exact OpenMM labels and a very short training of both
variants. The full runs are a benchmark (docs/longrange.md), not a test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytest.importorskip("openmm")
pytestmark = pytest.mark.openmm

import ase.io  # noqa: E402

from allscaip.config import model_config  # noqa: E402
from allscaip.data import atoms_to_batch  # noqa: E402
from allscaip.model import AllScAIP, compute_properties  # noqa: E402
from allscaip.workflows.longrange import generate as gen  # noqa: E402
from allscaip.workflows.longrange import reference as ref  # noqa: E402
from allscaip.workflows.longrange import run  # noqa: E402


@pytest.mark.parametrize("kind", ["na_water", "nh4_formate", "na0_water"])
def test_dimer_labels_equal_direct_coulomb_lj_sum(kind):
    """OpenMM (no cutoff, intramolecular pairs excluded) = numpy double sum over intermolecular pairs."""
    rng = np.random.default_rng(3)
    lab = gen.DimerLabeller(kind)
    frames = gen.dimer_frames(kind, 6, rng)
    assert {a.info["charge"] for a in frames} == {1 if kind == "na_water" else 0}
    for a in frames:
        e, f = ref.dimer_energy_forces(a.positions, lab.na, lab.charges, lab.sigma, lab.epsilon)
        assert a.get_potential_energy() == pytest.approx(e, rel=1e-9, abs=1e-10)
        np.testing.assert_allclose(a.get_forces(), f, rtol=1e-8, atol=1e-10)
        assert a.info["dmin"] >= gen.CONTACT_H - 1e-9
    # far apart: only the monopole-monopole / monopole-dipole tail is left, and it is exact Coulomb
    pos = lab.place(40.0, np.eye(3), np.eye(3), np.array([0.0, 0.0, 1.0]))
    e, _ = lab.label(pos)
    if kind == "nh4_formate":
        assert e == pytest.approx(-ref.COULOMB_EV_A / 40.0, rel=0.02)


def test_dimer_forces_are_minus_energy_gradient():
    lab = gen.DimerLabeller("nh4_formate")
    a = gen.dimer_frames("nh4_formate", 1, np.random.default_rng(5), dmax=5.0)[0]
    pos, f = a.positions.copy(), a.get_forces()
    h = 1e-5
    for i in range(len(pos)):
        for x in range(3):
            p, m = pos.copy(), pos.copy()
            p[i, x] += h
            m[i, x] -= h
            fd = -(lab.label(p)[0] - lab.label(m)[0]) / (2 * h)
            assert fd == pytest.approx(f[i, x], abs=1e-6)


def test_box_labels_equal_numpy_ewald_sum():
    """PME (tolerance 1e-6) + switched repulsion against an independent Ewald sum; forces by
    finite differences of the OpenMM energy."""
    rng = np.random.default_rng(11)
    box = 10.0
    frames = gen.box_frames(box, 2, rng)
    assert len(frames[0]) == gen.box_ion_count(box) == 12
    for a in frames:
        q = np.where(a.numbers == 11, 1.0, -1.0)
        assert q.sum() == 0 and a.info["charge"] == 0 and a.pbc.all()
        e, f = ref.box_energy_forces(a.positions, q, box)
        assert a.get_potential_energy() == pytest.approx(e, abs=1e-4)
        np.testing.assert_allclose(a.get_forces(), f, atol=1e-4)
    a = frames[0]
    lab = gen.BoxLabeller(np.where(a.numbers == 11, 1.0, -1.0), box)
    pos, f, h = a.positions.copy(), a.get_forces(), 1e-4
    for i, x in [(0, 0), (3, 1), (7, 2)]:
        p, m = pos.copy(), pos.copy()
        p[i, x] += h
        m[i, x] -= h
        assert -(lab.label(p)[0] - lab.label(m)[0]) / (2 * h) == pytest.approx(f[i, x], abs=1e-4)


def test_generate_writes_the_splits(tmp_path):
    sizes = gen.Sizes(
        dimers_per_kind=24,
        tail_per_kind=4,
        box_train=[10.0],
        box_test=[12.0],
        box_frames_train=10,
        box_frames_test=3,
        charge_pairs=4,
        scan_step=2.0,
    )
    summary = gen.generate(tmp_path, seed=1, sizes=sizes, verbose=False)

    train = ase.io.read(tmp_path / "dimers/train.extxyz", ":")
    test = ase.io.read(tmp_path / "dimers/test.extxyz", ":")
    assert max(a.info["d"] for a in train) <= sizes.train_dmax
    assert {a.info["set"] for a in test} == {"held_out", "held_out_tail", "extrapolation"}
    assert all(a.info["d"] > sizes.train_dmax for a in test if a.info["set"] == "extrapolation")
    assert {a.info["kind"] for a in train} == {"na_water", "nh4_formate", "na0_water"}
    pairs = ase.io.read(tmp_path / "dimers/charge_pairs.extxyz", ":")
    for a, b in zip(pairs[0::2], pairs[1::2]):  # same geometry, charge +1 then 0
        assert (a.info["charge"], b.info["charge"]) == (1, 0) and a.info["pair"] == b.info["pair"]
        np.testing.assert_array_equal(a.positions, b.positions)
    btest = ase.io.read(tmp_path / "boxes/test.extxyz", ":")
    assert {a.info["set"] for a in btest} == {"trained_size", "unseen_size"}
    assert json.loads((tmp_path / "summary.json").read_text())["boxes"]["10"]["ions"] == 12
    assert 0.3 < summary["boxes"]["10"]["beyond_cutoff_force_share"] < 1.0


def test_only_distance_biased_node_attention_sees_separation_beyond_cutoff():
    """With no edge between the molecules the local model and node attention without the distance
    bias give the same energy at every separation; with the bias it changes."""

    lab = gen.DimerLabeller("na_water")
    rot = gen.random_rotation(np.random.default_rng(0))
    frames = []
    for d in (8.0, 11.0):
        a = gen._atoms(
            lab.symbols,
            lab.place(d, np.eye(3), rot, np.array([1.0, 0.0, 0.0])),
            0.0,
            np.zeros((4, 3)),
            dict(charge=1, spin=1),
        )
        frames.append(a)
    energies = {}
    for name, kw in {
        "local": dict(node_attention=False),
        "attention_no_bias": dict(distance_bias=False),
        "attention_bias": dict(distance_bias=True),
    }.items():
        torch.manual_seed(0)
        model = AllScAIP(
            model_config(
                elements=[1, 8, 11],
                hidden=16,
                heads=2,
                layers=2,
                cutoff=3.0,
                num_rbf=8,
                bond_order_lmax=2,
                legendre_lmax=2,
                **kw,
            )
        ).double()
        energies[name] = compute_properties(model, atoms_to_batch(frames), forces=False)["energy"].numpy()
    assert energies["local"][0] == pytest.approx(energies["local"][1], abs=1e-12)
    assert energies["attention_no_bias"][0] == pytest.approx(energies["attention_no_bias"][1], abs=1e-12)
    assert abs(energies["attention_bias"][0] - energies["attention_bias"][1]) > 1e-6


def test_charge_pairs_differ_only_through_the_charge_input():
    """A charge pair (Na+ vs neutral Na, same geometry) is the same input to a model without the
    charge embedding, so such a model predicts no difference at all."""

    lab = gen.DimerLabeller("na_water")
    pos = lab.place(10.0, np.eye(3), gen.random_rotation(np.random.default_rng(1)), np.array([0.0, 1.0, 0.0]))
    pair = [gen._atoms(lab.symbols, pos, 0.0, np.zeros((4, 3)), dict(charge=q, spin=1)) for q in (1, 0)]
    for charge_spin in (False, True):
        torch.manual_seed(0)
        model = AllScAIP(
            model_config(
                elements=[1, 8, 11],
                hidden=16,
                heads=2,
                layers=2,
                cutoff=3.0,
                num_rbf=8,
                bond_order_lmax=2,
                legendre_lmax=2,
                distance_bias=True,
                charge_spin=charge_spin,
            )
        ).double()
        out = compute_properties(model, atoms_to_batch(pair))
        same = torch.allclose(out["energy"][0], out["energy"][1], atol=1e-12, rtol=0) and torch.allclose(
            out["forces"][:4], out["forces"][4:], atol=1e-12, rtol=0
        )
        assert same != charge_spin


@pytest.mark.slow
def test_runner_trains_every_variant_briefly(tmp_path):
    """allscaip/workflows/longrange/run.py --small: tiny data, 1 epoch of each variant, evaluation, JSON, plots."""

    out = tmp_path / "lr"
    assert (
        run.main(["--small", "--out", str(out), "--json", str(tmp_path / "r.json"), "--img-dir", str(tmp_path / "img")])
        == 0
    )
    for s in ("dimers", "boxes"):
        for v in ("attention", "local", "sinc_pairs"):
            assert (out / s / v / "last.ckpt").is_file() and (out / s / v / "metrics.csv").is_file()
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["dimers"]["variants"]) == set(res["boxes"]["variants"]) == {"attention", "local", "sinc_pairs"}
    cfg = {
        v: torch.load(out / "dimers" / v / "last.ckpt", weights_only=True)["model_config"]
        for v in ("attention", "local", "sinc_pairs")
    }
    smooth = cfg["sinc_pairs"]
    assert smooth["node_attention"] and not smooth["distance_bias"] and smooth["node_encoding"] == "sinc_pairs"
    assert smooth["encoding_range"] == run.SINC_PAIRS_RANGE_A
    assert cfg["attention"]["node_attention"] and not cfg["local"]["node_attention"]
    assert {k: x for k, x in cfg["attention"].items() if k != "node_attention"} == {
        k: x for k, x in cfg["local"].items() if k != "node_attention"
    }
    assert (tmp_path / "img" / "longrange_dimer_curves.png").is_file() and (
        tmp_path / "img" / "longrange_boxes.png"
    ).is_file()
