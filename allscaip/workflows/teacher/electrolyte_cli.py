"""Aqueous-NaCl teacher data: ``python -m allscaip.workflows.teacher.cli --system nacl ...``.

Writes three extxyz files (:mod:`.electrolyte_sampling`, the teacher in :mod:`.electrolyte`):

* training and validation: NaCl solutions at each (waters:pairs composition, temperature,
  water density) state, and restrained dilute ion pairs (one Na⁺, one Cl⁻) at Na-Cl
  separations from contact to half the box, in boxes of ``--pair-waters`` waters. As for water
  (:mod:`.cli`), every state's validation frames come from their own independent trajectory,
  and the ion-pair windows (stratified random separations) are split into training and
  validation windows;
* test: solutions in boxes larger than any training box (``--test-compositions``) and dilute
  ion pairs in a large box (``--test-pair-waters``) at separations evenly spaced from contact
  to half its edge.

Every periodic frame gets the teacher's stress (:func:`.stress.teacher_stress`) unless
``--no-stress``. The files are read back and checked, a summary table is printed, and the
teacher's forces are checked against finite differences on one solution frame. The command in
examples/electrolyte/README.md wrote the shipped data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm import tqdm

from allscaip.reproducible import seed_for
from allscaip.workflows.teacher import sampling
from allscaip.workflows.teacher.cli import (
    parse_floats,
    parse_ints,
    print_table,
    split_count,
    summary_rows,
    write_and_verify,
)
from allscaip.workflows.teacher.electrolyte_sampling import sample_ion_pairs, sample_solution_frames
from allscaip.workflows.teacher.labelling import finite_difference_check
from allscaip.workflows.teacher.stress import teacher_stress


def parse_compositions(s: str) -> list[tuple[int, int]]:
    """``"32:1,64:2"`` -> ``[(32, 1), (64, 2)]`` (waters:ion pairs)."""
    out = []
    for item in s.split(","):
        if not item.strip():
            continue
        try:
            w, p = (int(x) for x in item.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"composition {item!r} is not WATERS:PAIRS, e.g. 64:1") from None
        out.append((w, p))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m allscaip.workflows.teacher.cli --system nacl",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train-out", default=None, help="extxyz for the training split")
    p.add_argument("--val-out", default=None, help="extxyz for the validation split")
    p.add_argument("--test-out", default=None, help="extxyz for the large test boxes")
    p.add_argument(
        "--compositions", type=parse_compositions, default=[(32, 1), (64, 1), (64, 2)], help="WATERS:PAIRS,..."
    )
    p.add_argument("--temperatures", type=parse_floats, default=[280.0, 320.0, 360.0], help="K")
    p.add_argument(
        "--water-densities", type=parse_floats, default=[1.0], help="g/cm^3 of the water; ions add their volume"
    )
    p.add_argument("--frames-per-state", type=int, default=12, help="per solution state, train + val")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--pair-water-density", type=float, default=1.0, help="g/cm^3 of the water, ion-pair boxes")
    p.add_argument("--pair-waters", type=parse_ints, default=[64, 128], help="waters in the ion-pair boxes")
    p.add_argument("--pair-windows", type=int, default=16, help="restrained windows per ion-pair box size")
    p.add_argument("--pair-frames", type=int, default=2, help="frames per ion-pair window")
    p.add_argument(
        "--test-compositions", type=parse_compositions, default=[(512, 8), (504, 16)], help="WATERS:PAIRS,..."
    )
    p.add_argument("--test-frames", type=int, default=3, help="frames per test composition")
    p.add_argument("--test-pair-waters", type=int, default=512, help="waters in the test ion-pair box (0: none)")
    p.add_argument(
        "--test-pair-windows",
        type=int,
        default=6,
        help="windows (one frame each) of the test ion pair, evenly spaced from contact to half the box",
    )
    p.add_argument("--test-temperature", type=float, default=300.0, help="K (test boxes at --pair-water-density)")
    p.add_argument("--test-stride-fs", type=float, default=500.0, help="time between test frames")
    p.add_argument("--equilibration-ps", type=float, default=2.0, help="solutions (ion-pair windows: half)")
    p.add_argument("--stride-fs", type=float, default=200.0, help="time between training frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="OpenMM CPU threads (default: OpenMM's)")
    p.add_argument("--no-stress", action="store_true", help="skip the finite-difference stress labels")
    p.add_argument("--no-fd-check", action="store_true", help="skip the finite-difference force check")
    return p


def _jobs(args) -> list[tuple[str, str, dict]]:
    """(split, description, keyword arguments of the sampler) for every trajectory or window set."""
    jobs = []
    ntr, nva = split_count(args.frames_per_state, args.val_fraction)
    for w, n in args.compositions:
        for T in args.temperatures:
            for rho in args.water_densities:
                for split, nf in (("train", ntr), ("val", nva)):
                    if nf:
                        name = f"solution_w{w}_p{n}_T{T:g}_rho{rho:.2f}_{split}"
                        jobs.append((split, name, dict(n_waters=w, n_pairs=n, temperature_K=T, rho=rho, n_frames=nf)))
    wtr, wva = split_count(args.pair_windows, args.val_fraction)
    for w in args.pair_waters:
        for split, nw in (("train", wtr), ("val", wva)):
            if nw:
                jobs.append(
                    (split, f"ion_pair_w{w}_{split}", dict(n_waters=w, n_windows=nw, n_frames=args.pair_frames))
                )
    for w, n in args.test_compositions:
        name = f"solution_w{w}_p{n}_T{args.test_temperature:g}_test"
        jobs.append(
            ("test", name, dict(n_waters=w, n_pairs=n, temperature_K=args.test_temperature, n_frames=args.test_frames))
        )
    if args.test_pair_waters:
        w = args.test_pair_waters
        jobs.append(("test", f"ion_pair_w{w}_test", dict(n_waters=w, n_windows=args.test_pair_windows, n_frames=1)))
    return jobs


def _run_job(args, split: str, name: str, job: dict, callback) -> list[Atoms]:
    seed = seed_for(args.seed, name)
    if name.startswith("ion_pair"):
        temps = [args.test_temperature] if split == "test" else args.temperatures
        return sample_ion_pairs(
            job["n_waters"],
            temps,
            args.pair_water_density,
            job["n_windows"],
            job["n_frames"],
            seed,
            equilibration_ps=args.equilibration_ps / 2,
            stride_fs=args.test_stride_fs if split == "test" else args.stride_fs,
            evenly=split == "test",
            traj=name,
            callback=callback,
        )
    return sample_solution_frames(
        job["n_waters"],
        job["n_pairs"],
        job["temperature_K"],
        job.get("rho", args.pair_water_density),
        job["n_frames"],
        seed,
        equilibration_ps=args.equilibration_ps,
        stride_fs=args.test_stride_fs if split == "test" else args.stride_fs,
        traj=name,
        callback=callback,
    )


def add_stress(frames: Sequence[Atoms]) -> None:
    """The teacher's stress on every periodic frame, in place."""
    for a in tqdm(frames, desc="stress", unit="frame", file=sys.stderr):
        if a.pbc.all():
            info = dict(a.info)
            a.calc = SinglePointCalculator(a, **{**a.calc.results, "stress": teacher_stress(a)})
            a.info.update(info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.threads:
        sampling.CPU_THREADS = args.threads
    outs = {"train": args.train_out, "val": args.val_out, "test": args.test_out}
    if not any(outs.values()):
        p.error("give at least one of --train-out, --val-out, --test-out")
    t0 = time.time()
    jobs = [j for j in _jobs(args) if outs[j[0]]]
    frames: dict[str, list[Atoms]] = {"train": [], "val": [], "test": []}
    bar = tqdm(total=len(jobs), unit="traj", desc="nacl teacher", file=sys.stderr)
    for split, name, job in jobs:
        bar.set_postfix_str(name)
        frames[split] += _run_job(args, split, name, job, None)
        bar.update(1)
    bar.close()
    t_md = time.time() - t0
    if not args.no_stress:
        add_stress([a for fr in frames.values() for a in fr])
    t_stress = time.time() - t0 - t_md
    for split, path in outs.items():
        if path:
            write_and_verify(path, frames[split])
    print_table([row for split, fr in frames.items() for row in summary_rows(fr, split)])
    for split, path in outs.items():
        if path:
            fr = frames[split]
            f = np.concatenate([a.get_forces().ravel() for a in fr])
            print(
                f"{split}: {len(fr)} frames, {sum(len(a) for a in fr)} atoms, largest {max(len(a) for a in fr)}; "
                f"force RMS {np.sqrt(np.mean(f**2)):.3f} eV/Å; wrote {path}: {os.path.getsize(path) / 1e6:.2f} MB"
            )
    pairs = [a for fr in frames.values() for a in fr if a.info["config_type"] == "ion_pair"]
    if pairs:
        r = np.array([a.info["r_NaCl_ang"] for a in pairs])
        print(f"ion pairs: {len(pairs)} frames, Na-Cl {r.min():.2f}-{r.max():.2f} Å")
    solution = [a for fr in frames.values() for a in fr if a.info["config_type"] == "solution"]
    if not args.no_fd_check and solution:
        res = finite_difference_check(solution[0])
        print(f"finite-difference check on {solution[0].info['traj']} frame 0 ({len(solution[0])} atoms):")
        for k, v in res.items():
            print(f"  {k}: {v:.3e}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"wall time: MD and labels {t_md:.1f} s, stress {t_stress:.1f} s, total {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
