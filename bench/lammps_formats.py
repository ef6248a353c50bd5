"""LAMMPS MD speed of several exports of one model, side by side in one run: which format to use.

For each water box and rank count, every model runs its NVE steps in turn, and the turns repeat
(A B C, A B C, ...), so that a change of machine load falls on all of them alike; the table gives
the median seconds per step and each model's ratio to the first one, taken within each round.

    python bench/lammps_formats.py --models pt=water.pt,pt2=water.pt2,staged=water.staged.pt2 \\
        [--molecules 64,256] [--ranks 1,2] [--steps 10] [--warmup 3] [--rounds 3] [--out FILE.json]

Threads: one torch thread per rank (the 2-core machine's rule; --threads-per-rank to change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import ase.io
from bench_result import run_header, write_result
from lammps_md import lammps_input, run_lammps
from water_boxes import water_box

HERE = Path(__file__).resolve().parent


def parse_models(text: str) -> Dict[str, Path]:
    """``label=path,label=path`` -> {label: path}, each file present."""
    models = {}
    for item in text.split(","):
        label, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"lammps_formats.py: --models entry {item!r} is not label=existing_file")
        models[label] = Path(path).resolve()
    return models


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="label=path,... (exports of one model; the first is the baseline)")
    ap.add_argument("--molecules", default="64,256", help="water molecules per box (3 atoms each)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--steps", type=int, default=10, help="timed MD steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed MD steps first")
    ap.add_argument("--rounds", type=int, default=3, help="turns of every model")
    ap.add_argument("--threads-per-rank", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per LAMMPS run")
    ap.add_argument("--out", default=str(HERE / "results" / "lammps_formats.json"))
    args = ap.parse_args(argv)
    models = parse_models(args.models)
    labels = list(models)
    result = run_header("bench/lammps_formats.py", argv if argv is not None else sys.argv[1:])
    result.update(models={k: str(v) for k, v in models.items()}, rows=[])
    print(f"{'atoms':>6} {'ranks':>5} " + " ".join(f"{lb + ' s/step':>16} {lb + ' ratio':>12}" for lb in labels))
    with tempfile.TemporaryDirectory() as tmp:
        for nmol in [int(m) for m in args.molecules.split(",")]:
            atoms = water_box(nmol)
            data = Path(tmp) / f"water{nmol}.data"
            ase.io.write(data, atoms, format="lammps-data", specorder=["H", "O"], atom_style="atomic")
            for ranks in [int(r) for r in args.ranks.split(",")]:
                times: Dict[str, List[float]] = {lb: [] for lb in labels}
                ratios: Dict[str, List[float]] = {lb: [] for lb in labels}
                for rnd in range(args.rounds):
                    for lb in labels:
                        wd = Path(tmp) / f"n{nmol}_r{ranks}_{lb}_{rnd}"
                        wd.mkdir()
                        script = lammps_input(data, models[lb], args.warmup, args.steps)
                        t = run_lammps(wd, script, ranks, args.timeout, args.threads_per_rank)
                        if t is None:
                            raise SystemExit(f"lammps_formats.py: {lb} failed on {len(atoms)} atoms, {ranks} ranks")
                        times[lb].append(t)
                    for lb in labels:
                        ratios[lb].append(times[lb][-1] / times[labels[0]][-1])
                row = {"atoms": len(atoms), "ranks": ranks}
                for lb in labels:
                    row[f"{lb}_s_per_step"] = statistics.median(times[lb])
                    row[f"{lb}_s_per_step_all"] = times[lb]
                    row[f"{lb}_ratio_to_{labels[0]}"] = statistics.median(ratios[lb])
                result["rows"].append(row)
                cells = " ".join(
                    f"{row[f'{lb}_s_per_step']:>16.4f} {row[f'{lb}_ratio_to_{labels[0]}']:>12.3f}" for lb in labels
                )
                print(f"{len(atoms):>6} {ranks:>5} {cells}", flush=True)
    write_result(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
