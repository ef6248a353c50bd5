"""NPT water with an allscaip model in OpenMM (PythonForce implementation).

Reads a PDB (default: 216 waters, examples/openmm/water_216.pdb, ~1 g/cm^3), builds the
System with ``MLPotential('allscaip', modelPath=...)``, adds a Monte Carlo barostat, runs
Langevin dynamics, writes a DCD trajectory and a StateDataReporter log, and prints the
density at the end.

    python examples/openmm/water_npt.py --model examples/water/model.pt --steps 2000 --out runs/openmm_water
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import openmm
import torch
from openmm import app, unit

from allscaip.units import ANGSTROM_PER_NM, mass_density_g_cm3
from allscaip_openmm import MLPotential

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def density_g_cm3(system, volume_nm3: float) -> float:
    mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles()))
    return mass_density_g_cm3(mass, volume_nm3 * ANGSTROM_PER_NM**3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default=str(REPO / "examples" / "water" / "model.pt"),
        help="allscaip model: exported .pt or checkpoint .ckpt",
    )
    ap.add_argument("--pdb", default=str(HERE / "water_216.pdb"), help="starting structure with CRYST1 box")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="openmm_water_npt", help="output directory")
    ap.add_argument("--dt-fs", type=float, default=0.5, help="time step (fs); flexible water needs <= 0.5")
    ap.add_argument("--temperature", type=float, default=298.15, help="K")
    ap.add_argument("--pressure", type=float, default=1.01325, help="bar")
    ap.add_argument("--friction", type=float, default=1.0, help="Langevin friction (1/ps)")
    ap.add_argument("--barostat-interval", type=int, default=25, help="steps between barostat moves")
    ap.add_argument("--report-interval", type=int, default=100, help="steps between log/trajectory frames")
    ap.add_argument("--minimize", type=int, default=100, help="energy-minimisation iterations first (0: none)")
    ap.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, Reference, CUDA, ...)")
    ap.add_argument("--device", default="cpu", help="torch device for the model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--charge", type=int, default=0)
    ap.add_argument("--spin", type=int, default=1, help="spin multiplicity 2S+1")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    if not Path(args.model).exists():
        print(f"model {args.model} not found; train/export one first or pass --model", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pdb = app.PDBFile(args.pdb)
    if pdb.topology.getPeriodicBoxVectors() is None:
        print(f"{args.pdb} has no CRYST1 box; NPT needs a periodic system", file=sys.stderr)
        return 2
    potential = MLPotential("allscaip", modelPath=args.model, device=args.device)
    system = potential.createSystem(pdb.topology, charge=args.charge, spin=args.spin)  # + CMMotionRemover
    temperature = args.temperature * unit.kelvin
    system.addForce(openmm.MonteCarloBarostat(args.pressure * unit.bar, temperature, args.barostat_interval))
    integrator = openmm.LangevinMiddleIntegrator(
        temperature, args.friction / unit.picosecond, args.dt_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(args.seed)
    simulation = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName(args.platform))
    simulation.context.setPositions(pdb.positions)
    if args.minimize > 0:
        simulation.minimizeEnergy(maxIterations=args.minimize)
    simulation.context.setVelocitiesToTemperature(temperature, args.seed)

    simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), args.report_interval))
    log_fields = dict(
        step=True,
        time=True,
        potentialEnergy=True,
        kineticEnergy=True,
        totalEnergy=True,
        temperature=True,
        volume=True,
        density=True,
        speed=True,
    )
    simulation.reporters.append(app.StateDataReporter(str(out / "log.csv"), args.report_interval, **log_fields))
    simulation.reporters.append(
        app.StateDataReporter(
            sys.stdout,
            max(args.report_interval, args.steps // 10),
            step=True,
            potentialEnergy=True,
            temperature=True,
            density=True,
            speed=True,
        )
    )
    t0 = time.perf_counter()
    simulation.step(args.steps)
    elapsed = time.perf_counter() - t0

    state = simulation.context.getState(getPositions=True, getEnergy=True)
    volume = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer**3)
    with open(out / "final.pdb", "w") as f:
        simulation.topology.setPeriodicBoxVectors(state.getPeriodicBoxVectors())
        app.PDBFile.writeFile(simulation.topology, state.getPositions(), f)
    ns_day = args.steps * args.dt_fs * 1e-6 / (elapsed / 86400.0)
    print(f"{args.steps} steps in {elapsed:.1f} s ({ns_day:.3f} ns/day); outputs in {out}/")
    print(f"final density: {density_g_cm3(system, volume):.4f} g/cm^3 (box volume {volume:.3f} nm^3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
