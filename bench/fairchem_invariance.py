"""Rotation invariance of converted fairchem AllScAIP models next to ours (docs/fairchem.md).

For each structure of the fairchem fixture and ``--rotations`` random proper rotations R (positions
and cell rotated together), prints the largest energy change |E(R x) - E(x)| (eV) and the largest
force equivariance error max |F(R x) - R F(x)| (eV/Å) of

* the converted fairchem conserving model of the fixture (random weights, hidden 64, 2 layers), and
* one of our AllScAIP models of the same size (random weights, cutoff 6 Å, kNN 8),

each in float64 and float32. Both are random-weight models: the numbers compare the architectures,
not trained potentials.

    OMP_NUM_THREADS=1 python bench/fairchem_invariance.py [--rotations 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from allscaip.config import model_config
from allscaip.data import atoms_to_batch
from allscaip.model import AllScAIP, compute_properties
from allscaip.model.fairchem_load import fairchem_model

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fairchem"
OUR_ELEMENTS = [1, 6, 8]  # the fixture's structures hold H, C and O


def structures():
    ref = json.loads((FIXTURE / "reference.json").read_text())
    for name, s in ref["structures"].items():
        atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"])
        atoms.info.update(charge=s["charge"], spin=s["spin"])
        yield name, atoms


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rotated(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.info.update(atoms.info)
    out.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        out.cell = atoms.cell.array @ rotation.T
    return out


def fairchem_evaluator(dtype):
    model = fairchem_model(FIXTURE / "allscaip_md_conserving.pt", dtype=dtype)

    def evaluate(atoms: Atoms):
        out = model(
            torch.tensor(atoms.positions),
            torch.tensor(atoms.numbers),
            torch.tensor(atoms.cell.array),
            torch.tensor(atoms.pbc),
            int(atoms.info["charge"]),
            int(atoms.info["spin"]),
        )
        return float(out.energy), out.forces.double().numpy()

    return evaluate


def our_evaluator(dtype):
    torch.manual_seed(0)
    cfg = model_config(elements=OUR_ELEMENTS, cutoff=6.0, hidden=64, heads=4, layers=2, max_neighbors=8)
    model = AllScAIP(cfg).to(dtype).eval()

    def evaluate(atoms: Atoms):
        out = compute_properties(model, atoms_to_batch([atoms], dtype=dtype), forces=True)
        return float(out["energy"][0]), out["forces"].detach().double().numpy()

    return evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for label, make in (("fairchem (converted)", fairchem_evaluator), ("ours", our_evaluator)):
        for dtype in (torch.float64, torch.float32):
            evaluate = make(dtype)
            rng = np.random.default_rng(args.seed)
            for name, atoms in structures():
                e0, f0 = evaluate(atoms)
                de, df = 0.0, 0.0
                for _ in range(args.rotations):
                    rotation = random_rotation(rng)
                    e1, f1 = evaluate(rotated(atoms, rotation))
                    de, df = max(de, abs(e1 - e0)), max(df, float(np.abs(f1 - f0 @ rotation.T).max()))
                print(f"{label:21s} {str(dtype)[6:]:8s} {name:24s} max|dE| {de:.2e} eV  max|dF| {df:.2e} eV/Å")


if __name__ == "__main__":
    main()
