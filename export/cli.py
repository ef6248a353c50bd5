"""allscaip-export: checkpoint -> deployable TorchScript (.pt) or AOTInductor (.pt2) model.

    allscaip-export CHECKPOINT [-o OUT] [--format torchscript|aoti] [--staged [--charge Q] [--spin S]]
                    [--dtype float64|float32] [--device cpu|cuda] [--no-verify]

(dtype default: float64 on cpu, float32 on cuda)

``--staged`` (with ``--format aoti``, cpu): the package also holds every stage of the
domain-decomposed evaluation and its VJP, compiled for total charge Q and spin S, so that LAMMPS
splits the work over its MPI ranks (docs/export.md, *The staged .pt2*); 2(2L + 2) more compiles.

A fairchem AllScAIP inference checkpoint (recognised by content, whatever its suffix) is converted
(allscaip.model.fairchem_allscaip) and exported to TorchScript (``--fairchem-task``, default omol;
output default ``<name>.allscaip.pt``); so is a checkpoint converted from one (``allscaip
convert-fairchem``) or fine-tuned from one (its task is the one it was converted for); see
docs/fairchem.md.

After writing, the artefact is reloaded and evaluated on a triclinic periodic box and a
molecule made of the model's elements; energy, forces and virial are compared with the
checkpoint's eager model in the same dtype. Exit status: 0 written and verified, 1 the
artefact does not match (largest differences printed), 2 bad input (one-line message).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ase import Atoms

from allscaip.checkpoint import (
    FAIRCHEM_FAMILY,
    CheckpointError,
    load_checkpoint,
    model_family_of,
    model_from_payload,
)
from allscaip.checkpoint_fairchem import FairchemCheckpointError, is_fairchem_checkpoint, read_fairchem_checkpoint
from allscaip.data import atoms_to_batch
from allscaip.dtypes import default_dtype_name
from allscaip.model import compute_properties
from allscaip.model.evaluate import UnknownElementError
from allscaip.model.fairchem_load import fairchem_model_from_checkpoint
from allscaip.neighbors import whole_system_inputs  # also reachable as allscaip_export.cli.whole_system_inputs
from allscaip.structures import water_box
from allscaip_export.aoti import export_aoti, load_aoti
from allscaip_export.aoti_stages import StagedExportError, export_staged, load_staged
from allscaip_export.dd_reference import split_slabs
from allscaip_export.dd_vjp_reference import dd_vjp_evaluate
from allscaip_export.fairchem_torchscript import export_fairchem_torchscript, fairchem_metadata
from allscaip_export.metadata import build_metadata, checkpoint_hash, dumps
from allscaip_export.torchscript import ExportedAllScAIP, export_torchscript, load_torchscript

SUFFIX = {"torchscript": ".pt", "aoti": ".pt2"}
DEFAULT_FAIRCHEM_TASK = "omol"  # the published AllScAIP checkpoints' task
FAIRCHEM_EXPORT_SUFFIX = ".allscaip.pt"  # fairchem checkpoints are .pt files themselves
# float64: absolute eV (energy, per-atom energies, virial) and eV/Å (forces);
# float32: relative to the largest reference value of each quantity.
TOLERANCE = {"float64": 1e-9, "float32": 1e-5}


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


def log(msg: str) -> None:
    print(f"[allscaip-export] {msg}", flush=True)


# ---------------------------------------------------------------------------- structures


def _random_structure(rng, elements: Sequence[int], n: int, periodic: bool, min_dist: float = 1.0):
    """Random atoms (no pair closer than ``min_dist``) in a triclinic cell or a sphere."""
    if periodic:
        length = (n * 12.0) ** (1.0 / 3.0)
        cell = np.diag([length, length * 1.05, length * 0.95])
        cell[1, 0], cell[2, 0], cell[2, 1] = 0.3 * length / 4, -0.2 * length / 4, 0.25 * length / 4
    radius = (n * 12.0 * 3 / (4 * np.pi)) ** (1.0 / 3.0)
    pos: List[np.ndarray] = []
    while len(pos) < n:
        if periodic:
            p = rng.random(3) @ cell
            ok = True
            for q in pos:
                d = p - q
                f = np.linalg.solve(cell.T, d)
                d = (f - np.round(f)) @ cell
                ok &= bool(np.linalg.norm(d) >= min_dist)
        else:
            p = rng.normal(size=3)
            p = p / np.linalg.norm(p) * radius * rng.random() ** (1 / 3)
            ok = all(np.linalg.norm(p - q) >= min_dist for q in pos)
        if ok:
            pos.append(p)
    nums = [elements[i % len(elements)] for i in range(n)]
    return Atoms(numbers=nums, positions=np.array(pos), cell=cell if periodic else None, pbc=periodic)


def test_structures(elements: Sequence[int], seed: int = 0) -> List[Tuple[str, Any]]:
    """(name, Atoms): a triclinic periodic box and a molecule of the model's elements.

    Water-like (8 molecules in a triclinic box; a 4-molecule cluster) when the model knows
    H and O, random structures of all its elements otherwise.
    """
    rng = np.random.default_rng(seed)
    if 1 in elements and 8 in elements:
        box = water_box(8, spacing=3.1, rng=rng, cell_skew=True, periodic=True)
        mol = water_box(8, spacing=2.9, rng=rng, periodic=False)[:12]
        names = ("triclinic water-like box", "water cluster (molecule)")
    else:
        box = _random_structure(rng, elements, 24, periodic=True)
        mol = _random_structure(rng, elements, 10, periodic=False)
        names = ("triclinic random box", "random cluster (molecule)")
    for a in (box, mol):
        a.info.update(charge=0, spin=1)
    return [(names[0], box), (names[1], mol)]


# ---------------------------------------------------------------------------- evaluation


def eager_reference(model, atoms, dtype, device) -> Dict[str, Any]:
    """energy, forces, energies and (periodic) virial = -stress * volume from the eager model."""
    periodic = bool(atoms.pbc.all())
    out = compute_properties(model, atoms_to_batch([atoms], dtype=dtype).to(device), forces=True, stress=periodic)
    ref = {"energy": out["energy"][0], "forces": out["forces"], "energies": out["energies"]}
    if periodic:
        ref["virial"] = -out["stress"][0] * atoms.get_volume()
    return ref


def fairchem_reference(model, atoms, dtype, device) -> Dict[str, Any]:
    """energy, forces, energies and (periodic) virial from the eager converted fairchem model."""
    periodic = bool(atoms.pbc.all())
    out = model(
        torch.as_tensor(atoms.positions, dtype=dtype, device=device),
        torch.as_tensor(atoms.numbers, device=device),
        torch.as_tensor(atoms.cell.array, dtype=dtype, device=device),
        torch.as_tensor(atoms.pbc, device=device),
        int(atoms.info.get("charge", 0)),
        int(atoms.info.get("spin", 1)),
        compute_stress=periodic,
    )
    ref = {"energy": out.energy, "forces": out.forces, "energies": out.energies}
    if periodic:
        ref["virial"] = out.virial
    return ref


def compare(artefact_out: Sequence[Any], ref: Dict[str, Any], dtype_name: str) -> Dict[str, Tuple[float, bool]]:
    """Largest difference per quantity and whether it is within tolerance."""
    tol = TOLERANCE[dtype_name]
    got = dict(zip(("energy", "forces", "virial", "energies"), artefact_out))
    result = {}
    for key in ("energy", "forces", "virial", "energies"):
        if key not in ref:
            continue
        a = got[key].detach().double().cpu()
        b = ref[key].detach().double().cpu()
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if diff != diff:  # NaN
            result[key] = (diff, False)
            continue
        if dtype_name == "float32":
            scale = max(float(b.abs().max()) if b.numel() else 0.0, 1e-3)
            result[key] = (diff / scale, diff / scale <= tol)
        else:
            result[key] = (diff, diff <= tol)
    return result


def verify(call, model, metadata: Dict[str, Any], device: str, quiet: bool = False, reference=eager_reference) -> bool:
    """Evaluate the reloaded artefact ``call`` and the eager ``model`` (through ``reference``) on the
    test structures."""
    dtype_name = metadata["dtype"]
    dtype = getattr(torch, dtype_name)
    unit = {"energy": "eV", "forces": "eV/Å", "virial": "eV", "energies": "eV"}
    kind = "relative" if dtype_name == "float32" else "absolute"
    ok = True
    for name, atoms in test_structures(list(metadata["atomic_numbers"])):
        args = whole_system_inputs(
            atoms, float(metadata["cutoff"]), dtype, device, float(metadata.get("encoding_range", 0.0))
        )
        out = call(*args)
        ref = reference(model, atoms, dtype, device)
        res = compare(out, ref, dtype_name)
        parts = []
        for key, (diff, good) in res.items():
            parts.append(f"{key} {diff:.2e}{'' if kind == 'relative' else ' ' + unit[key]}{'' if good else ' (FAIL)'}")
            ok &= good
        if not quiet:
            log(
                f"  {name}, {len(atoms)} atoms, E = {float(ref['energy']):.6f} eV: max {kind} |diff| "
                + ", ".join(parts)
            )
    if not quiet:
        log(f"verification {'passed' if ok else 'FAILED'} (tolerance {TOLERANCE[dtype_name]:g} {kind})")
    return ok


def verify_staged(path: Path, model, metadata: Dict[str, Any]) -> bool:
    """Run the stages of a staged package by the manual reverse pass (dd_vjp_evaluate) on the
    triclinic test box split into 1 and 2 slabs, against the eager model."""
    module = ExportedAllScAIP(model, dumps(metadata))
    stages, vjps = load_staged(path, int(metadata["num_layers"]))
    charge, spin = int(metadata["staged_charge"]), int(metadata["staged_spin"])
    name, atoms = test_structures(list(metadata["atomic_numbers"]))[0]
    atoms.info.update(charge=charge, spin=spin)
    ref = eager_reference(model, atoms, getattr(torch, metadata["dtype"]), "cpu")
    ok = True
    for nranks in (1, 2):
        owner = split_slabs(atoms.get_scaled_positions()[:, 0], nranks)
        args = (atoms.positions, atoms.numbers, atoms.cell.array, owner, nranks)
        out = dd_vjp_evaluate(module, *args, charge=charge, spin=spin, stage=stages, backward=vjps)
        res = compare([out[k] for k in ("energy", "forces", "virial", "energies")], ref, metadata["dtype"])
        good = all(g for _, g in res.values())
        ok &= good
        parts = ", ".join(f"{k} {d:.2e}" for k, (d, _) in res.items())
        log(f"  staged, {name} on {nranks} rank(s): max |diff| {parts}{'' if good else ' (FAIL)'}")
    return ok


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="allscaip-export",
        description="Export an allscaip checkpoint to a deployable TorchScript (.pt) or AOTInductor (.pt2) "
        "model with its metadata, and verify it against the checkpoint.",
    )
    p.add_argument("checkpoint", help="training checkpoint (.ckpt)")
    p.add_argument("-o", "--output", help="output file (default: the checkpoint path with .pt / .pt2)")
    p.add_argument("--format", choices=sorted(SUFFIX), default="torchscript", help="default: torchscript")
    p.add_argument(
        "--dtype", choices=["float64", "float32"], default=None, help="default: float64 on cpu, float32 on cuda"
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="device the artefact runs on (AOTInductor packages are device-specific); default: cpu",
    )
    p.add_argument(
        "--staged",
        action="store_true",
        help="with --format aoti: add the stages and VJPs of the domain-decomposed evaluation (LAMMPS on "
        "several MPI ranks splits the work; minutes of compiling more)",
    )
    p.add_argument("--charge", type=int, default=0, help="--staged: total charge the stages are compiled for")
    p.add_argument("--spin", type=int, default=1, help="--staged: spin multiplicity the stages are compiled for")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with the checkpoint")
    p.add_argument(
        "--fairchem-task",
        default=None,
        help=f"fairchem checkpoints: task whose normalisers and element references apply (default "
        f"{DEFAULT_FAIRCHEM_TASK}; a converted checkpoint keeps the task it was converted for)",
    )
    return p


def run_fairchem(args: argparse.Namespace, ckpt: Path) -> int:
    """Convert and export a fairchem AllScAIP checkpoint (TorchScript only), then verify the reload."""
    out = Path(args.output) if args.output else ckpt.with_name(ckpt.stem + FAIRCHEM_EXPORT_SUFFIX)
    check_fairchem_export_args(args, ckpt, out)
    try:
        source = read_fairchem_checkpoint(ckpt)
        model = fairchem_model_from_checkpoint(
            source, args.fairchem_task, getattr(torch, args.dtype), not args.raw_weights
        )
    except FairchemCheckpointError as err:
        raise UsageError(str(err)) from None
    return export_fairchem_model(args, ckpt, out, model, source.backbone, args.fairchem_task)


def run_converted_fairchem(args: argparse.Namespace, ckpt: Path, payload: Dict[str, Any]) -> int:
    """Export a checkpoint converted from fairchem (``allscaip convert-fairchem``, or fine-tuned from one)."""
    out = Path(args.output) if args.output else ckpt.with_suffix(SUFFIX["torchscript"])
    check_fairchem_export_args(args, ckpt, out)
    task = str(payload["model_config"]["task"])
    if args.fairchem_task is not None and args.fairchem_task != task:
        raise UsageError(
            f"{ckpt} was converted for fairchem task {task!r}; convert the fairchem file again with "
            f"--task {args.fairchem_task}, or leave --fairchem-task out"
        )
    try:
        model = model_from_payload(payload, use_ema=not args.raw_weights, dtype=getattr(torch, args.dtype))
    except FairchemCheckpointError as err:
        raise UsageError(str(err)) from None
    return export_fairchem_model(args, ckpt, out, model, payload["model_config"]["backbone"], task)


def check_fairchem_export_args(args: argparse.Namespace, ckpt: Path, out: Path) -> None:
    if args.format != "torchscript":
        raise UsageError(f"{ckpt} is a fairchem model: it exports to TorchScript only (--format torchscript)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no GPU (use --device cpu)")
    if out.suffix != SUFFIX["torchscript"] or out.resolve() == ckpt.resolve():
        raise UsageError(f"-o {out}: give a new .pt file (the checkpoint {ckpt.name} stays as it is)")


def export_fairchem_model(
    args: argparse.Namespace, ckpt: Path, out: Path, model, backbone: Dict[str, Any], task: str
) -> int:
    """Write the TorchScript export of a converted fairchem ``model`` to ``out`` and verify its reload."""
    if model.direct_forces:
        raise UsageError(
            f"{ckpt} is a direct-force fairchem model: it has no virial for the whole-system call; use it "
            "through AllScAIPCalculator, or export the conserving checkpoint"
        )
    model = model.to(args.device)
    sha = checkpoint_hash(ckpt)
    meta = fairchem_metadata(model, args.dtype, args.device, sha, backbone, task)
    meta.update(checkpoint_hash=sha, source_checkpoint=ckpt.name, weights="raw" if args.raw_weights else "ema")
    log(f"converted fairchem {ckpt} (sha256 {sha[:12]}...): task {task}, {meta['weights']} weights")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_fairchem_torchscript(model, out, meta)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if args.no_verify:
        return 0
    call, meta_back = load_torchscript(out, device=args.device)
    return 0 if verify(call, model, meta_back, args.device, reference=fairchem_reference) else 1


def run(args: argparse.Namespace) -> int:
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise UsageError(f"checkpoint {ckpt} does not exist" if not ckpt.exists() else f"{ckpt} is not a file")
    if is_fairchem_checkpoint(ckpt):
        if args.fairchem_task is None:
            args.fairchem_task = DEFAULT_FAIRCHEM_TASK
        return run_fairchem(args, ckpt)
    if ckpt.suffix.lower() in (".pt", ".pt2"):
        raise UsageError(
            f"{ckpt} is an exported model ({ckpt.suffix}), not a training checkpoint; give the .ckpt it was "
            "exported from (engines load the export directly)"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no GPU (use --device cpu)")
    out = Path(args.output) if args.output else ckpt.with_suffix(SUFFIX[args.format])
    if out.suffix != SUFFIX[args.format]:
        raise UsageError(f"--format {args.format} writes a {SUFFIX[args.format]} file, got -o {out}")
    if out.resolve() == ckpt.resolve():
        raise UsageError(f"output {out} would overwrite the checkpoint")
    dtype = getattr(torch, args.dtype)
    if not args.staged and (args.charge, args.spin) != (0, 1):
        raise UsageError(
            f"--charge {args.charge} --spin {args.spin} apply to the stages of --staged only (a plain export "
            "takes the charge and spin at every call); add --format aoti --staged, or leave them out"
        )
    if args.staged and (args.format != "aoti" or args.device != "cpu"):
        raise UsageError(
            f"--staged needs --format aoti --device cpu (got --format {args.format} --device {args.device}); "
            "a TorchScript .pt is staged already"
        )

    t0 = time.perf_counter()
    try:
        payload = load_checkpoint(ckpt)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if model_family_of(payload) == FAIRCHEM_FAMILY:
        return run_converted_fairchem(args, ckpt, payload)
    try:
        model = model_from_payload(payload, use_ema=not args.raw_weights, dtype=dtype, device=args.device)
    except (ValueError, RuntimeError, KeyError) as err:  # ConfigError, state-dict mismatch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{ckpt}: cannot rebuild the model from the checkpoint: {first}") from None
    sha = checkpoint_hash(ckpt)
    meta = build_metadata(model, args.dtype, args.device, args.format, sha)
    meta["checkpoint_hash"] = sha
    meta["source_checkpoint"] = ckpt.name
    meta["weights"] = "raw" if args.raw_weights else ("ema" if payload.get("ema_state") is not None else "raw")
    cfg = model.cfg
    log(
        f"loaded {ckpt} (sha256 {sha[:12]}...): elements {meta['elements']}, hidden {cfg.hidden}, "
        f"{cfg.layers} layers, cutoff {cfg.cutoff} Å, {sum(p.numel() for p in model.parameters())} parameters, "
        f"{meta['weights']} weights ({time.perf_counter() - t0:.1f} s)"
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"exporting {args.format} ({args.dtype}, {args.device}) -> {out}")
    t1 = time.perf_counter()
    if args.staged:
        try:
            export_staged(model, out, meta, test_structures(list(cfg.elements))[0][1], args.charge, args.spin)
        except StagedExportError as err:
            raise UsageError(f"{ckpt}: {err}") from None
        log(f"staged AOTInductor package: {export_staged.seconds:.1f} s")
        load = lambda: load_aoti(out, device=args.device)  # noqa: E731
    elif args.format == "torchscript":
        export_torchscript(model, out, meta)
        log(f"TorchScript export: {time.perf_counter() - t1:.1f} s")
        load = lambda: load_torchscript(out, device=args.device)  # noqa: E731
    else:
        export_aoti(model, out, meta, device=args.device, verbose=True)
        tm = export_aoti.timings
        log(f"AOTInductor: trace + torch.export {tm['export_seconds']:.1f} s, compile {tm['compile_seconds']:.1f} s")
        load = lambda: load_aoti(out, device=args.device)  # noqa: E731
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if args.no_verify:
        return 0

    t2 = time.perf_counter()
    call, meta_back = load()
    if meta_back.get("checkpoint_hash") != sha:
        log("reloaded metadata does not carry the checkpoint hash (FAIL)")
        return 1
    try:
        ok = verify(call, model, meta_back, args.device)
    except UnknownElementError as err:
        raise UsageError(str(err)) from None
    if args.staged:
        ok &= verify_staged(out, model, meta_back)
    log(f"reload + verification: {time.perf_counter() - t2:.1f} s")
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dtype is None:
        args.dtype = default_dtype_name(args.device)
    try:
        return run(args)
    except UsageError as err:
        print(f"allscaip-export: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"allscaip-export: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
