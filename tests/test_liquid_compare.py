"""``allscaip liquid-compare``: the acceptance arithmetic on synthetic runs with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from allscaip.cli import main as cli_main
from allscaip.workflows.liquid import analysis, compare
from allscaip.workflows.liquid.settings import COLUMNS

N_MOL = 64


def _fake_run(
    root: Path,
    name: str,
    engine: str,
    density: float,
    d_err: float,
    hvap: float,
    h_err: float,
    seed: int = 0,
    kind: str = "model",
) -> Path:
    """A finished-run directory: report.json plus liquid/prod_000.csv whose density series has mean ``density``."""
    run = root / name
    (run / "liquid").mkdir(parents=True)
    n = 400
    rng = np.random.default_rng(seed)
    rho = density + 0.01 * rng.standard_normal(n)
    u = -39.5 * N_MOL + 5.0 * rng.standard_normal(n)
    rec = np.zeros((n, len(COLUMNS)))
    rec[:, 0] = np.arange(n) * 50
    rec[:, 1] = np.arange(n) * 0.075
    rec[:, 2] = u
    rec[:, 6] = rho
    np.savetxt(run / "liquid" / "prod_000.csv", rec, delimiter=",", header=",".join(COLUMNS), comments="")
    stats = {
        "density_g_cm3": {"mean": density, "stderr": d_err, "t0": 0},
        "u_liquid_per_molecule_kJ_mol": {"mean": float(u.mean() / N_MOL), "stderr": 0.05, "t0": 0},
        "hvap_kJ_mol": {"value": hvap, "stderr": h_err},
    }
    rep = {
        "status": "complete",
        "engine": engine,
        "potential": {"kind": kind, "path": f"/x/{name}.pt2"},
        "settings": {"n_molecules": N_MOL, "production_ps": 30.0},
        "results": stats,
        "timing": {"liquid": {"md_wall_s": 100.0}},
        "warnings": [],
    }
    (run / "report.json").write_text(json.dumps(rep))
    return run


def test_block_stderr_of_white_noise_matches_sigma_over_sqrt_n():
    x = np.random.default_rng(1).standard_normal(20000)
    se = compare.block_stderr(x, n_blocks=20)
    assert se == pytest.approx(1 / math.sqrt(len(x)), rel=0.4)
    # a correlated series: the block estimate sees the inefficiency the naive one misses
    y = analysis.ar1_series(20000, phi=0.95, seed=2)
    naive = y.std() / math.sqrt(len(y))
    assert compare.block_stderr(y, n_blocks=20) > 3 * naive
    assert math.isnan(compare.block_stderr(np.ones(5), n_blocks=5))


def test_reference_and_engine_criteria(tmp_path, capsys):
    ref = _fake_run(tmp_path, "teacher", "openmm", 1.0217, 0.0035, 45.87, 0.17, kind="teacher")
    a = _fake_run(tmp_path, "a", "openmm", 1.0300, 0.004, 46.4, 0.3, seed=1)  # +0.81 %, +1.16 %
    b = _fake_run(tmp_path, "b", "lammps", 1.0450, 0.004, 44.0, 0.3, seed=2)  # +2.28 %, -4.08 %
    runs = [compare.load_report(a), compare.load_report(b)]
    res = compare.compare(
        runs, [compare.production_series(r) for r in runs], compare.load_report(ref), None, None, 2.0, 3.0, 2.0
    )
    rows = {(c["name"], c["run"]): c for c in res["criteria"]}
    da = rows[("density vs reference", "a.pt2 [openmm]")]
    assert da["relative_percent"] == pytest.approx(100 * (1.03 - 1.0217) / 1.0217)
    assert da["stderr"] == pytest.approx(math.hypot(0.004, 0.0035)) and da["met"]
    assert not rows[("density vs reference", "b.pt2 [lammps]")]["met"]
    assert not rows[("ΔHvap vs reference", "b.pt2 [lammps]")]["met"]
    pair = rows[("density, run vs run", "a.pt2 [openmm] − b.pt2 [lammps]")]
    assert pair["difference"] == pytest.approx(-0.015)
    assert pair["sigma"] == pytest.approx(0.015 / math.hypot(0.004, 0.004))
    assert not pair["met"] and not res["all_met"]
    # the block check reads the samples next to the report
    blk = res["runs"][0]["block_check"]["density_g_cm3"]
    assert blk["block_stderr"] == pytest.approx(0.01 / math.sqrt(400), rel=0.7)

    png, js = tmp_path / "cmp.png", tmp_path / "cmp.json"
    rc = cli_main(["liquid-compare", str(a), str(b), "--reference", str(ref), "--plot", str(png), "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 1 and "NOT all criteria met" in out and "NOT MET" in out
    assert png.stat().st_size > 10_000 and json.loads(js.read_text())["all_met"] is False
    # a looser engine rule and density tolerance: only b's ΔHvap still fails
    rc = cli_main(["liquid-compare", str(a), str(b), "--reference", str(ref), "--sigma", "3", "--density-tol", "2.5"])
    out = capsys.readouterr().out
    assert rc == 1 and out.count("NOT MET") == 1
    rc = cli_main(["liquid-compare", str(a), "--reference-density", "1.0217", "--reference-hvap", "45.87"])
    assert rc == 0 and "all criteria met" in capsys.readouterr().out


def test_bad_inputs_name_the_problem(tmp_path, capsys):
    assert cli_main(["liquid-compare", str(tmp_path / "missing")]) == 2
    assert "no report.json" in capsys.readouterr().out
    run = _fake_run(tmp_path, "a", "openmm", 1.0, 0.01, 45.0, 0.2)
    rep = json.loads((run / "report.json").read_text())
    rep["status"] = "running"
    (run / "report.json").write_text(json.dumps(rep))
    assert cli_main(["liquid-compare", str(run), str(run)]) == 2
    assert "--resume" in capsys.readouterr().out
    rep["status"] = "complete"
    (run / "report.json").write_text(json.dumps(rep))
    assert cli_main(["liquid-compare", str(run)]) == 2
    assert "nothing to compare" in capsys.readouterr().out
