"""Energy+forces time and peak memory against N for the node-attention encodings (issue 22).

Variants, tiny model (hidden 64, 2 layers, 4 heads, cutoff 5 Å, soft kNN 24), float32, one
thread, water boxes at 1 g/cm³, one energy+forces call after a warm-up:
- ``local``: node attention off (the local-only ablation);
- ``content``: node attention without distance information;
- ``legacy``: the minimum-image sinc bias (``distance_bias: true``), O(N²) memory, run only
  while it fits (``--legacy-max``);
- ``sinc_pairs``: the smooth, finite-range encoding (``node_encoding: sinc_pairs``);
- ``sinc_pairs_dense``: the same with the whole logits materialised (``encoding_path`` "dense"),
  the evaluation training used before its double backward was blocked;
- ``torchscript_dense`` / ``torchscript_staged``: the sinc_pairs model exported to TorchScript,
  called through the export's own whole-system ``forward`` (dense encoded attention) or through
  its staged methods with the blocked attention (what the ASE calculator and OpenMM's PythonForce
  do with a ``.pt``, :mod:`allscaip_export.staged_whole_system`).

``--task train`` times one training step with a force loss instead (forward, forces with
``create_graph``, backward of the force error to the parameters: the double backward), and writes
bench/results/node_encoding_training.json by default.

Each configuration runs in a fresh subprocess, so its peak resident memory is its own. Prints a
table and writes bench/results/node_encoding_scaling.json.

    python bench/node_encoding_scaling.py [--sizes 1500,3000,6000,12000,24000] [--legacy-max 3000]
    python bench/node_encoding_scaling.py --task train --sizes 375,750,1500,3000 --variants sinc_pairs,sinc_pairs_dense
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from water_boxes import water_box

from allscaip.config import model_config
from allscaip.data import atoms_to_batch
from allscaip.model import AllScAIP, compute_properties
from allscaip.neighbors import whole_system_inputs
from allscaip_export.metadata import build_metadata
from allscaip_export.staged_whole_system import StagedWholeSystem
from allscaip_export.torchscript import export_torchscript, load_torchscript

HERE = Path(__file__).resolve().parent
TINY = dict(elements=[1, 8], hidden=64, layers=2, heads=4, cutoff=5.0, max_neighbors=24)
VARIANTS = {
    "local": dict(node_attention=False),
    "content": dict(),
    "legacy": dict(distance_bias=True),
    "sinc_pairs": dict(node_encoding="sinc_pairs"),
    "sinc_pairs_dense": dict(node_encoding="sinc_pairs"),
    "torchscript_dense": dict(node_encoding="sinc_pairs"),
    "torchscript_staged": dict(node_encoding="sinc_pairs"),
}
FORCED_PATH = {"sinc_pairs_dense": "dense"}  # variant -> AllScAIP.encoding_path
MEMORY_GROWTH_LIMIT = 5.0  # issue 22: peak memory may grow at most 5x from 1500 to 6000 atoms


def run_torchscript(model: AllScAIP, atoms, staged: bool) -> dict:
    """Energy+forces through a TorchScript export of ``model`` (float32): its dense ``forward`` or
    the staged route."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.pt")
        export_torchscript(model.eval(), path, build_metadata(model, "float32", "cpu", "torchscript"))
        scripted, metadata = load_torchscript(path)
    call = StagedWholeSystem(scripted) if staged else scripted
    inputs = whole_system_inputs(atoms, float(metadata["cutoff"]), torch.float32, "cpu", metadata["encoding_range"])
    call(*inputs)  # warm-up (and the TorchScript profiling runs)
    t = time.perf_counter()
    call(*inputs)
    seconds = time.perf_counter() - t
    return {
        "variant": "torchscript_staged" if staged else "torchscript_dense",
        "task": "energy_forces",
        "atoms": len(atoms),
        "seconds": seconds,
        "us_per_atom": 1e6 * seconds / len(atoms),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def run_one(variant: str, n_atoms: int, task: str = "energy_forces") -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AllScAIP(model_config(**TINY, **VARIANTS[variant])).float()
    model.encoding_path = FORCED_PATH.get(variant, "auto")
    atoms = water_box(max(1, n_atoms // 3))
    batch = atoms_to_batch([atoms], dtype=torch.float32)

    if variant.startswith("torchscript"):
        return run_torchscript(model, atoms, staged=variant.endswith("staged"))

    def step() -> None:
        if task == "train":  # a force loss: forces with create_graph, then the double backward
            model.zero_grad()
            with sdpa_kernel(SDPBackend.MATH):  # as the trainer: CPU flash attention has no double backward
                out = compute_properties(model, batch, training=True)
                (out["forces"] ** 2).mean().backward()
        else:
            compute_properties(model, batch)

    model.train(task == "train")
    step()  # warm-up
    t = time.perf_counter()
    step()
    seconds = time.perf_counter() - t
    return {
        "variant": variant,
        "task": task,
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
    ap.add_argument("--task", choices=("energy_forces", "train"), default="energy_forces")
    ap.add_argument("--out", default=None, help="default bench/results/node_encoding_{scaling,training}.json")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.task)))
        return 0
    default_name = "node_encoding_training.json" if args.task == "train" else "node_encoding_scaling.json"
    out_path = Path(args.out) if args.out else HERE / "results" / default_name
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for variant in args.variants.split(","):
            if variant == "legacy" and n > args.legacy_max:
                continue
            cmd = [sys.executable, __file__, "--task", args.task, "--one", variant, str(n)]
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
        "task": args.task,
        "dtype": "float32",
        "threads": 1,
        "rows": rows,
        "memory_growth": growth,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
