"""Reading what ``lmp`` writes: thermo tables of a log, ``dump custom`` files, and the single point
(energy, forces, per-atom energies, virial) of a ``run 0`` that printed them.

Used by the workflows (the rank-count check of the electrolyte MD) and the LAMMPS tests
(``tests/lammps_harness.py``), so that both read LAMMPS's output one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

#: LAMMPS force->nktv2p: pressure * volume -> energy, per unit style
NKTV2P = {"metal": 1.6021765e6, "real": 68568.415}


def thermo_blocks(log: str) -> List[Dict[str, np.ndarray]]:
    """Thermo tables of a LAMMPS log: one dict column -> values per run."""
    blocks = []
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].split()[:1] == ["Step"]:
            header = lines[i].split()
            rows = []
            i += 1
            while i < len(lines) and not lines[i].startswith("Loop time"):
                parts = lines[i].split()
                if len(parts) == len(header):
                    try:
                        rows.append([float(p) for p in parts])
                    except ValueError:
                        pass
                i += 1
            arr = np.array(rows).reshape(-1, len(header))
            blocks.append({h: arr[:, k] for k, h in enumerate(header)})
        i += 1
    return blocks


def read_dump(path: Path) -> Dict[str, np.ndarray]:
    """Columns of the (first) frame of a ``dump custom`` file."""
    with open(path) as f:
        lines = f.readlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    cols = lines[start].split()[2:]
    data = np.loadtxt(lines[start + 1 :], ndmin=2)
    return {c: data[:, k] for k, c in enumerate(cols)}


def single_point(log: str, workdir: Path, units: str = "metal") -> Dict[str, np.ndarray]:
    """Energy, virial (pressure x volume, energy units), forces and per-atom energies (and per-atom
    virial when dumped) of a ``run 0`` whose thermo prints ``pe c_press[1..6] vol atoms`` and whose
    dump ``sp.dump`` in ``workdir`` holds ``fx fy fz c_pe`` (``c_sa[1..6]``), sorted by id."""
    th = thermo_blocks(log)[0]
    vol = th["Volume"][0]
    press = np.array([th[f"c_press[{k}]"][0] for k in range(1, 7)])
    dump = read_dump(Path(workdir) / "sp.dump")
    out = {
        "energy": th["PotEng"][0],
        "virial": press * vol / NKTV2P[units],
        "forces": np.stack([dump["fx"], dump["fy"], dump["fz"]], 1),
        "energies": dump["c_pe"],
        "natoms": int(th["Atoms"][0]),
    }
    if "c_sa[1]" in dump:
        out["atom_virial"] = -np.stack([dump[f"c_sa[{k}]"] for k in range(1, 7)], 1) / NKTV2P[units]
    return out


def single_point_commands(units: str = "metal", per_atom_virial: bool = True) -> List[str]:
    """The commands after ``pair_coeff`` that make a ``run 0`` print what :func:`single_point` reads."""
    sa_cols = " ".join(f"c_sa[{k}]" for k in range(1, 7)) if per_atom_virial else ""
    lines = [
        "compute pe all pe/atom",
        "compute sa all stress/atom NULL virial" if per_atom_virial else "",
        "compute press all pressure NULL virial",
        "thermo_style custom step pe c_press[1] c_press[2] c_press[3] c_press[4] c_press[5] c_press[6] vol atoms",
        "thermo_modify format float %.17g",
        f"dump sp all custom 1 sp.dump id type x y z fx fy fz c_pe {sa_cols}".rstrip(),
        "dump_modify sp sort id format float %.17g",
        "run 0",
        "undump sp",
    ]
    return [line for line in lines if line]
