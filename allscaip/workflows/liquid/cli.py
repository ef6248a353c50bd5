"""``allscaip liquid``: command-line options and entry point (``add_arguments`` / ``run``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from allscaip.config_schema import ConfigError, values_from_arguments
from allscaip.config_schema import add_arguments as add_setting_arguments
from allscaip.engines.lammps import LammpsError, find_lmp
from allscaip.result_checks import AtomsTooCloseError, NonFiniteResultError
from allscaip.workflows.liquid import report, runner
from allscaip.workflows.liquid.build import InputError
from allscaip.workflows.liquid.settings import Settings

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
    """The run settings (declared with their flags in :class:`Settings`), then this invocation's options."""
    add_setting_arguments(
        p.add_argument_group("run settings (kept in OUT/model and OUT/teacher: settings.json)"), Settings
    )
    p = p.add_argument_group("this invocation")
    p.add_argument(
        "--teacher",
        action="store_true",
        help="also (or, without --model, only) run the flexible TIP3P water teacher in OpenMM with "
        "the same protocol and analysis (water only)",
    )
    p.add_argument("--out", default="liquid_run", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished segment")
    p.add_argument(
        "--max-segments",
        type=int,
        default=None,
        help="stop after this many MD segments in this invocation (continue later with --resume)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace, potential: str) -> Settings:
    """The :class:`Settings` of ``potential`` ("model" or "teacher"): the teacher runs in OpenMM
    without a model file; the model's path is stored resolved."""
    teacher = potential == "teacher"
    return Settings(
        **{
            **values_from_arguments(Settings, args),
            "potential": potential,
            "model": None if teacher else str(Path(args.model).expanduser().resolve()),
            "engine": "openmm" if teacher else args.engine,
        }
    )


POSITIVE_ARGUMENTS = {
    "n_molecules": "--n-molecules",
    "temperature_K": "--temperature",
    "timestep_fs": "--timestep-fs",
    "segment_ps": "--segment-ps",
    "sample_every_fs": "--sample-every-fs",
    "production_ps": "--production-ps",
    "friction_per_ps": "--friction",
    "barostat_interval": "--barostat-interval",
    "pack_density_g_cm3": "--pack-density",
    "hydrogen_mass_amu": "--hydrogen-mass",
}
"""Arguments (dest: flag) that must be > 0 when given, checked before anything is written."""
NON_NEGATIVE_ARGUMENTS = {
    "equilibrate_ps": "--equilibrate-ps",
    "gas_equilibrate_ps": "--gas-equilibrate-ps",
    "gas_production_ps": "--gas-production-ps",
    "minimise_max_iterations": "--minimise-iterations",
}
"""Arguments that may be 0 (that stage is skipped) but not negative."""


def simulation_errors() -> tuple:
    """What an engine raises when a simulation goes wrong (docs/errors.md): the model's result checks,
    a failed lmp, OpenMM's wrapper around an exception in the force."""
    errors: tuple = (LammpsError, AtomsTooCloseError, NonFiniteResultError, FloatingPointError)
    try:
        import openmm

        errors += (openmm.OpenMMException,)
    except ImportError:
        pass
    return errors


def run(args: argparse.Namespace) -> int:
    def err(msg: str) -> int:
        print(f"allscaip liquid: error: {msg}", file=sys.stderr)
        return 2

    if not args.model and not args.teacher:
        return err("give --model MODEL (and/or --teacher for the water teacher)")
    for name, flag in POSITIVE_ARGUMENTS.items():
        value = getattr(args, name)
        if value is not None and not value > 0:
            return err(f"{flag} must be > 0, got {value}")
    for name, flag in NON_NEGATIVE_ARGUMENTS.items():
        value = getattr(args, name)
        if value is not None and not value >= 0:
            return err(f"{flag} must be >= 0 (0 skips that stage), got {value}")
    if args.model and args.engine == "lammps":
        try:  # before any output directory exists
            find_lmp(args.lmp)
        except LammpsError as e:
            return err(f"{e}; give --lmp PATH to a LAMMPS built with the allscaip plugin, or use --engine openmm")
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
        except (InputError, ConfigError) as e:  # ConfigError: a settings.json this version cannot read
            return err(str(e))
        except simulation_errors() as e:  # atoms too close, NaN, lmp failed: a message, not a traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return err(
                f"[{p}] the simulation stopped: {first}. The completed segments are kept in {out / p}; once the "
                "cause is fixed, continue with --resume"
            )
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
