"""``allscaip liquid-compare``: finished liquid runs against a reference and against each other.

The acceptance questions for a model's liquid are (docs/validation.md): is its density within
a tolerance of the reference (its teacher, or experiment), is its ΔHvap, and do two engines
running the same model agree within their combined error bars? This reads the ``report.json``
of each run, answers each question with the deviation, its error and the verdict, cross-checks
every standard error against a block average of the production samples (a second estimate
that does not rely on the autocorrelation fit), and draws the density and liquid energy of all
runs on one plot::

    allscaip liquid-compare runs/acc7/openmm/model runs/acc7/lammps/model \\
        --reference docs/validation/water64/teacher --plot compare.png --json compare.json

The exit status is 0 when every criterion is met and 1 otherwise, so scripts can gate on it.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from allscaip.workflows.liquid.analysis import running_mean
from allscaip.workflows.liquid.settings import read_records

HELP = "compare finished liquid runs with a reference and with each other (tolerances, σ, verdict, plot)"

EPILOG = """\
examples:
  allscaip liquid-compare runs/w/model runs/w_lmp/model --reference runs/w/teacher
  allscaip liquid-compare RUN_A RUN_B --reference-density 0.9971 --reference-hvap 43.98 --plot cmp.png

RUN is an engine's output directory of `allscaip liquid` (it holds report.json) or the report.json
itself. Exit status 0: every criterion met; 1: at least one failed; 2: bad input.
"""

#: report.json result keys compared (reference tolerance applies to the first two)
DENSITY, HVAP = "density_g_cm3", "hvap_kJ_mol"


@dataclass
class Value:
    """A number with its standard error."""

    mean: float
    stderr: float


@dataclass
class Criterion:
    """One acceptance question and its answer."""

    name: str
    difference: float  # a - b, in the quantity's units
    stderr: float  # of the difference
    relative_percent: Optional[float]
    limit: str  # the rule, in words
    met: bool

    @property
    def sigma(self) -> float:
        return abs(self.difference) / self.stderr if self.stderr > 0 else math.inf


def load_report(path: Path) -> dict:
    """A run's ``report.json`` (given the file or its directory); errors say what is missing."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"{file}: no report.json; give the output directory of a finished `allscaip liquid` run (e.g. OUT/model)"
        )
    rep = json.loads(file.read_text())
    if rep.get("status") != "complete" or "results" not in rep:
        raise ValueError(
            f"{file}: the run is not complete (status {rep.get('status')!r}); "
            "finish it with `allscaip liquid ... --resume`"
        )
    rep["_file"] = str(file)
    return rep


def label_of(rep: dict) -> str:
    pot = rep["potential"]
    if pot["kind"] == "teacher":
        return "teacher"
    name = Path(pot.get("path") or "model").name
    return f"{name} [{rep['engine']}]"


def value_of(rep: dict, key: str) -> Value:
    r = rep["results"][key]
    return Value(float(r.get("mean", r.get("value"))), float(r["stderr"]))


def against_reference(v: Value, ref: Value, tolerance_percent: float, name: str) -> Criterion:
    """|v - ref| <= tolerance of ref (the error bars are reported, not used to widen the limit)."""
    diff = v.mean - ref.mean
    rel = 100.0 * diff / ref.mean
    return Criterion(
        name,
        diff,
        math.hypot(v.stderr, ref.stderr),
        rel,
        f"|Δ| ≤ {tolerance_percent:g} %",
        abs(rel) <= tolerance_percent,
    )


def between_runs(a: Value, b: Value, n_sigma: float, name: str) -> Criterion:
    """|a - b| <= n_sigma × the combined standard error sqrt(se_a² + se_b²)."""
    diff = a.mean - b.mean
    se = math.hypot(a.stderr, b.stderr)
    return Criterion(name, diff, se, 100.0 * diff / b.mean, f"|Δ| ≤ {n_sigma:g} σ", abs(diff) <= n_sigma * se)


def block_stderr(x: np.ndarray, n_blocks: int = 5) -> float:
    """Standard error of the mean from ``n_blocks`` contiguous block means (nan if too short)."""
    x = np.asarray(x, dtype=float)
    m = len(x) // n_blocks
    if m < 2:
        return float("nan")
    means = x[: m * n_blocks].reshape(n_blocks, m).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(n_blocks))


def production_series(rep: dict) -> Dict[str, np.ndarray]:
    """time (ps), density and U_liq/N of the liquid production samples, from the per-segment CSVs."""
    run_dir = Path(rep["_file"]).parent
    files = sorted((run_dir / "liquid").glob("prod_*.csv"))
    if not files:
        return {}
    a = np.concatenate([read_records(f) for f in files])
    n = int(rep["settings"]["n_molecules"])
    return {"time_ps": a[:, 1], DENSITY: a[:, 6], "u_liquid_per_molecule_kJ_mol": a[:, 2] / n}


def block_check(rep: dict, series: Dict[str, np.ndarray]) -> Dict[str, dict]:
    """Per observable: the report's standard error beside a 5-block estimate on the same samples."""
    out = {}
    for key in (DENSITY, "u_liquid_per_molecule_kJ_mol"):
        if key not in series:
            continue
        t0 = int(rep["results"][key]["t0"])
        out[key] = {"stderr": float(rep["results"][key]["stderr"]), "block_stderr": block_stderr(series[key][t0:])}
    return out


def _row(run: str, c: Criterion) -> dict:
    return {"run": run, **asdict(c), "sigma": c.sigma}


def compare(
    runs: List[dict],
    series: List[Dict[str, np.ndarray]],
    reference: Optional[dict],
    ref_density: Optional[Value],
    ref_hvap: Optional[Value],
    density_tol: float,
    hvap_tol: float,
    n_sigma: float,
) -> dict:
    """Every criterion for ``runs`` (``series``: their :func:`production_series`): each against the
    reference (when given), each pair against each other."""
    if reference is not None:
        ref_density = ref_density or value_of(reference, DENSITY)
        ref_hvap = ref_hvap or value_of(reference, HVAP)
    rows: List[dict] = []
    for rep in runs:
        lab = label_of(rep)
        if ref_density is not None:
            rows.append(
                _row(lab, against_reference(value_of(rep, DENSITY), ref_density, density_tol, "density vs reference"))
            )
        if ref_hvap is not None:
            rows.append(_row(lab, against_reference(value_of(rep, HVAP), ref_hvap, hvap_tol, "ΔHvap vs reference")))
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            lab = f"{label_of(runs[i])} − {label_of(runs[j])}"
            rows.append(
                _row(
                    lab,
                    between_runs(
                        value_of(runs[i], DENSITY), value_of(runs[j], DENSITY), n_sigma, "density, run vs run"
                    ),
                )
            )
    return {
        "reference": {
            "density_g_cm3": asdict(ref_density) if ref_density else None,
            "hvap_kJ_mol": asdict(ref_hvap) if ref_hvap else None,
            "report": reference["_file"] if reference else None,
        },
        "tolerances": {"density_percent": density_tol, "hvap_percent": hvap_tol, "between_runs_sigma": n_sigma},
        "runs": [
            {
                "label": label_of(r),
                "report": r["_file"],
                "density_g_cm3": asdict(value_of(r, DENSITY)),
                "hvap_kJ_mol": asdict(value_of(r, HVAP)),
                "production_ps": _production_ps(r),
                "liquid_wall_s": r.get("timing", {}).get("liquid", {}).get("md_wall_s"),
                "block_check": block_check(r, s),
                "warnings": r.get("warnings", []),
            }
            for r, s in zip(runs, series)
        ],
        "criteria": rows,
        "all_met": all(r["met"] for r in rows),
    }


def _production_ps(rep: dict) -> Optional[float]:
    s = rep.get("settings") or {}
    return float(s["production_ps"]) if "production_ps" in s else None


def format_result(res: dict) -> str:
    """The comparison as text: runs, then one line per criterion, then the verdict."""
    lines = []
    ref = res["reference"]
    if ref["density_g_cm3"] or ref["hvap_kJ_mol"]:
        d, h = ref["density_g_cm3"], ref["hvap_kJ_mol"]
        lines.append(
            "reference: "
            + ", ".join(
                s
                for s in (
                    f"ρ {d['mean']:.4f} ± {d['stderr']:.4f} g/cm³" if d else "",
                    f"ΔHvap {h['mean']:.2f} ± {h['stderr']:.2f} kJ/mol" if h else "",
                )
                if s
            )
            + (f"  ({ref['report']})" if ref["report"] else "")
        )
    for r in res["runs"]:
        d, h = r["density_g_cm3"], r["hvap_kJ_mol"]
        prod = f"{r['production_ps']:g} ps" if r["production_ps"] else "?"
        lines.append(
            f"{r['label']}: ρ {d['mean']:.4f} ± {d['stderr']:.4f} g/cm³, ΔHvap {h['mean']:.2f} ± "
            f"{h['stderr']:.2f} kJ/mol ({prod} production)"
        )
        for key, b in r["block_check"].items():
            ratio = b["block_stderr"] / b["stderr"] if b["stderr"] > 0 else float("nan")
            flag = "  <- the error bar may be understated" if ratio > 1.5 else ""
            lines.append(f"    {key}: stderr {b['stderr']:.3g}, 5-block {b['block_stderr']:.3g} (×{ratio:.2f}){flag}")
        for w in r["warnings"]:
            lines.append(f"    warning: {w}")
    lines.append("")
    head = ("criterion", "run", "Δ", "σ(Δ)", "Δ %", "|Δ|/σ", "rule", "")
    table = [head]
    for c in res["criteria"]:
        table.append(
            (
                c["name"],
                c["run"],
                f"{c['difference']:+.4g}",
                f"{c['stderr']:.2g}",
                f"{c['relative_percent']:+.2f}" if c["relative_percent"] is not None else "",
                f"{c['sigma']:.1f}",
                c["limit"],
                "met" if c["met"] else "NOT MET",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for k, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("all criteria met" if res["all_met"] else "NOT all criteria met")
    return "\n".join(lines)


def plot(runs: List[dict], series: List[Dict[str, np.ndarray]], res: dict, path: Path) -> None:
    """Density and U_liq/N against production time for every run (running means bold), with the
    reference density as a band and the ± tolerance as dashed lines."""
    # matplotlib's backend must be chosen before pyplot is imported; only a plot needs either
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(series):
        raise FileNotFoundError("no production samples (liquid/prod_*.csv) next to the reports: nothing to plot")
    fig, axes = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for k, (rep, s) in enumerate(zip(runs, series)):
        if not s:
            continue
        for ax, key in zip(axes, (DENSITY, "u_liquid_per_molecule_kJ_mol")):
            t0 = int(rep["results"][key]["t0"])
            ax.plot(s["time_ps"], s[key], color=f"C{k}", lw=0.5, alpha=0.35)
            st = rep["results"][key]
            ax.plot(
                s["time_ps"][t0:],
                running_mean(s[key][t0:]),
                color=f"C{k}",
                lw=1.8,
                label=f"{label_of(rep)}: {st['mean']:.4g} ± {st['stderr']:.2g}",
            )
    ref = res["reference"]["density_g_cm3"]
    if ref:
        tol = res["tolerances"]["density_percent"] / 100.0 * ref["mean"]
        axes[0].axhspan(
            ref["mean"] - ref["stderr"],
            ref["mean"] + ref["stderr"],
            color="0.6",
            alpha=0.4,
            label=f"reference {ref['mean']:.4f} ± {ref['stderr']:.4f}",
        )
        for sgn in (-1, 1):
            axes[0].axhline(
                ref["mean"] + sgn * tol,
                color="0.3",
                ls="--",
                lw=0.8,
                label=f"± {res['tolerances']['density_percent']:g} %" if sgn > 0 else None,
            )
    axes[0].set_ylabel("density (g/cm$^3$)")
    axes[1].set_ylabel("U$_{liq}$/N (kJ/mol)")
    axes[1].set_xlabel("time (ps)")
    for ax in axes:
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        "liquid runs compared: " + ("all criteria met" if res["all_met"] else "NOT all criteria met"), fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="output directory (or report.json) of a finished run")
    p.add_argument(
        "--reference",
        metavar="RUN",
        help="a finished run (e.g. the teacher's) whose density and ΔHvap are the reference",
    )
    p.add_argument("--reference-density", type=float, metavar="G_CM3", help="reference density instead (or on top)")
    p.add_argument("--reference-hvap", type=float, metavar="KJ_MOL", help="reference ΔHvap instead (or on top)")
    p.add_argument("--density-tol", type=float, default=2.0, help="allowed |Δρ| from the reference, percent")
    p.add_argument("--hvap-tol", type=float, default=3.0, help="allowed |ΔΔHvap| from the reference, percent")
    p.add_argument(
        "--sigma",
        type=float,
        default=2.0,
        help="runs agree when their densities differ by at most this many combined standard errors",
    )
    p.add_argument("--plot", metavar="PNG", help="write the density / energy comparison plot here")
    p.add_argument("--json", metavar="FILE", help="write the comparison here")


def run(args) -> int:
    try:
        runs = [load_report(Path(r)) for r in args.runs]
        reference = load_report(Path(args.reference)) if args.reference else None
    except (FileNotFoundError, ValueError) as err:
        print(f"liquid-compare: {err}")
        return 2
    if reference is None and args.reference_density is None and args.reference_hvap is None and len(runs) < 2:
        print(
            "liquid-compare: nothing to compare: give --reference RUN, --reference-density/--reference-hvap, "
            "or at least two runs"
        )
        return 2
    ref_d = Value(args.reference_density, 0.0) if args.reference_density is not None else None
    ref_h = Value(args.reference_hvap, 0.0) if args.reference_hvap is not None else None
    series = [production_series(r) for r in runs]
    res = compare(runs, series, reference, ref_d, ref_h, args.density_tol, args.hvap_tol, args.sigma)
    print(format_result(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float) + "\n")
    if args.plot:
        try:
            plot(runs, series, res, Path(args.plot))
            print(f"plot: {args.plot}")
        except FileNotFoundError as err:
            print(f"liquid-compare: plot skipped: {err}")
    return 0 if res["all_met"] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="allscaip liquid-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
