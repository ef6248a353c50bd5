"""How far one energy + forces + stress call is from its matrix-product floor (issue 23, item 3).

The floor is the call's dense FLOPs (every matrix product of the forward and the force backward,
counted by ``torch.utils.flop_counter.FlopCounterMode``) divided by the matrix-product rate measured
in the same process: an ``[E, hidden] x [hidden, 3 hidden]`` product, the shape of the edge-level
projections that hold most of the FLOPs (E = 30 N). Both float32 and bfloat16 rates are measured, for the
float32 model and for ``block_precision = "bfloat16"``, each with the eager and the compiled
(``attention_kernel = "compiled"``) neighbour attention. The measured time is split with the profiler
into the matrix products themselves and everything else (element-wise work, copies, gathers), and
each precision's forces are compared with the same weights in float64.

    python bench/floor.py --size 256/4/4 --atoms 768 --threads 2
    python bench/floor.py --model examples/water/model.ckpt --atoms 192 --threads 1

Random weights for a size, or a checkpoint; water boxes (bench/water_boxes.py, seed 0), cutoff 6 Å
and soft kNN 30 for sizes (as bench/side_by_side.py). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from bench_result import run_header, write_result
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from water_boxes import water_box

from allscaip.checkpoint import load_model
from allscaip.config import model_config
from allscaip.data import atoms_to_batch
from allscaip.model import AllScAIP, compute_properties, frozen

HERE = Path(__file__).resolve().parent
CUTOFF_A = 6.0
KNN = 30
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu")
"""Profiler names counted as matrix products (their own time only, so the rest is the overhead)."""
RATE_REPEATS = 10
VARIANTS = (("float32", "eager"), ("float32", "compiled"), ("bfloat16", "eager"), ("bfloat16", "compiled"))
"""(block_precision, attention_kernel) of the measured rows."""


def matmul_rate(rows: int, width: int, dtype: torch.dtype) -> float:
    """GFLOP/s of an ``[rows, width] x [width, 3 width]`` product (the edge projections' shape)."""
    a, w = torch.randn(rows, width, dtype=dtype), torch.randn(width, 3 * width, dtype=dtype)
    a @ w
    t = time.perf_counter()
    for _ in range(RATE_REPEATS):
        a @ w
    return 2.0 * rows * width * 3 * width * RATE_REPEATS / (time.perf_counter() - t) / 1e9


def build(args) -> AllScAIP:
    if args.model:
        return frozen(load_model(args.model).float())
    torch.manual_seed(0)
    hidden, layers, heads = (int(x) for x in args.size.split("/"))
    cfg = model_config(elements=[1, 8], hidden=hidden, layers=layers, heads=heads, cutoff=CUTOFF_A, max_neighbors=KNN)
    return frozen(AllScAIP(cfg).float())


def force_error(model: AllScAIP, batch, reference: torch.Tensor) -> dict:
    """Forces of ``model`` (its current block precision) against float64 ``reference``: rms and max
    (meV/Å) and rms relative to the reference's rms."""
    forces = compute_properties(model, batch, stress=True)["forces"].double()
    err = forces - reference
    rms = float(err.pow(2).mean().sqrt())
    return {
        "force_rms_err_meV_A": 1e3 * rms,
        "force_max_err_meV_A": 1e3 * float(err.abs().max()),
        "force_rel_rms_err": rms / float(reference.pow(2).mean().sqrt()),
    }


def measure(model: AllScAIP, batch, precision: str, kernel: str, repeats: int) -> dict:
    """Median time of the call, and its profiled split into matrix products and the rest (the
    warm-up call compiles the attention when ``kernel`` is "compiled")."""
    model.block_precision, model.attention_kernel = precision, kernel

    def call():
        return compute_properties(model, batch, stress=True)

    call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    return {"seconds": sorted(times)[len(times) // 2], "profiled_s": total, "matmul_s": matmul}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256/4/4", help="hidden/layers/heads of a random-weight model")
    ap.add_argument("--model", type=Path, help="a checkpoint instead of --size")
    ap.add_argument("--atoms", type=int, default=768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "floor.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build(args)
    atoms = water_box(max(1, args.atoms // 3), seed=0)
    batch = atoms_to_batch([atoms], dtype=torch.float32)
    compute_properties(model, batch, stress=True)
    with FlopCounterMode(display=False) as counter:
        compute_properties(model, batch, stress=True)
    flops = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    total_gflop = sum(flops.values()) / 1e9
    edges = len(atoms) * KNN  # rows of the rate's product: about the edges kept by a soft kNN of 30
    rates = {
        "float32": matmul_rate(edges, model.hidden, torch.float32),
        "bfloat16": matmul_rate(edges, model.hidden, torch.bfloat16),
    }
    model64 = copy.deepcopy(model).double()
    reference = compute_properties(model64, atoms_to_batch([atoms]), stress=True)["forces"]
    del model64
    rows = []
    print(
        f"{len(atoms)} atoms, {total_gflop:.1f} GFLOP per call ({', '.join(f'{k} {v / 1e9:.1f}' for k, v in flops.items())})"
    )
    print(
        "| blocks in | attention kernel | matmul rate (GFLOP/s) | floor (s) | measured (s) | measured / floor | in matrix products (s) "
        "| rest (s) | force error against float64 (rms, max meV/Å; relative rms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for precision, kernel in VARIANTS:
        m = measure(model, batch, precision, kernel, args.repeats)
        floor = total_gflop / rates[precision]
        row = {
            "precision": precision,
            "attention_kernel": kernel,
            "rate_gflops": rates[precision],
            "floor_s": floor,
            **m,
        }
        row.update(force_error(model, batch, reference))
        row["ratio"] = m["seconds"] / floor
        rows.append(row)
        rest = m["profiled_s"] - m["matmul_s"]
        print(
            f"| {precision} | {kernel} | {rates[precision]:.0f} | {floor:.3f} | {m['seconds']:.3f} | {row['ratio']:.1f}× | "
            f"{m['matmul_s']:.3f} | {rest:.3f} | {row['force_rms_err_meV_A']:.3f}, {row['force_max_err_meV_A']:.2f}; "
            f"{row['force_rel_rms_err']:.1e} |",
            flush=True,
        )
    result = {
        **run_header("bench/floor.py", argv),
        "model": str(args.model) if args.model else f"random {args.size}",
        "atoms": len(atoms),
        "edges": edges,
        "gflop": total_gflop,
        "gflop_by_op": {k: v / 1e9 for k, v in flops.items()},
        "rows": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
