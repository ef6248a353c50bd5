"""``allscaip liquid``: command-line options and entry point (``add_arguments`` / ``run``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "liquid density and heat of vaporization (with error bars, plots, and the teacher side by side)"

EPILOG = """\
examples:
  allscaip liquid --model model.pt --molecule water --out runs/water
  allscaip liquid --model model.pt --molecule water --teacher --out runs/water   # student and teacher
  allscaip liquid --teacher --molecule water --n-molecules 64 --out runs/teacher
  allscaip liquid --model model.pt --molecule CCO --engine lammps --out runs/ethanol
  allscaip liquid ... --out runs/water --resume        # continue after the last finished segment

--molecule: a .pdb/.xyz file (one molecule), a liquid name (water, methanol, ethanol, ...) or SMILES
(SMILES needs RDKit). Outputs per potential in OUT/model and OUT/teacher: report.json,
timeseries.png, histograms.png, per-segment CSV samples and checkpoints; OUT/summary.txt.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="allscaip model: exported .pt (TorchScript), .pt2 or .ckpt")
    p.add_argument("--molecule", required=True, help="file (.pdb, .xyz, ...), liquid name, or SMILES")
    p.add_argument(
        "--teacher",
        action="store_true",
        help="also (or, without --model, only) run the flexible TIP3P water teacher in OpenMM with "
        "the same protocol and analysis (water only)",
    )
    p.add_argument("--n-molecules", type=int, default=216, help="molecules in the liquid box")
    p.add_argument("--temperature", type=float, default=298.15, help="K")
    p.add_argument("--pressure", type=float, default=1.0, help="atm")
    p.add_argument(
        "--engine",
        choices=("openmm", "lammps"),
        default="openmm",
        help="MD engine for the model (the teacher always runs in OpenMM)",
    )
    p.add_argument("--timestep-fs", type=float, default=0.5, help="MD time step (flexible X-H bonds: 0.5-1 fs)")
    p.add_argument(
        "--hydrogen-mass",
        type=float,
        default=None,
        help="hydrogen mass repartitioning, amu (e.g. 3 with --timestep-fs 1): H bonded to a heavy atom "
        "gets this mass, taken from that atom; density and energies are unaffected",
    )
    p.add_argument("--equilibrate-ps", type=float, default=100.0, help="liquid NPT equilibration")
    p.add_argument("--production-ps", type=float, default=200.0, help="liquid NPT production")
    p.add_argument("--segment-ps", type=float, default=10.0, help="checkpoint interval (segment length)")
    p.add_argument("--gas-equilibrate-ps", type=float, default=10.0, help="gas-phase NVT equilibration")
    p.add_argument("--gas-production-ps", type=float, default=100.0, help="gas-phase NVT production")
    p.add_argument("--sample-every-fs", type=float, default=100.0, help="sampling interval of energies/volume")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    p.add_argument("--barostat-interval", type=int, default=25, help="OpenMM Monte Carlo barostat interval, steps")
    p.add_argument(
        "--pack-density",
        type=float,
        default=None,
        help="g/cm^3 of the packed box (default 0.95 x experiment when known, else 0.95)",
    )
    p.add_argument(
        "--packer",
        choices=("auto", "packmol", "random"),
        default="auto",
        help="box packing: Packmol, random insertion, or Packmol when installed",
    )
    p.add_argument(
        "--minimise-iterations",
        type=int,
        default=1000,
        help="maximum energy-minimisation iterations (0: no minimisation)",
    )
    p.add_argument(
        "--minimise-tolerance",
        type=float,
        default=10.0,
        help="stop minimising at this RMS force component, kJ/mol/nm (OpenMM's rule; both engines)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (packing, velocities, thermostats)")
    p.add_argument("--out", default="liquid_run", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished segment")
    p.add_argument(
        "--max-segments",
        type=int,
        default=None,
        help="stop after this many MD segments in this invocation (continue later with --resume)",
    )
    p.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, CUDA, Reference, ...)")
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch / OpenMM CPU threads")
    p.add_argument("--lmp", default=None, help="LAMMPS executable (default: lmp on PATH)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args, potential: str):
    from allscaip.workflows.liquid.settings import Settings

    return Settings(
        molecule=args.molecule,
        potential=potential,
        model=None if potential == "teacher" else str(Path(args.model).expanduser().resolve()),
        n_molecules=args.n_molecules,
        temperature_K=args.temperature,
        pressure_atm=args.pressure,
        engine="openmm" if potential == "teacher" else args.engine,
        timestep_fs=args.timestep_fs,
        hydrogen_mass_amu=args.hydrogen_mass,
        equilibrate_ps=args.equilibrate_ps,
        production_ps=args.production_ps,
        segment_ps=args.segment_ps,
        gas_equilibrate_ps=args.gas_equilibrate_ps,
        gas_production_ps=args.gas_production_ps,
        sample_every_fs=args.sample_every_fs,
        friction_per_ps=args.friction,
        barostat_interval=args.barostat_interval,
        pack_density_g_cm3=args.pack_density,
        minimise_max_iterations=args.minimise_iterations,
        minimise_tolerance_kj_mol_nm=args.minimise_tolerance,
        packer=args.packer,
        seed=args.seed,
        platform=args.platform,
        device=args.device,
        threads=args.threads,
        lmp=args.lmp,
    )


def run(args) -> int:
    from allscaip.workflows.liquid import report, runner
    from allscaip.workflows.liquid.build import InputError

    def err(msg: str) -> int:
        print(f"allscaip liquid: error: {msg}", file=sys.stderr)
        return 2

    if not args.model and not args.teacher:
        return err("give --model MODEL (and/or --teacher for the water teacher)")
    for name in ("n_molecules", "timestep_fs", "segment_ps", "sample_every_fs"):
        if getattr(args, name) <= 0:
            return err(f"--{name.replace('_', '-')} must be > 0")
    out = Path(args.out)
    potentials = (["model"] if args.model else []) + (["teacher"] if args.teacher else [])
    try:
        settings = {p: settings_from_args(args, p) for p in potentials}
        for s in settings.values():  # every input check before any simulation starts
            runner.prepare_molecule(s)
    except InputError as e:
        return err(str(e))
    reports = []
    t0 = time.time()
    for p, s in settings.items():
        print(
            f"[{p}] {s.n_molecules} x {s.molecule} at {s.temperature_K} K, {s.pressure_atm} atm, "
            f"engine {s.engine}, output {out / p}",
            file=sys.stderr,
        )
        try:
            rep = runner.Runner(
                s,
                out / p,
                resume=args.resume,
                max_segments=args.max_segments,
                show_progress=not args.no_progress,
                log=lambda m: print(m, file=sys.stderr),
            ).run()
        except InputError as e:
            return err(str(e))
        rep["label"] = p
        reports.append(rep)
        for w in rep.get("warnings", []):
            print(f"[{p}] warning: {w}", file=sys.stderr)
        if rep.get("status") != "complete":
            break
    if all(r.get("status") == "complete" for r in reports):
        print(report.write_summary(out, reports))
        print(f"\nwall time {time.time() - t0:.0f} s; reports in {', '.join(str(out / r['label']) for r in reports)}")
        return 0
    print("run incomplete; continue with --resume", file=sys.stderr)
    return 0
