"""The converted fairchem AllScAIP against fairchem itself on structures outside the fixture
(docs/fairchem.md, *Parity*). Two steps, two environments:

    # 1. fairchem's numbers (fairchem environment: bash bench/setup_fairchem_venv.sh)
    OMP_NUM_THREADS=1 .fcvenv/bin/python bench/fairchem_crosscheck.py fairchem --out /tmp/fc_extra.json
    # 2. ours against them (this repository's environment)
    OMP_NUM_THREADS=1 python bench/fairchem_crosscheck.py compare /tmp/fc_extra.json

Structures (from the fixture's, bench/fairchem_fixture.py): the ethanol and the periodic water box
under one random rotation, the water box doubled along x and rattled (48 atoms: more candidates
than the k + 20 the soft ranks keep), and a methoxyethane anion doublet. Models: the fixture's
conserving and direct checkpoints, through fairchem's ``FAIRChemCalculator`` in float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "tests" / "fixtures" / "fairchem"
KINDS = ("conserving", "direct")
ROTATION_SEED, RATTLE_SEED, RATTLE_STDEV = 1, 3, 0.05  # Å


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def cases(fixture_structures: dict) -> dict:
    """name -> Atoms (charge and spin in info)."""
    from ase.build import molecule

    rotation = random_rotation(np.random.default_rng(ROTATION_SEED))
    out = {}
    for name in ("ethanol", "water8_periodic"):
        atoms = fixture_structures[name].copy()
        atoms.info.update(fixture_structures[name].info)
        atoms.positions = atoms.positions @ rotation.T
        if atoms.pbc.any():
            atoms.cell = atoms.cell.array @ rotation.T
        out[f"{name}_rotated"] = atoms
    big = fixture_structures["water8_periodic"].repeat((2, 1, 1))
    big.rattle(RATTLE_STDEV, seed=RATTLE_SEED)
    big.info.update(charge=0, spin=1)
    out["water16_rattled"] = big
    anion = molecule("CH3CH2OCH3")
    anion.info.update(charge=-1, spin=2)
    out["methoxyethane_anion_doublet"] = anion
    return out


def run_fairchem(out_path: Path) -> None:
    """fairchem's energies, forces and (conserving, periodic) stress on the cases, as JSON."""
    import torch

    sys.path.insert(0, str(HERE))
    from fairchem_fixture import calculator, structures  # the fixture's own settings and structures

    torch.set_default_dtype(torch.float32)
    records = {}
    for kind in KINDS:
        calc = calculator(FIXTURE / f"allscaip_md_{kind}.pt", torch.float32, kind == "conserving")
        for name, atoms in cases(structures(0)).items():
            atoms.calc = calc
            rec = {
                "positions": atoms.positions.tolist(),
                "numbers": atoms.numbers.tolist(),
                "cell": atoms.cell.array.tolist(),
                "pbc": atoms.pbc.tolist(),
                "charge": int(atoms.info["charge"]),
                "spin": int(atoms.info["spin"]),
                "energy": float(atoms.get_potential_energy()),
                "forces": atoms.get_forces().tolist(),
            }
            if kind == "conserving" and all(atoms.pbc):
                rec["stress"] = atoms.get_stress(voigt=False).tolist()
            records[f"{kind}/{name}"] = rec
    out_path.write_text(json.dumps(records))
    print(f"wrote {out_path} ({len(records)} records)")


def compare(path: Path) -> None:
    """Largest differences of the converted model (float32 and float64) from fairchem's numbers."""
    import torch

    from allscaip.model.fairchem_load import fairchem_model

    records = json.loads(path.read_text())
    for dtype in (torch.float32, torch.float64):
        models = {kind: fairchem_model(FIXTURE / f"allscaip_md_{kind}.pt", dtype=dtype) for kind in KINDS}
        for key, rec in records.items():
            out = models[key.split("/")[0]](
                torch.tensor(rec["positions"]),
                torch.tensor(rec["numbers"]),
                torch.tensor(rec["cell"]),
                torch.tensor(rec["pbc"]),
                rec["charge"],
                rec["spin"],
                compute_stress="stress" in rec,
            )
            line = (
                f"{key:42s} {str(dtype)[6:]:8s} {len(rec['numbers']):3d} atoms  E {rec['energy']:11.3f} eV  "
                f"dE {float(out.energy) - rec['energy']:+.2e} eV  "
                f"dF {np.abs(out.forces.double().numpy() - np.asarray(rec['forces'])).max():.2e} eV/Å"
            )
            if "stress" in rec:
                line += f"  dS {np.abs(out.stress.double().numpy() - np.asarray(rec['stress'])).max():.2e} eV/Å³"
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    fc = sub.add_parser("fairchem", help="write fairchem's numbers (run in the fairchem environment)")
    fc.add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare", help="compare the converted model with them (this environment)")
    cmp.add_argument("records", type=Path)
    args = parser.parse_args()
    if args.step == "fairchem":
        run_fairchem(args.out)
    else:
        compare(args.records)


if __name__ == "__main__":
    main()
