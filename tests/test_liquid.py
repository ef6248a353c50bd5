"""``allscaip liquid``: packing, analysis statistics, resume, both engines, the teacher, input errors.

MD runs are a few hundred 0.5 fs steps of 8 waters with a tiny random-weight model (cutoff
3 Å, so an 8-molecule box of 6.3 Å exceeds twice the cutoff); the numbers they produce are
meaningless, only the machinery is tested. The teacher runs 32 waters (its cutoff is 4.5 Å).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import small_model

from allscaip.cli import main as cli_main
from allscaip.engines import lammps
from allscaip.workflows.liquid import analysis, build, engine_lammps
from allscaip.workflows.liquid.contacts import check_run, count_contacts, parse_pairs
from allscaip.workflows.liquid.engine_lammps import minimise_ftol
from allscaip.workflows.liquid.report import warnings_for
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import export_torchscript

# 0.5 fs steps, a sample every 5 fs (10 steps), 50 fs (100 steps) per segment
SHORT = [
    "--timestep-fs",
    "0.5",
    "--sample-every-fs",
    "5",
    "--segment-ps",
    "0.05",
    "--equilibrate-ps",
    "0.05",
    "--production-ps",
    "0.1",
    "--gas-equilibrate-ps",
    "0.05",
    "--gas-production-ps",
    "0.05",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:

    model = small_model(cutoff=3.0, hidden=16, heads=2, layers=1)
    # random weights: the minimiser's trial steps bring two H atoms to 0.39 Å, below the 0.5 Å that
    # min_distance would be (docs/errors.md); these tests are about the workflow, so allow 0.2 Å
    model.shortest_contact.fill_(0.4)
    path = tmp_path_factory.mktemp("liquid_model") / "tiny.pt"
    export_torchscript(model, str(path), build_metadata(model, "float64", "cpu", "torchscript"))
    return path


def _report(out: Path, label: str) -> dict:
    return json.loads((out / label / "report.json").read_text())


def _check_complete(rep: dict, n_liq_samples: int, n_gas_samples: int) -> None:
    assert rep["status"] == "complete"
    res = rep["results"]
    assert res["density_g_cm3"]["n_total"] == n_liq_samples
    assert res["u_gas_kJ_mol"]["n_total"] == n_gas_samples
    for key in ("density_g_cm3", "u_liquid_per_molecule_kJ_mol", "u_gas_kJ_mol"):
        assert math.isfinite(res[key]["mean"]) and math.isfinite(res[key]["stderr"]) and res[key]["g"] >= 1.0
    assert math.isfinite(res["hvap_kJ_mol"]["value"]) and math.isfinite(res["hvap_kJ_mol"]["stderr"])
    assert 0.3 < res["density_g_cm3"]["mean"] < 3.0
    assert rep["experiment"]["name"] == "water" and rep["experiment"]["density_g_cm3"] == pytest.approx(0.9971)
    run_dir = Path(rep["run_dir"])
    for f in ("timeseries.png", "histograms.png", "settings.json", "progress.json", "liquid/initial.xyz"):
        assert (run_dir / f).is_file(), f
    for key in ("torch", "numpy", "python"):
        assert key in rep["versions"]


# ------------------------------------------------------------------------------ packing
@pytest.mark.parametrize("packer", ["packmol", "random"])
def test_pack_box_hits_density(packer):
    mol = build.load_molecule("water")
    atoms = build.pack_box(mol, 20, 0.95, seed=3, method=packer)
    assert atoms.info["packer"] == packer
    assert build.mass_density(atoms) == pytest.approx(0.95, rel=0.01)
    edge = atoms.cell[0, 0]
    assert build.min_intermolecular_distance(atoms.positions, 3, edge) > 1.5
    p = atoms.positions.reshape(20, 3, 3)
    oh = np.linalg.norm(p[:, 1:] - p[:, :1], axis=-1)
    np.testing.assert_allclose(oh, 0.9572, atol=1e-3)  # molecules are rigid copies of the template


def test_smiles_molecule_and_experiment_lookup():
    pytest.importorskip("rdkit")
    mol = build.load_molecule("CCO")
    assert mol.formula == "C2H6O" and mol.natoms == 9 and mol.source == "smiles"
    liq, how = mol.experimental()
    assert liq.name == "ethanol" and how == "smiles"
    atoms = build.pack_box(mol, 12, 0.75, seed=0)
    assert build.mass_density(atoms) == pytest.approx(0.75, rel=0.01)


# ------------------------------------------------------------------------------ analysis
def test_analysis_recovers_ar1_mean_and_inefficiency():
    phi, n, mu = 0.8, 20000, 5.0
    g_true = (1 + phi) / (1 - phi)  # 9
    x = analysis.ar1_series(n, phi, mean=mu, sigma=2.0, seed=11)
    st = analysis.analyse_series(x, detect=False, sample_interval_ps=0.1)
    assert st.g == pytest.approx(g_true, rel=0.25)
    se_true = 2.0 * math.sqrt(g_true / n)
    assert st.stderr == pytest.approx(se_true, rel=0.25)
    assert abs(st.mean - mu) < 4 * se_true
    assert st.correlation_time_ps == pytest.approx((st.g - 1) / 2 * 0.1)
    # our fallback estimator is pymbar's algorithm
    assert analysis._statistical_inefficiency(x) == pytest.approx(analysis.statistical_inefficiency(x), rel=1e-6)
    # an initial transient is detected and discarded
    y = x[:4000].copy()
    y[:400] += 20.0 * np.exp(-np.arange(400) / 40.0)
    st2 = analysis.analyse_series(y)
    assert st2.t0 > 40 and st2.n == 4000 - st2.t0
    assert abs(st2.mean - mu) < 5 * 2.0 * math.sqrt(g_true / st2.n)


def test_equilibration_detection_keeps_at_least_half_of_a_wandering_series():
    # a slowly wandering observable (64-water density) whose last 24 samples, by chance,
    # fluctuate fast around a high value: the unrestricted (N - t0)/g maximum sits in that tail
    x = analysis.ar1_series(300, 0.97, mean=1.0, sigma=0.006, seed=3)
    x[-24:] = 1.06 + 0.01 * np.random.default_rng(4).standard_normal(24)
    g_tail = analysis.statistical_inefficiency(x[-24:])
    assert 24 / g_tail > 300 / analysis.statistical_inefficiency(x)  # the trap is there
    t0, g, neff = analysis.detect_equilibration(x)
    assert t0 <= 150 and neff == pytest.approx((300 - t0) / g)
    st = analysis.analyse_series(x)
    assert st.n >= 150 and abs(st.mean - x[t0:].mean()) < 1e-12
    assert st.mean < 1.03  # not the tail's 1.06


def test_heat_of_vaporization_propagates_errors():
    gas = analysis.SeriesStats(2.0, 0.3, 1.0, 1.0, 0, 100, 100, 100.0)
    liq = analysis.SeriesStats(-40.0, 0.4, 1.0, 1.0, 0, 100, 100, 100.0)
    h = analysis.heat_of_vaporization(gas, liq, 298.15)
    assert h.value == pytest.approx(2.0 + 40.0 + 0.00831446261815324 * 298.15)
    assert h.stderr == pytest.approx(0.5)


# ------------------------------------------------------------------------------ runs
@pytest.mark.openmm
def test_openmm_resume_continues_after_last_segment(tiny_model, tmp_path):
    out = tmp_path / "run"
    args = [
        "liquid",
        "--model",
        str(tiny_model),
        "--molecule",
        "water",
        "--n-molecules",
        "8",
        "--out",
        str(out),
        "--engine",
        "openmm",
        "--minimise-iterations",
        "20",
        *SHORT,
    ]
    # tasks: build, minimise, equil_000, prod_000, prod_001 | gas minimise, equil_000, prod_000
    assert cli_main(args + ["--max-segments", "2"]) == 0
    prog = json.loads((out / "model" / "progress.json").read_text())["completed"]
    assert {"liquid/equil_000", "liquid/prod_000"} <= set(prog) and "liquid/prod_001" not in prog
    assert not (out / "model" / "report.json").exists()
    first = dict(prog["liquid/prod_000"])
    csv0 = out / "model" / "liquid" / "prod_000.csv"
    mtime0 = csv0.stat().st_mtime_ns

    assert cli_main(args) == 2  # an existing run needs --resume
    assert cli_main(args + ["--resume"]) == 0
    prog = json.loads((out / "model" / "progress.json").read_text())["completed"]
    assert prog["liquid/prod_000"] == first  # not redone
    assert csv0.stat().st_mtime_ns == mtime0
    prod = sorted(k for k in prog if k.startswith("liquid/prod_"))
    assert prod == ["liquid/prod_000", "liquid/prod_001"]
    assert all(prog[k]["steps"] == 100 for k in prod)
    rep = _report(out, "model")
    _check_complete(rep, n_liq_samples=20, n_gas_samples=10)
    # the production series continues where the first segment ended
    from allscaip.workflows.liquid.settings import read_records

    r0, r1 = (read_records(out / "model" / "liquid" / f"prod_00{i}.csv") for i in (0, 1))
    assert r1[0, 0] == r0[-1, 0] + 10 and np.all(np.diff(np.concatenate([r0, r1])[:, 0]) == 10)
    assert "model [openmm]" in (out / "summary.txt").read_text()
    # equilibration cannot be lengthened once production has started
    assert cli_main(args + ["--resume", "--equilibrate-ps", "0.1"]) == 2
    _check_contacts_table(out / "model")


@pytest.mark.openmm
def test_hydrogen_mass_repartitioning_keeps_molecular_mass(tmp_path):
    from allscaip.workflows.liquid.engine_openmm import OpenMMEngine
    from allscaip.workflows.liquid.settings import Settings

    mol = build.load_molecule("water").water_ordered()
    phys = mol.masses()
    heavy = mol.masses(3.0)
    assert heavy.sum() == pytest.approx(phys.sum(), abs=1e-9)  # density unchanged
    assert heavy[1] == heavy[2] == 3.0 and heavy[0] == pytest.approx(phys[0] - 2 * (3.0 - phys[1]))
    with pytest.raises(build.InputError, match="smaller --hydrogen-mass"):
        mol.masses(9.5)  # O would be left with a negative mass
    s = Settings(molecule="water", potential="teacher", n_molecules=32, hydrogen_mass_amu=3.0)
    eng = OpenMMEngine("liquid", mol, 32, s, box_ang=10.0)
    import openmm.unit as unit

    got = [eng.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(eng.system.getNumParticles())]
    assert np.allclose(got, np.tile(heavy, 32))
    assert eng.total_mass == pytest.approx(32 * phys.sum())


@pytest.mark.lammps
def test_lammps_engine_short_run(tiny_model, tmp_path):

    try:
        lammps.find_lmp()
        lammps.find_plugin_dir()
    except lammps.LammpsError as err:
        pytest.fail(f"LAMMPS is not set up (run scripts/setup.sh): {err}")
    out = tmp_path / "run"
    assert (
        cli_main(
            [
                "liquid",
                "--model",
                str(tiny_model),
                "--molecule",
                "water",
                "--n-molecules",
                "8",
                "--out",
                str(out),
                "--engine",
                "lammps",
                "--minimise-iterations",
                "20",
                "--hydrogen-mass",
                "2.0",
                *SHORT,
            ]
        )
        == 0
    )
    rep = _report(out, "model")
    assert rep["engine"] == "lammps" and rep["settings"]["hydrogen_mass_amu"] == 2.0
    # repartitioned masses: one type per (element, mass), pair_coeff maps both back to elements
    data = (out / "model" / "liquid" / "initial.data").read_text()
    m_o = build.load_molecule("water").water_ordered().masses(2.0)[0]
    assert f"1 {m_o:.6f}  # O" in data and "2 2.000000  # H" in data and 15.0 > m_o > 13.9
    assert " O H" in (out / "model" / "liquid" / "prod_001.in").read_text()
    _check_complete(rep, n_liq_samples=20, n_gas_samples=10)
    liq = out / "model" / "liquid"
    assert (liq / "prod_001.restart").is_file() and "pair_style allscaip" in (liq / "prod_001.in").read_text()
    assert "fix integ all npt" in (liq / "prod_001.in").read_text()
    gas_in = (out / "model" / "gas" / "prod_000.in").read_text()
    assert "fix thermostat all langevin" in gas_in and "zero no gjf vhalf" in gas_in
    assert gas_in.index("fix thermostat") < gas_in.index("fix integ all nve")  # GJF must precede fix nve
    assert "boundary s s s" in (out / "model" / "gas" / "minimise.in").read_text()
    ftol = engine_lammps.minimise_ftol(10.0, 24)
    assert f"minimize 0.0 {ftol:.6g} 20 200" in (liq / "minimise.in").read_text()
    _check_contacts_table(out / "model")


def _check_contacts_table(run_dir: Path) -> None:
    """The contact check reads every segment's end state (OpenMM XML / LAMMPS restart) and, by
    default, uses the model's core radii from its metadata."""

    lines = check_run(run_dir)
    assert "H-H<1.8" in lines[0] and "H-O<0.9" in lines[0] and "O-O<2.6" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["minimise", "equil_000", "prod_000", "prod_001"]
    with_pair = check_run(run_dir, {(1, 1): 50.0})  # every intermolecular H-H pair of 8 waters
    assert all(ln.split()[1] == str(16 * 14 // 2) for ln in with_pair[1:])
    # report.json: the same count for the last structure, and a warning exactly when it is not zero
    rep = json.loads((run_dir / "report.json").read_text())
    last = lines[-1].split()
    assert rep["contacts"]["segment"] == "prod_001" and rep["contacts"]["radius_ang"]["H-H"] == 1.8
    assert rep["contacts"]["count"]["H-H"] == int(last[1])
    assert any("intermolecular H-H pairs closer" in w for w in rep["warnings"]) == (int(last[1]) > 0)


def test_contact_count_is_intermolecular_and_minimum_image():

    # two waters on a line: H(mol 1) at x = 1.46 and H(mol 2) at x = 2.06, 0.6 Å apart, with
    # molecule 2 given as its periodic image one box length away
    mol1 = np.array([[0.50, 5.0, 5.0], [1.46, 5.0, 5.0], [0.26, 5.93, 5.0]])
    mol2 = np.array([[3.02, 5.0, 5.0], [2.06, 5.0, 5.0], [3.26, 5.93, 5.0]]) - [10.0, 0.0, 0.0]
    pos = np.vstack([mol1, mol2])
    numbers = np.array([8, 1, 1, 8, 1, 1])
    out = count_contacts(
        pos, np.eye(3) * 10.0, numbers, np.array([0, 0, 0, 1, 1, 1]), parse_pairs(["H-H=1.0", "H-O=1.2"])
    )
    assert out[(1, 1)][0] == 1 and out[(1, 1)][1] == pytest.approx(0.6)
    assert out[(1, 8)][0] == 0  # the O-H bonds inside each molecule are not counted
    with pytest.raises(ValueError, match="ELEMENT-ELEMENT=DISTANCE"):
        parse_pairs(["HH=1"])


def test_lammps_minimise_tolerance_matches_openmm_rule():
    """LAMMPS stops on the 2-norm of the global force vector (eV/Å), OpenMM on the RMS force
    component (kJ/mol/nm): the converted tolerance must accept exactly the same force vectors."""
    from allscaip.units import EV_TO_KJ_PER_MOL as KJ_MOL_PER_EV

    rng = np.random.default_rng(3)
    n, tol = 192, 10.0
    ftol = minimise_ftol(tol, n)
    assert ftol == pytest.approx(tol / KJ_MOL_PER_EV / 10.0 * math.sqrt(3 * n))
    for scale in rng.uniform(0.0, 0.02, 200):  # eV/Å per component, around the threshold
        f = rng.normal(0.0, scale, (n, 3))
        rms_openmm = math.sqrt(np.mean(f**2)) * KJ_MOL_PER_EV * 10.0
        assert (rms_openmm < tol) == (np.linalg.norm(f) < ftol)
    with pytest.raises(ValueError, match="positive"):
        minimise_ftol(0.0, n)


@pytest.mark.openmm
def test_teacher_runs_same_protocol(tmp_path):
    out = tmp_path / "run"
    assert (
        cli_main(
            [
                "liquid",
                "--teacher",
                "--molecule",
                "water",
                "--n-molecules",
                "32",
                "--out",
                str(out),
                "--minimise-iterations",
                "100",
                *SHORT,
            ]
        )
        == 0
    )
    rep = _report(out, "teacher")
    assert rep["potential"]["kind"] == "teacher" and rep["engine"] == "openmm"
    _check_complete(rep, n_liq_samples=20, n_gas_samples=10)
    # flexible TIP3P: an isolated molecule near its minimum has U_gas ~ (3 vibrations) kT-ish, small and >= 0
    assert 0.0 <= rep["results"]["u_gas_kJ_mol"]["mean"] < 30.0
    assert -60.0 < rep["results"]["u_liquid_per_molecule_kJ_mol"]["mean"] < -10.0
    text = (out / "summary.txt").read_text()
    assert "teacher" in text and "experiment (water" in text


# ------------------------------------------------------------------------------ errors
def _err(capsys, argv) -> str:
    assert cli_main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_give_clear_errors(tiny_model, tmp_path, capsys, monkeypatch):
    base = ["liquid", "--model", str(tiny_model), "--out", str(tmp_path / "x"), "--no-progress"]
    msg = _err(capsys, base + ["--molecule", "C1CC(("])
    assert "could not parse molecule 'C1CC(('" in msg
    msg = _err(capsys, base + ["--molecule", str(tmp_path / "missing.pdb")])
    assert "does not exist" in msg
    junk = tmp_path / "junk.xyz"
    junk.write_text("not a number\nfoo\nbar baz\n")
    assert "could not parse molecule file" in _err(capsys, base + ["--molecule", str(junk)])
    hcl = tmp_path / "hcl.xyz"
    hcl.write_text("2\nHCl\nH 0 0 0\nCl 0 0 1.27\n")
    msg = _err(capsys, base + ["--molecule", str(hcl)])
    assert "Cl" in msg and "not in model tiny.pt" in msg and "H, C, N, O" in msg
    msg = _err(capsys, base + ["--molecule", "water", "--n-molecules", "4"])
    assert "box too small" in msg and "2 x the model tiny.pt cutoff 3.00 Å = 6.00 Å" in msg
    need = build.min_molecules(3.0, 18.015, 0.95 * 0.9971)
    assert f"--n-molecules {need} or more" in msg and need > 4
    msg = _err(
        capsys, ["liquid", "--teacher", "--molecule", "water", "--n-molecules", "16", "--out", str(tmp_path / "y")]
    )
    assert "box too small" in msg and "teacher" in msg and "4.50 Å" in msg
    msg = _err(capsys, ["liquid", "--teacher", "--molecule", "methanol", "--out", str(tmp_path / "z")])
    assert "water only" in msg
    assert "give --model" in _err(capsys, ["liquid", "--molecule", "water"])
    ckpt = tmp_path / "tiny.ckpt"
    shutil.copy(tiny_model, ckpt)
    msg = _err(
        capsys,
        ["liquid", "--model", str(ckpt), "--molecule", "water", "--engine", "lammps", "--out", str(tmp_path / "x")],
    )
    assert "needs an exported model (.pt TorchScript or .pt2 AOTInductor)" in msg
    assert not (tmp_path / "x").exists()  # nothing ran
    # SMILES without RDKit
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(build.InputError, match="SMILES needs RDKit"):
        build.load_molecule("CCO")


def test_report_warns_when_production_starts_unequilibrated():
    """A density series that jumps halfway through production: the equilibration detection
    discards the first half and the report says so; a stationary series of the same length
    draws no such warning."""

    stationary = analysis.ar1_series(400, 0.5, mean=1.0, sigma=0.01, seed=3)
    jumped = stationary.copy()
    jumped[:200] += 0.1
    temp = analysis.analyse_series(analysis.ar1_series(400, 0.5, mean=298.0, sigma=5.0, seed=4), detect=False)

    def warnings(density):
        stats = {
            "density_g_cm3": analysis.analyse_series(density),
            "u_liquid_per_molecule_kJ_mol": analysis.analyse_series(stationary),
            "u_gas_kJ_mol": analysis.analyse_series(stationary),
            "temperature_liquid_K": temp,
            "temperature_gas_K": temp,
        }
        return warnings_for(SimpleNamespace(temperature_K=298.0), stats)

    assert warnings(stationary) == []
    (w,) = warnings(jumped)
    assert w.startswith("density_g_cm3: equilibration detection discarded the first")
    assert "--equilibrate-ps" in w
    assert analysis.analyse_series(jumped).t0 >= 150
