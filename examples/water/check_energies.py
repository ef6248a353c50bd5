"""The student's errors on a labelled file: energy and force MAE/RMSE, the mean signed
energy error per molecule by frame type, and the configurational pressure error on the bulk
frames.

A static check before the liquid MD (docs/validation.md): ΔHvap is a difference of mean
energies, so a systematic error that differs between gas (monomers) and liquid (bulk) shifts
it directly; the density follows the pressure (water: 1000 bar of pressure error moves the
NPT density by about 4.5 %).

    python examples/water/check_energies.py [--model examples/water/model.ckpt] [--data examples/water/data/val.extxyz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.io import read

from allscaip.calculator import AllScAIPCalculator
from allscaip.units import EV_TO_KJ_PER_MOL
from allscaip.workflows.teacher.stress import pressure_bar

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(HERE / "model.ckpt"))
    ap.add_argument("--data", default=str(HERE / "data" / "val.extxyz"))
    args = ap.parse_args()
    calc = AllScAIPCalculator(args.model)
    groups: dict[tuple[str, int], list[float]] = {}
    pressure: dict[float, list[tuple[float, float]]] = {}  # density -> (teacher, student) bar
    e_atom, f_err, s_err = [], [], []  # meV/atom, meV/Å, meV/Å³
    for frame in read(args.data, ":"):
        teacher = frame.get_potential_energy()
        student = frame.copy()
        student.info.update(frame.info)
        student.calc = calc
        de_ev = student.get_potential_energy() - teacher
        err = de_ev / (len(frame) // 3) * EV_TO_KJ_PER_MOL
        e_atom.append(de_ev / len(frame) * 1e3)
        f_err.append((student.get_forces() - frame.get_forces()).ravel() * 1e3)
        groups.setdefault((str(frame.info.get("config_type", "?")), len(frame) // 3), []).append(err)
        if frame.pbc.all() and "stress" in frame.calc.results:
            p_t = pressure_bar(frame.calc.results["stress"])
            p_s = pressure_bar(student.get_stress())
            s_err.append((student.get_stress() - frame.calc.results["stress"]) * 1e3)
            pressure.setdefault(float(frame.info.get("density_g_cm3", 0.0)), []).append((p_t, p_s))
    de, df = np.asarray(e_atom), np.concatenate(f_err)
    line = (
        f"{len(de)} frames: energy MAE {np.abs(de).mean():.2f} RMSE {np.sqrt(np.mean(de**2)):.2f} meV/atom, "
        f"force MAE {np.abs(df).mean():.1f} RMSE {np.sqrt(np.mean(df**2)):.1f} meV/Å"
    )
    if s_err:
        line += f", stress MAE {np.abs(np.concatenate(s_err)).mean():.3f} meV/Å³ (Voigt components)"
    print(line + "\n")
    print(f"{'frames':<10} {'molecules':>9} {'n':>4} {'mean error':>11} {'std error':>10}  (kJ/mol per molecule)")
    for (kind, nmol), errs in sorted(groups.items(), key=lambda kv: kv[0][1]):
        e = np.asarray(errs)
        sem = e.std(ddof=1) / np.sqrt(len(e)) if len(e) > 1 else float("nan")
        print(f"{kind:<10} {nmol:>9} {len(e):>4} {e.mean():>+11.3f} {sem:>10.3f}")
    if pressure:
        print(
            f"\n{'density':<10} {'n':>4} {'teacher':>9} {'student':>9} {'mean error':>11} {'std error':>10}  "
            "(configurational pressure, bar)"
        )
        rows = [(rho, np.asarray(v)) for rho, v in sorted(pressure.items())] + [
            ("all", np.concatenate([np.asarray(v) for v in pressure.values()]))
        ]
        for rho, v in rows:
            d = v[:, 1] - v[:, 0]
            print(
                f"{rho!s:<10} {len(v):>4} {v[:, 0].mean():>9.0f} {v[:, 1].mean():>9.0f} {d.mean():>+11.0f} "
                f"{d.std(ddof=1) / np.sqrt(len(d)):>10.0f}"
            )


if __name__ == "__main__":
    main()
