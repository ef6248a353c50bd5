"""One battery of bad inputs across the entry points (issue 26, docs/errors.md): allscaip-train
(configs and data), allscaip-export, the ASE calculator, lmp on 1 and 2 ranks, OpenMM's
MLPotential and ``allscaip liquid``.

Each case asserts that the message names the bad value and the fix; CLI cases also that the exit
status is not 0, no traceback reaches the user, every subprocess ends within its timeout and no
partial output is left behind."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import ase.io
import numpy as np
import pytest
import yaml
from conftest import small_model, water_box
from lammps_harness import _export, activated_env, lammps_input, run_lammps, write_data
from test_train import emt_frames, make_cfg

from allscaip.calculator import AllScAIPCalculator
from allscaip.checkpoint import save_checkpoint

BIN = Path(sys.executable).parent
CLI_TIMEOUT_S = 300  # every subprocess; the slowest case (a training step on tiny data) takes ~10 s


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, Path]:
    """A tiny checkpoint and its export, EMT training data, a training config, LAMMPS data files."""
    d = tmp_path_factory.mktemp("bad_inputs")
    model = small_model()
    ckpt = d / "model.ckpt"
    save_checkpoint(ckpt, {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()})
    out = {"dir": d, "ckpt": ckpt, "pt": _export(model, d / "model.pt")}
    model.shortest_contact.fill_(6.0)  # min_distance 3 Å: every O-H bond is "too close"
    out["strict"] = _export(model, d / "strict.pt")
    ase.io.write(d / "train.extxyz", emt_frames(6, 0))
    ase.io.write(d / "val.extxyz", emt_frames(2, 1))
    out["train"], out["val"] = d / "train.extxyz", d / "val.extxyz"
    out["junk"] = d / "junk.ckpt"
    out["junk"].write_bytes(b"junk")  # four bytes: torch.load raised struct.error through the CLI once
    good = water_box(2, seed=4)
    out["water"] = d / "water.data"
    write_data(good, out["water"])
    bad = water_box(2, seed=4)
    bad.positions[1] = bad.positions[0]
    out["h_on_o"] = d / "h_on_o.data"
    write_data(bad, out["h_on_o"])
    return out


def _frames_with(tmp: Path, name: str, edit: Callable) -> Path:
    frames = emt_frames(4, 3)
    edit(frames)
    path = tmp / name
    ase.io.write(path, frames)
    return path


def _train_config(files, tmp: Path, **edits) -> Path:
    raw = make_cfg({"train": str(files["train"]), "val": str(files["val"])}, tmp / "run")
    for key, value in edits.items():
        section, field = key.split("__")
        raw[section][field] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------ CLI cases
# name: build(files, tmp) -> (argv, outputs that must not exist afterwards, expected fragments)
CliCase = Callable[[Dict[str, Path], Path], Tuple[List[str], List[Path], List[str]]]


def _nan_coords(frames):
    frames[2].positions[0, 1] = np.nan


def _no_energy(frames):
    frames[1].calc.results.pop("energy")


def _h_in_cu(frames):
    frames[0].numbers[0] = 1


def _two_on_one_spot(frames):
    frames[3].positions[1] = frames[3].positions[0]  # stale but finite labels


CLI_CASES: Dict[str, CliCase] = {
    "train_missing_config": lambda f, t: (
        ["allscaip-train", str(t / "nowhere.yaml")],
        [t / "run"],
        ["config file", "nowhere.yaml does not exist"],
    ),
    "train_unknown_key": lambda f, t: (
        ["allscaip-train", str(_train_config(f, t)), "optim.learning_rate=1"],
        [t / "run"],
        ["learning_rate", "valid keys are", "'lr'"],
    ),
    "train_bad_value_type": lambda f, t: (
        ["allscaip-train", str(_train_config(f, t)), "optim.epochs=many"],
        [t / "run"],
        ["optim.epochs", "expected an integer"],
    ),
    "train_yaml_syntax": lambda f, t: (
        ["allscaip-train", str(t / "broken.yaml")],
        [t / "run"],
        ["broken.yaml: not valid YAML", "expected ',' or '}'"],
    ),
    "train_missing_data": lambda f, t: (
        ["allscaip-train", str(_train_config(f, t)), f"data.train={t / 'missing.extxyz'}"],
        [t / "run"],
        ["missing.extxyz", "no such file"],
    ),
    "train_nan_positions": lambda f, t: (
        ["allscaip-train", str(_train_config(f, t)), f"data.train={_frames_with(t, 'nan.extxyz', _nan_coords)}"],
        [t / "run"],
        ["nan.extxyz:2", "non-finite (NaN/inf) positions", "fix or remove this frame"],
    ),
    "train_missing_energy": lambda f, t: (
        ["allscaip-train", str(_train_config(f, t)), f"data.train={_frames_with(t, 'noe.extxyz', _no_energy)}"],
        [t / "run"],
        ["noe.extxyz:1", "missing energy label"],
    ),
    "train_element_not_in_model": lambda f, t: (
        [
            "allscaip-train",
            str(_train_config(f, t)),
            f"data.train={_frames_with(t, 'h.extxyz', _h_in_cu)}",
            "model.elements=[Cu, Au]",
        ],
        [t / "run"],
        ["h.extxyz:0", "H (Z=1)", "add them to the model's element list or remove this frame"],
    ),
    "train_resume_without_run": lambda f, t: (
        ["allscaip-train", str(_train_config(f, t)), "--resume"],
        [t / "run" / "last.ckpt"],
        ["cannot resume"],
    ),
    "train_nan_step": lambda f, t: (
        [
            "allscaip-train",
            str(_train_config(f, t, data__shuffle=False)),
            f"data.train={_frames_with(t, 'overlap.extxyz', _two_on_one_spot)}",
        ],
        [t / "run" / "last.ckpt", t / "run" / "best.ckpt"],
        ["not finite (NaN or Inf)", "overlap.extxyz:3", "remove them from the data", "--resume"],
    ),
    "export_missing_checkpoint": lambda f, t: (
        ["allscaip-export", str(t / "nowhere.ckpt"), "-o", str(t / "x.pt")],
        [t / "x.pt"],
        ["nowhere.ckpt does not exist"],
    ),
    "export_junk_checkpoint": lambda f, t: (
        ["allscaip-export", str(f["junk"]), "-o", str(t / "x.pt")],
        [t / "x.pt"],
        ["junk.ckpt is not an allscaip checkpoint (expected a file written by allscaip-train)"],
    ),
    "export_an_export": lambda f, t: (
        ["allscaip-export", str(f["pt"]), "-o", str(t / "x.pt")],
        [t / "x.pt"],
        ["model.pt is an exported model (.pt), not a training checkpoint", "give the .ckpt"],
    ),
    "export_wrong_suffix": lambda f, t: (
        ["allscaip-export", str(f["ckpt"]), "-o", str(t / "x.txt")],
        [t / "x.txt"],
        ["--format torchscript writes a .pt file, got -o", "x.txt"],
    ),
    "export_cuda_without_gpu": lambda f, t: (
        ["allscaip-export", str(f["ckpt"]), "--device", "cuda", "-o", str(t / "x.pt")],
        [t / "x.pt"],
        ["--device cuda but torch sees no GPU", "use --device cpu"],
    ),
    "liquid_missing_model": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "water", "--model", str(t / "nowhere.pt"), "--out", str(t / "o")],
        [t / "o"],
        ["nowhere.pt does not exist"],
    ),
    "liquid_unknown_molecule": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "unobtainium", "--model", str(f["pt"]), "--out", str(t / "o")],
        [t / "o"],
        ["'unobtainium'", "not a known liquid name (water, methanol"],
    ),
    "liquid_negative_temperature": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "water", "--model", str(f["pt"]), "--temperature", "-5"],
        [t / "liquid_run"],
        ["--temperature must be > 0, got -5"],
    ),
    "liquid_zero_molecules": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "water", "--model", str(f["pt"]), "--n-molecules", "0"],
        [t / "liquid_run"],
        ["--n-molecules must be > 0, got 0"],
    ),
    "liquid_negative_equilibration": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "water", "--model", str(f["pt"]), "--equilibrate-ps", "-1"],
        [t / "liquid_run"],
        ["--equilibrate-ps must be >= 0 (0 skips that stage), got -1"],
    ),
    "liquid_missing_lmp": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "water", "--model", str(f["pt"]), "--engine", "lammps"]
        + ["--lmp", str(t / "no_lmp")],
        [t / "liquid_run"],
        ["no_lmp' not found", "give --lmp PATH", "or use --engine openmm"],
    ),
    "liquid_atoms_too_close": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "water", "--model", str(f["strict"]), "--n-molecules", "27"]
        + ["--threads", "1", "--no-progress"],
        [t / "liquid_run" / "model" / "liquid" / name for name in ("minimise.xml", "minimise.xml.tmp")],
        ["[model] the simulation stopped:", "Å apart, closer than min_distance 3 Å", "continue with --resume"],
    ),
    "liquid_no_model": lambda f, t: (
        ["allscaip", "liquid", "--molecule", "water"],
        [t / "liquid_run"],
        ["give --model MODEL"],
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input(files, tmp_path, case):
    (tmp_path / "broken.yaml").write_text("model: {hidden: 8\noptim: [\n")
    argv, outputs, expected = CLI_CASES[case](files, tmp_path)
    env = {**activated_env(), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [str(BIN / argv[0])] + argv[1:],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv[0]} hung: no answer within {CLI_TIMEOUT_S} s")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in expected:
        assert fragment in out, f"{fragment!r} not in:\n{out[-3000:]}"
    left = [str(p) for p in outputs if p.exists()]
    assert not left, f"left behind: {left}"


# ------------------------------------------------------------------------------ ASE calculator
def _h_on_o():
    a = water_box(2, seed=4)
    a.positions[1] = a.positions[0]
    return a


def _ase_case(name: str, files) -> Tuple[Callable[[], object], type, str]:
    pt = files["pt"]

    def energy(atoms, **kw):
        atoms.calc = AllScAIPCalculator(pt, **kw)
        return atoms.get_potential_energy()

    def with_fe():
        a = water_box(2, seed=4)
        a.numbers[0] = 26
        return energy(a)

    return {
        "ase_missing_model": (
            lambda: AllScAIPCalculator(files["dir"] / "nowhere.pt"),
            FileNotFoundError,
            r"model file .*nowhere\.pt does not exist",
        ),
        "ase_unknown_element": (with_fe, ValueError, r"element\(s\) \['Fe'\] are not in model model\.pt, which knows"),
        "ase_cuda_without_gpu": (
            lambda: AllScAIPCalculator(pt, device="cuda"),
            ValueError,
            r"device 'cuda' requested but torch sees no CUDA GPU; use device='cpu'",
        ),
        "ase_bad_dtype": (lambda: AllScAIPCalculator(files["ckpt"], dtype="float16"), ValueError, r"float16"),
        "ase_negative_min_distance": (
            lambda: AllScAIPCalculator(pt, min_distance=-1.0),
            ValueError,
            r"min_distance must be a distance >= 0 in Å \(0 turns the check off\).*-1",
        ),
        "ase_h_on_o": (
            lambda: energy(_h_on_o()),
            ValueError,
            r"AllScAIPCalculator\(model\.pt\): atoms \(0-based\) 0 and 1 are 0 Å apart.*min_distance=0",
        ),
        "ase_h_on_o_check_off": (
            lambda: energy(_h_on_o(), min_distance=0),
            FloatingPointError,
            r"non-finite \(NaN or Inf\).*atoms \(0-based\) 0, 1, .*check the structure near them",
        ),
    }[name]


ASE_CASES = [
    "ase_missing_model",
    "ase_unknown_element",
    "ase_cuda_without_gpu",
    "ase_bad_dtype",
    "ase_negative_min_distance",
    "ase_h_on_o",
    "ase_h_on_o_check_off",
]


@pytest.mark.parametrize("case", ASE_CASES)
def test_ase_calculator_bad_input(files, case):
    import torch

    if case == "ase_cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    call, error, pattern = _ase_case(case, files)
    with pytest.raises(error, match=pattern):
        call()


# ------------------------------------------------------------------------------ LAMMPS
LMP_CASES = {
    # name: (data, lammps_input keywords, ranks, expected fragment)
    "lmp_h_on_o_1": ("h_on_o", {}, 1, "atoms 1 and 2 are 0 A apart at step 0, closer than min_distance 0.5 A"),
    "lmp_h_on_o_2": ("h_on_o", {}, 2, "atoms 1 and 2 are 0 A apart at step 0, closer than min_distance 0.5 A"),
    "lmp_h_on_o_check_off_2": (
        "h_on_o",
        {"pair_style": "allscaip min_distance off"},
        2,
        "non-finite (NaN or Inf) energies or forces at step 0 for atom IDs 1, 2",
    ),
    "lmp_bad_min_distance": (
        "water",
        {"pair_style": "allscaip min_distance zero"},
        1,
        "min_distance must be a positive distance in Angstrom, 'model' (the model's own) or 'off', got zero",
    ),
    "lmp_unknown_element_2": ("water", {"elements": "H C N Zn"}, 2, "element Zn (atom type 4) is not in model"),
    "lmp_units_lj_2": ("water", {"units": "lj"}, 2, "does not support units lj; use one of: metal, real"),
    "lmp_keyword_without_value": (
        "water",
        {"pair_style": "allscaip charge"},
        1,
        "keyword charge needs a value; usage: pair_style allscaip [charge Q]",
    ),
}


@pytest.mark.parametrize("case", sorted(LMP_CASES))
def test_lammps_bad_input(files, tmp_path, case):
    data, kwargs, nprocs, expected = LMP_CASES[case]
    script = lammps_input(files[data], files["pt"], **kwargs)
    out = run_lammps(activated_env(), tmp_path, script, nprocs=nprocs, expect_fail=True, timeout=CLI_TIMEOUT_S)
    assert "ERROR" in out and expected in out, f"expected {expected!r} in:\n{out[-3000:]}"
    assert not (tmp_path / "sp.dump").exists() or "nan" not in (tmp_path / "sp.dump").read_text().lower()


# ------------------------------------------------------------------------------ OpenMM MLPotential
OPENMM_CASES = {
    # name: (createSystem / MLPotential arguments, the structure, error type, pattern)
    "openmm_missing_model": ({"model": "nowhere.pt"}, "water", FileNotFoundError, r"nowhere\.pt does not exist"),
    "openmm_junk_model": (
        {"model": "junk"},
        "water",
        ValueError,
        r"junk\.ckpt is not an allscaip checkpoint \(expected a file written by allscaip-train\)",
    ),
    "openmm_bad_implementation": (
        {"implementation": "magic"},
        "water",
        ValueError,
        r"implementation must be one of .*got 'magic'",
    ),
    "openmm_negative_min_distance": (
        {"min_distance": -1.0},
        "water",
        ValueError,
        r"min_distance must be a distance >= 0 in Å.*got -1",
    ),
    "openmm_h_on_o": ({}, "h_on_o", Exception, r"particles 0 and 1 are 0 Å apart.*min_distance=0"),
    "openmm_h_on_o_check_off": (
        {"min_distance": 0},
        "h_on_o",
        Exception,
        r"non-finite \(NaN or Inf\).*particles 0, 1, ",
    ),
}


@pytest.mark.parametrize("case", sorted(OPENMM_CASES))
def test_openmm_bad_input(files, case):
    openmm = pytest.importorskip("openmm")
    from openmm import app, unit

    from allscaip_openmm import MLPotential

    args, structure, error, pattern = OPENMM_CASES[case]
    args = dict(args)
    model = args.pop("model", None)
    path = files["dir"] / model if model not in (None, "junk") else files["junk" if model else "pt"]
    atoms = _h_on_o() if structure == "h_on_o" else water_box(2, seed=4)
    top = app.Topology()
    chain = top.addChain()
    for start in range(0, len(atoms), 3):
        res = top.addResidue("HOH", chain)
        for z in atoms.numbers[start : start + 3]:
            top.addAtom(str(z), app.element.Element.getByAtomicNumber(int(z)), res)
    box = [openmm.Vec3(*(0.1 * v)) for v in atoms.cell.array] * unit.nanometer
    top.setPeriodicBoxVectors(box)
    with pytest.raises(error, match=pattern):
        system = MLPotential("allscaip", modelPath=str(path)).createSystem(top, **args)
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(atoms.positions * 0.1)
        ctx.getState(getEnergy=True, getForces=True)
