"""Predict a student's liquid density from the teacher's own NPT ensemble, without student MD.

In the isothermal-isobaric ensemble a configuration ``x`` with volume ``V`` has weight
``exp(-β (U(x) + P V))``. The student's ensemble is therefore the teacher's, reweighted by
``exp(-β ΔU)`` with ``ΔU = U_student − U_teacher`` on the same frame (the ``P V`` term is
common). Given teacher NPT frames (``python -m allscaip.workflows.teacher.active --teacher ...``) and a
student model, this module evaluates ΔU on every frame and estimates the student's mean
density two ways:

* **exponential reweighting**, ``Σ ρ_i w_i / Σ w_i`` with ``w_i = exp(-β ΔU_i)``: exact in
  the limit of many frames, but with a box-level energy error of a few kT only a handful of
  frames carry the weight (the Kish effective sample size says how many);
* **second cumulant** (linear response), ``⟨ρ⟩_t − β Cov_t(ρ, ΔU)``: exact when ρ and ΔU are
  jointly Gaussian, and well conditioned whatever the spread of ΔU.

The error bars come from a moving-block bootstrap over the (time-ordered, correlated) frames.
A student MD run costs hours on a CPU; this takes minutes, so it screens candidate models
before the acceptance run (``allscaip liquid``), which stays the verdict::

    python -m allscaip.workflows.teacher.reweight --frames teacher_npt.extxyz --model a.ckpt b.pt2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.io import read
from tqdm import tqdm

from allscaip.calculator import AllScAIPCalculator
from allscaip.checkpoint import load_model
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip.units import BOLTZMANN_KJ_PER_MOL_K, EV_TO_KJ_PER_MOL, mass_density_g_cm3


@dataclass
class DensityPrediction:
    """A student's predicted mean density from the teacher's ensemble (g/cm³, kJ/mol)."""

    model: str
    n_frames: int
    teacher_density: float
    teacher_density_err: float
    cumulant_density: float
    cumulant_density_err: float
    reweighted_density: float
    reweighted_density_err: float
    effective_frames: float  # Kish effective sample size of the exponential weights
    mean_error_kj_mol_per_molecule: float
    error_spread_kT_per_box: float  # standard deviation of ΔU over the frames, in kT
    density_slope_kT: float  # d⟨ΔU⟩/d(ρ/⟨ρ⟩) along the ensemble, kT per box

    @property
    def cumulant_shift_percent(self) -> float:
        return 100.0 * (self.cumulant_density / self.teacher_density - 1.0)

    @property
    def reweighted_shift_percent(self) -> float:
        return 100.0 * (self.reweighted_density / self.teacher_density - 1.0)


def cumulant_mean(x: np.ndarray, du_kT: np.ndarray) -> float:
    """``⟨x⟩ − Cov(x, ΔU/kT)``: the reweighted mean of ``x`` to second order in ΔU."""
    return float(x.mean() - np.mean((x - x.mean()) * (du_kT - du_kT.mean())))


def reweighted_mean(x: np.ndarray, du_kT: np.ndarray) -> tuple[float, float]:
    """``Σ x w / Σ w`` with ``w = exp(−ΔU/kT)``, and the Kish effective sample size."""
    w = np.exp(-(du_kT - du_kT.min()))
    return float((x * w).sum() / w.sum()), float(w.sum() ** 2 / (w * w).sum())


def block_bootstrap(stat, arrays: Sequence[np.ndarray], block: int, n_boot: int = 400, seed: int = 0) -> float:
    """Standard error of ``stat(*arrays)`` by a moving-block bootstrap with blocks of ``block``
    consecutive frames (keeps the time correlation inside a block)."""
    n = len(arrays[0])
    block = max(1, min(block, n))
    rng = np.random.default_rng(seed)
    starts_max = n - block + 1
    n_blocks = int(np.ceil(n / block))
    values = []
    for _ in range(n_boot):
        starts = rng.integers(0, starts_max, n_blocks)
        idx = (starts[:, None] + np.arange(block)[None, :]).reshape(-1)[:n]
        values.append(stat(*[a[idx] for a in arrays]))
    return float(np.std(values, ddof=1))


def predict(
    density: np.ndarray, du_kj_mol: np.ndarray, temperature_K: float, n_molecules: int, model: str = "", block: int = 20
) -> DensityPrediction:
    """The student's density from the teacher frames' densities and ΔU (kJ/mol per box)."""
    rho = np.asarray(density, dtype=float)
    du = np.asarray(du_kj_mol, dtype=float) / (BOLTZMANN_KJ_PER_MOL_K * temperature_K)
    rw, ess = reweighted_mean(rho, du)
    drho = (rho - rho.mean()) / rho.mean()
    slope = float(np.polyfit(drho, du, 1)[0]) if rho.std() > 0 else float("nan")
    return DensityPrediction(
        model=model,
        n_frames=len(rho),
        teacher_density=float(rho.mean()),
        teacher_density_err=block_bootstrap(np.mean, [rho], block),
        cumulant_density=cumulant_mean(rho, du),
        cumulant_density_err=block_bootstrap(cumulant_mean, [rho, du], block),
        reweighted_density=rw,
        reweighted_density_err=block_bootstrap(lambda r, d: reweighted_mean(r, d)[0], [rho, du], block),
        effective_frames=ess,
        mean_error_kj_mol_per_molecule=float(np.asarray(du_kj_mol).mean() / n_molecules),
        error_spread_kT_per_box=float(du.std()),
        density_slope_kT=slope,
    )


def model_energies_ev(model: str, frames: Sequence[Atoms], batch_size: int = 1, dtype: str = "float32") -> np.ndarray:
    """Energies (eV) of ``frames`` under ``model``: a checkpoint (batched, energy only) or an
    exported ``.pt``/``.pt2`` (one frame per call, through the ASE calculator)."""
    out = []
    if Path(model).suffix.lower() == ".ckpt":
        dt = {"float64": torch.float64, "float32": torch.float32}[dtype]
        net = load_model(model, dtype=dt, device="cpu").eval()
        for k in tqdm(range(0, len(frames), batch_size), desc=Path(model).name, mininterval=5):
            batch = atoms_to_batch(list(frames[k : k + batch_size]), dtype=dt)
            with torch.no_grad():
                out.append(compute_properties(net, batch, forces=False)["energy"].double().numpy())
        return np.concatenate(out)
    calc = AllScAIPCalculator(model)
    for a in tqdm(frames, desc=Path(model).name, mininterval=5):
        s = a.copy()
        s.calc = calc
        out.append(s.get_potential_energy())
    return np.asarray(out)


def frame_densities(frames: Sequence[Atoms]) -> np.ndarray:
    """Density (g/cm³) of each frame from its atoms and cell."""
    return np.array([mass_density_g_cm3(a.get_masses().sum(), a.get_volume()) for a in frames])


def report_lines(p: DensityPrediction) -> list[str]:
    return [
        f"{p.model}: {p.n_frames} teacher frames, teacher ρ {p.teacher_density:.4f} ± {p.teacher_density_err:.4f}",
        f"  student ρ, second cumulant   {p.cumulant_density:.4f} ± {p.cumulant_density_err:.4f} "
        f"({p.cumulant_shift_percent:+.1f} %)",
        f"  student ρ, exp. reweighting  {p.reweighted_density:.4f} ± {p.reweighted_density_err:.4f} "
        f"({p.reweighted_shift_percent:+.1f} %, {p.effective_frames:.1f} effective frames)",
        f"  ΔU: mean {p.mean_error_kj_mol_per_molecule:+.3f} kJ/mol per molecule, spread {p.error_spread_kT_per_box:.2f} kT "
        f"per box, slope {p.density_slope_kT:+.1f} kT per unit relative density",
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", required=True, nargs="+", help="teacher NPT frames (extxyz, time order, labelled)")
    ap.add_argument("--model", required=True, nargs="+", help="student models (.ckpt, .pt or .pt2)")
    ap.add_argument("--temperature", type=float, default=None, help="K (default: the frames' temperature_K)")
    ap.add_argument("--block", type=int, default=20, help="bootstrap block length in frames (default 20)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the predictions here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = [a for path in args.frames for a in read(path, ":")]
    temps = {a.info.get("temperature_K") for a in frames}
    temperature = args.temperature or (temps.pop() if len(temps) == 1 and None not in temps else None)
    if temperature is None:
        ap.error(f"the frames carry temperatures {sorted(t for t in temps if t)}; give --temperature")
    sizes = {len(a) // 3 for a in frames}
    if len(sizes) != 1:
        ap.error(f"all frames must hold the same number of molecules, got {sorted(sizes)}")
    n_molecules = sizes.pop()
    rho = frame_densities(frames)
    e_teacher = np.array([a.get_potential_energy() for a in frames])
    results = []
    for model in args.model:
        t0 = time.perf_counter()
        du = (model_energies_ev(model, frames) - e_teacher) * EV_TO_KJ_PER_MOL
        p = predict(rho, du, temperature, n_molecules, model, args.block)
        results.append(p)
        for line in report_lines(p):
            print(line)
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    asdict(p)
                    | {
                        "cumulant_shift_percent": p.cumulant_shift_percent,
                        "reweighted_shift_percent": p.reweighted_shift_percent,
                    }
                    for p in results
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
