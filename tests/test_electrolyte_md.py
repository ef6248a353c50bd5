"""The electrolyte MD (allscaip.workflows.electrolyte md): RDF and contact-ion-pair code on synthetic
trajectories with known answers, and the command end to end on a 98-atom box with a random-weight
model: examples/electrolyte/in.nacl for 8 steps on 2 ranks, the teacher's MD, the analysis, the
page, and 1 against 2 ranks in float64."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmm")
mdtraj = pytest.importorskip("mdtraj")

from ase.io import read, write
from lammps_harness import activated_env
from test_electrolyte_eval import _checkpoint

from allscaip.workflows.electrolyte import cli, md_report, structure
from allscaip.workflows.liquid.analysis import energy_drift_mev_atom_ps

VAL = Path(__file__).resolve().parents[1] / "examples" / "electrolyte" / "data" / "val.extxyz"


def _trajectory(symbols, xyz_A, box_A):
    """An mdtraj trajectory of single-atom residues; ``xyz_A`` [frames, atoms, 3] in a cubic box."""
    top = mdtraj.Topology()
    chain = top.add_chain()
    for s in symbols:
        top.add_atom(s, mdtraj.element.get_by_symbol(s), top.add_residue(s, chain))
    n = len(xyz_A)
    return mdtraj.Trajectory(
        np.asarray(xyz_A) * 0.1,
        top,
        unitcell_lengths=np.full((n, 3), box_A * 0.1),
        unitcell_angles=np.full((n, 3), 90.0),
    )


def test_cip_fraction_of_fixed_pairs_through_the_boundary():
    # two Na and two Cl in a 20 Å box; Na0-Cl0 at 3.0 Å through the boundary (x 0.5 and 17.5),
    # Na1-Cl1 at 5.0 Å: one of the two Na is in contact; then both pairs apart, then both in contact
    apart = [[0.5, 5, 5], [10, 5, 5], [6.0, 5, 5], [15, 5, 5]]
    one = [[0.5, 5, 5], [10, 5, 5], [17.5, 5, 5], [15, 5, 5]]
    both = [[0.5, 5, 5], [10, 5, 5], [17.5, 5, 5], [12.9, 5, 5]]
    traj = _trajectory(["Na", "Na", "Cl", "Cl"], [one, apart, both, one], 20.0)
    assert structure.cip_fraction_per_frame(traj, 3.5).tolist() == [0.5, 0.0, 1.0, 0.5]
    assert structure.cip_fraction_per_frame(traj, 2.95).tolist() == [0.0, 0.0, 0.5, 0.0]  # only the 2.9 Å pair
    blocks = structure.blocks(traj.n_frames, 2)
    assert [(b.start, b.stop) for b in blocks] == [(0, 2), (2, 4)]
    # block means 0.25 and 0.75: standard error of two values = |difference| / 2
    assert structure.block_error([0.25, 0.75]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="fewer --blocks"):
        structure.blocks(3, 4)


def test_rdf_of_an_ideal_gas_is_one_and_a_contact_pair_peaks_where_it_sits():
    rng = np.random.default_rng(0)
    box, n_frames = 20.0, 40
    symbols = ["Na"] * 20 + ["Cl"] * 20 + ["O"] * 40
    traj = _trajectory(symbols, rng.uniform(0, box, (n_frames, len(symbols), 3)), box)
    for a, b in structure.PAIRS:
        r, g = structure.rdf(traj, a, b)
        assert r[-1] < structure.R_MAX_A and len(r) == round(structure.R_MAX_A / structure.BIN_A)
        shell = (r > 4.0) & (r < 9.5)
        assert np.mean(g[shell]) == pytest.approx(1.0, abs=0.05), f"{a}-{b}: ideal-gas g(r) is not 1"
    # one Na-Cl pair at 2.82 Å in every frame: the peak is in the 2.80-2.85 Å bin
    pair = _trajectory(["Na", "Cl", "O"], [[[5, 5, 5], [7.82, 5, 5], [15, 15, 15]]] * 4, box)
    height, where = structure.first_peak(*structure.rdf(pair, "Na", "Cl"))
    assert where == pytest.approx(2.825) and height > 10
    r = np.arange(2.0, 6.0, 0.05)
    assert structure.first_minimum(r, 2 + np.cos(2 * np.pi * (r - 2.8) / 2.0)) == pytest.approx(3.8)


def test_drift_of_a_line():
    t = np.linspace(0.0, 2.0, 21)
    assert energy_drift_mev_atom_ps(t + 5.0, -100.0 + 0.003 * t, 10) == pytest.approx(0.3)


@pytest.fixture(scope="module")
def small_solution():
    frames = read(VAL, ":")
    return min((a for a in frames if a.info["config_type"] == "solution"), key=len)


def test_md_command_end_to_end_two_ranks(small_solution, tmp_path, monkeypatch):
    for k, v in activated_env().items():  # mpirun, lmp and the plugin as in the LAMMPS tests
        monkeypatch.setenv(k, v)
    write(tmp_path / "test.extxyz", [small_solution])
    ckpt = _checkpoint(tmp_path / "lr.ckpt", node_attention=True, node_encoding="sinc_pairs")
    doc = tmp_path / "electrolyte.md"
    # the shipped evaluation's numbers: the command adds "md" to them and writes the page again
    evaluation = json.loads((VAL.parents[1] / "evaluation.json").read_text())
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    argv = ["md", "--model", str(ckpt), "--name", "lr", "--test", str(tmp_path / "test.extxyz"), "--ranks", "2"]
    argv += ["--equilibration-ps", "0.001", "--nvt-ps", "0.002", "--nve-ps", "0.001", "--dump-fs", "0.5"]
    argv += ["--thermo-fs", "0.5", "--blocks", "2", "--dtype", "float64", "--out", str(tmp_path / "run")]
    argv += ["--json", str(tmp_path / "eval.json"), "--doc", str(doc), "--img-dir", str(tmp_path / "img")]
    assert cli.main(argv) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["models"] == evaluation["models"] and res["pair"] == evaluation["pair"]
    md = res["md"]
    run = md["runs"]["lr"]
    assert run["ranks"] == 2 and run["n_atoms"] == len(small_solution)
    # the trajectories: mdtraj reads both with the one topology; LAMMPS dumps the production run's
    # first and every step (5 frames), the teacher every step after it (4); the box is the frame's
    pdb = tmp_path / "run" / "nacl.pdb"
    lmp = mdtraj.load(run["trajectory"], top=str(pdb))
    teacher = mdtraj.load(md["runs"]["teacher"]["trajectory"], top=str(pdb))
    assert (lmp.n_frames, teacher.n_frames) == (5, 4)
    box = small_solution.cell.lengths() / 10
    assert np.allclose(lmp.unitcell_lengths, box, atol=1e-5) and np.allclose(teacher.unitcell_lengths, box, atol=1e-5)
    # after 2 steps of 0.5 fs (thermal H: ~0.16 Å/fs) no atom is 0.2 Å from its start (minimum image): the
    # DCD holds the atoms in the topology's order, in its units
    d = lmp.xyz[0] - small_solution.positions / 10
    d -= box * np.round(d / box)
    assert np.abs(d).max() < 0.02
    # the analysis skips LAMMPS's first frame (the production run's start): both engines' frames at the same times
    assert md["structure"]["lr"]["n_frames"] == 4 and md["structure"]["teacher"]["n_frames"] == 4
    assert 0.0 <= md["structure"]["teacher"]["cip_fraction"]["value"] <= 1.0
    # NVE: 2 steps, the total energy changes by far less than the kinetic energy (~0.04 eV/atom)
    assert len(run["nve"]["etotal_eV"]) == 3
    assert np.ptp(run["nve"]["etotal_eV"]) / run["n_atoms"] < 1e-3
    # 1 against 2 ranks in float64
    rc = md["rank_check"]
    assert rc["ranks"] == 2
    for key in ("energy", "forces", "virial"):
        assert rc[f"{key}_rel_diff"] < 1e-10, key
    assert md_report.verdicts(md)["ranks"]
    # one Na and one Cl apart in the teacher's 4 frames: no contact peak, and the check says so instead of dividing by 0
    assert md["structure"]["teacher"]["nacl_peak"]["height"] == 0.0 and not md_report.verdicts(md)["peak"]
    assert (tmp_path / "img" / "electrolyte_md_rdf.png").is_file()
    page = doc.read_text()
    assert "## MD: structure of the solution" in page and "](img/electrolyte_md_rdf.png)" in page
    assert "| 1 against 2 ranks, float64, one frame | ≤ 1e-10 relative |" in page
    assert "Not measured yet" not in page and "## Forces on the test boxes" in page


def test_lengths_become_in_nacl_steps_and_short_runs_are_refused():
    from allscaip.workflows.electrolyte import md_cli

    args = md_cli.parse([])  # the defaults: a real run
    assert md_cli.steps_of(args) == {
        "eq_steps": 4000,
        "nvt_steps": 40000,
        "nve_steps": 4000,
        "dump_every": 200,
        "thermo_every": 20,
    }
    with pytest.raises(SystemExit, match="fewer than --blocks 5 frames"):
        md_cli.steps_of(md_cli.parse(["--nvt-ps", "0.4"]))  # 4 frames of 100 fs
    with pytest.raises(SystemExit, match="at least two thermo samples"):
        md_cli.steps_of(md_cli.parse(["--nve-ps", "0.01"]))


def test_the_default_start_is_the_test_solution_with_most_ions():
    from allscaip.workflows.electrolyte import md_cli

    frames = read(VAL.parent / "test.extxyz", ":")
    start = md_cli.pick_start(frames, None)
    assert len(start) >= 1500 and start.info["config_type"] == "solution"
    assert start.get_chemical_symbols().count("Na") == max(a.get_chemical_symbols().count("Na") for a in frames)
    with pytest.raises(SystemExit, match="has 12 frames"):
        md_cli.pick_start(frames, 12)
