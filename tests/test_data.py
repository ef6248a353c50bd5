"""Data layer: readers, validation, datasets, element references, max-atoms sampler."""

from __future__ import annotations

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from allscaip.data import (
    AtomsBatch,
    DataError,
    MaxAtomsBatchSampler,
    StructureDataset,
    energy_rms_after_references,
    fit_element_references,
    fit_references_and_rms,
    make_loader,
    read_structures,
    validate_structure,
)
from allscaip.data.references import counts_and_energies

ELEMENTS = [1, 6, 7, 8]


def make_frames(n: int = 12, seed: int = 0) -> list[Atoms]:
    """Random labelled structures: mixed sizes/elements, charge/spin, every 3rd periodic + stress."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        k = int(rng.integers(2, 9))
        a = Atoms(numbers=rng.choice(ELEMENTS, k), positions=rng.uniform(0, 4, (k, 3)))
        res = dict(energy=float(rng.normal(-100, 10)), forces=rng.normal(0, 1, (k, 3)))
        if i % 3 == 0:
            a.cell = np.diag(rng.uniform(5, 7, 3))
            a.pbc = True
            res["stress"] = rng.normal(0, 0.01, 6)
        a.calc = SinglePointCalculator(a, **res)
        a.info.update(charge=int(rng.integers(-2, 3)), spin=int(rng.integers(1, 4)))
        frames.append(a)
    return frames


def assert_same(a: Atoms, b: Atoms) -> None:
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-7)
    np.testing.assert_allclose(np.asarray(a.cell), np.asarray(b.cell), atol=1e-7)
    assert list(a.pbc) == list(b.pbc)
    np.testing.assert_allclose(a.calc.results["energy"], b.calc.results["energy"], rtol=1e-12)
    np.testing.assert_allclose(a.calc.results["forces"], b.calc.results["forces"], atol=1e-7)
    if "stress" in a.calc.results:
        np.testing.assert_allclose(a.calc.results["stress"], b.calc.results["stress"], atol=1e-9)
    assert int(b.info["charge"]) == int(a.info["charge"])
    assert int(b.info["spin"]) == int(a.info["spin"])


def write_db(path, frames) -> None:
    """ASE db (sqlite/json/aselmdb by suffix); charge/spin in row data like OMol25."""
    db = ase.db.connect(str(path))
    for a in frames:
        db.write(a, data={"charge": a.info["charge"], "spin": a.info["spin"]})
    if hasattr(db, "close"):
        db.close()


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", [".xyz", ".extxyz", ".db", ".json", ".aselmdb"])
def test_round_trip(tmp_path, suffix):
    frames = make_frames()
    path = tmp_path / f"data{suffix}"
    if suffix in (".xyz", ".extxyz"):
        ase.io.write(path, frames, format="extxyz")
    else:
        write_db(path, frames)
    got = read_structures(path)
    assert len(got) == len(frames)
    for i, (a, b) in enumerate(zip(frames, got)):
        assert_same(a, b)
        assert b.info["source"] == f"{path}:{i}"


def test_directory_and_list(tmp_path):
    frames = make_frames(10)
    ase.io.write(tmp_path / "b.xyz", frames[5:], format="extxyz")
    write_db(tmp_path / "a.aselmdb", frames[:5])
    (tmp_path / "notes.txt").write_text("ignored")
    got = read_structures(tmp_path)  # sorted: a.aselmdb, b.xyz
    assert len(got) == 10
    for a, b in zip(frames, got):
        assert_same(a, b)
    got2 = read_structures([tmp_path / "b.xyz", tmp_path / "a.aselmdb"])
    assert_same(frames[5], got2[0]) and assert_same(frames[0], got2[5])


def test_omol_source_key_kept(tmp_path):
    a = make_frames(1)[0]
    a.info["source"] = "orca6/wb97m-v"
    ase.io.write(tmp_path / "s.xyz", a, format="extxyz")
    b = read_structures(tmp_path / "s.xyz")[0]
    assert b.info["data_source"] == "orca6/wb97m-v"
    assert b.info["source"].endswith("s.xyz:0")


# ----------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("suffix", [".xyz", ".db", ".aselmdb"])
def test_streaming_matches_in_memory(tmp_path, suffix):
    frames = make_frames(15, seed=3)
    path = tmp_path / f"d{suffix}"
    if suffix == ".xyz":
        ase.io.write(path, frames, format="extxyz")
    else:
        write_db(path, frames)
    mem = StructureDataset(path, stream=False, progress=False)
    st = StructureDataset(path, stream=True, progress=False, index_cache=tmp_path / "idx")
    assert not mem.streaming and st.streaming
    assert len(mem) == len(st) == 15
    assert st._frames is None
    np.testing.assert_array_equal(mem.natoms_per_frame, [len(a) for a in frames])
    np.testing.assert_array_equal(st.natoms_per_frame, mem.natoms_per_frame)
    for i in [14, 0, 7, 3, -1]:  # random access order
        assert st.natoms(i) == len(frames[i])
        assert_same(frames[i], st[i])
        assert_same(mem[i], st[i])
        assert st[i].info["source"] == mem[i].info["source"] == st.source(i)
    # cached index is reused
    st2 = StructureDataset(path, stream=True, progress=False, index_cache=tmp_path / "idx")
    assert len(list((tmp_path / "idx").iterdir())) == 1
    assert_same(frames[4], st2[4])


def test_auto_stream_threshold(tmp_path):
    ase.io.write(tmp_path / "d.xyz", make_frames(4), format="extxyz")
    assert not StructureDataset(tmp_path / "d.xyz", progress=False).streaming
    assert StructureDataset(tmp_path / "d.xyz", stream_threshold=10, progress=False).streaming


# ----------------------------------------------------------------------------- validation


def _nan_pos(a):
    a.positions[0, 0] = np.nan


def _nan_energy(a):
    a.calc.results["energy"] = float("nan")


def _inf_forces(a):
    a.calc.results["forces"][1, 2] = np.inf


def _no_energy(a):
    del a.calc.results["energy"]


def _no_forces(a):
    del a.calc.results["forces"]


def _zero_cell(a):
    a.cell = np.zeros((3, 3))
    a.pbc = True
    a.calc.results.pop("stress", None)


def _nan_stress(a):
    a.calc.results["stress"] = np.array([0.0, 0, 0, np.nan, 0, 0])


def _unknown_element(a):
    a.numbers[0] = 26  # Fe, not in the model's elements


BAD = {
    "nan_pos": (_nan_pos, "positions"),
    "nan_energy": (_nan_energy, "energy"),
    "inf_forces": (_inf_forces, "forces"),
    "no_energy": (_no_energy, "missing energy"),
    "no_forces": (_no_forces, "missing forces"),
    "zero_cell": (_zero_cell, "zero volume"),
    "nan_stress": (_nan_stress, "stress"),
    "unknown_element": (_unknown_element, "Fe"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("stream", [False, True])
def test_data_errors_name_file_and_frame(tmp_path, case, stream):
    mutate, what = BAD[case]
    frames = make_frames(6, seed=1)
    mutate(frames[4])
    path = tmp_path / "bad_set.xyz"
    ase.io.write(path, frames, format="extxyz")
    if stream:
        ds = StructureDataset(path, stream=True, elements=set(ELEMENTS), progress=False)
        ds[3]  # fine
        with pytest.raises(DataError) as err:
            ds[4]
    else:
        with pytest.raises(DataError) as err:
            StructureDataset(path, stream=False, elements=set(ELEMENTS), progress=False)
    msg = str(err.value)
    assert "bad_set.xyz:4" in msg and what in msg, msg
    if case == "unknown_element":
        assert "H, C, N, O" in msg  # lists the model's elements


def test_forces_optional_and_wrong_shape():
    a = make_frames(1)[0]
    del a.calc.results["forces"]
    validate_structure(a, "x.xyz:0", require_forces=False)
    a.calc.results["forces"] = np.zeros((len(a) + 1, 3))
    with pytest.raises(DataError, match=r"x\.xyz:7: forces have shape"):
        validate_structure(a, "x.xyz:7")


def test_empty_structure_and_empty_dataset(tmp_path):
    e = Atoms()
    e.calc = SinglePointCalculator(e, energy=0.0)
    frames = make_frames(2) + [e]
    ase.io.write(tmp_path / "with_empty.xyz", frames, format="extxyz")
    with pytest.raises(DataError, match=r"with_empty\.xyz:2: empty structure"):
        StructureDataset(tmp_path / "with_empty.xyz", stream=False, progress=False)
    (tmp_path / "nothing.xyz").write_text("")
    for stream in (False, True):
        with pytest.raises(DataError, match="nothing.xyz"):
            StructureDataset(tmp_path / "nothing.xyz", stream=stream, progress=False)
    with pytest.raises(DataError, match="nothing.xyz"):
        read_structures(tmp_path / "nothing.xyz")
    write_db(tmp_path / "nothing.aselmdb", [])
    with pytest.raises(DataError, match="nothing.aselmdb"):
        read_structures(tmp_path / "nothing.aselmdb")


# ----------------------------------------------------------------------------- references

EPS = {1: -13.6, 6: -1029.8, 7: -1485.3, 8: -2043.1}


def test_references_recover_known_constants():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 12, (400, 4))
    counts[counts.sum(1) == 0, 0] = 1
    eps = np.array([EPS[z] for z in ELEMENTS])
    energies = counts @ eps + rng.normal(0, 1e-9, 400)
    refs = fit_element_references((counts, energies), ELEMENTS)
    for z in ELEMENTS:
        assert abs(refs[z] - EPS[z]) < 1e-6, (z, refs[z])
    assert energy_rms_after_references((counts, energies), refs) < 1e-8


def test_references_from_atoms_with_per_atom_scatter():
    frames = make_frames(60, seed=5)
    rng = np.random.default_rng(1)
    resid = rng.normal(0, 0.05, len(frames))
    for a, r in zip(frames, resid):
        a.calc.results["energy"] = sum(EPS[int(z)] for z in a.numbers) + r * len(a)
    refs, rms = fit_references_and_rms(frames, ELEMENTS + [9])  # F never occurs
    assert refs[9] == 0.0
    counts, energies = counts_and_energies(frames, ELEMENTS)
    ls, *_ = np.linalg.lstsq(counts.astype(float), energies, rcond=None)  # full rank here
    np.testing.assert_allclose([refs[z] for z in ELEMENTS], ls, atol=1e-6)
    res = (energies - counts @ ls) / counts.sum(1)
    assert rms == pytest.approx(np.sqrt(np.mean(res**2)), rel=1e-6)
    assert 0.01 < rms < 0.1
    assert energy_rms_after_references(frames, refs) == pytest.approx(rms, rel=1e-12)


def test_references_fixed_ratio_is_finite():
    k = np.arange(1, 30)
    counts = np.stack([2 * k, 0 * k, 0 * k, k], axis=1)  # water clusters only: H2O ratio fixed
    energies = k * (2 * EPS[1] + EPS[8])
    refs = fit_element_references((counts, energies), ELEMENTS)
    assert all(np.isfinite(list(refs.values())))
    assert 2 * refs[1] + refs[8] == pytest.approx(2 * EPS[1] + EPS[8], abs=1e-6)
    assert refs[6] == refs[7] == 0.0
    assert energy_rms_after_references((counts, energies), refs) < 1e-8


# ----------------------------------------------------------------------------- sampler


def test_sampler_max_atoms_and_determinism():
    rng = np.random.default_rng(0)
    natoms = rng.integers(1, 40, 300)
    s = MaxAtomsBatchSampler(natoms, max_atoms=100, shuffle=True, seed=7)
    s.set_epoch(0)
    e0 = list(s)
    assert all(natoms[b].sum() <= 100 for b in e0)
    assert sorted(i for b in e0 for i in b) == list(range(300))  # every frame exactly once
    assert len(e0) == s.num_steps() == len(s)
    s2 = MaxAtomsBatchSampler(natoms, max_atoms=100, shuffle=True, seed=7)
    s2.set_epoch(0)
    assert list(s2) == e0
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0
    s3 = MaxAtomsBatchSampler(natoms, max_atoms=100, shuffle=True, seed=8)
    assert list(s3) != e0
    plain = list(MaxAtomsBatchSampler(natoms, max_atoms=100, shuffle=False, seed=0))
    assert [i for b in plain for i in b] == list(range(300))
    dl = MaxAtomsBatchSampler(natoms, max_atoms=100, shuffle=False, seed=0, drop_last=True)
    assert list(dl) == plain[:-1]


def test_sampler_oversized_frame_warns_and_is_alone():
    natoms = [5, 50, 5, 5]
    with pytest.warns(UserWarning, match="max_atoms=20"):
        s = MaxAtomsBatchSampler(natoms, max_atoms=20, shuffle=False, seed=0)
    assert list(s) == [[0], [1], [2, 3]]


@pytest.mark.parametrize("replicas", [2, 3])
def test_sampler_replica_split(replicas):
    natoms = np.random.default_rng(2).integers(1, 30, 250)
    single = MaxAtomsBatchSampler(natoms, 90, shuffle=True, seed=3)
    ranks = [
        MaxAtomsBatchSampler(natoms, 90, shuffle=True, seed=3, num_replicas=replicas, rank=r) for r in range(replicas)
    ]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        glob = list(single)
        per_rank = [list(s) for s in ranks]
        steps = len(glob) // replicas
        assert all(len(p) == steps == s.num_steps() for p, s in zip(per_rank, ranks))
        for step in range(steps):
            union = sorted(i for p in per_rank for i in p[step])
            accumulated = sorted(i for b in glob[step * replicas : (step + 1) * replicas] for i in b)
            assert union == accumulated
        seen = [i for p in per_rank for b in p for i in b]
        assert len(seen) == len(set(seen))
        assert sorted(seen) == sorted(i for b in glob[: steps * replicas] for i in b)


def test_make_loader(tmp_path):
    frames = make_frames(20, seed=4)
    ase.io.write(tmp_path / "d.xyz", frames, format="extxyz")
    ds = StructureDataset(tmp_path / "d.xyz", stream=True, progress=False)
    sampler = MaxAtomsBatchSampler(ds.natoms_per_frame, 16, shuffle=True, seed=0)
    batches = list(make_loader(ds, sampler, torch.float32))
    idx = list(sampler)
    assert len(batches) == len(idx)
    for b, ids in zip(batches, idx):
        assert isinstance(b, AtomsBatch)
        assert b.positions.dtype == torch.float32
        assert int(b.natoms.sum()) <= 16
        assert b.natoms.tolist() == [len(frames[i]) for i in ids]
        np.testing.assert_allclose(b.energy.numpy(), [frames[i].calc.results["energy"] for i in ids], rtol=1e-6)
        assert b.charge.tolist() == [frames[i].info["charge"] for i in ids]


def test_loader_workers_streaming_aselmdb(tmp_path):
    """Forked workers reopen LMDB envs the parent already holds (py-lmdb forbids sharing)."""
    frames = make_frames(24, seed=6)
    write_db(tmp_path / "d.aselmdb", frames)
    ds = StructureDataset(tmp_path / "d.aselmdb", stream=True, progress=False)
    assert_same(frames[0], ds[0])  # parent opens the env before the workers fork
    sampler = MaxAtomsBatchSampler(ds.natoms_per_frame, 20, shuffle=True, seed=1)
    got = {}
    for b, ids in zip(make_loader(ds, sampler, torch.float64, num_workers=2), list(sampler)):
        for e, i in zip(b.energy.tolist(), ids):
            got[i] = e
    assert sorted(got) == list(range(24))
    assert all(got[i] == pytest.approx(frames[i].calc.results["energy"], rel=1e-12) for i in got)
    assert_same(frames[5], ds[5])  # parent still reads after the workers are gone
