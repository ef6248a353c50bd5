"""``python -m allscaip.workflows.electrolyte md``: MD of aqueous NaCl with a model in LAMMPS on N ranks and with
the teacher in OpenMM, the same protocol; RDFs and contact ion pairs with mdtraj; the page's MD section.

1. A start frame from the test set (default: the most concentrated solution frame, 504 waters and
   16 NaCl, 1544 atoms, 1.76 mol/kg) as LAMMPS data and PDB topology (:mod:`.md_lammps`).
2. The model (``--model``, a checkpoint) exported with ``allscaip-export`` and run with
   ``examples/electrolyte/in.nacl`` on ``--ranks`` MPI ranks: NVT (Langevin, 298 K, 0.5 fs) for
   ``--equilibration-ps``, then ``--nvt-ps`` with a DCD every ``--dump-fs``, then ``--nve-ps`` NVE,
   whose energy drift is reported in meV/atom/ps.
3. The teacher, same start, thermostat, T, step and lengths, in OpenMM (:mod:`.md_teacher`).
4. Na–Cl, Na–O, Cl–O RDFs, the Na–Cl first peak and the contact-ion-pair fraction of both, with
   ``--blocks`` block errors (:mod:`.structure`).
5. One frame in float64 on 1 and on ``--ranks`` ranks: relative differences of energy, forces, virial.
6. The numbers go into ``--json`` (the evaluation's JSON, key ``md``), and the page (``--doc``) is
   written again from it with its MD section and plot (:mod:`.report`, :mod:`.md_report`).

Defaults are a real run: 2 ps equilibration, 20 ps NVT, 2 ps NVE (48000 steps of 0.5 fs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from ase.io import read

from allscaip.workflows.electrolyte import md_lammps, md_report, md_teacher, report, structure

EXAMPLE = Path("examples/electrolyte")


def pick_start(frames, index: Optional[int]):
    """``frames[index]``, else the solution frame with the most ions (first of them)."""
    if index is not None:
        if not -len(frames) <= index < len(frames):
            raise SystemExit(f"--frame {index}: the test file has {len(frames)} frames")
        return frames[index]
    solutions = [a for a in frames if a.info.get("config_type") == "solution"]
    if not solutions:
        raise SystemExit("the test file has no config_type=solution frame; give --frame")
    return max(solutions, key=lambda a: a.get_chemical_symbols().count("Na"))


def steps_of(args) -> dict:
    """in.nacl's step variables from the lengths in ps/fs (0.5 fs steps)."""
    dt = md_lammps.TIMESTEP_FS

    def n(fs: float) -> int:
        return int(round(fs / dt))

    steps = {
        "eq_steps": n(1000 * args.equilibration_ps),
        "nvt_steps": n(1000 * args.nvt_ps),
        "nve_steps": n(1000 * args.nve_ps),
        "dump_every": max(1, n(args.dump_fs)),
        "thermo_every": max(1, n(args.thermo_fs)),
    }
    if steps["nvt_steps"] < steps["dump_every"] * args.blocks:
        raise SystemExit(
            f"--nvt-ps {args.nvt_ps} with --dump-fs {args.dump_fs} gives fewer than --blocks {args.blocks} frames"
        )
    if steps["nve_steps"] < 2 * steps["thermo_every"]:
        raise SystemExit(f"--nve-ps {args.nve_ps} needs at least two thermo samples of --thermo-fs {args.thermo_fs}")
    return steps


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m allscaip.workflows.electrolyte md", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=EXAMPLE / "model_longrange.ckpt", help="model checkpoint")
    p.add_argument("--name", default=None, help="the model's label (default: the checkpoint's stem)")
    p.add_argument("--test", type=Path, default=EXAMPLE / "data" / "test.extxyz", help="frames to start from")
    p.add_argument("--frame", type=int, default=None, help="start frame index (default: most ions)")
    p.add_argument("--ranks", type=int, default=4, help="MPI ranks of LAMMPS")
    p.add_argument("--temperature", type=float, default=298.0, help="K")
    p.add_argument("--equilibration-ps", type=float, default=md_lammps.DEFAULT_LENGTHS_PS["equilibration"])
    p.add_argument(
        "--nvt-ps", type=float, default=md_lammps.DEFAULT_LENGTHS_PS["nvt"], help="NVT production (trajectory)"
    )
    p.add_argument(
        "--nve-ps", type=float, default=md_lammps.DEFAULT_LENGTHS_PS["nve"], help="NVE segment after production (drift)"
    )
    p.add_argument("--dump-fs", type=float, default=100.0, help="trajectory interval")
    p.add_argument("--thermo-fs", type=float, default=10.0, help="thermo interval (NVE drift)")
    p.add_argument("--blocks", type=int, default=structure.DEFAULT_BLOCKS, help="blocks of the error bars")
    p.add_argument("--cip-cutoff", type=float, default=structure.CIP_CUTOFF_A, help="contact-ion-pair Na–Cl cut-off, Å")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="exported model for the MD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher's MD")
    p.add_argument("--no-rank-check", action="store_true", help="skip the 1 against --ranks ranks single point")
    p.add_argument("--out", type=Path, default=Path("runs/electrolyte_md"), help="work directory")
    p.add_argument("--json", type=Path, default=EXAMPLE / "evaluation.json", help="evaluation JSON to add 'md' to")
    p.add_argument("--doc", type=Path, default=Path("docs/electrolyte.md"))
    p.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    p.add_argument(
        "--notes", type=Path, default=EXAMPLE / "evaluation_notes.md", help="reading of the numbers, appended"
    )
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMM threads of this process")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    for path in (args.model, args.test):
        if not path.is_file():
            raise SystemExit(f"{path} does not exist")
    torch.set_num_threads(args.threads)
    steps = steps_of(args)
    t0 = time.perf_counter()
    out = args.out
    start_atoms = pick_start(read(args.test, ":"), args.frame)
    start = md_lammps.write_start(start_atoms, out)
    name = args.name or args.model.stem
    md = {
        "command": "python -m allscaip.workflows.electrolyte md "
        + " ".join(argv if argv is not None else sys.argv[2:]),
        "model": name,
        "checkpoint": str(args.model),
        "start": {
            "n_atoms": len(start_atoms),
            "box_A": float(start_atoms.cell[0, 0]),
            "info": {
                k: np.asarray(start_atoms.info[k]).item() for k in ("n_na", "molality_mol_kg") if k in start_atoms.info
            },
        },
        "temperature_K": args.temperature,
        "timestep_fs": md_lammps.TIMESTEP_FS,
        "lengths_ps": {"equilibration": args.equilibration_ps, "nvt": args.nvt_ps, "nve": args.nve_ps},
        "dump_fs": args.dump_fs,
        "runs": {},
        "structure": {},
    }
    model_pt = md_lammps.export_model(args.model, out / f"{args.model.stem}_{args.dtype}.pt", args.dtype)
    md["runs"][name] = md_lammps.run_md(model_pt, start, out, args.ranks, steps, args.temperature, args.seed)
    print(
        f"LAMMPS ({args.ranks} ranks): {md['runs'][name]['wall_s']:.0f} s, NVE drift "
        f"{md['runs'][name]['nve']['drift_meV_atom_ps']:+.3f} meV/atom/ps",
        flush=True,
    )
    if not args.no_teacher:
        md["runs"]["teacher"] = md_teacher.run_md(
            start_atoms, out, steps, args.temperature, args.seed, md_lammps.TIMESTEP_FS, args.threads
        )
        print(f"teacher (OpenMM): {md['runs']['teacher']['wall_s']:.0f} s", flush=True)
    for label, run in md["runs"].items():
        traj = structure.load(Path(run["trajectory"]), start["pdb"])[run.get("skip_frames", 0) :]
        md["structure"][label] = structure.analyse(traj, args.blocks, args.cip_cutoff)
    if not args.no_rank_check:
        model64 = md_lammps.export_model(args.model, out / f"{args.model.stem}_float64.pt", "float64")
        md["rank_check"] = md_lammps.rank_check(model64, start, out / "rank_check", args.ranks)
        print(f"1 vs {args.ranks} ranks: {md['rank_check']}", flush=True)
    md["wall_s"] = time.perf_counter() - t0
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    results["md"] = md
    if args.notes.is_file():  # the reading of the numbers, refreshed with them
        results["notes"] = args.notes.read_text().strip().splitlines()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    image = md_report.plot(md, args.img_dir)
    if "models" in results:
        images = {
            "forces": args.img_dir / "electrolyte_force_mae.png",
            "pair": args.img_dir / "electrolyte_pair_energy.png",
            "md": image,
        }
        args.doc.write_text(report.markdown(results, images, args.doc))
        print(f"wrote {args.json}, {args.doc}, {image} ({md['wall_s']:.0f} s)")
    else:
        print(f"wrote {args.json}, {image} ({md['wall_s']:.0f} s); {args.json} has no evaluation: doc not written")
    return 0
