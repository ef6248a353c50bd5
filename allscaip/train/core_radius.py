"""``allscaip core-repulsion``: fit the core-repulsion radii from the training data.

The wall of :mod:`allscaip.model.core_repulsion` for an element pair ends at ``margin`` times the
shortest distance of that pair in the training data, so it is zero on every training
configuration and only acts where the network has never seen atoms. The trainer does this at
the start of a run (``model.core_repulsion``); this command adds the wall to a checkpoint trained
before it existed, without changing its predictions on the data.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols, covalent_radii

from allscaip.checkpoint import CheckpointError, load_checkpoint, model_config_of, save_checkpoint
from allscaip.config_schema import ConfigError
from allscaip.data import DataError, read_structures
from allscaip.model.core_repulsion import core_switch, zbl_energy
from allscaip.neighbors import system_neighbor_pairs

HELP = "add a core-repulsion wall below the training data's shortest contacts to a checkpoint"

EPILOG = """\
example:
  allscaip core-repulsion examples/water/candidates/stage6.ckpt \\
      --data examples/water/data/train.extxyz examples/water/data/student_md.extxyz -o stage6_core.ckpt

Pass every file the checkpoint was trained on: the radii must lie below the shortest contacts in
all of them. Element pairs absent from the data get margin x the sum of their covalent radii.
"""


def shortest_distances(frames: Iterable, elements: Sequence[int], cutoff: float) -> np.ndarray:
    """Shortest distance [S, S] (Å) of each species pair within ``cutoff`` over ``frames``
    (inf where a pair never occurs)."""
    index = {int(z): s for s, z in enumerate(elements)}
    out = np.full((len(elements), len(elements)), np.inf)
    for a in frames:
        sp = np.array([index.get(int(z), -1) for z in a.numbers])
        if (sp < 0).any():
            bad = sorted({int(z) for z in a.numbers if int(z) not in index})
            raise ValueError(f"a frame has atomic numbers {bad} that the model does not know ({list(elements)})")
        i, j, s = system_neighbor_pairs(a.positions, np.asarray(a.cell), a.pbc, cutoff)
        if len(i) == 0:
            continue
        d = np.linalg.norm(a.positions[j] - a.positions[i] + s @ np.asarray(a.cell), axis=1)
        np.minimum.at(out, (sp[i], sp[j]), d)
    return np.minimum(out, out.T)


def core_radius_from(shortest: np.ndarray, elements: Sequence[int], margin: float) -> np.ndarray:
    """Core radii [S, S] (Å) from :func:`shortest_distances`: ``margin`` × the shortest distance,
    or × the sum of covalent radii for pairs that never came within the cutoff."""
    cov = np.array([[covalent_radii[a] + covalent_radii[b] for b in elements] for a in elements])
    return margin * np.where(np.isfinite(shortest), shortest, cov)


def fit_core_radius(frames: Sequence, elements: Sequence[int], cutoff: float, margin: float) -> np.ndarray:
    """Core radii [S, S] (Å) of ``frames`` (:func:`shortest_distances`, then :func:`core_radius_from`)."""
    return core_radius_from(shortest_distances(frames, elements, cutoff), elements, margin)


def describe(radius: np.ndarray, shortest: np.ndarray, elements: Sequence[int]) -> list[str]:
    """One line per element pair: shortest contact in the data, wall radius, wall energies."""
    lines = [f"{'pair':<6} {'shortest in data':>16} {'wall radius':>11} {'E(r_c/2)':>10} {'E(3r_c/4)':>10}"]
    for a in range(len(elements)):
        for b in range(a, len(elements)):
            rc = torch.tensor(float(radius[a, b]), dtype=torch.float64)
            za, zb = (torch.tensor(float(elements[k]), dtype=torch.float64) for k in (a, b))
            e = [float(zbl_energy(r, za, zb) * core_switch(r, rc)) for r in (0.5 * rc, 0.75 * rc)]
            seen = f"{shortest[a, b]:.3f} Å" if np.isfinite(shortest[a, b]) else "(none)"
            lines.append(
                f"{chemical_symbols[elements[a]] + '-' + chemical_symbols[elements[b]]:<6} "
                f"{seen:>16} {float(rc):>9.3f} Å {e[0]:>7.2f} eV {e[1]:>7.2f} eV"
            )
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="allscaip training checkpoint (.ckpt)")
    p.add_argument("--data", nargs="+", required=True, help="the training data files (extxyz, ASE db, ...)")
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="wall radius / shortest distance in the data (default: the checkpoint's model.core_margin)",
    )
    p.add_argument("-o", "--output", required=True, help="new checkpoint (must differ from the input)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.resolve() == Path(args.checkpoint).resolve():
        raise SystemExit("allscaip core-repulsion: -o must differ from the input checkpoint (keep the original)")
    payload = load_checkpoint(args.checkpoint)
    try:
        cfg = model_config_of(payload)
    except CheckpointError as err:  # a converted fairchem model has no core wall
        raise SystemExit(f"allscaip core-repulsion: {args.checkpoint}: {err}") from err
    margin = cfg.core_margin if args.margin is None else args.margin
    try:
        cfg = dataclasses.replace(cfg, core_repulsion=True, core_margin=margin)
    except ConfigError as err:
        raise SystemExit(f"allscaip core-repulsion: --margin: {err}") from err
    try:
        frames = read_structures(args.data)
    except DataError as err:
        raise SystemExit(f"allscaip core-repulsion: {err}") from err
    try:
        shortest = shortest_distances(frames, cfg.elements, cfg.cutoff)
    except ValueError as err:
        raise SystemExit(f"allscaip core-repulsion: {err}") from err
    radius = core_radius_from(shortest, cfg.elements, margin)
    print(f"{Path(args.checkpoint).name}: {len(frames)} frames from {', '.join(args.data)}; margin {margin}")
    print("\n".join(describe(radius, shortest, cfg.elements)))
    for key in ("model_state", "ema_state"):
        if payload.get(key) is not None:
            ref = payload[key].get("element_energy")
            payload[key]["core_radius"] = torch.as_tensor(radius, dtype=ref.dtype if ref is not None else torch.float64)
            if np.isfinite(shortest).any():  # the engines' min_distance follows from it
                payload[key]["shortest_contact"] = torch.tensor(float(shortest[np.isfinite(shortest)].min()))
    payload["model_config"] = dataclasses.asdict(cfg)
    save_checkpoint(out, payload)
    print(f"wrote {out}")
    return 0
