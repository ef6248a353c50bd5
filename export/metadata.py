"""Metadata carried by every exported artefact (readable without running the model)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict

from ase.data import chemical_symbols

import allscaip
from allscaip.model import AllScAIP
from allscaip.reproducible import sha256_file
from allscaip.result_checks import min_distance_of_model

# Bumped whenever the calling convention of exported modules changes; engines check it.
INTERFACE_VERSION = 1
ENCODING_INTERFACE_VERSION = 2
"""Interface of models with a node encoding: version 1 plus the encoding pairs of the whole-system
call and dd_encoding_basis / dd_global_finish_encoded. Only these models carry it, so that engines
built before it refuse them (instead of running them without their encoding) while every other
export keeps version 1."""

WHOLE_SYSTEM_INPUTS = [
    "positions [N,3] float (Å)",
    "numbers [N] int64 (atomic numbers)",
    "cell [3,3] float (Å, rows are lattice vectors; zeros if not periodic)",
    "pbc [3] bool",
    "edge_index [2,E] int64 (row 0: centre i, row 1: neighbour j; full list, both directions)",
    "cell_shifts [E,3] float (integer lattice shifts S: r_ij = x_j - x_i + S @ cell)",
    "charge [] int64 (total charge, e)",
    "spin [] int64 (spin multiplicity 2S+1)",
]
ENCODING_INPUTS = [
    "encoding_index [2,P] int64 (pairs i, j within encoding_range, periodic images included, no self pair "
    "of zero shift)",
    "encoding_shifts [P,3] float (their integer lattice shifts, as cell_shifts)",
]
"""The two more inputs of a node-encoding model's whole-system call (listed only in its metadata)."""
WHOLE_SYSTEM_OUTPUTS = [
    "energy [] float (eV)",
    "forces [N,3] float (eV/Å) on every atom given",
    "virial [3,3] float (eV; W = -dE/dstrain, LAMMPS sign: pressure = (NkT + tr W / 3) / V)",
    "energies [N] float (eV per atom)",
]


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 of the source checkpoint file."""
    return sha256_file(path)


def core_radius_table(model: AllScAIP) -> Dict[str, float]:
    """{"H-O": r_c, ...} (Å) of the core-repulsion walls; empty when the model has none."""
    zs = model.cfg.elements
    r = model.core_radius.detach().cpu().double()
    return {
        f"{chemical_symbols[zs[a]]}-{chemical_symbols[zs[b]]}": round(float(r[a, b]), 6)
        for a in range(len(zs))
        for b in range(a, len(zs))
        if float(r[a, b]) > 0
    }


def interface_version(model: AllScAIP) -> int:
    """The interface version an export of ``model`` implements (see ENCODING_INTERFACE_VERSION)."""
    return ENCODING_INTERFACE_VERSION if model.use_encoding else INTERFACE_VERSION


def build_metadata(model: AllScAIP, dtype: str, device: str, fmt: str, source_sha256: str = "") -> Dict[str, Any]:
    """The metadata dictionary stored in ``metadata.json`` inside each artefact."""
    cfg = model.cfg
    encoding_range = float(cfg.encoding_range) if model.use_encoding else 0.0
    return {
        "allscaip_version": allscaip.__version__,
        "interface_version": interface_version(model),
        "format": fmt,
        "elements": [chemical_symbols[z] for z in cfg.elements],
        "atomic_numbers": list(cfg.elements),
        "cutoff": float(cfg.cutoff),
        # each layer's local stage reads node states of atoms within one cutoff of a centre; the node
        # encoding reads the positions of atoms within encoding_range
        "ghost_cutoff": max(float(cfg.cutoff), encoding_range),
        "node_encoding": str(cfg.node_encoding),
        "encoding_range": encoding_range,
        "num_layers": int(cfg.layers),
        "hidden": int(cfg.hidden),
        "heads": int(cfg.heads),
        "node_attention": bool(cfg.node_attention),
        "distance_bias": bool(cfg.distance_bias),
        "max_neighbors": cfg.max_neighbors,
        "charge_spin": bool(cfg.charge_spin),
        "core_radius": core_radius_table(model),
        # engines stop on two atoms closer than this (Å; docs/errors.md)
        "min_distance": round(min_distance_of_model(model), 6),
        "supports_domain_decomposition": fmt == "torchscript" and not bool(cfg.distance_bias),
        "units": {"length": "angstrom", "energy": "eV", "forces": "eV/angstrom", "virial": "eV"},
        "dtype": dtype,
        "device": device,
        "source_checkpoint_sha256": source_sha256,
        "model_config": dataclasses.asdict(cfg),
        "inputs": WHOLE_SYSTEM_INPUTS + (ENCODING_INPUTS if model.use_encoding else []),
        "outputs": WHOLE_SYSTEM_OUTPUTS,
    }


def dumps(meta: Dict[str, Any]) -> str:
    return json.dumps(meta, indent=1, sort_keys=True)
