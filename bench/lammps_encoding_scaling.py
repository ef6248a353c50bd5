"""`pair_style allscaip` energy+forces time and peak memory against N, node encoding on and off.

Issue 22's benchmark: water boxes from 1500 to 24,000 atoms, tiny model (hidden 64, 2 layers,
4 heads, cutoff 5 Å, soft kNN 24, float32, random weights), LAMMPS on 1 and 2 MPI ranks with one
torch thread per rank. Variants:

- ``content``: node attention without distance information (the encoding off);
- ``sinc_pairs``: the smooth pair encoding (range 12 Å, 16 frequencies), its attention in query
  blocks with a recomputing backward (``attention_block``, default 2^24 logits): memory linear in N;
- ``one_block``: the same model with ``attention_block`` as large as the whole logits
  [heads, N_rank, N], i.e. the O(N²)-memory evaluation that TorchScript's whole-system call
  still uses; run while it fits (``--one-block-max``);
- ``content_recompute``, ``sinc_pairs_recompute``: with ``recompute yes`` (each layer's local
  stage recomputed in the backward: one layer's activations alive at a time).

Each LAMMPS run is ``run 0`` (set-up evaluation, untimed warm-up) then ``run 1``: one MD step, one
energy+forces+virial evaluation, timed by LAMMPS's ``Loop time``. Peak memory is the largest
resident set of any process of the run (GNU time's %M over ``mpirun``'s descendants), i.e. the
peak of the biggest rank. Prints a table and writes bench/results/lammps_encoding_scaling.json.

    python bench/lammps_encoding_scaling.py [--sizes 1500,3000,6000,12000,24000] [--ranks 1,2]
        [--variants content,sinc_pairs,one_block,content_recompute,sinc_pairs_recompute]
        [--one-block-max 6000] [--plain-max 12000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import ase.io
import torch
from lammps_md import VENV, venv_env
from water_boxes import water_box

from allscaip.config import model_config
from allscaip.model import AllScAIP
from allscaip_export.metadata import build_metadata
from allscaip_export.torchscript import export_torchscript

HERE = Path(__file__).resolve().parent
TINY = dict(elements=[1, 8], hidden=64, layers=2, heads=4, cutoff=5.0, max_neighbors=24)
MODELS = {"content": dict(), "sinc_pairs": dict(node_encoding="sinc_pairs")}
VARIANT_MODEL = {
    "content": "content",
    "sinc_pairs": "sinc_pairs",
    "one_block": "sinc_pairs",
    "content_recompute": "content",
    "sinc_pairs_recompute": "sinc_pairs",
}
MEMORY_GROWTH_LIMIT = 5.0  # issue 22: peak memory may grow at most 5x from 1500 to 6000 atoms


def export(path: Path, overrides: Dict[str, object]) -> Path:
    torch.manual_seed(0)
    model = AllScAIP(model_config(None, **TINY, **overrides)).to(torch.float32).eval()
    export_torchscript(model, path, build_metadata(model, "float32", "cpu", "torchscript"))
    return path


def lammps_input(data: Path, model: Path, attention_block: Optional[int], recompute: bool) -> str:
    style = "allscaip" + (f" attention_block {attention_block}" if attention_block else "")
    style += " recompute yes" if recompute else ""
    return "\n".join(
        [
            "units metal",
            "atom_style atomic",
            "boundary p p p",
            "newton on",
            f"read_data {data}",
            "mass 1 1.008",
            "mass 2 15.999",
            f"pair_style {style}",
            f"pair_coeff * * {model} H O",
            "neighbor 1.0 bin",
            "velocity all create 300 4928459 loop geom mom yes",
            "timestep 0.0005",
            "fix md all nve",
            "run 0",
            "run 1",
            "",
        ]
    )


def run(workdir: Path, script: str, ranks: int, timeout: float) -> Dict[str, Optional[float]]:
    """Seconds of the timed step and peak RSS (GB) of the largest process, or an error."""
    (workdir / "in.lmp").write_text(script)
    cmd = [str(VENV / "bin" / "lmp"), "-in", "in.lmp", "-log", "log.lammps", "-nocite", "-screen", "none"]
    if ranks > 1:
        cmd = [str(VENV / "bin" / "mpirun"), "-np", str(ranks)] + cmd
    cmd = ["/usr/bin/time", "-f", "maxrss_kb %M", "-o", "rss.txt"] + cmd
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=venv_env(1), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps", log)
    rss = re.search(r"maxrss_kb (\d+)", (workdir / "rss.txt").read_text() if (workdir / "rss.txt").exists() else "")
    if proc.returncode != 0 or not loops or not rss:
        tail = (proc.stdout + proc.stderr + log)[-600:]
        return {"error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else '?'}"}
    return {"seconds": float(loops[-1][0]), "peak_gb": int(rss.group(1)) / 1e6}


def write_result(out: str, rows: List[dict], variants: List[str], ranks: List[int], load_start: List[float]):
    """Write the JSON of the rows so far; returns the memory growth 6000 / 1500 atoms per variant."""

    def peak(variant: str, r: int, n: int) -> Optional[float]:
        hit = [x for x in rows if x["variant"] == variant and x["ranks"] == r and x["atoms"] == n and "peak_gb" in x]
        return hit[0]["peak_gb"] if hit else None

    growth = {}
    for variant in variants:
        for r in ranks:
            small, large = peak(variant, r, 1500), peak(variant, r, 6000)
            if small and large:
                growth[f"{variant}_{r}rank"] = large / small
    result = {
        "benchmark": "lammps_encoding_scaling",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cores": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_now": list(os.getloadavg()),
        },
        "torch": torch.__version__,
        "model": {**TINY, "dtype": "float32", "sinc_pairs": "encoding_range 12, encoding_freqs 16"},
        "rows": rows,
        "memory_growth_6000_over_1500": growth,
        "memory_growth_limit": MEMORY_GROWTH_LIMIT,
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return growth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1500,3000,6000,12000,24000", help="atoms (water: multiples of 3)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--variants", default="content,sinc_pairs,one_block,content_recompute,sinc_pairs_recompute")
    ap.add_argument("--one-block-max", type=int, default=6000, help="largest N for the one-block run")
    ap.add_argument(
        "--plain-max", type=int, default=12000, help="largest N for the variants without recompute (memory)"
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per LAMMPS run")
    ap.add_argument("--out", default=str(HERE / "results" / "lammps_encoding_scaling.json"))
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    variants = args.variants.split(",")
    models = {name: export(work / f"{name}.pt", MODELS[name]) for name in {VARIANT_MODEL[v] for v in variants}}
    ranks = [int(r) for r in args.ranks.split(",")]
    heads = int(TINY["heads"])
    load_start = list(os.getloadavg())
    rows = []
    print(f"# {os.cpu_count()} cores, torch {torch.__version__}, one torch thread per rank, float32")
    print(f"{'atoms':>6} {'variant':>20} {'ranks':>5} {'s/eval':>8} {'us/atom':>8} {'peak GB':>8}")
    for n_atoms in [int(s) for s in args.sizes.split(",")]:
        atoms = water_box(n_atoms // 3)
        d = work / f"n{n_atoms}"
        d.mkdir()
        data = d / "water.data"
        ase.io.write(data, atoms, format="lammps-data", specorder=["H", "O"], atom_style="atomic")
        for variant in variants:
            if variant == "one_block" and n_atoms > args.one_block_max:
                continue
            if not variant.endswith("recompute") and n_atoms > args.plain_max:
                continue
            for r in ranks:
                # one block holds a rank's whole logits [heads, N_rank <= N, N]
                block = heads * n_atoms * n_atoms if variant == "one_block" else None
                wd = d / f"{variant}_{r}"
                wd.mkdir()
                res = run(
                    wd,
                    lammps_input(data, models[VARIANT_MODEL[variant]], block, variant.endswith("recompute")),
                    r,
                    args.timeout,
                )
                row = {"atoms": len(atoms), "variant": variant, "ranks": r, **res}
                rows.append(row)
                write_result(args.out, rows, variants, ranks, load_start)  # nothing lost if a later run dies
                if "error" in res:
                    print(f"{len(atoms):>6} {variant:>20} {r:>5} {res['error']}", flush=True)
                else:
                    us = 1e6 * res["seconds"] / len(atoms)
                    print(
                        f"{len(atoms):>6} {variant:>20} {r:>5} {res['seconds']:>8.2f} {us:>8.0f} {res['peak_gb']:>8.2f}",
                        flush=True,
                    )

    growth = write_result(args.out, rows, variants, ranks, load_start)
    if growth:
        print("peak memory 6000 / 1500 atoms: " + ", ".join(f"{k} {v:.2f}x" for k, v in growth.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
