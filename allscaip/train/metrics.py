"""Training metrics: the running sums of a period, the row logged at each validation,
``metrics.csv`` and the one-line progress report."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

METRIC_COLUMNS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_energy_mae_meV_atom",
    "train_force_mae_meV_A",
    "val_energy_mae_meV_atom",
    "val_energy_rmse_meV_atom",
    "val_force_mae_meV_A",
    "val_force_rmse_meV_A",
    "val_stress_mae_meV_A3",
    "density_shift_pct",
    "train_time_s",
    "structures_per_s",
]
# running sums since the last metrics row (this process): loss, Σ|ΔE|/N, systems, Σ|ΔF_c|, force components, steps
SUM_KEYS = ["loss", "energy_abs", "n_sys", "force_abs", "n_force", "steps"]
# the row value that decides best.ckpt: the first of these that the row has
SELECTION_KEYS = ("val_force_mae_meV_A", "val_energy_mae_meV_atom", "train_loss")


def metrics_row(
    epoch: int,
    step: int,
    lr: float,
    sums: Sequence[float],
    validation: Dict[str, Optional[float]],
    term_values: Dict[str, Optional[float]],
    elapsed_s: float,
    structures: float,
) -> Dict[str, Any]:
    """The metrics of one period: training errors from the running ``sums`` (:data:`SUM_KEYS`),
    the validation errors, the loss terms' values (e.g. ``density_shift_pct``) and the speed."""
    s = dict(zip(SUM_KEYS, sums))
    row: Dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "train_loss": s["loss"] / max(s["steps"], 1.0),
        "train_energy_mae_meV_atom": 1000.0 * s["energy_abs"] / max(s["n_sys"], 1.0),
        "train_force_mae_meV_A": 1000.0 * s["force_abs"] / s["n_force"] if s["n_force"] else None,
        **validation,
        "density_shift_pct": None,
        "train_time_s": elapsed_s,
        "structures_per_s": structures / max(elapsed_s, 1e-9),
    }
    row.update(term_values)
    return row


def selection_value(row: Dict[str, Any]) -> float:
    """The value of ``row`` that decides the best checkpoint (lower is better)."""
    key = next((k for k in SELECTION_KEYS if row.get(k) is not None), "train_loss")
    return row[key]


def format_row(r: Dict[str, Any], epochs: int, has_validation: bool, improved: bool) -> str:
    """The one-line report of a metrics row (``*``: a new best checkpoint)."""

    def f(k: str, fmt: str = ".2f") -> str:
        return "-" if r.get(k) is None else format(r[k], fmt)

    line = (
        f"epoch {r['epoch']}/{epochs} step {r['step']} lr {r['lr']:.3g} loss {r['train_loss']:.4g} | "
        f"train E {f('train_energy_mae_meV_atom')} meV/atom F {f('train_force_mae_meV_A', '.1f')} meV/Å"
    )
    if has_validation:
        line += (
            f" | val E {f('val_energy_mae_meV_atom')} meV/atom F MAE {f('val_force_mae_meV_A', '.1f')} "
            f"RMSE {f('val_force_rmse_meV_A', '.1f')} meV/Å"
        )
        if r.get("val_stress_mae_meV_A3") is not None:
            line += f" S {f('val_stress_mae_meV_A3', '.3f')} meV/Å^3"
    if r.get("density_shift_pct") is not None:
        line += f" | density shift {f('density_shift_pct', '+.2f')} %"
    line += f" | {r['train_time_s']:.1f} s, {r['structures_per_s']:.1f} structures/s"
    return line + (" *" if improved else "")


def _csv_row(row: Dict[str, Any]) -> Dict[str, Any]:
    return {k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS}


def append_metrics(path: Path, row: Dict[str, Any]) -> None:
    """Append ``row`` to the CSV file ``path`` (with a header when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(_csv_row(row))


def rewrite_metrics(path: Path, history: List[Dict[str, Any]]) -> None:
    """``path`` = the rows of ``history`` (on resume: drops rows of epochs lost by a kill), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow(_csv_row(row))
    os.replace(tmp, path)
