"""Close intermolecular contacts in a liquid run: a check that the model's liquid is physical.

A model can predict a hole at distances its training data never reached, and MD then fills it
(the water models of docs/validation.md grew intermolecular H–H pairs at 0.5–0.7 Å, one by one,
in both engines). Densities and energies from such a run describe the hole, not the liquid.
This reads the structure at the end of every segment of ``allscaip liquid`` (OpenMM state XML
or LAMMPS restart) and counts, per element pair, intermolecular pairs closer than a threshold:
by default the model's core-repulsion radii (the region with no training data), or ``--pair``::

    python -m allscaip.workflows.liquid.contacts runs/water/openmm [--pair H-H=1.0 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.io import read

from allscaip.engines.lammps import find_lmp, lmp_environment
from allscaip_export.aoti import read_metadata

Pair = Tuple[int, int]


def parse_pairs(specs: Sequence[str]) -> Dict[Pair, float]:
    """["H-H=1.0", ...] -> {(1, 1): 1.0, ...} (sorted atomic numbers)."""
    out: Dict[Pair, float] = {}
    for spec in specs:
        try:
            names, value = spec.split("=")
            a, b = names.split("-")
            key = tuple(sorted((atomic_numbers[a], atomic_numbers[b])))
            out[key] = float(value)  # type: ignore[index]
        except (ValueError, KeyError):
            raise ValueError(f"--pair {spec!r}: expected ELEMENT-ELEMENT=DISTANCE in Å, e.g. H-H=1.0") from None
    return out


def model_core_radii(model: str) -> Dict[Pair, float]:
    """The core-repulsion radii in an exported model's metadata ({} for exports without them)."""
    path = Path(model)
    if path.suffix == ".pt2":
        meta = read_metadata(path)
    else:
        extra = {"metadata.json": ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra["metadata.json"])
    return parse_pairs([f"{k}={v}" for k, v in meta.get("core_radius", {}).items()])


def _lammps_positions(restart: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(positions Å [N,3] in atom-id order, cell Å [3,3]) of a LAMMPS restart file."""
    with tempfile.TemporaryDirectory() as tmp:
        script = (
            f"read_restart {restart.resolve()}\npair_style zero 1.0\npair_coeff * *\nwrite_data frame.data nocoeff\n"
        )
        Path(tmp, "in.lmp").write_text(script)
        r = subprocess.run(
            [find_lmp(), "-in", "in.lmp", "-log", "none", "-screen", "none"],
            cwd=tmp,
            env=lmp_environment(),
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"LAMMPS could not read {restart}: {(r.stdout + r.stderr)[-500:]}")
        a = read(Path(tmp, "frame.data"), format="lammps-data", atom_style="atomic", units="metal")
    order = np.argsort(a.arrays["id"])
    return a.positions[order], np.asarray(a.cell)


def segment_stems(run_dir: Path) -> List[str]:
    """Names of the liquid segments that left a structure, in run order."""
    liquid = run_dir / "liquid"
    if not liquid.is_dir():
        raise FileNotFoundError(
            f"{run_dir} has no liquid/ directory: give the engine's output directory of "
            f"allscaip liquid (e.g. runs/water/openmm/model)"
        )
    stems = (
        "minimise",
        *sorted({p.stem for p in liquid.glob("equil_*.*")}),
        *sorted({p.stem for p in liquid.glob("prod_*.*")}),
    )
    return [t for t in stems if (liquid / f"{t}.xml").is_file() or (liquid / f"{t}.restart").is_file()]


def segment_structure(run_dir: Path, stem: str) -> Tuple[np.ndarray, np.ndarray]:
    """(positions, cell) at the end of liquid segment ``stem`` (OpenMM XML or LAMMPS restart)."""
    # OpenMM is an optional dependency (the engines extra): needed only for OpenMM runs' states
    from allscaip.workflows.liquid.engine_openmm import read_state

    xml = run_dir / "liquid" / f"{stem}.xml"
    return read_state(xml) if xml.is_file() else _lammps_positions(run_dir / "liquid" / f"{stem}.restart")


def _molecules(run_dir: Path) -> Tuple[dict, np.ndarray, np.ndarray]:
    """(settings, atomic numbers, molecule index of each atom) of a liquid run."""
    settings = json.loads((run_dir / "settings.json").read_text())
    numbers = read(run_dir / "liquid" / "initial.xyz").numbers
    molecule = np.arange(len(numbers)) // (len(numbers) // int(settings["n_molecules"]))
    return settings, numbers, molecule


def count_contacts(
    positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray, molecule: np.ndarray, thresholds: Dict[Pair, float]
) -> Dict[Pair, Tuple[int, float]]:
    """Per element pair: (number of intermolecular pairs closer than its threshold, shortest
    intermolecular distance), minimum image."""
    a = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    d = a.get_all_distances(mic=True)
    inter = molecule[:, None] != molecule[None, :]
    out = {}
    for (za, zb), r in thresholds.items():
        sel = inter & (numbers[:, None] == za) & (numbers[None, :] == zb)
        if za == zb:
            sel &= np.triu(np.ones_like(sel), 1).astype(bool)
        dd = d[sel]
        out[(za, zb)] = (int((dd < r).sum()), float(dd.min()) if dd.size else float("inf"))
    return out


def final_contacts(run_dir: Path, model: str) -> Optional[dict]:
    """Contacts inside the model's core radii in the run's last liquid structure, for report.json
    (None when the model carries no radii)."""
    thresholds = model_core_radii(model)
    if not thresholds:
        return None
    _, numbers, molecule = _molecules(run_dir)
    stem = segment_stems(run_dir)[-1]
    pos, cell = segment_structure(run_dir, stem)
    c = count_contacts(pos, cell, numbers, molecule, thresholds)
    name = {p: f"{chemical_symbols[p[0]]}-{chemical_symbols[p[1]]}" for p in thresholds}
    return {
        "segment": stem,
        "radius_ang": {name[p]: r for p, r in thresholds.items()},
        "count": {name[p]: c[p][0] for p in thresholds},
        "shortest_ang": {name[p]: c[p][1] for p in thresholds},
    }


def contact_warnings(summary: Optional[dict]) -> List[str]:
    """A warning per element pair with intermolecular contacts inside the core radius."""
    if not summary or "count" not in summary:
        return []
    return [
        f"{n} intermolecular {pair} pairs closer than {summary['radius_ang'][pair]:.2f} Å (shortest "
        f"{summary['shortest_ang'][pair]:.2f} Å) at the end of {summary['segment']}: no training data reaches "
        "this close, so the liquid has moved where the model was never trained and its density and energies "
        "do not describe the training data's physics; label such structures and add them to the training "
        "set (python -m allscaip.workflows.liquid.contacts lists them by segment)"
        for pair, n in summary["count"].items()
        if n > 0
    ]


def check_run(run_dir: Path, thresholds: Optional[Dict[Pair, float]] = None) -> List[str]:
    """Table lines: contacts per segment for the run in ``run_dir`` (an engine's output dir)."""
    settings, numbers, molecule = _molecules(run_dir)
    if not thresholds:
        thresholds = model_core_radii(settings["model"]) if settings.get("potential") == "model" else {}
    if not thresholds:
        raise ValueError("the run's model carries no core-repulsion radii; give thresholds with --pair H-H=1.0 ...")
    pairs = sorted(thresholds)
    names = [f"{chemical_symbols[a]}-{chemical_symbols[b]}<{thresholds[(a, b)]:g}" for a, b in pairs]
    lines = [f"{'segment':<10} " + " ".join(f"{n:>16}" for n in names) + "   (count, shortest Å)"]
    for stem in segment_stems(run_dir):
        pos, cell = segment_structure(run_dir, stem)
        c = count_contacts(pos, cell, numbers, molecule, thresholds)
        lines.append(f"{stem:<10} " + " ".join(f"{c[p][0]:>7d} ({c[p][1]:5.2f})" for p in pairs))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="an engine's output directory of allscaip liquid (holds settings.json, liquid/)")
    ap.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="A-B=R",
        help="count intermolecular A-B pairs closer than R Å (default: the model's core radii)",
    )
    args = ap.parse_args(argv)
    try:
        print("\n".join(check_run(Path(args.run_dir), parse_pairs(args.pair))))
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"contacts: {err}") from err
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
