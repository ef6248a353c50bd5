"""What the core-repulsion wall costs per force call.

The shipped water model (examples/water/model.ckpt) evaluates energy + forces + stress on water
boxes twice: as it is, and with ``core_energy`` replaced by zeros (the network alone). It also
times ``core_energy`` on its own, on the same padded neighbour layout, with its backward pass.
Eager PyTorch, so the difference is the wall's share of a call (the exported artefacts trace
the same operations). Prints a table and writes bench/results/core_wall.json.

    python bench/core_wall_cost.py [--sizes 192,768,1536] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from export_bench import best_time
from water_boxes import water_box

from allscaip.checkpoint import load_model
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "examples/water/model.ckpt"))
    ap.add_argument("--sizes", default="192,768,1536", help="atoms per water box")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "core_wall.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=torch.float32).eval()
    radii = model.core_radius.detach().clone()
    if not bool((radii > 0).any()):
        raise SystemExit(f"{args.model} carries no core-repulsion wall (core_radius is all zero): nothing to time")

    captured = {}
    wall_fn = model.core_energy

    def recording_core(vec, mask, index, species_all):
        captured.update(vec=vec.detach(), mask=mask, index=index, species=species_all)
        return wall_fn(vec, mask, index, species_all)

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        atoms = water_box(max(1, round(n / 3)))
        batch = atoms_to_batch([atoms], dtype=torch.float32)

        def call():
            return compute_properties(model, batch, forces=True, stress=True)

        model.core_energy = recording_core
        with_wall = best_time(call, args.repeats)
        e_with = float(call()["energy"][0])
        model.core_energy = lambda vec, mask, index, species_all: vec.new_zeros(index.shape[0])
        without = best_time(call, args.repeats)
        e_without = float(call()["energy"][0])
        model.core_energy = wall_fn

        vec = captured["vec"].clone().requires_grad_(True)

        def wall_alone():
            e = wall_fn(vec, captured["mask"], captured["index"], captured["species"]).sum()
            return torch.autograd.grad(e, vec)[0]

        alone = best_time(wall_alone, args.repeats)
        r = {
            "atoms": len(atoms),
            "pairs_padded": int(captured["mask"].numel()),
            "with_wall_s": with_wall,
            "without_wall_s": without,
            "wall_alone_s": alone,
            "wall_share_percent": 100.0 * (with_wall - without) / with_wall,
            "energy_difference_eV": e_with - e_without,
        }
        rows.append(r)
        print(
            f"{r['atoms']:5d} atoms: with wall {with_wall:.4f} s, without {without:.4f} s "
            f"({r['wall_share_percent']:+.1f} %), wall alone (energy + gradient) {alone * 1e3:.2f} ms; "
            f"energy difference {r['energy_difference_eV']:.2e} eV",
            flush=True,
        )

    print()
    print(f"{'atoms':>6} {'with wall (s)':>14} {'without (s)':>12} {'share':>7} {'wall alone (ms)':>16}")
    for r in rows:
        print(
            f"{r['atoms']:>6} {r['with_wall_s']:>14.4f} {r['without_wall_s']:>12.4f} "
            f"{r['wall_share_percent']:>6.1f}% {r['wall_alone_s'] * 1e3:>16.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "torch": torch.__version__,
                "threads": args.threads,
                "model": args.model,
                "dtype": "float32",
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
