"""Flexible-water "teacher": labelled water configurations from OpenMM.

The command line that writes the teacher data: bulk boxes at each (molecules, temperature, density) state, gas-phase monomers spread over the
temperatures and gas-phase dimers (:mod:`.sampling`), each state split into a training and an
independent validation trajectory, written as extxyz and read back to check the round trip; a
summary table and a finite-difference check of the teacher's forces follow. See ``--help``::

    python -m allscaip.workflows.teacher.cli --n-molecules 32,64 --temperatures 250,300,350,400 \\
        --densities 0.90,1.00,1.10 --frames-per-state 33,6 --seed 0 \\
        --train-out examples/water/data/train.extxyz --val-out examples/water/data/val.extxyz

``--system nacl`` writes the aqueous-NaCl data instead (:mod:`.electrolyte_cli`, whose
``--help`` lists its options; ``python -m allscaip.workflows.teacher.cli --system nacl --help``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import ase.io
import numpy as np
from ase import Atoms
from tqdm import tqdm

from allscaip.reproducible import seed_for
from allscaip.workflows.teacher import sampling
from allscaip.workflows.teacher.labelling import finite_difference_check

#: the teachers this command samples: flexible TIP3P water, and NaCl in it (:mod:`.electrolyte`)
SYSTEMS = ("water", "nacl")


def parse_floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def split_count(n: int, val_fraction: float) -> tuple[int, int]:
    """(n_train, n_val) for ``n`` frames: n_val = max(1, round(n * val_fraction)) when both are possible."""
    if val_fraction <= 0 or n < 2:
        return n, 0
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    return n - n_val, n_val


def summary_rows(frames: Sequence[Atoms], split: str) -> list[dict]:
    groups: dict = {}
    for a in frames:
        key = (a.info["config_type"], a.info["n_molecules"], a.info["temperature_K"], a.info["density_g_cm3"])
        groups.setdefault(key, []).append(a)
    rows = []
    for (kind, n, T, rho), fr in groups.items():
        e = np.array([a.get_potential_energy() / n for a in fr])
        f = np.concatenate([a.get_forces().ravel() for a in fr])
        tk = [a.info.get("kinetic_temperature_K") for a in fr]
        tk = [x for x in tk if x is not None]
        rows.append(
            {
                "split": split,
                "kind": kind,
                "n_mol": n,
                "T_K": T,
                "rho": rho,
                "frames": len(fr),
                "atoms": sum(len(a) for a in fr),
                "E_mol_mean_eV": float(e.mean()),
                "E_mol_std_meV": float(e.std() * 1e3),
                "F_rms_eV_A": float(np.sqrt(np.mean(f**2))),
                "T_kin_K": float(np.mean(tk)) if tk else float("nan"),
            }
        )
    return rows


def print_table(rows: list[dict], file=sys.stdout) -> None:
    hdr = (
        f"{'split':5} {'kind':7} {'n_mol':>5} {'T/K':>5} {'rho':>5} {'frames':>6} {'atoms':>7} "
        f"{'<E>/mol eV':>11} {'sd meV/mol':>10} {'F_rms eV/A':>10} {'T_kin/K':>8}"
    )
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for r in rows:
        print(
            f"{r['split']:5} {r['kind']:7} {r['n_mol']:5d} {r['T_K']:5.0f} {r['rho']:5.2f} {r['frames']:6d} "
            f"{r['atoms']:7d} {r['E_mol_mean_eV']:11.4f} {r['E_mol_std_meV']:10.2f} {r['F_rms_eV_A']:10.3f} "
            f"{r['T_kin_K']:8.1f}",
            file=file,
        )


def write_and_verify(path: str, frames: Sequence[Atoms]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ase.io.write(path, list(frames), format="extxyz")
    back = ase.io.read(path, index=":", format="extxyz")
    if len(back) != len(frames):
        raise RuntimeError(f"{path}: wrote {len(frames)} frames, read back {len(back)}")
    for a, b in zip(frames, back):
        de = abs(a.get_potential_energy() - b.get_potential_energy())
        df = np.abs(a.get_forces() - b.get_forces()).max()
        dx = np.abs(a.get_positions() - b.get_positions()).max()
        if (
            de > 1e-9 * max(1.0, abs(a.get_potential_energy()))
            or df > 1e-7
            or dx > 1e-7
            or bool(a.pbc.any()) != bool(b.pbc.any())
        ):
            raise RuntimeError(f"{path}: extxyz round trip failed (dE={de}, dF={df}, dx={dx})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--system", choices=SYSTEMS, default="water")
    known, rest = pre.parse_known_args(argv)
    if known.system == "nacl":
        # imported here: the electrolyte CLI reuses this module's helpers
        from allscaip.workflows.teacher import electrolyte_cli

        return electrolyte_cli.main(rest)
    p = argparse.ArgumentParser(
        prog="python -m allscaip.workflows.teacher.cli",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--system",
        choices=SYSTEMS,
        default="water",
        help="water, or aqueous NaCl (its own options: --system nacl --help)",
    )
    p.add_argument("--out", default=None, help="extxyz with every frame (train + val)")
    p.add_argument("--train-out", default=None, help="extxyz for the training split")
    p.add_argument("--val-out", default=None, help="extxyz for the validation split")
    p.add_argument("--n-molecules", type=parse_ints, default=[32, 64], help="comma-separated box sizes")
    p.add_argument("--temperatures", type=parse_floats, default=[250.0, 300.0, 350.0, 400.0], help="K")
    p.add_argument("--densities", type=parse_floats, default=[0.90, 1.00, 1.10], help="g/cm^3")
    p.add_argument(
        "--frames-per-state",
        type=parse_ints,
        default=[33, 6],
        help="frames per (T, density) state, one value or one per --n-molecules entry; "
        "split into train/val trajectories by --val-fraction",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="per state, this fraction of the frames comes from a separate, independent "
        "validation trajectory (at least 1)",
    )
    p.add_argument("--n-monomers", type=int, default=100, help="gas-phase single molecules (over all T)")
    p.add_argument("--n-dimers", type=int, default=150, help="gas-phase dimers, O-O 2.5-8 Å")
    p.add_argument("--equilibration-ps", type=float, default=2.0)
    p.add_argument("--stride-fs", type=float, default=200.0, help="time between bulk frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="OpenMM CPU threads (default: OpenMM's)")
    p.add_argument("--no-fd-check", action="store_true", help="skip the finite-difference force check")
    args = p.parse_args(argv)

    if args.threads:
        sampling.CPU_THREADS = args.threads
    if not (args.out or args.train_out or args.val_out):
        p.error("give at least one of --out, --train-out, --val-out")
    fps = args.frames_per_state
    if len(fps) == 1:
        fps = fps * len(args.n_molecules)
    if len(fps) != len(args.n_molecules):
        p.error("--frames-per-state needs one value or one per --n-molecules entry")

    t0 = time.time()
    train: list[Atoms] = []
    val: list[Atoms] = []
    # (kind, n, T, rho, split, n_frames)
    jobs = []
    for n, nf in zip(args.n_molecules, fps):
        ntr, nva = split_count(nf, args.val_fraction)
        for T in args.temperatures:
            for rho in args.densities:
                jobs.append(("bulk", n, T, rho, "train", ntr))
                if nva:
                    jobs.append(("bulk", n, T, rho, "val", nva))
    nT = len(args.temperatures)
    for i, T in enumerate(args.temperatures):  # spread the monomers over temperatures
        n_t = args.n_monomers // nT + (1 if i < args.n_monomers % nT else 0)
        ntr, nva = split_count(n_t, args.val_fraction)
        jobs.append(("monomer", 1, T, 0.0, "train", ntr))
        if nva:
            jobs.append(("monomer", 1, T, 0.0, "val", nva))
    ntr, nva = split_count(args.n_dimers, args.val_fraction)
    jobs.append(("dimer", 2, 0.0, 0.0, "train", ntr))
    if nva:
        jobs.append(("dimer", 2, 0.0, 0.0, "val", nva))

    total = sum(j[-1] for j in jobs)
    bar = tqdm(total=total, unit="frame", desc="teacher", file=sys.stderr)
    cb = lambda _a: bar.update(1)  # noqa: E731
    for kind, n, T, rho, split, nf in jobs:
        if nf == 0:
            continue
        seed = seed_for(args.seed, kind, n, T, rho, split)
        if kind == "bulk":
            name = f"bulk_n{n}_T{T:g}_rho{rho:.2f}_{split}"
            bar.set_postfix_str(name)
            fr = sampling.sample_frames(
                n,
                T,
                rho,
                nf,
                seed,
                equilibration_ps=args.equilibration_ps,
                stride_fs=args.stride_fs,
                traj=name,
                callback=cb,
            )
        elif kind == "monomer":
            name = f"monomer_T{T:g}_{split}"
            bar.set_postfix_str(name)
            fr = sampling.sample_monomers(T, nf, seed, traj=name, callback=cb)
        else:
            name = f"dimer_{split}"
            bar.set_postfix_str(name)
            fr = sampling.sample_dimers(args.temperatures, nf, seed, traj=name, callback=cb)
        (train if split == "train" else val).extend(fr)
    bar.close()
    t_gen = time.time() - t0

    if args.out:
        write_and_verify(args.out, train + val)
    if args.train_out:
        write_and_verify(args.train_out, train)
    if args.val_out:
        write_and_verify(args.val_out, val)

    rows = summary_rows(train, "train") + summary_rows(val, "val")
    print_table(rows)
    allf = train + val
    bulk = [a for a in allf if a.info["config_type"] == "bulk"]
    f_all = np.concatenate([a.get_forces().ravel() for a in allf])
    print(f"\nframes: {len(train)} train + {len(val)} val = {len(allf)}; atoms: {sum(len(a) for a in allf)}")
    print(
        f"force RMS (all components, all frames): {np.sqrt(np.mean(f_all**2)):.4f} eV/Å; "
        f"max |F|: {np.abs(f_all).max():.3f} eV/Å"
    )
    if bulk:
        e_mol = np.array([a.get_potential_energy() / a.info["n_molecules"] for a in bulk])
        print(
            f"bulk energy per molecule: mean {e_mol.mean():.4f} eV, sd {e_mol.std():.4f} eV, "
            f"range [{e_mol.min():.4f}, {e_mol.max():.4f}] eV"
        )
    for path in (args.out, args.train_out, args.val_out):
        if path:
            print(f"wrote {path}: {os.path.getsize(path) / 1e6:.2f} MB")
    if not args.no_fd_check and bulk:
        res = finite_difference_check(bulk[0])
        print(
            f"finite-difference check on {bulk[0].info['traj']} frame {bulk[0].info['frame']} "
            f"({len(bulk[0])} atoms, h = {res['h_ang']} Å, double precision):"
        )
        for k, v in res.items():
            print(f"  {k}: {v:.3e}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"generation wall time: {t_gen:.1f} s; total {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
