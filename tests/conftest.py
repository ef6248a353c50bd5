"""Shared fixtures: small random-weight models and structures (float64)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from ase import Atoms

from allscaip import structures
from allscaip.data import atoms_to_batch
from allscaip.geometry import random_rotation as _random_rotation  # noqa: F401 (tests import it from here)
from allscaip.model import compute_properties


def torchrun_training(cfg_file, out_dir, processes: int = 2):
    """``allscaip-train cfg_file run.out_dir=out_dir`` under ``torch.distributed.run`` with
    ``processes`` processes on this machine (one torch thread each); the finished process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone"]
    cmd += ["-m", "allscaip.train.cli", str(cfg_file), f"run.out_dir={out_dir}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def water_box(n_side: int = 2, spacing: float = 3.1, seed: int = 0, cell_skew: bool = False) -> Atoms:
    """``n_side**3`` waters on a jittered grid in a (optionally triclinic) periodic cell."""
    return structures.water_box(n_side**3, spacing=spacing, seed=seed, cell_skew=cell_skew)


@pytest.fixture
def rotation():
    return _random_rotation(np.random.default_rng(42))


# core-repulsion radii of the test models (Å): they reach into the molecules of water_box
# (H-H 1.5 Å inside each molecule; O-H only when a bond is compressed), so every force, invariance, export and engine test runs with
# the wall active
TEST_CORE_RADIUS = {(1, 1): 1.8, (1, 8): 0.9, (8, 8): 2.6}
TEST_CORE_RADIUS_OTHER = 1.2


def small_model(**overrides):
    """Random-weight float64 model; ``core=False`` leaves out the core repulsion."""
    from allscaip.config import model_config
    from allscaip.model import AllScAIP

    torch.manual_seed(overrides.pop("seed", 0))
    core = overrides.pop("core", True)
    kw = dict(elements=[1, 6, 7, 8], cutoff=4.0, hidden=32, heads=4, layers=2)
    kw.update(overrides)
    model = AllScAIP(model_config(**kw)).double()
    # non-trivial element references and scale (small, so finite differences keep precision)
    model.element_energy.copy_(torch.tensor([-0.5, -1.5, -2.5, -2.0], dtype=torch.float64)[: len(kw["elements"])])
    model.energy_scale.fill_(0.7)
    if core:
        zs = model.cfg.elements
        for a, za in enumerate(zs):
            for b, zb in enumerate(zs):
                model.core_radius[a, b] = TEST_CORE_RADIUS.get(tuple(sorted((za, zb))), TEST_CORE_RADIUS_OTHER)
    return model


# kNN envelope on (exercises the data-dependent pruned width), small angular orders so that the
# one AOTInductor compile of the test session stays around a minute and a half of CPU time
EXPORT_MODEL = dict(max_neighbors=6, bond_order_lmax=2, legendre_lmax=2)


@pytest.fixture(scope="session")
def export_checkpoint(tmp_path_factory):
    """A checkpoint of ``small_model(**EXPORT_MODEL)`` (what the export tests start from)."""
    import dataclasses

    from allscaip.checkpoint import save_checkpoint

    model = small_model(**EXPORT_MODEL)
    path = tmp_path_factory.mktemp("export") / "model.ckpt"
    save_checkpoint(path, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    return path


@pytest.fixture(scope="session")
def aoti_package(export_checkpoint):
    """The one AOTInductor compile of the test session: ``allscaip-export --format aoti``
    (which also verifies the package against the checkpoint) -> model.pt2 beside it."""
    from allscaip_export import cli

    assert cli.main([str(export_checkpoint), "--format", "aoti"]) == 0
    return export_checkpoint.with_suffix(".pt2")


class StagedPackage(NamedTuple):
    model: Any  # the checkpoint's eager model, float64
    path: Path  # the staged .pt2


@pytest.fixture(scope="session")
def staged_package(export_checkpoint):
    """The staged AOTInductor compile of the test session: ``allscaip-export --format aoti --staged``
    (the whole-system model and every stage with its VJP; the export verifies the stages on 1 and
    2 ranks against the checkpoint) -> model.staged.pt2 beside it. About 5 minutes on one thread."""
    from allscaip.checkpoint import load_model
    from allscaip.model import frozen
    from allscaip_export import cli

    path = export_checkpoint.with_name("model.staged.pt2")
    assert cli.main([str(export_checkpoint), "--format", "aoti", "--staged", "-o", str(path)]) == 0
    model = frozen(load_model(export_checkpoint, dtype=torch.float64))
    return StagedPackage(model, path)


def model_energy(model, atoms) -> float:
    """Energy (eV) of one structure by the eager model (no forces)."""
    return compute_properties(model, atoms_to_batch([atoms]), forces=False)["energy"].item()


def strain_fd_stress(model, atoms, h: float = 1e-6) -> np.ndarray:
    """[3, 3] stress (eV/Å³) by central finite differences of the energy under the strain
    cell -> cell (1 + eps), atoms scaled with the cell: (1/V) dE/d eps_ab."""
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            vals = []
            for sgn in (1, -1):
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + sgn * eps), scale_atoms=True)
                vals.append(model_energy(model, strained))
            fd[a, b] = (vals[0] - vals[1]) / (2 * h) / atoms.get_volume()
    return fd
