"""Exported artefacts (TorchScript .pt, AOTInductor .pt2) against the checkpoint they came from.

One export per format and dtype for the whole session (the AOTInductor compile is the
expensive part: exactly one in this file), each made by the allscaip-export CLI from a
checkpoint written with allscaip.checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from conftest import small_model, water_box

from allscaip.checkpoint import load_model, save_checkpoint
from allscaip_export import cli
from allscaip_export.aoti import METADATA_KEY, load_aoti, read_metadata
from allscaip_export.metadata import checkpoint_hash
from allscaip_export.torchscript import load_torchscript

REPO = Path(__file__).resolve().parents[1]


def _mol(name: str) -> Atoms:
    a = molecule(name)
    a.info.update(charge=0, spin=1)
    return a


def _water_cluster(n_side: int) -> Atoms:
    a = water_box(n_side, seed=3)
    a.pbc = False
    a.cell = np.zeros((3, 3))
    return a


# name -> builder; 3 to 3000 atoms, molecules and triclinic/orthorhombic periodic cells
SYSTEMS = {
    "H2O (3)": lambda: _mol("H2O"),
    "acetamide (9)": lambda: _mol("CH3CONH2"),
    "triclinic box (24)": lambda: water_box(2, cell_skew=True, seed=1),
    "small triclinic box, several images (3)": lambda: water_box(1, spacing=3.0, cell_skew=True, seed=2),
    "water cluster (192)": lambda: _water_cluster(4),
    "triclinic box (375)": lambda: water_box(5, cell_skew=True, seed=5),
    "box (3000)": lambda: water_box(10, seed=6),
}
LARGE = {"box (3000)"}


@pytest.fixture(scope="session")
def checkpoint(export_checkpoint) -> Path:
    return export_checkpoint


@pytest.fixture(scope="session")
def workdir(checkpoint) -> Path:
    return checkpoint.parent


def _cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="session")
def ts64(checkpoint):
    assert _cli(checkpoint) == 0  # defaults: torchscript, float64, cpu, OUT = model.pt
    path = checkpoint.with_suffix(".pt")
    module, meta = load_torchscript(path)
    return path, module, meta


@pytest.fixture(scope="session")
def ts32(checkpoint, workdir):
    path = workdir / "model32.pt"
    assert _cli(checkpoint, "-o", path, "--dtype", "float32") == 0
    module, meta = load_torchscript(path)
    return path, module, meta


@pytest.fixture(scope="session")
def aoti64(aoti_package):
    """The session's one AOTInductor compile (conftest; made by the CLI, which verifies it)."""
    call, meta = load_aoti(aoti_package)
    return aoti_package, call, meta


@pytest.fixture(scope="session")
def eager(checkpoint):
    return {
        "float64": load_model(checkpoint, dtype=torch.float64),
        "float32": load_model(checkpoint, dtype=torch.float32),
    }


def _check(call, meta, model, atoms, dtype_name):
    dtype = getattr(torch, dtype_name)
    out = call(*cli.whole_system_inputs(atoms, meta["cutoff"], dtype, "cpu"))
    assert out[0].dtype == dtype and out[1].shape == (len(atoms), 3) and out[2].shape == (3, 3)
    assert out[3].shape == (len(atoms),)
    ref = cli.eager_reference(model, atoms, dtype, "cpu")
    res = cli.compare(out, ref, dtype_name)
    assert set(res) >= {"energy", "forces", "energies"} and ("virial" in res) == bool(atoms.pbc.all())
    bad = {k: v for k, v in res.items() if not v[1]}
    assert not bad, f"{dtype_name} artefact differs from the checkpoint on {len(atoms)} atoms: {bad}"
    # the virial of a molecule is still W = -dE/dstrain = sum_i r_i (x) F_i (no cell term)
    if not atoms.pbc.any():
        w = torch.tensor(atoms.positions, dtype=torch.float64).T @ ref["forces"].double()
        tol = 1e-9 if dtype_name == "float64" else 1e-4 * max(1.0, float(w.abs().max()))
        np.testing.assert_allclose(out[2].double().numpy(), w.numpy(), atol=tol)


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_artefacts_match_checkpoint(system, ts64, aoti64, ts32, eager):
    atoms = SYSTEMS[system]()
    _check(ts64[1], ts64[2], eager["float64"], atoms, "float64")
    _check(aoti64[1], aoti64[2], eager["float64"], atoms, "float64")
    if system not in LARGE:
        _check(ts32[1], ts32[2], eager["float32"], atoms, "float32")


def test_aoti_edge_cases(aoti64, eager):
    """Two atoms without any neighbour (no edges at all) and a single atom (clear error)."""
    _, call, meta = aoti64
    apart = Atoms("HO", positions=[[0, 0, 0], [9.0, 0, 0]])
    apart.info.update(charge=0, spin=1)
    _check(call, meta, eager["float64"], apart, "float64")
    with pytest.raises(ValueError, match="at least 2 atoms"):
        call(*cli.whole_system_inputs(Atoms("H", positions=[[0, 0, 0]]), meta["cutoff"], torch.float64, "cpu"))


def test_charge_and_spin_reach_the_aoti_graph(aoti64, eager):
    _, call, meta = aoti64
    atoms = _mol("CH3CONH2")
    atoms.info.update(charge=1, spin=2)
    _check(call, meta, eager["float64"], atoms, "float64")


def test_unknown_element_is_an_error_not_garbage(aoti64, ts64):
    from allscaip.model.evaluate import UnknownElementError

    atoms = _mol("H2O")
    atoms.numbers[0] = 26  # Fe
    args = cli.whole_system_inputs(atoms, aoti64[2]["cutoff"], torch.float64, "cpu")
    with pytest.raises(UnknownElementError, match=r"\['Fe'\] are not in this model"):
        aoti64[1](*args)
    # the compiled graph itself (what C++ callers get) returns NaN instead of reading out of bounds
    raw = aoti64[1].runner(*args)
    assert all(bool(torch.isnan(t).all()) for t in raw)
    with pytest.raises((RuntimeError, torch.jit.Error), match="not in this model's elements"):
        ts64[1](*args)


def test_metadata_readable_from_python(ts64, ts32, aoti64, checkpoint):
    sha = checkpoint_hash(checkpoint)
    for (path, _, meta), fmt, dtype in (
        (ts64, "torchscript", "float64"),
        (ts32, "torchscript", "float32"),
        (aoti64, "aoti", "float64"),
    ):
        assert meta["format"] == fmt and meta["dtype"] == dtype and meta["device"] == "cpu"
        assert meta["checkpoint_hash"] == meta["source_checkpoint_sha256"] == sha
        assert meta["elements"] == ["H", "C", "N", "O"] and meta["atomic_numbers"] == [1, 6, 7, 8]
        assert meta["cutoff"] == pytest.approx(4.0) and meta["max_neighbors"] == 6
        assert meta["units"] == {"length": "angstrom", "energy": "eV", "forces": "eV/angstrom", "virial": "eV"}
        assert len(meta["inputs"]) == 8 and len(meta["outputs"]) == 4
        # stored as the archive record extra/metadata.json in both formats (plain zip)
        with zipfile.ZipFile(path) as z:
            (name,) = [n for n in z.namelist() if n.endswith("/extra/metadata.json")]
            assert json.loads(z.read(name)) == meta
    assert ts64[1].metadata() == json.dumps(ts64[2], indent=1, sort_keys=True)
    assert read_metadata(aoti64[0]) == aoti64[2]
    # and in the AOTInductor metadata map (what AOTIModelPackageLoader::get_metadata returns)
    amap = aoti64[1].runner.get_metadata()
    assert json.loads(amap[METADATA_KEY]) == aoti64[2] and amap["AOTI_DEVICE_KEY"] == "cpu"
    assert ts64[2]["supports_domain_decomposition"] and not aoti64[2]["supports_domain_decomposition"]


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
def test_metadata_readable_from_cpp(ts64, aoti64, fmt):
    """The C++ tool allscaip_metadata (built by the top-level CMake, libtorch, no Python) reads
    the metadata of both formats; for a .pt2 it also checks the copy in the AOTI metadata map."""
    path, meta = {"torchscript": (ts64[0], ts64[2]), "aoti": (aoti64[0], aoti64[2])}[fmt]
    tool = REPO / "build" / "lammps_plugin" / "allscaip_metadata"
    assert tool.exists(), f"{tool} missing: build it with scripts/setup.sh (cmake --build build)"
    out = subprocess.run([str(tool), str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == meta
    full = subprocess.run([str(tool), str(path)], capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    assert f"format:               {fmt}" in full.stdout and "elements:             H C N O" in full.stdout
    if fmt == "aoti":
        assert "allscaip_metadata equal to extra/metadata.json, AOTI_DEVICE_KEY=cpu" in full.stdout


def test_aoti_package_refuses_another_device(aoti64):
    with pytest.raises(ValueError, match=r"compiled for 'cpu' and cannot run on 'cuda'"):
        load_aoti(aoti64[0], device="cuda")


def test_calculator_same_numbers_for_ckpt_pt_pt2(checkpoint, ts64, aoti64):
    from allscaip.calculator import AllScAIPCalculator

    calcs = [AllScAIPCalculator(p) for p in (checkpoint, ts64[0], aoti64[0])]
    for atoms in (water_box(2, cell_skew=True, seed=7), _mol("CH3CONH2")):
        results = []
        for calc in calcs:
            a = atoms.copy()
            a.info.update(atoms.info)
            a.calc = calc
            r = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "energies": a.get_potential_energies()}
            if a.pbc.all():
                r["stress"] = a.get_stress()
            results.append(r)
        for r in results[1:]:
            assert abs(r["energy"] - results[0]["energy"]) < 1e-9
            for k in ("forces", "energies", "stress"):
                if k in r:
                    np.testing.assert_allclose(r[k], results[0][k], atol=1e-9, err_msg=k)
    bad = _mol("H2O")
    bad.numbers[1] = 26
    for calc in calcs:
        bad.calc = calc
        with pytest.raises(ValueError, match="Fe"):
            bad.get_potential_energy()


# ------------------------------------------------------------------------------- CLI errors


def _error(capsys, *argv) -> str:
    assert _cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("allscaip-export: error: ") and "Traceback" not in err
    return err


def test_cli_missing_file(capsys, tmp_path):
    assert "does not exist" in _error(capsys, tmp_path / "nope.ckpt")


def test_cli_not_a_checkpoint(capsys, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint\n")
    assert "is not an allscaip checkpoint" in _error(capsys, junk)
    torch.save({"something": 1}, tmp_path / "other.ckpt")
    assert "is not an allscaip checkpoint" in _error(capsys, tmp_path / "other.ckpt")


def test_cli_incompatible_checkpoint_version(capsys, tmp_path):
    model = small_model()
    path = tmp_path / "future.ckpt"
    save_checkpoint(
        path,
        {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict(), "checkpoint_version": 999},
    )
    assert "checkpoint format version 999" in _error(capsys, path)


def test_cli_damaged_checkpoint(capsys, tmp_path):
    model = small_model()
    path = tmp_path / "damaged.ckpt"
    save_checkpoint(path, {"model_config": dataclasses.asdict(model.cfg), "model_state": {}})
    assert "cannot rebuild the model" in _error(capsys, path)


def test_cli_cuda_without_gpu(capsys, checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda but torch sees no GPU" in _error(capsys, checkpoint, "--device", "cuda")


def test_cli_wrong_suffix(capsys, checkpoint, tmp_path):
    assert "writes a .pt2 file" in _error(capsys, checkpoint, "--format", "aoti", "-o", tmp_path / "x.pt")


def test_cli_verification_failure_exits_1(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cli.TOLERANCE, "float64", -1.0)  # nothing can pass
    assert _cli(checkpoint, "-o", tmp_path / "strict.pt") == 1
    assert "verification FAILED" in capsys.readouterr().out


def test_console_script_one_line_error(tmp_path):
    """The installed entry point: exit 2, one line on stderr, no traceback."""
    exe = Path(sys.executable).with_name("allscaip-export")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "allscaip_export.cli"]
    out = subprocess.run(cmd + [str(tmp_path / "missing.ckpt")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"allscaip-export: error: checkpoint {tmp_path / 'missing.ckpt'} does not exist"
    ]
