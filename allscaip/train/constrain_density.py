"""``allscaip constrain-density``: project a trained checkpoint onto the teacher's density.

Moves the model's (EMA) weights the smallest distance that zeroes the first-order density
shift ``-m`` on NPT frames of the labelling potential (:mod:`allscaip.train.ensemble`), and
writes a new checkpoint. Prints ``m`` before and after and, with ``--val``, the energy, force
and stress errors before and after, so the price of the constraint is visible.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import ase.io
import numpy as np
import torch

from allscaip.checkpoint import OUR_FAMILY, load_checkpoint, model_family_of, model_from_payload, save_checkpoint
from allscaip.config_schema import ConfigError
from allscaip.data import atoms_to_batch
from allscaip.dtypes import DTYPES
from allscaip.model import compute_properties
from allscaip.train.ensemble import DensityTerm, OffsetTerm

HELP = "project a checkpoint's weights onto the labeller's NPT density (first-order density shift 0)"

EPILOG = """\
example:
  allscaip constrain-density runs/water/best.ckpt --frames examples/water/data/teacher_npt.extxyz \\
      --val examples/water/data/val.extxyz -o model.ckpt

The frames are NPT snapshots of the labelling potential with energies, info['temperature_K'] and
info['traj'] (python -m allscaip.workflows.teacher.active --teacher writes them). Check the result on
independent frames with python -m allscaip.workflows.teacher.reweight, and in MD with allscaip liquid.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="allscaip training checkpoint (.ckpt)")
    p.add_argument("--frames", nargs="+", required=True, help="extxyz file(s) with the labeller's NPT frames")
    p.add_argument(
        "--config-type",
        default="teacher_md",
        help="use the frames with this info['config_type'] (as optim.density_config_type)",
    )
    p.add_argument("-o", "--output", required=True, help="checkpoint to write")
    p.add_argument("--val", nargs="*", default=[], help="labelled extxyz file(s): errors before and after")
    p.add_argument("--max-iter", type=int, default=4, help="Newton steps at most")
    p.add_argument("--tol", type=float, default=0.01, help="stop once |m| (percent) is below this")
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="precision of the evaluation and of the step (the training precision)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--hold-offset",
        default=None,
        metavar="A:B",
        help="keep the energy error per atom of config_type A minus B where it was (e.g. monomer:bulk, "
        "which holds the heat of vaporization at fixed structure); frames from --hold-frames",
    )
    p.add_argument(
        "--hold-frames",
        nargs="+",
        default=[],
        help="labelled extxyz file(s) for --hold-offset (training data, not --val)",
    )
    p.add_argument(
        "--hold-tol",
        type=float,
        default=0.01,
        help="meV/atom: the held offset may move this much (the steps continue until it does not)",
    )
    p.add_argument(
        "--hold-max-frames",
        type=int,
        default=32,
        help="at most this many frames of each kind for --hold-offset, evenly spaced",
    )


def errors(model: Any, frames: Sequence[Any], dtype: Any) -> Dict[str, float]:
    """Energy (meV/atom), force (meV/Å) and stress (meV/Å³) mean absolute errors on ``frames``."""
    e, f, s = [], [], []
    for a in frames:
        b = atoms_to_batch([a], dtype=dtype)
        has_stress = b.stress is not None and bool(a.pbc.all())
        out = compute_properties(model, b, forces=b.forces is not None, stress=has_stress)
        e.append(abs(float(out["energy"].sum() - b.energy.sum())) / len(a))
        if b.forces is not None:
            f.append((out["forces"] - b.forces).detach().abs().flatten().numpy())
        if has_stress:
            s.append((out["stress"] - b.stress).detach().abs().flatten().numpy())
    res = {"energy_mae_meV_atom": 1000.0 * float(np.mean(e))}
    if f:
        res["force_mae_meV_A"] = 1000.0 * float(np.concatenate(f).mean())
    if s:
        res["stress_mae_meV_A3"] = 1000.0 * float(np.concatenate(s).mean())
    return res


def _format(err: Dict[str, float]) -> str:
    names = {
        "energy_mae_meV_atom": "E {:.3f} meV/atom",
        "force_mae_meV_A": "F {:.2f} meV/Å",
        "stress_mae_meV_A3": "S {:.4f} meV/Å³",
    }
    return ", ".join(names[k].format(v) for k, v in err.items())


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_iter < 1:
        raise SystemExit(f"allscaip constrain-density: --max-iter must be >= 1, got {args.max_iter}")
    out = Path(args.output)
    if out.resolve() == Path(args.checkpoint).resolve():
        raise SystemExit("allscaip constrain-density: -o must differ from the input checkpoint (keep the original)")
    dtype = DTYPES[args.dtype]
    payload = load_checkpoint(args.checkpoint)
    if model_family_of(payload) != OUR_FAMILY:
        raise SystemExit(
            f"allscaip constrain-density: {args.checkpoint} holds a {model_family_of(payload)} model; "
            "this command constrains checkpoints of our own AllScAIP"
        )
    model = model_from_payload(payload, use_ema=True, dtype=dtype)
    frames = [a for path in args.frames for a in ase.io.read(path, ":")]
    try:
        term = DensityTerm.from_dataset(frames, args.config_type)
    except ConfigError as err:
        raise SystemExit(f"allscaip constrain-density: {err}") from err
    val = [a for path in args.val for a in ase.io.read(path, ":")]
    hold = []
    if args.hold_offset:
        if not args.hold_frames:
            raise SystemExit("allscaip constrain-density: --hold-offset needs --hold-frames (labelled training frames)")
        try:
            hold = [
                OffsetTerm.from_frames(
                    [a for path in args.hold_frames for a in ase.io.read(path, ":")],
                    args.hold_offset,
                    max_frames=args.hold_max_frames,
                )
            ]
        except ConfigError as err:
            raise SystemExit(f"allscaip constrain-density: {err}") from err
    print(f"{Path(args.checkpoint).name}: {len(term.frames)} ensemble frames from {', '.join(args.frames)}", flush=True)
    before = errors(model, val, dtype) if val else {}
    params = [p for p in model.parameters() if p.numel() > 0]
    history = term.project(
        model,
        params,
        torch.device("cpu"),
        dtype,
        max_iter=args.max_iter,
        tol=args.tol,
        hold=hold,
        hold_tol=args.hold_tol,
    )
    m_after = term.evaluate(model, torch.device("cpu"), dtype) if abs(history[-1]) > args.tol else history[-1]
    for i, m in enumerate(history):
        print(f"  step {i}: density shift {-m:+.3f} %", flush=True)
    print(f"  after:  density shift {-m_after:+.3f} % (first order, on these frames)")
    held_after = None
    if hold:
        held_after = hold[0].evaluate(model, torch.device("cpu"), dtype)
        print(
            f"  offset {args.hold_offset}: {term.hold_history[0][0]:+.4f} meV/atom before, "
            f"{held_after:+.4f} after ({len(hold[0].first)} + {len(hold[0].second)} frames)"
        )
        if not abs(held_after - term.hold_history[0][0]) <= 10 * args.hold_tol:
            raise SystemExit(
                f"allscaip constrain-density: the held offset moved by "
                f"{held_after - term.hold_history[0][0]:+.4f} meV/atom; raise --max-iter"
            )
    if not math.isfinite(m_after) or abs(m_after) > max(args.tol, 0.1 * abs(history[0])):
        raise SystemExit(
            f"allscaip constrain-density: the shift did not converge ({-m_after:+.3f} %); "
            f"raise --max-iter or check the frames"
        )
    after = errors(model, val, dtype) if val else {}
    if val:
        print(f"  {len(val)} validation frames, before: {_format(before)}")
        print(f"  {len(val)} validation frames, after:  {_format(after)}")
    state = {
        k: v.detach().to(payload["ema_state"][k].dtype) if k in payload.get("ema_state", {}) else v
        for k, v in model.state_dict().items()
    }
    new = dict(payload)
    new["ema_state"] = state
    new["model_state"] = {k: v.clone() for k, v in state.items()}
    new["density_constraint"] = {
        "source": str(args.checkpoint),
        "frames": [str(p) for p in args.frames],
        "config_type": args.config_type,
        "n_frames": len(term.frames),
        "shift_pct_before": -history[0],
        "shift_pct_after": -m_after,
        "val_before": before,
        "val_after": after,
        "hold_offset": None
        if not hold
        else {
            "spec": args.hold_offset,
            "frames": [str(p) for p in args.hold_frames],
            "before_meV_atom": term.hold_history[0][0],
            "after_meV_atom": held_after,
        },
    }
    save_checkpoint(out, new)
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0
