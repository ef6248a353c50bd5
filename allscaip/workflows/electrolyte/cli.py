"""Evaluate the local-only and long-range NaCl models against the teacher; write docs/electrolyte.md.

    python -m allscaip.workflows.electrolyte [--local CKPT] [--longrange CKPT] [--test FILE]
        [--doc docs/electrolyte.md] [--img-dir docs/img] [--json examples/electrolyte/evaluation.json]
    python -m allscaip.workflows.electrolyte md ...   (MD in LAMMPS and the teacher's: :mod:`.md_cli`)

1. Force errors of both models (ASE calculator, float32 as trained; --dtype) on every test frame, binned by each
   atom's distance to the nearest ion (:mod:`.forces`).
2. The Na+/Cl- pair energy against separation in the fixed water of the test ion-pair frame
   with the largest separation, teacher (OpenMM, double precision) against both models
   (:mod:`.pair_curve`), and the issue's check beyond the receptive field.
3. The JSON of all numbers, two plots and the page (:mod:`.report`).

Nothing is trained: the checkpoints are the ones shipped (examples/electrolyte/README.md).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.io import read

from allscaip.engines.ase_calculator import AllScAIPCalculator
from allscaip.units import ANGSTROM_PER_NM
from allscaip.workflows.electrolyte import forces, md_cli, md_report, pair_curve, report
from allscaip.workflows.teacher.labelling import teacher_for_atoms

EXAMPLE = Path("examples/electrolyte")
BARE_PAIR = "teacher, ions only"  # the pair curve's reference line: no water
#: separations of the pair scan (Å): from just past contact (2.8 Å) to short of half the 24.9 Å test box,
#: with the receptive-field edge (8 Å) on the grid
DEFAULT_SEPARATIONS = "3:12:1"


def parse_separations(text: str) -> np.ndarray:
    """``start:stop:step`` (Å, stop included) or a comma list."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop <= start:
                raise ValueError
            return np.round(np.arange(start, stop + 0.5 * step, step), 6)
        return np.asarray([float(x) for x in text.split(",")])
    except ValueError:
        raise SystemExit(
            f"--separations: expected start:stop:step with step > 0 and stop > start, or a comma list of Å, got {text!r}"
        ) from None


def model_predictor(calc: AllScAIPCalculator) -> forces.Predictor:
    def predict(atoms: Atoms):
        a = atoms.copy()
        a.calc = calc
        return a.get_potential_energy(), a.get_forces()

    return predict


def model_energy(calc: AllScAIPCalculator) -> pair_curve.EnergyFn:
    predict = model_predictor(calc)
    return lambda atoms: predict(atoms)[0]


def teacher_energy() -> pair_curve.EnergyFn:
    """The teacher's energy (eV) of a frame, one OpenMM context per composition and box (reused
    along a scan, where only positions change)."""
    labellers: Dict[tuple, Any] = {}

    def energy(atoms: Atoms) -> float:
        key = (tuple(atoms.numbers), tuple(np.round(atoms.cell.array.ravel(), 9)))
        if key not in labellers:
            labellers[key] = teacher_for_atoms(atoms)
        return labellers[key].ev_ang(atoms.positions / ANGSTROM_PER_NM)[0]

    return energy


def training_summary(metrics_csv: Optional[Path]) -> Dict[str, Any]:
    """The last row of a training's metrics.csv (epoch, step, validation errors, time)."""
    if metrics_csv is None or not metrics_csv.is_file():
        return {}
    rows = list(csv.DictReader(metrics_csv.open()))
    if not rows:
        return {}
    last = rows[-1]
    out: Dict[str, Any] = {"epochs": int(last["epoch"]), "step": int(last["step"])}
    for k in ("val_energy_mae_meV_atom", "val_force_mae_meV_A", "val_stress_mae_meV_A3"):
        out[k] = float(last[k]) if last.get(k) else float("nan")
    out["train_time_s"] = sum(float(r["train_time_s"]) for r in rows if r.get("train_time_s"))
    return out


def pick_pair_frame(frames: Sequence[Atoms]) -> Atoms:
    """The ion-pair frame (one Na, one Cl) with the largest separation."""
    pairs = [a for a in frames if a.get_chemical_symbols().count("Na") == 1 == a.get_chemical_symbols().count("Cl")]
    if not pairs:
        raise SystemExit("--test holds no frame with exactly one Na and one Cl for the pair scan")
    return max(pairs, key=pair_separation)


def pair_separation(atoms: Atoms) -> float:
    """Minimum-image Na-Cl distance (Å) of a frame with one Na and one Cl."""
    na, cl, _ = pair_curve.pair_direction(atoms)
    return float(atoms.get_distance(na, cl, mic=True))


def evaluate(
    checkpoints: Dict[str, Path],
    test_frames: Sequence[Atoms],
    separations: np.ndarray,
    metrics: Dict[str, Optional[Path]],
    dtype: str = "float32",
    log=print,
) -> Dict[str, Any]:
    """All numbers of the page (see :mod:`.report`)."""
    calcs = {name: AllScAIPCalculator(path, dtype=dtype) for name, path in checkpoints.items()}
    cutoffs = {c.cutoff for c in calcs.values()}
    layers = {c._eager.cfg.layers for c in calcs.values() if c._eager is not None}
    if len(cutoffs) != 1 or len(layers) != 1:
        raise SystemExit(
            f"the models differ in cutoff {sorted(cutoffs)} or layers {sorted(layers)}; compare equal sizes"
        )
    cutoff, n_layers = cutoffs.pop(), layers.pop()
    results: Dict[str, Any] = {"cutoff_A": cutoff, "receptive_field_A": cutoff * n_layers, "dtype": dtype, "models": {}}
    results["test"] = {
        "n_frames": len(test_frames),
        "atoms": f"{min(map(len, test_frames))}–{max(map(len, test_frames))}",
        "box_A": float(min(a.cell.lengths().min() for a in test_frames)),
    }
    for name, calc in calcs.items():
        t = time.perf_counter()
        err = forces.frame_errors(test_frames, model_predictor(calc))
        results["models"][name] = {
            "checkpoint": str(checkpoints[name]),
            "training": training_summary(metrics.get(name)),
            "forces": forces.summary(err),
            "bins": forces.binned_mae(err),
        }
        log(
            f"{name}: forces on {len(test_frames)} test frames in {time.perf_counter() - t:.0f} s: {results['models'][name]['forces']}"
        )

    source = pick_pair_frame(test_frames)
    frame, cl_positions = pair_curve.channel_frame(source, separations, pair_curve.scan_direction(source))
    fns = {"teacher": teacher_energy(), **{n: model_energy(c) for n, c in calcs.items()}}
    t = time.perf_counter()
    curves = pair_curve.scan(frame, cl_positions, fns)
    # the teacher's bare pair term: the two ions alone in the same box (PME), the same positions
    curves[BARE_PAIR] = pair_curve.scan(frame[-2:], cl_positions, {BARE_PAIR: teacher_energy()})[BARE_PAIR]
    log(f"pair scan: {len(separations)} separations x {len(fns)} in {time.perf_counter() - t:.0f} s")
    checks = {n: pair_curve.edge_check(separations, curves["teacher"], curves[n], cutoff * n_layers) for n in calcs}
    results["pair"] = {
        "frame_separation_A": pair_separation(source),
        "separations_A": [float(r) for r in separations],
        "n_atoms": len(frame),
        "removed_waters": int(frame.info["removed_waters"]),
        "curves": {n: [float(x) for x in e] for n, e in curves.items()},
        "checks": checks,
    }
    if "local" in results["models"] and "longrange" in results["models"]:
        loc, lr = results["models"]["local"]["forces"], results["models"]["longrange"]["forces"]
        results["checks"] = {
            "local_ion_force_mae_meV_A": loc["ion_force_mae_meV_A"],
            "longrange_ion_force_mae_meV_A": lr["ion_force_mae_meV_A"],
            "ion_force_mae_ratio": loc["ion_force_mae_meV_A"] / lr["ion_force_mae_meV_A"],
            "pair_error_over_edge_value": checks["longrange"]["error_over_edge_value"],
        }
    return results


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["md"]:  # the MD sub-command (its own options)
        return md_cli.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m allscaip.workflows.electrolyte", description=__doc__.split("\n")[0])
    p.add_argument("--local", type=Path, default=EXAMPLE / "model_local.ckpt", help="local-only model checkpoint")
    p.add_argument(
        "--longrange", type=Path, default=EXAMPLE / "model_longrange.ckpt", help="long-range model checkpoint"
    )
    p.add_argument("--local-metrics", type=Path, default=EXAMPLE / "metrics_local.csv", help="its training metrics.csv")
    p.add_argument("--longrange-metrics", type=Path, default=EXAMPLE / "metrics_longrange.csv")
    p.add_argument("--test", type=Path, default=EXAMPLE / "data" / "test.extxyz", help="labelled test frames")
    p.add_argument("--separations", default=DEFAULT_SEPARATIONS, help="pair scan, Å: start:stop:step or a list")
    p.add_argument("--doc", type=Path, default=Path("docs/electrolyte.md"))
    p.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    p.add_argument("--json", type=Path, default=EXAMPLE / "evaluation.json")
    p.add_argument(
        "--notes", type=Path, default=EXAMPLE / "evaluation_notes.md", help="reading of the numbers, appended"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float64"), help="models' dtype (trained in float32)"
    )
    args = p.parse_args(argv)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for path in (args.local, args.longrange, args.test):
        if not path.is_file():
            raise SystemExit(f"{path} does not exist (train the models first: examples/electrolyte/README.md)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = evaluate(
        {"local": args.local, "longrange": args.longrange},
        read(args.test, ":"),
        parse_separations(args.separations),
        {"local": args.local_metrics, "longrange": args.longrange_metrics},
        dtype=args.dtype,
    )
    results["command"] = "python -m allscaip.workflows.electrolyte " + " ".join(argv)
    results["date"] = datetime.date.today().isoformat()
    results["wall_s"] = time.perf_counter() - t0
    if args.notes.is_file():
        results["notes"] = args.notes.read_text().strip().splitlines()
    images = report.plot(results, args.img_dir)
    if "md" in previous:  # the MD section (``md`` sub-command) is kept, not recomputed
        results["md"] = previous["md"]
        images["md"] = md_report.plot(results["md"], args.img_dir)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(report.markdown(results, images, args.doc))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    print(f"wrote {args.doc}, {args.json}, {', '.join(map(str, images.values()))} ({results['wall_s']:.0f} s)")
    return 0
