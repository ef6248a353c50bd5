"""Exported artefacts vs the eager model: export / AOTInductor compile times and the speed of
one energy + forces + virial evaluation on water boxes.

For each model preset: export TorchScript (.pt) and AOTInductor (.pt2) once, then time the
eager model (allscaip.model.compute_properties with forces and stress), the TorchScript
module and the AOTI package on each box size. Every timing includes the neighbour list
(vesin) so that the three paths do the same work; it is also reported on its own.
Prints a table and writes bench/results/export.json.

    python bench/export_bench.py [--presets tiny,fairchem-size] [--sizes 200,1000,3000]
                                 [--dtype float32] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from water_boxes import water_box

HERE = Path(__file__).resolve().parent
PRESETS = {
    # preset: (model config, default box sizes in atoms)
    "tiny": (dict(hidden=64, layers=2, heads=4, cutoff=5.0), "200,1000,3000"),
    "fairchem-size": (dict(hidden=256, layers=4, heads=4, cutoff=6.0, max_neighbors=30), "768"),
}


def best_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):  # TorchScript's profiling executor optimises on the 2nd call
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_preset(preset: str, sizes, dtype_name: str, repeats: int, workdir: Path) -> dict:
    # torch (and allscaip, which imports it) only after main() has set OMP_NUM_THREADS: its OpenMP
    # runtime reads the variable once, when torch is first imported
    import torch

    from allscaip.config import model_config
    from allscaip.data import atoms_to_batch
    from allscaip.model import AllScAIP, compute_properties
    from allscaip.neighbors import system_neighbor_pairs
    from allscaip_export.aoti import export_aoti, load_aoti
    from allscaip_export.cli import whole_system_inputs
    from allscaip_export.metadata import build_metadata
    from allscaip_export.torchscript import export_torchscript, load_torchscript

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    cfg, _ = PRESETS[preset]
    model = AllScAIP(model_config(elements=[1, 8], **cfg)).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())

    ts_path, aoti_path = workdir / f"{preset}.pt", workdir / f"{preset}.pt2"
    t = time.perf_counter()
    export_torchscript(model, ts_path, build_metadata(model, dtype_name, "cpu", "torchscript"))
    ts_export = time.perf_counter() - t
    print(f"[{preset}] TorchScript export {ts_export:.1f} s", flush=True)
    export_aoti(model, aoti_path, build_metadata(model, dtype_name, "cpu", "aoti"), verbose=True)
    timings = dict(export_aoti.timings)
    print(
        f"[{preset}] AOTI trace + torch.export {timings['export_seconds']:.1f} s, "
        f"compile {timings['compile_seconds']:.1f} s, package {aoti_path.stat().st_size / 1e6:.1f} MB",
        flush=True,
    )
    ts, _ = load_torchscript(ts_path)
    aoti, _ = load_aoti(aoti_path)

    rows = []
    for n in sizes:
        atoms = water_box(max(1, round(n / 3)))
        batch = atoms_to_batch([atoms], dtype=dtype)
        cut = model.cutoff

        def eager():
            return compute_properties(model, batch, forces=True, stress=True)

        def run_ts():
            return ts(*whole_system_inputs(atoms, cut, dtype, "cpu"))

        def run_aoti():
            return aoti(*whole_system_inputs(atoms, cut, dtype, "cpu"))

        def nlist():
            return system_neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, cut)

        e_ref = float(eager()["energy"][0])
        diff_ts = abs(float(run_ts()[0]) - e_ref)
        diff_aoti = abs(float(run_aoti()[0]) - e_ref)
        r = {
            "preset": preset,
            "atoms": len(atoms),
            "edges": int(len(nlist()[0])),
            "params": params,
            "eager_s": best_time(eager, repeats),
            "torchscript_s": best_time(run_ts, repeats),
            "aoti_s": best_time(run_aoti, repeats),
            "neighbor_list_s": best_time(nlist, repeats, warmup=1),
            "abs_energy_diff_torchscript": diff_ts,
            "abs_energy_diff_aoti": diff_aoti,
        }
        rows.append(r)
        print(
            f"[{preset}] {r['atoms']:5d} atoms: eager {r['eager_s']:.3f} s, TorchScript {r['torchscript_s']:.3f} s, "
            f"AOTI {r['aoti_s']:.3f} s (neighbour list {r['neighbor_list_s']:.3f} s)",
            flush=True,
        )
    return {
        "preset": preset,
        "config": cfg,
        "params": params,
        "dtype": dtype_name,
        "torchscript_export_s": ts_export,
        "aoti_export_s": timings["export_seconds"],
        "aoti_compile_s": timings["compile_seconds"],
        "aoti_package_mb": aoti_path.stat().st_size / 1e6,
        "rows": rows,
    }


def table(results) -> str:
    lines = [
        "| preset | atoms | eager (s) | TorchScript (s) | AOTI (s) | AOTI speed-up vs eager | TorchScript speed-up vs eager | neighbour list (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for r in res["rows"]:
            lines.append(
                f"| {r['preset']} | {r['atoms']} | {r['eager_s']:.3f} | {r['torchscript_s']:.3f} | {r['aoti_s']:.3f} | "
                f"{r['eager_s'] / r['aoti_s']:.2f}x | {r['eager_s'] / r['torchscript_s']:.2f}x | {r['neighbor_list_s']:.3f} |"
            )
    lines += [
        "",
        "| preset | params | TorchScript export (s) | AOTI trace + export (s) | AOTI compile (s) | .pt2 size (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        lines.append(
            f"| {res['preset']} | {res['params']} | {res['torchscript_export_s']:.1f} | {res['aoti_export_s']:.1f} | "
            f"{res['aoti_compile_s']:.1f} | {res['aoti_package_mb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,fairchem-size")
    ap.add_argument("--sizes", help="box sizes in atoms for every preset (default: per preset)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "export.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # AOTI's OpenMP kernels
    import torch  # after OMP_NUM_THREADS (see bench_preset)

    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            sizes = [int(s) for s in (args.sizes or PRESETS[preset][1]).split(",")]
            results.append(bench_preset(preset, sizes, args.dtype, args.repeats, Path(tmp)))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                "threads": args.threads,
                "date": time.strftime("%Y-%m-%d"),
                "command": " ".join(["python"] + sys.argv),
                "dtype": args.dtype,
                "torch": torch.__version__,
                "load_average_at_end": os.getloadavg(),
            }
            Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
