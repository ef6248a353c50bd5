"""Time fairchem's own AllScAIP (PyPI ``fairchem-core`` 2.24.x) with random weights on water boxes.

Runs in a separate virtual environment that has fairchem-core installed (not the project's):

    /work/fcvenv/bin/python bench/fairchem_allscaip.py --sizes 192 768 \\
        --hidden 64 --layers 2 --heads 4 --cutoff 5.0 --max-neighbors 24 \\
        --threads 1 --repeats 5 --out bench/results/fairchem_allscaip_small.json

Call path timed: ``FAIRChemCalculator`` (fairchem's ASE calculator) around an ``MLIPPredictUnit``
that loads a random-weight inference checkpoint this script writes to a temporary file. Each
timed step moves the positions by a small random displacement and asks the ASE ``Atoms`` for
energy and forces, i.e. exactly what one MD step costs through fairchem's calculator
(``AtomicData.from_ase`` -> ``MLIPPredictUnit.predict`` -> HydraModel -> AllScAIP backbone ->
gradient energy/force head).

The model is fairchem's ``AllScAIPBackbone`` with its ``AllScAIPGradientEnergyForceStressHead``
(conservative forces = -dE/dx). In fairchem-core 2.24.0 that head cannot be used by the predict
unit as shipped: with ``wrap_property=True`` its ``unpad_results`` call fails on the nested
dicts, and with ``wrap_property=False`` the flat tensors do not match the
``output[task][property]`` layout that ``MLIPPredictUnit`` reads. The thin subclass below runs
the unchanged fairchem head with ``wrap_property=False`` and only re-nests the two result
tensors; it adds no parameters and no computation.

Each size runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from water_boxes import water_box  # puts the checkout on sys.path when allscaip is not installed here

HERE = Path(__file__).resolve().parent
DATASET = "omol"  # task / dataset name for the random-weight checkpoint (charge+spin inputs)
DEFAULT_FREQUENCIES = [20, 10, 4, 10, 20]  # fairchem's default for head_dim 64 (l = 0..4)
BACKBONE = "fairchem.core.models.allscaip.AllScAIP.AllScAIPBackbone"
HEAD = "bench_allscaip_grad_energy_force_head"
CALL_PATH = (
    "fairchem.core.FAIRChemCalculator(MLIPPredictUnit(random-weight checkpoint), task_name='omol'); "
    "per step: atoms.positions = base + N(0, displacement); atoms.get_potential_energy(); atoms.get_forces()"
)


def frequency_list(head_dim: int) -> list[int]:
    """fairchem's per-l repeat counts scaled to ``head_dim`` (they must sum to head_dim)."""
    scaled = [max(1, round(f * head_dim / sum(DEFAULT_FREQUENCIES))) for f in DEFAULT_FREQUENCIES]
    scaled[0] += head_dim - sum(scaled)
    if scaled[0] < 1:
        raise SystemExit(f"cannot build a frequency list for head_dim={head_dim}; pass --freq-list")
    return scaled


def model_settings(args: argparse.Namespace) -> dict:
    """Backbone keyword arguments (fairchem AllScAIPConfigs field names) for these options."""
    if args.hidden % args.heads:
        raise SystemExit(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    head_dim = args.hidden // args.heads
    freqs = args.freq_list or frequency_list(head_dim)
    if sum(freqs) != head_dim:
        raise SystemExit(f"--freq-list must sum to head_dim={head_dim}, got {freqs}")
    return {
        # GlobalConfigs
        "regress_forces": True,
        "direct_forces": False,  # conservative forces, as in the md-conserving checkpoints
        "hidden_size": args.hidden,
        "num_layers": args.layers,
        "use_compile": False,  # what MLIPPredictUnit picks without compile/max_atoms
        "use_padding": False,
        "dataset_list": [DATASET],
        # MolecularGraphConfigs
        "max_num_elements": 100,
        "max_atoms": max(args.sizes),  # only used with padding
        "max_batch_size": 1,
        "max_radius": args.cutoff,
        "knn_k": args.max_neighbors,
        "use_chunked_graph": args.chunked_graph,
        # GraphNeuralNetworksConfigs
        "atten_name": "math",  # the only kernel fairchem allows with gradient forces
        "atten_num_heads": args.heads,
        "freequency_list": freqs,  # sic: fairchem's spelling
        "use_sincx_mask": not args.no_sincx,
    }


def _task(name: str, level: str, dim: list[int]) -> dict:
    return {
        "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task",
        "name": name,
        "level": level,
        "property": name,
        "out_spec": {
            "_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec",
            "dim": dim,
            "dtype": "float32",
        },
        "normalizer": {
            "_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
            "mean": 0.0,
            "rmsd": 1.0,
        },
        "datasets": [DATASET],
    }


def _register_head() -> None:
    # fairchem-core exists only in the fairchem venv (bench/setup_fairchem_venv.sh)
    from fairchem.core.common.registry import registry
    from fairchem.core.models.allscaip.AllScAIP import AllScAIPGradientEnergyForceStressHead

    if registry.mapping["model_name_mapping"].get(HEAD) is not None:
        return

    @registry.register_model(HEAD)
    class NestedGradHead(AllScAIPGradientEnergyForceStressHead):
        """fairchem's gradient head; results re-nested as {property: {property: tensor}}."""

        def __init__(self, backbone):
            super().__init__(backbone, prefix=None, wrap_property=False)

        def forward(self, data, emb):
            flat = super().forward(data, emb)
            return {key: {key: value} for key, value in flat.items()}


def build_calculator(settings: dict, seed: int, workdir: Path):
    """A FAIRChemCalculator around a random-weight checkpoint written to ``workdir``."""
    # fairchem-core (and hydra) exist only in the fairchem venv (bench/setup_fairchem_venv.sh)
    import hydra
    from fairchem.core.calculate.ase_calculator import FAIRChemCalculator
    from fairchem.core.units.mlip_unit.api.inference import InferenceSettings, MLIPInferenceCheckpoint
    from fairchem.core.units.mlip_unit.predict import MLIPPredictUnit

    _register_head()
    model_config = {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": {"model": BACKBONE, **settings},
        "heads": {"energy_forces": {"module": HEAD}},
        "pass_through_head_outputs": True,
        "otf_graph": True,
    }
    torch.manual_seed(seed)
    model = hydra.utils.instantiate(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    ema = torch.optim.swa_utils.AveragedModel(model)
    checkpoint = MLIPInferenceCheckpoint(
        model_config=model_config,
        model_state_dict=model.state_dict(),
        ema_state_dict=ema.state_dict(),
        tasks_config=[_task("energy", "system", [1]), _task("forces", "atom", [3])],
    )
    path = workdir / "allscaip_random.pt"
    torch.save(checkpoint, path)
    del model, ema, checkpoint
    predict_unit = MLIPPredictUnit(
        str(path),
        device="cpu",
        inference_settings=InferenceSettings(
            tf32=False,
            activation_checkpointing=False,
            merge_mole=False,
            compile=False,
            external_graph_gen=False,
            base_precision_dtype=torch.float32,
        ),
    )
    return FAIRChemCalculator(predict_unit, task_name=DATASET), n_params


def worker(args: argparse.Namespace) -> dict:
    """Build, warm up and time one size in this process; returns the result row."""
    torch.set_num_threads(args.threads)
    size = args.worker_size
    row: dict = {"requested_atoms": size, "threads": torch.get_num_threads()}
    atoms = water_box(max(1, size // 3), seed=args.seed)
    row["atoms"] = len(atoms)
    row["box_length_A"] = float(atoms.cell[0, 0])
    base = atoms.positions.copy()
    # fairchem-core exists only in the fairchem venv; imported here so that the baseline counts it
    import fairchem.core.calculate.ase_calculator  # noqa: F401  (imports counted in the baseline)
    import fairchem.core.units.mlip_unit.predict  # noqa: F401

    _register_head()
    row["baseline_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # after imports
    rng = np.random.default_rng(args.seed + 1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            calc, row["params"] = build_calculator(model_settings(args), args.seed, Path(tmp))
            row["build_s"] = time.perf_counter() - t
        atoms.calc = calc

        def step() -> float:
            atoms.positions = base + rng.normal(0.0, args.displacement, base.shape)
            t0 = time.perf_counter()
            atoms.get_potential_energy()
            forces = atoms.get_forces()
            dt = time.perf_counter() - t0
            if not np.isfinite(forces).all():
                raise FloatingPointError("non-finite forces")
            return dt

        row["warmup_s"] = step()
        repeats = args.repeats
        if row["warmup_s"] > args.timeout_per_size:
            repeats = 1
            row["note"] = (
                f"warm-up call took {row['warmup_s']:.1f} s > --timeout-per-size "
                f"{args.timeout_per_size} s: timed calls reduced to 1"
            )
        times = [step() for _ in range(repeats)]
        row["times_s"] = times
        row["seconds_per_call"] = float(np.median(times))
        row["atom_steps_per_s"] = row["atoms"] / row["seconds_per_call"]
        row["status"] = "ok"
        row["energy_eV"] = float(atoms.get_potential_energy())
    except (MemoryError, RuntimeError, FloatingPointError, ValueError, AssertionError) as exc:
        oom = isinstance(exc, MemoryError) or "alloc" in str(exc).lower() or "memory" in str(exc).lower()
        row["status"] = "oom" if oom else "error"
        row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return row


def run_size(args: argparse.Namespace, size: int) -> dict:
    """Run one size in a fresh subprocess with a hard wall-clock limit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-size", str(size)]
    for key in (
        "hidden",
        "layers",
        "heads",
        "cutoff",
        "max_neighbors",
        "repeats",
        "threads",
        "timeout_per_size",
        "seed",
        "displacement",
        "mem_limit_gb",
    ):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--sizes", *map(str, args.sizes)]
    if args.freq_list:
        cmd += ["--freq-list", *map(str, args.freq_list)]
    if args.no_sincx:
        cmd.append("--no-sincx")
    if args.chunked_graph:
        cmd.append("--chunked-graph")
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    limit = args.timeout_per_size * (args.repeats + 2) + 300
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {
            "requested_atoms": size,
            "status": "timeout",
            "note": f"subprocess killed after {limit:.0f} s wall clock",
        }
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        killed = proc.returncode < 0 and -proc.returncode == 9
        return {
            "requested_atoms": size,
            "status": "oom" if killed else "error",
            "note": f"subprocess exit code {proc.returncode}" + (" (SIGKILL, likely out of memory)" if killed else ""),
            "stderr_tail": proc.stderr[-2000:],
            "subprocess_wall_s": wall,
        }
    row = json.loads(lines[-1][len("RESULT ") :])
    row["subprocess_wall_s"] = wall
    return row


def versions() -> dict:
    return {
        "torch": torch.__version__,
        "fairchem-core": version("fairchem-core"),
        "ase": version("ase"),
        "numpy": version("numpy"),
        "python": platform.python_version(),
    }


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(
            next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1]
        )
        info["mem_total_gb"] = mem_kb / 2**20
    except (OSError, StopIteration, ValueError):
        pass
    return info


def fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 768, 1536, 3000, 6000], help="atoms per box")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--cutoff", type=float, default=5.0, help="Å")
    p.add_argument("--max-neighbors", type=int, default=24, help="fairchem knn_k")
    p.add_argument(
        "--freq-list",
        type=int,
        nargs="+",
        default=None,
        help="per-l repeats in neighbour attention; must sum to hidden/heads "
        "(default: fairchem's [20,10,4,10,20] scaled to hidden/heads)",
    )
    p.add_argument("--no-sincx", action="store_true", help="fairchem use_sincx_mask=False (default: True)")
    p.add_argument("--chunked-graph", action="store_true", help="fairchem use_chunked_graph=True")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--timeout-per-size",
        type=float,
        default=120.0,
        help="seconds per call; once a size is slower, larger sizes are skipped",
    )
    p.add_argument("--displacement", type=float, default=0.01, help="Å, std of the per-step random displacement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mem-limit-gb",
        type=float,
        default=16.0,
        help="address-space limit per size subprocess (0: none), so that running out of "
        "memory is a recorded failure rather than the OOM killer",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "fairchem_allscaip.json")
    p.add_argument("--worker-size", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker_size is not None:
        if args.mem_limit_gb > 0:
            limit = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    command = shlex.join([sys.executable, *sys.argv])
    config = {
        "model": "fairchem AllScAIPBackbone + AllScAIPGradientEnergyForceStressHead (random weights)",
        "call_path": CALL_PATH,
        "dtype": "float32",
        "device": "cpu",
        "backbone_settings": model_settings(args),
        "repeats": args.repeats,
        "threads": args.threads,
        "timeout_per_size_s": args.timeout_per_size,
        "displacement_A": args.displacement,
        "seed": args.seed,
        "mem_limit_gb": args.mem_limit_gb,
        "water_boxes": "bench/water_boxes.py water_box(atoms // 3, seed): ~1 g/cm^3, random "
        "orientations on a jittered cubic grid, periodic",
    }
    report = {
        "benchmark": "fairchem-core AllScAIP energy+forces per MD step (ASE calculator)",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "config": config,
        "command": command,
        "results": [],
    }

    skip_reason = None
    for size in args.sizes:
        if skip_reason:
            report["results"].append({"requested_atoms": size, "status": "skipped", "note": skip_reason})
            continue
        print(f"[{size} atoms] running ...", file=sys.stderr, flush=True)
        load = os.getloadavg()
        row = run_size(args, size)
        row["load_avg_1m_before"] = load[0]
        report["results"].append(row)
        print(
            f"[{size} atoms] {row['status']}: {fmt(row.get('seconds_per_call'), '.3f')} s/call, "
            f"peak RSS {fmt(row.get('peak_rss_gb'), '.2f')} GiB",
            file=sys.stderr,
            flush=True,
        )
        if row["status"] != "ok":
            skip_reason = f"skipped: {size} atoms ended with status {row['status']!r}"
        elif row["seconds_per_call"] > args.timeout_per_size:
            skip_reason = (
                f"skipped: {size} atoms took {row['seconds_per_call']:.1f} s/call "
                f"> --timeout-per-size {args.timeout_per_size} s"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    v = report["versions"]
    print(
        f"fairchem-core {v['fairchem-core']}, torch {v['torch']}, threads {args.threads}, "
        f"hidden {args.hidden}, layers {args.layers}, heads {args.heads}, cutoff {args.cutoff}, "
        f"max_neighbors {args.max_neighbors}"
    )
    print(f"{'atoms':>6} {'status':>9} {'s/call':>9} {'atom-steps/s':>13} {'peak RSS GiB':>13}")
    for row in report["results"]:
        print(
            f"{row.get('atoms', row['requested_atoms']):>6} {row['status']:>9} "
            f"{fmt(row.get('seconds_per_call'), '.3f'):>9} {fmt(row.get('atom_steps_per_s'), '.1f'):>13} "
            f"{fmt(row.get('peak_rss_gb'), '.2f'):>13}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
