"""Energy+forces time and peak memory against N for the node-attention encodings (issue 22).

Variants, tiny model (hidden 64, 2 layers, 4 heads, cutoff 5 Å, soft kNN 24), float32, one
thread, water boxes at 1 g/cm³, one energy+forces call after a warm-up:
- ``local``: node attention off (the local-only ablation);
- ``content``: node attention without distance information;
- ``legacy``: the minimum-image sinc bias (``distance_bias: true``), O(N²) memory, run only
  while it fits (``--legacy-max``);
- ``sinc_pairs``: the smooth, finite-range encoding (``node_encoding: sinc_pairs``).

Each configuration runs in a fresh subprocess, so its peak resident memory is its own. Prints a
table and writes bench/results/node_encoding_scaling.json.

    python bench/node_encoding_scaling.py [--sizes 1500,3000,6000,12000,24000] [--legacy-max 3000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from water_boxes import water_box

from allscaip.config import model_config
from allscaip.data import atoms_to_batch
from allscaip.model import AllScAIP, compute_properties

HERE = Path(__file__).resolve().parent
TINY = dict(elements=[1, 8], hidden=64, layers=2, heads=4, cutoff=5.0, max_neighbors=24)
VARIANTS = {
    "local": dict(node_attention=False),
    "content": dict(),
    "legacy": dict(distance_bias=True),
    "sinc_pairs": dict(node_encoding="sinc_pairs"),
}
MEMORY_GROWTH_LIMIT = 5.0  # issue 22: peak memory may grow at most 5x from 1500 to 6000 atoms


def run_one(variant: str, n_atoms: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AllScAIP(model_config(**TINY, **VARIANTS[variant])).float().eval()
    atoms = water_box(max(1, n_atoms // 3))
    batch = atoms_to_batch([atoms], dtype=torch.float32)
    compute_properties(model, batch)  # warm-up
    t = time.perf_counter()
    compute_properties(model, batch)
    seconds = time.perf_counter() - t
    return {
        "variant": variant,
        "atoms": len(atoms),
        "seconds": seconds,
        "us_per_atom": 1e6 * seconds / len(atoms),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1500,3000,6000,12000,24000")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--legacy-max", type=int, default=3000, help="largest N for the O(N²) legacy bias")
    ap.add_argument("--out", default=str(HERE / "results" / "node_encoding_scaling.json"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return 0
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for variant in args.variants.split(","):
            if variant == "legacy" and n > args.legacy_max:
                continue
            cmd = [sys.executable, __file__, "--one", variant, str(n)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                rows.append({"variant": variant, "atoms": n, "error": f"timed out after {args.timeout:.0f} s"})
                continue
            if r.returncode != 0:
                rows.append({"variant": variant, "atoms": n, "error": r.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['variant']:>11} {row['atoms']:>6} atoms  {row['seconds']:8.2f} s  "
                f"{row['us_per_atom']:8.1f} us/atom  peak RSS {row['peak_rss_gb']:6.2f} GB",
                flush=True,
            )
    growth = {}
    for variant in VARIANTS:
        mem = {r["atoms"]: r["peak_rss_gb"] for r in rows if r["variant"] == variant and "peak_rss_gb" in r}
        small = min(mem, default=None)
        large = next((n for n in sorted(mem) if small and n >= 4 * small), None)
        if small and large:
            growth[variant] = {"from": small, "to": large, "ratio": mem[large] / mem[small]}
    for variant, g in growth.items():
        verdict = "within" if g["ratio"] <= MEMORY_GROWTH_LIMIT else "ABOVE"
        print(f"{variant}: peak memory x{g['ratio']:.2f} from {g['from']} to {g['to']} atoms ({verdict} 5x)")
    result = {
        "command": "python bench/node_encoding_scaling.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "model": TINY,
        "dtype": "float32",
        "threads": 1,
        "rows": rows,
        "memory_growth": growth,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
