"""A fairchem AllScAIP checkpoint of the published "md" size in our engines: time and memory per step.

The published OMol25 files cannot be downloaded here, so a random-weight checkpoint of the same
size is made by fairchem itself (``bench/fairchem_fixture.py --hidden 640 --layers 10 --heads 10
--knn-k 30``: md_NeNo switches, conserving head). On water boxes, each in its own subprocess:

- ``fairchem``: fairchem-core's ``FAIRChemCalculator`` on that file (run in the fairchem venv);
- ``allscaip``: ``AllScAIPCalculator(file)``, the converted model, float32;
- ``lammps``: the file exported with ``allscaip-export`` (float32 TorchScript) in
  ``pair_style allscaip`` on one rank (``bench/lammps_md.py --model``), if ``--lammps``.

One thread each, energy + forces, median of ``--repeats`` steps after a warm-up, positions
displaced by 0.01 Å between steps; peak resident memory in GiB (imports included).

    .fcvenv/bin/python bench/fairchem_fixture.py --out /tmp/mdsize --hidden 640 --layers 10 --heads 10 --knn-k 30
    python bench/fairchem_md_size.py --checkpoint /tmp/mdsize/allscaip_md_conserving.pt --atoms 96,192
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_result import run_header, write_result

HERE = Path(__file__).resolve().parent
DISPLACEMENT_A = 0.01


def worker(engine: str, checkpoint: str, n_atoms: int, repeats: int) -> dict:
    """One engine on one box in this process."""
    import torch
    from water_boxes import water_box

    torch.set_num_threads(1)
    if engine == "fairchem":  # fairchem-core exists only in the fairchem venv
        from fairchem.core.calculate.ase_calculator import FAIRChemCalculator
        from fairchem.core.units.mlip_unit.api.inference import InferenceSettings
        from fairchem.core.units.mlip_unit.predict import MLIPPredictUnit

        settings = InferenceSettings(tf32=False, activation_checkpointing=False, merge_mole=False, compile=False)
        calc = FAIRChemCalculator(MLIPPredictUnit(checkpoint, device="cpu", inference_settings=settings), "omol")
    else:
        from allscaip.calculator import AllScAIPCalculator

        calc = AllScAIPCalculator(checkpoint, dtype="float32")
    atoms = water_box(max(1, n_atoms // 3), seed=0)
    atoms.info.update(charge=0, spin=1)
    atoms.calc = calc
    base = atoms.positions.copy()
    rng = np.random.default_rng(1)

    def step() -> float:
        atoms.positions = base + rng.normal(0.0, DISPLACEMENT_A, base.shape)
        t = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        return time.perf_counter() - t

    step()
    times = [step() for _ in range(repeats)]
    return {
        "engine": engine,
        "atoms": len(atoms),
        "seconds_per_step": float(np.median(times)),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "energy_eV": float(atoms.get_potential_energy()),
    }


def run(python: str, engine: str, args, n_atoms: int) -> dict:
    cmd = [python, __file__, "--worker", engine, str(n_atoms), "--checkpoint", str(args.checkpoint)]
    cmd += ["--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"engine": engine, "atoms": n_atoms, "status": "error", "stderr_tail": proc.stderr[-1500:]}
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="fairchem AllScAIP inference checkpoint")
    ap.add_argument("--atoms", default="96,192")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--fairchem-python", default=str(HERE.parent / ".fcvenv" / "bin" / "python"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fairchem_md_size.json")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "ATOMS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker[0], str(args.checkpoint), int(args.worker[1]), args.repeats)))
        return 0
    rows = []
    print("| atoms | engine | s per step | peak memory |")
    print("|---|---|---|---|")
    for n in (int(a) for a in args.atoms.split(",")):
        for engine, python in (("allscaip", sys.executable), ("fairchem", args.fairchem_python)):
            row = run(python, engine, args, n)
            row["load_1m_before"] = os.getloadavg()[0]
            rows.append(row)
            if row.get("status") == "error":
                print(f"| {n} | {engine} | error | |", flush=True)
            else:
                print(f"| {row['atoms']} | {engine} | {row['seconds_per_step']:.2f} | {row['peak_rss_gib']:.2f} GiB |")
    result = {
        **run_header("bench/fairchem_md_size.py", argv),
        "rows": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
