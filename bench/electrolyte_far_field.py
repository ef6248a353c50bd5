"""How large is the teacher's electrostatic force on the ions from beyond the models' receptive field?

For every ion of the bundled electrolyte test boxes (examples/electrolyte/data/test.extxyz), the
teacher's Coulomb force (particle-mesh Ewald, the teacher's own NonbondedForce with the Lennard-Jones
terms set to zero) minus the plain Coulomb force of the neutral groups within R: every water whose
oxygen lies within R of the ion (whole molecules, so that no water's charges are cut apart) and
every other ion within R. What remains is the force of everything beyond R, the part a model with
receptive field R never sees directly. Reported per Cartesian component (rms and mean absolute, in
meV/Å) for R = 8 Å (the bundled models' 2 layers x 4 Å) and 10 Å.

    python bench/electrolyte_far_field.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import openmm
from ase.io import read
from bench_result import run_header, write_result
from openmm import unit

from allscaip.units import ANGSTROM_PER_NM, EV_PER_A_TO_KJ_PER_MOL_NM
from allscaip.workflows.teacher.electrolyte import (
    COULOMB_KJ_NM,
    composition,
    create_solution_system,
    solution_topology,
)

HERE = Path(__file__).resolve().parent
TEST_BOXES = HERE.parent / "examples/electrolyte/data/test.extxyz"
NM_PER_A = 1.0 / ANGSTROM_PER_NM


def electrostatic_forces(frame) -> tuple[np.ndarray, np.ndarray, int]:
    """(PME Coulomb forces [N, 3] in kJ/mol/nm, charges [N] in e, number of waters) of ``frame``."""
    n_waters, n_na, n_cl = composition(frame.get_chemical_symbols())
    box_nm = frame.cell.lengths()[0] * NM_PER_A
    system = create_solution_system(solution_topology(n_waters, n_na, n_cl, box_nm), periodic=True)
    nonbonded = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    for force in system.getForces():
        force.setForceGroup(0)
    nonbonded.setForceGroup(1)
    charges = np.zeros(nonbonded.getNumParticles())
    for i in range(nonbonded.getNumParticles()):
        q, sigma, _ = nonbonded.getParticleParameters(i)
        charges[i] = q.value_in_unit(unit.elementary_charge)
        nonbonded.setParticleParameters(i, q, sigma, 0.0)
    for k in range(nonbonded.getNumExceptions()):
        a, b, qq, sigma, _ = nonbonded.getExceptionParameters(k)
        nonbonded.setExceptionParameters(k, a, b, qq, sigma, 0.0)
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    context.setPeriodicBoxVectors(*(np.eye(3) * box_nm))
    context.setPositions(frame.positions * NM_PER_A)
    state = context.getState(getForces=True, groups={1})
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    del context
    return np.asarray(forces), charges, n_waters


def far_field_on_ions(frame, radius_a: float) -> np.ndarray:
    """Force [n_ions, 3] (eV/Å) on each ion from the charges beyond ``radius_a`` (module docstring)."""
    forces, charges, n_waters = electrostatic_forces(frame)
    pos = frame.positions * NM_PER_A
    box_nm = frame.cell.lengths()[0] * NM_PER_A
    n = len(frame)
    # each atom's group anchor: a water's oxygen (waters come first, O H H), an ion itself
    anchor = np.where(np.arange(n) < 3 * n_waters, np.arange(n) // 3 * 3, np.arange(n))
    out = []
    for i in range(3 * n_waters, n):
        d = pos - pos[i]
        d -= box_nm * np.round(d / box_nm)
        r = np.linalg.norm(d, axis=1)
        near = r[anchor] < radius_a * NM_PER_A
        near[i] = False
        near_force = -(COULOMB_KJ_NM * charges[i] * charges[near] / r[near] ** 3)[:, None] * d[near]
        out.append(forces[i] - near_force.sum(0))
    return np.array(out) / EV_PER_A_TO_KJ_PER_MOL_NM


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--radii", default="8,10", help="receptive-field radii in Å")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "electrolyte_far_field.json")
    args = ap.parse_args(argv)
    frames = read(TEST_BOXES, ":")
    rows = []
    print("| R (Å) | ions | far-field force per component, rms (meV/Å) | mean absolute (meV/Å) |")
    print("|---|---|---|---|")
    for radius in (float(x) for x in args.radii.split(",")):
        far = np.concatenate([far_field_on_ions(f, radius) for f in frames]) * 1e3
        row = {
            "radius_A": radius,
            "ions": len(far),
            "rms_meV_A": float(far.std()),
            "mae_meV_A": float(np.abs(far).mean()),
        }
        rows.append(row)
        print(f"| {radius:.0f} | {len(far)} | {row['rms_meV_A']:.0f} | {row['mae_meV_A']:.0f} |", flush=True)
    write_result(
        args.out, {**run_header("bench/electrolyte_far_field.py", argv), "boxes": str(TEST_BOXES), "rows": rows}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
