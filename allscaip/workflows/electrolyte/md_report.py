"""The MD section of docs/electrolyte.md and its plot, from the ``md`` results of :mod:`.md_cli`
(:func:`.report.markdown` includes it when the evaluation JSON has them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from allscaip.workflows.electrolyte.md_lammps import DEFAULT_LENGTHS_PS, TIMESTEP_FS
from allscaip.workflows.electrolyte.structure import PAIRS

#: production shorter than this (ps) is a check of the chain, not a measurement of the structure: Na–Cl contact
#: pairs form and break on a 10-100 ps scale, so shorter runs describe the start frame
MIN_MEASURED_NVT_PS = 10.0
#: the issue's acceptance thresholds for the MD
MAX_PEAK_DEVIATION = 0.10  # |model Na–Cl first peak / teacher's - 1|, at most
MAX_RANK_DIFFERENCE = 1e-10  # 1 against N ranks, float64, relative
COLORS = {"teacher": "black"}


def plot(md: Dict[str, Any], img_dir: Path) -> Path:
    """Na–Cl, Na–O, Cl–O g(r) of every run, block-error bands; returns the png's path."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: files only
    import matplotlib.pyplot as plt
    import numpy as np

    img_dir.mkdir(parents=True, exist_ok=True)
    path = img_dir / "electrolyte_md_rdf.png"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (a, b) in zip(axes, PAIRS):
        for label, s in md["structure"].items():
            d = s["rdf"][f"{a}-{b}"]
            r, g, e = (np.asarray(d[k]) for k in ("r_A", "g", "g_err"))
            line = ax.plot(r, g, color=COLORS.get(label), label=label)[0]
            ax.fill_between(r, g - e, g + e, color=line.get_color(), alpha=0.3, lw=0)
        if (a, b) == ("Na", "Cl"):
            cut = next(iter(md["structure"].values()))["cip_cutoff_A"]
            ax.axvline(cut, color="gray", ls=":", label=f"CIP cut-off {cut:g} Å")
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.set_xlabel(f"r {a}–{b} (Å)")
        ax.set_ylabel("g(r)")
        ax.set_xlim(left=1.5)
        ax.legend(fontsize=8)
    L = md["lengths_ps"]
    fig.suptitle(
        f"NaCl(aq), {md['start']['n_atoms']} atoms, NVT {md['temperature_K']:g} K, {L['nvt']:g} ps after "
        f"{L['equilibration']:g} ps (bands: ± block standard error)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pm(d: Dict[str, float], value: str, err: str, spec: str) -> str:
    return f"{format(d[value], spec)} ± {format(d[err], spec)}"


def short(md: Dict[str, Any]) -> bool:
    """Whether the production run is too short to measure the structure (:data:`MIN_MEASURED_NVT_PS`)."""
    return md["lengths_ps"]["nvt"] < MIN_MEASURED_NVT_PS


def peak_ratio(md: Dict[str, Any]) -> float:
    """The model's Na–Cl first-peak height over the teacher's (inf where the teacher has no contact pair)."""
    m, t = (md["structure"][k]["nacl_peak"]["height"] for k in (md["model"], "teacher"))
    return m / t if t > 0 else float("inf")


def verdicts(md: Dict[str, Any]) -> Dict[str, bool]:
    out = {}
    s = md["structure"]
    if "teacher" in s and md["model"] in s:
        out["peak"] = abs(peak_ratio(md) - 1.0) <= MAX_PEAK_DEVIATION
    if "rank_check" in md:
        rc = md["rank_check"]
        out["ranks"] = max(rc[f"{k}_rel_diff"] for k in ("energy", "forces", "virial")) <= MAX_RANK_DIFFERENCE
    return out


def acceptance_rows(md: Dict[str, Any]) -> List[str]:
    """Rows of the page's acceptance table for the MD checks measured."""
    ok, s, rows = verdicts(md), md["structure"], []
    if "peak" in ok:
        m, t = s[md["model"]]["nacl_peak"], s["teacher"]["nacl_peak"]
        rows.append(
            f"| Na–Cl first peak, {md['model']} (LAMMPS, {md['runs'][md['model']]['ranks']} ranks) / teacher | "
            f"within {MAX_PEAK_DEVIATION:.0%} | {peak_ratio(md):.2f} ({m['height']:.2f} ± "
            f"{m['height_err']:.2f} / {t['height']:.2f} ± {t['height_err']:.2f}) | "
            + ("pass" if ok["peak"] else "**fail**")
            + (f" (short check, {md['lengths_ps']['nvt']:g} ps: not a measurement)" if short(md) else "")
            + " |"
        )
    if "ranks" in ok:
        rc = md["rank_check"]
        worst = max(rc[f"{k}_rel_diff"] for k in ("energy", "forces", "virial"))
        rows.append(
            f"| 1 against {rc['ranks']} ranks, float64, one frame | ≤ {MAX_RANK_DIFFERENCE:g} relative | "
            f"{worst:.1e} | {'pass' if ok['ranks'] else '**fail**'} |"
        )
    return rows


def section(md: Dict[str, Any], image: str) -> List[str]:
    """The page's MD section (``image``: the plot's path relative to the page)."""
    L, name = md["lengths_ps"], md["model"]
    run = md["runs"][name]
    default_steps = round(1000 * sum(DEFAULT_LENGTHS_PS.values()) / TIMESTEP_FS)
    out = [
        "## MD: structure of the solution, model in LAMMPS against the teacher in OpenMM",
        "",
        f"Written by `{md['command']}`. Start: the test frame with {md['start']['n_atoms']} atoms (box "
        f"{md['start']['box_A']:.1f} Å, the most concentrated test solution). Both engines: Langevin NVT at "
        f"{md['temperature_K']:g} K with a 1/ps friction, {md['timestep_fs']:g} fs steps, no minimisation, "
        f"{L['equilibration']:g} ps equilibration, then {L['nvt']:g} ps with a frame every {md['dump_fs']:g} fs. "
        f"The model ({name}, `{md['checkpoint']}`) runs `examples/electrolyte/in.nacl` in LAMMPS on "
        f"{run['ranks']} MPI ranks and then {L['nve']:g} ps NVE; the teacher runs in OpenMM (CPU). "
        "mdtraj reads both DCD trajectories with one PDB topology and computes the RDFs (minimum image).",
        "",
        "Run it with `python -m allscaip.workflows.electrolyte md --model CKPT` (defaults: the real protocol "
        "above with 2 ps + 20 ps + 2 ps; `--help` and examples/electrolyte/README.md for the options and the "
        "shorter checks).",
        "",
    ]
    if short(md):
        out += [
            f"**The numbers below come from a short check of the chain ({L['equilibration']:g} + {L['nvt']:g} + "
            f"{L['nve']:g} ps), not from a measurement:** both runs are still at their common start frame, so their "
            "RDFs, peak heights and CIP fractions describe that frame, and the drift is a few steps' fluctuation. "
            f"A production run needs at least {MIN_MEASURED_NVT_PS:g} ps of NVT (the default is 20).",
            "",
        ]
    out += [
        f"![RDFs, model against teacher]({image})",
        "",
        "| run | MD steps/s | mean T (K) | Na–Cl first peak g | at r (Å) | CIP fraction | Na–Cl first minimum (Å) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in md["structure"].items():
        r = md["runs"][label]
        out.append(
            f"| {label} ({r['engine']}) | {r['steps_per_s']:.1f} | {r['nvt_temperature_K']:.1f} | "
            f"{_pm(s['nacl_peak'], 'height', 'height_err', '.2f')} | {s['nacl_peak']['r_A']:.2f} | "
            f"{_pm(s['cip_fraction'], 'value', 'err', '.3f')} | {s['nacl_first_minimum_A']:.2f} |"
        )
    s0 = next(iter(md["structure"].values()))
    out += [
        "",
        f"* **Na–Cl first peak**: the largest g_NaCl(r) between 2.3 and 3.3 Å (contact pairs). Error bars: "
        f"{s0['n_blocks']} consecutive blocks of the production run, standard error of the block values.",
        f"* **CIP fraction**: the fraction of Na⁺ with at least one Cl⁻ within {s0['cip_cutoff_A']:g} Å (the "
        "teacher's first minimum of g_NaCl, Joung–Cheatham ions in TIP3P; the last column measures it on each "
        "run), averaged over frames.",
        f"* **Cost**: the model ran at {run['steps_per_s']:.2f} MD steps/s on {run['ranks']} ranks ({run['n_atoms']} "
        f"atoms; LAMMPS's loop time, start-up excluded), so the default {default_steps} steps "
        f"({' + '.join(f'{v:g}' for v in DEFAULT_LENGTHS_PS.values())} ps) take "
        f"{default_steps / run['steps_per_s'] / 3600:.1f} h on the machine that wrote this page.",
        f"* **NVE drift** ({name}, LAMMPS, {L['nve']:g} ps after production): "
        f"{run['nve']['drift_meV_atom_ps']:+.4f} meV/atom/ps (slope of a line through the total energy, "
        f"{run['nve']['temperature_K']:.1f} K mean).",
    ]
    if "rank_check" in md:
        rc = md["rank_check"]
        out.append(
            f"* **1 against {rc['ranks']} ranks** (float64 export, the start frame, `run 0`): energy "
            f"{rc['energy_rel_diff']:.1e}, forces {rc['forces_rel_diff']:.1e}, virial {rc['virial_rel_diff']:.1e} "
            "(max |difference| / max |value|)."
        )
    return out
