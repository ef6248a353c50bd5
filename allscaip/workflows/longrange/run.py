"""Long-range benchmark: generate -> train node attention and local-only -> evaluate -> report.

    python -m allscaip.workflows.longrange.run [--out runs/longrange] [--epochs-dimers N] [--epochs-boxes N]

1. ``allscaip.workflows.longrange.generate`` writes the OpenMM-labelled data to ``OUT/data`` (skipped when
   ``OUT/data/summary.json`` exists with the same seed and sizes).
2. For each data set (``dimers``, ``boxes``) the same config (``train_configs/SET.yaml``), seed
   and number of epochs is trained twice with ``allscaip-train``: ``model.node_attention=true``
   (all-to-all node attention with the sinc distance bias) and ``false`` (local-only ablation),
   one after the other, one torch thread each. Checkpoints in ``OUT/SET/VARIANT/``.
3. The EMA weights at the end of training (``last.ckpt``) are evaluated in float64 on the
   held-out frames: energy / force MAE per subset, the dimer interaction energy beyond the
   local receptive field (layers x cutoff) as a fraction of the exact tail, the charge
   pairs (same geometry, charge +1 vs 0), and the box-size transfer.
4. Prints the tables, writes ``bench/results/longrange.json`` (``--json``) and the plots
   ``docs/img/longrange_*.png`` (``--img-dir``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import ase.io
import numpy as np
import torch

from allscaip.checkpoint import load_model
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip.workflows.longrange.generate import Sizes, generate

REPO = Path(__file__).resolve().parents[3]  # the source tree (allscaip/workflows/longrange/run.py)
CONFIGS = Path(__file__).resolve().parent / "train_configs"
SINC_PAIRS_RANGE_A = 16.0  # the smooth encoding's range: past the longest dimer separation (15 Å)
# each variant is the shared config (train_configs/SET.yaml) plus these overrides
VARIANTS = {
    "attention": ["model.node_attention=true"],  # the legacy minimum-image sinc bias of the configs
    "local": ["model.node_attention=false"],
    "sinc_pairs": [
        "model.node_attention=true",
        "model.distance_bias=false",
        "model.node_encoding=sinc_pairs",
        f"model.encoding_range={SINC_PAIRS_RANGE_A}",
    ],
}
SETS = ("dimers", "boxes")


# --------------------------------------------------------------------------- training
def train(
    set_name: str,
    variant: str,
    data: Path,
    out: Path,
    epochs: int,
    seed: int,
    extra: Sequence[str] = (),
    threads: int = 1,
) -> dict:
    """Run ``allscaip-train`` in a subprocess (one thread); returns the command and wall time."""
    run_dir = out / set_name / variant
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "allscaip.train.cli",
        str(CONFIGS / f"{set_name}.yaml"),
        f"data.train=[{data / set_name / 'train.extxyz'}]",
        f"data.val=[{data / set_name / 'val.extxyz'}]",
        *VARIANTS[variant],
        f"optim.epochs={epochs}",
        f"optim.seed={seed}",
        f"run.threads={threads}",
        f"run.out_dir={run_dir}",
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({set_name}/{variant}); see {run_dir / 'train.log'}")
    cpu = _cpu_seconds(run_dir / "metrics.csv")
    shown = ["allscaip-train"] + [str(c).replace(str(REPO) + "/", "") for c in cmd[3:]]
    print(f"  trained {set_name}/{variant}: {wall:.0f} s wall ({cpu:.0f} s in training epochs)", flush=True)
    return dict(command=" ".join(shown), wall_s=wall, train_time_s=cpu, checkpoint=str(run_dir / "last.ckpt"))


def _cpu_seconds(metrics: Path) -> float:
    with open(metrics) as f:
        return float(sum(float(r["train_time_s"]) for r in csv.DictReader(f)))


# --------------------------------------------------------------------------- evaluation
def predict(model, frames: list, chunk: int = 32):
    """(energies [n], list of force arrays) of ``frames`` with ``model`` (float64)."""
    energies, forces = [], []
    for i in range(0, len(frames), chunk):
        part = frames[i : i + chunk]
        out = compute_properties(model, atoms_to_batch(part))
        energies.append(out["energy"].numpy())
        f = out["forces"].numpy()
        n = np.cumsum([0] + [len(a) for a in part])
        forces += [f[n[k] : n[k + 1]] for k in range(len(part))]
    return np.concatenate(energies), forces


def _exact(frames: list):
    return np.array([a.get_potential_energy() for a in frames]), [a.get_forces() for a in frames]


def _mae(frames, e_pred, f_pred, e_ref, f_ref) -> dict:
    n = np.array([len(a) for a in frames])
    return dict(
        frames=len(frames),
        energy_mae_meV=1000.0 * float(np.mean(np.abs(e_pred - e_ref))),
        energy_mae_meV_atom=1000.0 * float(np.mean(np.abs(e_pred - e_ref) / n)),
        force_mae_meV_A=1000.0 * float(np.mean(np.abs(np.concatenate(f_pred) - np.concatenate(f_ref)))),
        force_mean_abs_meV_A=1000.0 * float(np.mean(np.abs(np.concatenate(f_ref)))),
    )


def evaluate_dimers(models: Dict[str, object], data: Path, train_dmax: float) -> dict:
    test = ase.io.read(data / "dimers" / "test.extxyz", ":")
    scans = ase.io.read(data / "dimers" / "scans.extxyz", ":")
    pairs = ase.io.read(data / "dimers" / "charge_pairs.extxyz", ":")
    some = next(iter(models.values()))
    rc = float(some.cutoff)
    rf = rc * some.num_layers
    e_ref, f_ref = _exact(test)
    kinds = np.array([a.info["kind"] for a in test])
    d = np.array([a.info["d"] for a in test])
    dmin = np.array([a.info["dmin"] for a in test])
    res: dict = dict(cutoff=rc, receptive_field=rf, train_dmax=train_dmax, variants={})
    for name, model in models.items():
        e, f = predict(model, test)
        r: dict = {"mae": {}, "tail": {}, "beyond_cutoff": {}}
        sets = np.array([a.info["set"] for a in test])
        for sub in ("held_out", "held_out_tail", "extrapolation"):
            for kind in ("all", "na_water", "nh4_formate", "na0_water"):
                m = (sets == sub) & ((kinds == kind) if kind != "all" else True)
                if m.sum() == 0:
                    continue
                idx = np.flatnonzero(m)
                r["mae"][f"{sub}/{kind}"] = _mae(
                    [test[i] for i in idx], e[idx], [f[i] for i in idx], e_ref[idx], [f_ref[i] for i in idx]
                )
        r["test_energy"] = e.tolist()
        # error beyond the receptive field as a fraction of the exact tail (|E_exact|, which is the
        # whole interaction energy there), separately inside and beyond the trained separations
        for region, sel in (
            (f"rf<dmin,d<={train_dmax:g}", (dmin > rf) & (d <= train_dmax)),
            (f"rf<dmin,d>{train_dmax:g}", (dmin > rf) & (d > train_dmax)),
            (f"rc<dmin,d<={train_dmax:g}", (dmin > rc) & (d <= train_dmax)),
            (f"rc<dmin,d>{train_dmax:g}", (dmin > rc) & (d > train_dmax)),
        ):
            for kind in ("na_water", "nh4_formate"):
                m = sel & (kinds == kind)
                if m.sum() == 0:
                    continue
                err = np.abs(e[m] - e_ref[m])
                tail = np.abs(e_ref[m])
                entry = dict(
                    frames=int(m.sum()),
                    mean_abs_error_meV=1000 * float(err.mean()),
                    mean_abs_tail_meV=1000 * float(tail.mean()),
                    fraction=float(err.mean() / tail.mean()),
                )
                (r["tail"] if region.startswith("rf") else r["beyond_cutoff"])[f"{region}/{kind}"] = entry
        # scans (curves)
        es, _ = predict(model, scans)
        r["scan_energy"] = es.tolist()
        # charge pairs: same geometry, Na+ (charge +1) vs neutral Na (charge 0)
        ep, fp = predict(model, pairs)
        r["charge_pairs"] = _charge_pairs(pairs, ep, fp, rc, rf, train_dmax)
        res["variants"][name] = r
    res["test"] = dict(kind=kinds.tolist(), d=d.tolist(), dmin=dmin.tolist(), exact=e_ref.tolist())
    res["scan"] = dict(
        kind=[a.info["kind"] for a in scans],
        d=[a.info["d"] for a in scans],
        dmin=[a.info["dmin"] for a in scans],
        exact=[a.get_potential_energy() for a in scans],
    )
    # a model without the system charge sees identical inputs for the two members of a pair
    res["charge_pairs_no_charge_input"] = _charge_pairs(pairs, None, None, rc, rf, train_dmax)
    return res


def _charge_pairs(pairs: list, e_pred, f_pred, rc: float, rf: float, train_dmax: float) -> dict:
    """Errors of the predicted differences (charge +1 minus charge 0, same geometry) of the total
    energy and of the forces on the water atoms (the probe), binned by the closest Na-water
    distance. ``e_pred`` None: a model blind to the charge (predicts no difference)."""
    ion = [i for i, a in enumerate(pairs) if a.info["charge"] == 1]
    neu = {a.info["pair"]: i for i, a in enumerate(pairs) if a.info["charge"] == 0}
    out = {}
    dmin = np.array([pairs[i].info["dmin"] for i in ion])
    d = np.array([pairs[i].info["d"] for i in ion])
    de_ref = np.array(
        [pairs[i].get_potential_energy() - pairs[neu[pairs[i].info["pair"]]].get_potential_energy() for i in ion]
    )
    df_ref = [pairs[i].get_forces()[1:] - pairs[neu[pairs[i].info["pair"]]].get_forces()[1:] for i in ion]
    if e_pred is None:
        de, df = np.zeros_like(de_ref), [np.zeros_like(x) for x in df_ref]
    else:
        de = np.array([e_pred[i] - e_pred[neu[pairs[i].info["pair"]]] for i in ion])
        df = [f_pred[i][1:] - f_pred[neu[pairs[i].info["pair"]]][1:] for i in ion]
    for region, sel in (
        (f"dmin<={rc:g}", dmin <= rc),
        (f"{rc:g}<dmin<={rf:g}", (dmin > rc) & (dmin <= rf)),
        (f"dmin>{rf:g},d<={train_dmax:g}", (dmin > rf) & (d <= train_dmax)),
        (f"dmin>{rf:g},d>{train_dmax:g}", (dmin > rf) & (d > train_dmax)),
    ):
        if sel.sum() == 0:
            continue
        idx = np.flatnonzero(sel)
        fe = np.concatenate([df[i] for i in idx]) - np.concatenate([df_ref[i] for i in idx])
        fr = np.concatenate([df_ref[i] for i in idx])
        out[region] = dict(
            pairs=int(sel.sum()),
            dE_mae_meV=1000 * float(np.abs(de[idx] - de_ref[idx]).mean()),
            dE_mean_abs_meV=1000 * float(np.abs(de_ref[idx]).mean()),
            dF_water_mae_meV_A=1000 * float(np.abs(fe).mean()),
            dF_water_mean_abs_meV_A=1000 * float(np.abs(fr).mean()),
        )
    return out


def evaluate_boxes(models: Dict[str, object], data: Path) -> dict:
    test = ase.io.read(data / "boxes" / "test.extxyz", ":")
    e_ref, f_ref = _exact(test)
    boxes = np.array([a.info["box"] for a in test])
    sets = {b: test[int(np.flatnonzero(boxes == b)[0])].info["set"] for b in np.unique(boxes)}
    res: dict = dict(
        sizes={f"{b:g}": dict(set=s, ions=len(test[int(np.flatnonzero(boxes == b)[0])])) for b, s in sets.items()},
        variants={},
    )
    for name, model in models.items():
        e, f = predict(model, test)
        per = {}
        for b in np.unique(boxes):
            idx = np.flatnonzero(boxes == b)
            per[f"{b:g}"] = _mae(
                [test[i] for i in idx], e[idx], [f[i] for i in idx], e_ref[idx], [f_ref[i] for i in idx]
            )
        for s in ("trained_size", "unseen_size"):
            idx = np.flatnonzero([a.info["set"] == s for a in test])
            if len(idx):
                per[s] = _mae([test[i] for i in idx], e[idx], [f[i] for i in idx], e_ref[idx], [f_ref[i] for i in idx])
        res["variants"][name] = per
    return res


# --------------------------------------------------------------------------- report
def print_tables(results: dict) -> None:
    dm = results.get("dimers")
    if dm:
        print(
            f"\nDIMERS (cutoff {dm['cutoff']:g} Å, receptive field {dm['receptive_field']:g} Å, trained d <= {dm['train_dmax']:g} Å)"
        )
        print(
            f"  {'subset':44s} {'variant':10s} {'frames':>6s} {'E MAE meV':>10s} {'meV/atom':>9s} {'F MAE meV/Å':>12s} {'<|F|>':>7s}"
        )
        first = next(iter(dm["variants"]))
        for key in dm["variants"][first]["mae"]:
            for v in dm["variants"]:
                m = dm["variants"][v]["mae"][key]
                print(
                    f"  {key:44s} {v:10s} {m['frames']:6d} {m['energy_mae_meV']:10.1f} {m['energy_mae_meV_atom']:9.1f} {m['force_mae_meV_A']:12.1f} {m['force_mean_abs_meV_A']:7.1f}"
                )
        print(
            f"\n  interaction energy beyond the receptive field (closest intermolecular pair > {dm['receptive_field']:g} Å): mean |error| / mean |exact tail|"
        )
        print(
            f"  {'region/kind':36s} {'frames':>6s} {'<|tail|> meV':>12s} "
            + " ".join(f"{v + ' err (frac)':>22s}" for v in dm["variants"])
        )
        for key in dm["variants"][first]["tail"]:
            t = dm["variants"][first]["tail"][key]
            cells = " ".join(
                f"{dm['variants'][v]['tail'][key]['mean_abs_error_meV']:12.1f} ({dm['variants'][v]['tail'][key]['fraction']:5.2f})  "
                for v in dm["variants"]
            )
            print(f"  {key:36s} {t['frames']:6d} {t['mean_abs_tail_meV']:12.1f} {cells}")
        print("\n  charge pairs (same geometry, Na+ vs neutral Na + water): error of the predicted difference")
        print(
            f"  {'region':18s} {'variant':15s} {'pairs':>5s} {'dE MAE':>8s} {'<|dE|>':>8s} {'dF(water) MAE':>14s} {'<|dF|>':>8s}"
        )
        rows = dict(dm["variants"])
        for region in dm["charge_pairs_no_charge_input"]:
            for v in list(rows) + ["no charge input"]:
                c = (rows[v]["charge_pairs"] if v in rows else dm["charge_pairs_no_charge_input"])[region]
                print(
                    f"  {region:18s} {v:15s} {c['pairs']:5d} {c['dE_mae_meV']:8.1f} {c['dE_mean_abs_meV']:8.1f} {c['dF_water_mae_meV_A']:14.1f} {c['dF_water_mean_abs_meV_A']:8.1f}"
                )
    bx = results.get("boxes")
    if bx:
        print("\nBOXES (±1 point charges, PME labels)")
        print(
            f"  {'box':>14s} {'ions':>5s} {'set':13s} "
            + " ".join(f"{v + ' E/F':>22s}" for v in bx["variants"])
            + "".join(f" {'F loc/' + v:>18s}" for v in bx["variants"] if v != "local")
        )
        for b, info in bx["sizes"].items():
            cells = " ".join(
                f"{bx['variants'][v][b]['energy_mae_meV_atom']:8.1f} {bx['variants'][v][b]['force_mae_meV_A']:13.1f}"
                for v in bx["variants"]
            )
            local = bx["variants"].get("local", {}).get(b, {}).get("force_mae_meV_A", float("nan"))
            ratios = "".join(
                f" {local / bx['variants'][v][b]['force_mae_meV_A']:18.2f}" for v in bx["variants"] if v != "local"
            )
            print(f"  {'L = ' + b + ' Å':>14s} {info['ions']:5d} {info['set']:13s} {cells}{ratios}")
        print("  (E in meV/atom, F in meV/Å)")


def make_plots(results: dict, img_dir: Path) -> List[str]:
    # matplotlib's backend must be chosen before pyplot is imported; only the plots need either
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    colors = {"attention": "tab:blue", "local": "tab:orange", "sinc_pairs": "tab:green"}
    labels = {
        "attention": "node attention, minimum-image bias",
        "local": "local only",
        "sinc_pairs": "node attention, sinc_pairs",
    }
    dm = results.get("dimers")
    if dm:
        sc = dm["scan"]
        kinds = np.array(sc["kind"])
        d = np.array(sc["d"])
        dmin = np.array(sc["dmin"])
        titles = {"na_water": "Na$^+$ + water (charge +1)", "nh4_formate": "NH$_4^+$ + HCOO$^-$ (charge 0)"}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, kind in zip(axes, ("na_water", "nh4_formate")):
            m = kinds == kind
            ax.plot(d[m], np.array(sc["exact"])[m], "k-", lw=2, label="exact (OpenMM)")
            for v in dm["variants"]:
                ax.plot(
                    d[m], np.array(dm["variants"][v]["scan_energy"])[m], "--", color=colors[v], lw=1.6, label=labels[v]
                )
            for x, txt in (
                (_first_beyond(d[m], dmin[m], dm["cutoff"]), "no edge\nacross"),
                (_first_beyond(d[m], dmin[m], dm["receptive_field"]), "beyond\nL×cutoff"),
            ):
                if x is not None:
                    ax.axvline(x, color="gray", lw=0.8, ls=":")
                    ax.text(x, 0.02, txt, transform=ax.get_xaxis_transform(), fontsize=7, color="gray", ha="left")
            ax.axvspan(dm["train_dmax"], d[m].max(), color="0.92", zorder=0)
            ax.text(
                dm["train_dmax"] + 0.2, 0.9, "not trained", transform=ax.get_xaxis_transform(), fontsize=8, color="0.4"
            )
            ax.set_title(titles[kind])
            ax.set_xlabel("separation d (Å)")
            ax.set_ylabel("interaction energy (eV)")
            lo = min(
                np.array(sc["exact"])[m].min(),
                min(np.array(dm["variants"][v]["scan_energy"])[m].min() for v in dm["variants"]),
            )
            ax.set_ylim(lo - 0.1 * abs(lo), max(0.25 * abs(lo), 0.2))
            ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        p = img_dir / "longrange_dimer_curves.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(str(p))
        # |error| against separation on the test frames, next to the exact |tail|
        t = dm["test"]
        kinds, d, exact = np.array(t["kind"]), np.array(t["d"]), np.array(t["exact"])
        edges = np.arange(2.0, 15.01, 1.0)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
        for ax, kind in zip(axes, ("na_water", "nh4_formate")):
            centres, rows = [], {"exact": [], **{v: [] for v in dm["variants"]}}
            for lo, hi in zip(edges[:-1], edges[1:]):
                m = (kinds == kind) & (d >= lo) & (d < hi)
                if m.sum() < 3:
                    continue
                centres.append(0.5 * (lo + hi))
                rows["exact"].append(1000 * np.abs(exact[m]).mean())
                for v in dm["variants"]:
                    rows[v].append(1000 * np.abs(np.array(dm["variants"][v]["test_energy"])[m] - exact[m]).mean())
            ax.semilogy(centres, rows["exact"], "k-o", ms=3, lw=2, label="mean |exact interaction energy|")
            for v in dm["variants"]:
                ax.semilogy(centres, rows[v], "--o", ms=3, color=colors[v], label=f"mean |error|, {labels[v]}")
            ax.axvspan(dm["train_dmax"], 15.0, color="0.92", zorder=0)
            ax.set_title(titles[kind] + ": random orientations (test)")
            ax.set_xlabel("separation d (Å), 1 Å bins")
            ax.set_ylabel("meV")
            ax.legend(fontsize=7, loc="center left", framealpha=0.9)
        fig.tight_layout()
        p = img_dir / "longrange_dimer_tail.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(str(p))
    bx = results.get("boxes")
    if bx:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        sizes = sorted(bx["sizes"], key=float)
        x = np.array([float(s) for s in sizes])
        for v in bx["variants"]:
            y = [bx["variants"][v][s]["force_mae_meV_A"] for s in sizes]
            ax.plot(x, y, "o-", color=colors[v], label=labels[v])
        y0 = [next(iter(bx["variants"].values()))[s]["force_mean_abs_meV_A"] for s in sizes]
        ax.plot(x, y0, "k:", label="mean |F| (zero model)")
        for s in sizes:
            if bx["sizes"][s]["set"] == "trained_size":
                ax.axvspan(float(s) - 0.3, float(s) + 0.3, color="0.9", zorder=0)
        ax.set_xlabel("box edge L (Å)  (grey: trained sizes)")
        ax.set_ylabel("force MAE (meV/Å)")
        ax.set_title("±1 point charges, PME labels")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = img_dir / "longrange_boxes.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(str(p))
    return written


def _first_beyond(d, dmin, r):
    m = dmin > r
    return float(d[m].min()) if m.any() else None


def machine_info() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        host_cpus=os.cpu_count(),
        cpu=platform.processor() or platform.machine(),
        load_average=load,
        python=platform.python_version(),
        torch=torch.__version__,
        note="shared 2-core CPU machine; one torch thread per training, trainings run one after the other",
        git=_git_state(),
    )


def _git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return dict(
        commit=git("rev-parse", "HEAD"), modified=git("status", "--porcelain", "--untracked-files=no").splitlines()
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="AllScAIP long-range benchmark: node attention with the legacy minimum-image bias, with the "
        "smooth sinc_pairs encoding, and the local-only ablation."
    )
    p.add_argument("--out", default="runs/longrange", help="data, checkpoints and logs")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--epochs-dimers", type=int, default=100)
    p.add_argument("--epochs-boxes", type=int, default=100)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-train", action="store_true", help="evaluate the checkpoints already in --out")
    p.add_argument("--json", default=str(REPO / "bench/results/longrange.json"), help="results file ('' to skip)")
    p.add_argument("--img-dir", default=str(REPO / "docs/img"), help="plots ('' to skip)")
    p.add_argument("--small", action="store_true", help="tiny data and 1 epoch (smoke test)")
    p.add_argument("--train-override", action="append", default=[], help="extra section.key=value for every variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    data = out / "data"
    sizes = Sizes()
    if args.small:
        sizes = Sizes(
            dimers_per_kind=40,
            tail_per_kind=4,
            box_train=[10.0],
            box_test=[12.0],
            box_frames_train=20,
            box_frames_test=4,
            charge_pairs=6,
            scan_step=1.0,
        )
        args.epochs_dimers = args.epochs_boxes = 1
    summary_file = data / "summary.json"
    if (
        summary_file.exists()
        and json.loads(summary_file.read_text()).get("sizes") == json.loads(json.dumps(sizes.__dict__))
        and json.loads(summary_file.read_text()).get("seed") == args.seed
    ):
        print(f"data: reusing {data}")
        data_summary = json.loads(summary_file.read_text())
    else:
        t0 = time.perf_counter()
        data_summary = generate(data, args.seed, sizes)
        data_summary["generate_wall_s"] = time.perf_counter() - t0
        summary_file.write_text(json.dumps(data_summary, indent=1))

    results: dict = dict(
        machine=machine_info(),
        command="python -m allscaip.workflows.longrange.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        data=data_summary,
        training={},
    )
    epochs = {"dimers": args.epochs_dimers, "boxes": args.epochs_boxes}
    for set_name in args.sets:
        results["training"][set_name] = {}
        for variant in args.variants:
            if args.skip_train:
                metrics = out / set_name / variant / "metrics.csv"
                results["training"][set_name][variant] = dict(
                    checkpoint=str(out / set_name / variant / "last.ckpt"),
                    train_time_s=_cpu_seconds(metrics) if metrics.exists() else None,
                    note="--skip-train: trained by an earlier invocation, evaluated by this one",
                )
            else:
                results["training"][set_name][variant] = train(
                    set_name, variant, data, out, epochs[set_name], args.seed, args.train_override, args.threads
                )
        models = {v: load_model(out / set_name / v / "last.ckpt", dtype=torch.float64) for v in args.variants}
        for v, model in models.items():
            results["training"][set_name][v]["model_config"] = dataclasses.asdict(model.cfg)
        if set_name == "dimers":
            results["dimers"] = evaluate_dimers(models, data, sizes.train_dmax)
        else:
            results["boxes"] = evaluate_boxes(models, data)
    print_tables(results)
    if args.img_dir:
        results["plots"] = [
            str(Path(x).relative_to(REPO)) if Path(x).is_relative_to(REPO) else x
            for x in make_plots(results, Path(args.img_dir))
        ]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
