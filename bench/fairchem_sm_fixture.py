"""A fairchem AllScAIP **sm** fixture (frequency and sinc masks on) for the converter's parity tests:
the md fixture's generator (bench/fairchem_fixture.py: random perturbed weights, EMA, element
references, the same three structures) with the published sm_NeAnNoSi switches. Runs in the fairchem
environment (bash bench/setup_fairchem_venv.sh):

    OMP_NUM_THREADS=1 .fcvenv/bin/python bench/fairchem_sm_fixture.py --out tests/fixtures/fairchem_sm

Writes ``allscaip_sm_conserving.pt`` and ``reference.json`` (energies, forces, stress, float32).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fairchem_fixture as md  # noqa: E402  (the md generator, reused with other switches)

FREQUENCY_LIST = [6, 4, 2, 2, 2]
"""Channels per harmonic degree l = 0..4 in each head's queries and keys (must sum to the head size,
64 / 4 = 16 here; published sm: [20, 10, 4, 10, 20] for 512 / 8 = 64). Five degrees as published."""

SM_SWITCHES = {"use_freq_mask": True, "use_sincx_mask": True, "freequency_list": FREQUENCY_LIST}


def sm_backbone_settings(args: argparse.Namespace, direct: bool, _md=md.backbone_settings) -> dict:
    return {**_md(args, direct), **SM_SWITCHES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/fairchem_sm")
    args = p.parse_args()
    settings = argparse.Namespace(hidden=64, layers=2, heads=4, cutoff=6.0, knn_k=8, seed=0)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    md.backbone_settings = sm_backbone_settings  # model_config() reads it from the module
    args.out.mkdir(parents=True, exist_ok=True)
    atoms_by_name = md.structures(settings.seed)
    path = args.out / "allscaip_sm_conserving.pt"
    md.write_checkpoint(settings, False, path)
    report = {
        "command": " ".join(["python", "bench/fairchem_sm_fixture.py", *sys.argv[1:]]),
        "versions": {
            "fairchem-core": version("fairchem-core"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {**vars(settings), **SM_SWITCHES, "dtype": "float32", "threads": 1},
        "dtype_note": md.FLOAT64_NOTE,
        "structures": {name: md.structure_record(atoms) for name, atoms in atoms_by_name.items()},
        "models": {
            "conserving": {
                "file": path.name,
                "forces": "-dE/dx",
                "results": md.evaluate(path, atoms_by_name, torch.float32, stress=True),
            }
        },
    }
    (args.out / "reference.json").write_text(json.dumps(report, indent=1) + "\n")
    for name, row in report["models"]["conserving"]["results"].items():
        print(f"{name:24s} E = {row['energy']:.8f} eV")


if __name__ == "__main__":
    main()
