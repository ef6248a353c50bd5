"""The ensemble density constraint: keep the reference potential's NPT density.

Frames sampled in the isothermal-isobaric ensemble of the labelling potential (the teacher)
carry, besides energies and forces, the information which configurations that ensemble
visits. Reweighted to the model, the mean density moves, to first order in the energy error
``ΔU = E_model − E_ref`` of each frame, by

    δρ/ρ (%) = −m,    m = mean_i [ 100 (ρ_i/ρ̄ − 1) · ΔU_i / k_B T_i ]

(:mod:`allscaip.workflows.teacher.reweight` checks this prediction against MD). Holding ``m = 0`` is a
constraint on the weights: :meth:`DensityTerm.project` moves them onto it by Newton steps
along ``∇m`` (the smallest weight change that zeroes ``m`` to first order), with ``m`` and
``∇m`` evaluated on all frames (energies only). The trainer does one such step every
``optim.density_every_steps`` and projects the EMA weights before each validation, so the
saved model holds the constraint; ``allscaip constrain-density`` applies it to a finished
checkpoint, optionally holding other quantities fixed meanwhile (:class:`OffsetTerm`, e.g.
the monomer-minus-bulk energy error that sets the heat of vaporization). (A penalty ``c·m²/2`` added to the loss was tried first: under Adam a gradient
that dominates the others is followed at the full learning rate whatever ``c`` is, and it
broke the forces before it moved ``m``; a per-batch estimate of it was too noisy to move ``m``.)
The per-frame weight
``s_i = 100 (ρ_i/ρ̄_g − 1) / k_B T_i`` uses the mean density ρ̄_g of the frame's own
trajectory (``info['traj']``). This is the first-order (cumulant) form of differentiable
trajectory reweighting, with the reference trajectory standing in for the model's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from allscaip.config import ConfigError
from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties
from allscaip.units import BOLTZMANN_EV_PER_K, mass_density_g_cm3

"""Boltzmann's constant in eV/K (exact since the 2019 SI)."""


def density_scores(frames: Sequence[Any]) -> np.ndarray:
    """``s_i = 100 (ρ_i/ρ̄_g − 1) / k_B T_i`` (1/eV) of ensemble frames, grouped by ``info['traj']``."""
    rho = np.array([mass_density_g_cm3(a.get_masses().sum(), a.get_volume()) for a in frames])
    kt = np.array([BOLTZMANN_EV_PER_K * float(a.info["temperature_K"]) for a in frames])
    groups: Dict[str, list] = defaultdict(list)
    for i, a in enumerate(frames):
        groups[str(a.info.get("traj", ""))].append(i)
    out = np.zeros(len(frames))
    for idx in groups.values():
        out[idx] = 100.0 * (rho[idx] / rho[idx].mean() - 1.0) / kt[idx]
    return out


def weighted_energy_error(
    model: torch.nn.Module,
    params: Sequence[torch.Tensor],
    pairs: Sequence[tuple],
    device: torch.device,
    dtype: torch.dtype,
    grad: bool = True,
) -> tuple[float, Optional[list[torch.Tensor]]]:
    """``Σ w_i (E_model − E_ref)_i`` (eV) over ``(frame, w_i)`` pairs and, with ``grad``, its
    gradient with respect to ``params`` (float64). Frozen ``params`` (an EMA copy) are made
    differentiable for the call."""
    if not grad:
        value = 0.0
        with torch.no_grad():
            for a, w in pairs:
                b = atoms_to_batch([a], dtype=dtype).to(device)
                value += float(w) * float((compute_properties(model, b, forces=False)["energy"] - b.energy).sum())
        return value, None
    out = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    value = 0.0
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        for a, w in pairs:
            b = atoms_to_batch([a], dtype=dtype).to(device)
            du = (compute_properties(model, b, forces=False, training=True)["energy"] - b.energy).sum()
            value += float(w) * float(du.detach())
            for g, gi in zip(out, torch.autograd.grad(du * float(w), list(params), allow_unused=True)):
                if gi is not None:
                    g += gi.double()
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return value, out


def select_ensemble_frames(dataset: Any, config_type: str) -> list[int]:
    """Indices of the periodic training frames with ``info['config_type'] == config_type``,
    each with a ``temperature_K``; a clear error when there are none or the set is streamed."""
    base = getattr(dataset, "base", dataset)  # (a validation split's training subset)
    if getattr(base, "streaming", False):
        raise ConfigError("optim.density_constraint needs the training set in memory: set data.stream=false")
    frames = [dataset[i] for i in range(len(dataset))]
    idx = [i for i, a in enumerate(frames) if a.info.get("config_type") == config_type and bool(a.pbc.all())]
    if len(idx) < 2:
        raise ConfigError(
            f"the density constraint needs NPT frames of the labelling potential in data.train, marked "
            f"config_type={config_type!r} (optim.density_config_type) with a temperature_K; found {len(idx)}. "
            f"python -m allscaip.workflows.teacher.active --teacher ... writes such frames"
        )
    missing = [frames[i].info.get("traj", i) for i in idx if "temperature_K" not in frames[i].info]
    if missing:
        raise ConfigError(f"ensemble frames without info['temperature_K'] (first: {missing[0]}); add it to the data")
    return idx


class DensityTerm:
    """The density shift ``m`` of a model on ensemble frames, its gradient, and the projection
    of the model's weights onto ``m = 0`` (see the module docstring)."""

    def __init__(self, frames: Sequence[Any], rank: int = 0, world: int = 1) -> None:
        if len(frames) < 2:
            raise ConfigError(f"the density constraint needs at least 2 ensemble frames, got {len(frames)}")
        self.frames = list(frames)
        self.scores = density_scores(self.frames)
        self.rank, self.world = rank, world
        self.indices: list[int] = list(range(len(self.frames)))
        self.m: Optional[float] = None  # the current -δρ/ρ in percent
        self.grad: Optional[list[torch.Tensor]] = None  # ∇m at the last refresh

    @classmethod
    def from_dataset(cls, dataset: Any, config_type: str, rank: int = 0, world: int = 1) -> "DensityTerm":
        """The term on the frames of ``dataset`` marked ``config_type`` (see :func:`select_ensemble_frames`)."""
        idx = select_ensemble_frames(dataset, config_type)
        term = cls([dataset[i] for i in idx], rank, world)
        term.indices = idx
        return term

    def _shard(self):
        return list(zip(self.frames, self.scores))[self.rank :: self.world]

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def evaluate(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> float:
        """``m`` of ``model`` on every ensemble frame (this rank's share, then all-reduced)."""
        was_training = model.training
        model.eval()
        acc = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for a, s in self._shard():
                b = atoms_to_batch([a], dtype=dtype).to(device)
                du = compute_properties(model, b, forces=False)["energy"].double() - b.energy.double()
                acc[0] += float(s) * du.sum()
                acc[1] += 1.0
        model.train(was_training)
        acc = self._reduce(acc)
        return float(acc[0] / acc[1])

    def refresh(
        self, model: torch.nn.Module, params: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype
    ) -> float:
        """``m`` and its gradient ``∇m`` with respect to ``params`` on every ensemble frame."""
        n = len(self.frames)
        value, grad = weighted_energy_error(
            model, params, [(a, float(sc) / n) for a, sc in self._shard()], device, dtype
        )
        self.m = float(self._reduce(torch.tensor([value], dtype=torch.float64, device=device))[0])
        if self.world > 1:
            flat = self._reduce(torch.cat([g.reshape(-1) for g in grad]))
            grad = [t.view_as(g) for t, g in zip(torch.split(flat, [g.numel() for g in grad]), grad)]
        self.grad = grad
        return self.m

    def project(
        self,
        model: torch.nn.Module,
        params: Sequence[torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
        max_iter: int = 1,
        tol: float = 0.0,
        hold: Sequence["OffsetTerm"] = (),
        hold_tol: float = 1e-3,
    ) -> list[float]:
        """Move ``params`` towards ``m = 0`` by Newton steps ``θ ← θ − m ∇m / |∇m|²``, the smallest
        change of the weights that zeroes ``m`` to first order. Each step re-evaluates ``m`` and
        ``∇m`` first; stops after ``max_iter`` steps or once ``|m| <= tol``. Returns the ``m``
        evaluated before each step (call :meth:`evaluate` for the value after the last).

        ``hold``: quantities to keep at their starting values meanwhile (:class:`OffsetTerm`,
        within ``hold_tol``); each step is then the smallest one that meets all constraints to
        first order, ``Δθ = −Jᵀ (J Jᵀ)⁻¹ c`` with the constraints' gradients as the rows of ``J``
        and their residuals in ``c``. Their values before each step go to ``self.hold_history``."""
        history: list[float] = []
        self.hold_history: list[list[float]] = []
        targets: Optional[list[float]] = None
        for _ in range(max_iter):
            m = self.refresh(model, params, device, dtype)
            held = [h.refresh(model, params, device, dtype) for h in hold]
            values = [v for v, _ in held]
            targets = values if targets is None else targets
            history.append(m)
            self.hold_history.append(values)
            residual = [m] + [v - t for v, t in zip(values, targets)]
            if abs(m) <= tol and all(abs(r) <= hold_tol for r in residual[1:]):
                break
            rows = [torch.cat([g.reshape(-1) for g in grad]) for grad in [self.grad or []] + [g for _, g in held]]
            if float(rows[0].pow(2).sum()) == 0.0:
                raise ConfigError("the density shift does not depend on the trainable weights; nothing to project")
            jac = torch.stack(rows)
            try:
                lam = torch.linalg.solve(jac @ jac.T, torch.tensor(residual, dtype=jac.dtype, device=jac.device))
            except RuntimeError as err:  # (a held quantity parallel to the density shift)
                raise ConfigError(
                    "the held quantities' gradients are parallel to the density shift's: the "
                    "constraints cannot all be met; hold fewer"
                ) from err
            step = jac.T @ lam
            with torch.no_grad():
                offset = 0
                for p in params:
                    p.sub_(step[offset : offset + p.numel()].view_as(p).to(p.dtype))
                    offset += p.numel()
        return history


class OffsetTerm:
    """The mean energy error per atom (meV/atom) on frames of one kind minus that on frames of
    another, e.g. isolated molecules minus bulk boxes. At fixed structures the heat of
    vaporization's error is this difference times the atoms per molecule, so holding it while
    the density is constrained (``DensityTerm.project(hold=...)``) keeps the step from moving
    the gas-versus-liquid energy balance."""

    def __init__(self, first: Sequence[Any], second: Sequence[Any], label: str = "") -> None:
        if not first or not second:
            raise ConfigError(
                f"the offset {label or '(first - second)'} needs frames of both kinds; got "
                f"{len(first)} and {len(second)}"
            )
        self.first, self.second, self.label = list(first), list(second), label

    @classmethod
    def from_frames(cls, frames: Sequence[Any], spec: str, max_frames: Optional[int] = None) -> "OffsetTerm":
        """``spec`` is ``'A:B'``: frames with ``info['config_type']`` A minus those with B, at most
        ``max_frames`` of each (evenly spaced)."""
        kinds = spec.split(":")
        if len(kinds) != 2 or not all(kinds):
            raise ConfigError(f"an offset is two config_types as 'A:B' (e.g. 'monomer:bulk'), got {spec!r}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(
                f"an offset needs at least one frame of each kind; max_frames (--hold-max-frames) is {max_frames}"
            )
        found = sorted({str(a.info.get("config_type")) for a in frames})
        groups = [[a for a in frames if a.info.get("config_type") == k] for k in kinds]
        for k, g in zip(kinds, groups):
            if not g:
                raise ConfigError(f"no frames with config_type={k!r} for the offset {spec!r}; the frames have {found}")
        if max_frames is not None:
            groups = [_evenly_spaced(g, max_frames) for g in groups]
        return cls(groups[0], groups[1], spec)

    def _pairs(self) -> list[tuple]:
        return [
            (a, sign * 1000.0 / len(a) / len(frames))
            for frames, sign in ((self.first, 1.0), (self.second, -1.0))
            for a in frames
        ]

    def evaluate(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> float:
        """The offset (meV/atom)."""
        return weighted_energy_error(model, [], self._pairs(), device, dtype, grad=False)[0]

    def refresh(
        self, model: torch.nn.Module, params: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype
    ) -> tuple[float, list[torch.Tensor]]:
        """The offset (meV/atom) and its gradient with respect to ``params``."""
        value, grad = weighted_energy_error(model, params, self._pairs(), device, dtype)
        return value, grad or []


def _evenly_spaced(frames: Sequence[Any], n: int) -> list:
    """At most ``n`` (>= 1) of ``frames``, evenly spaced (all when there are fewer)."""
    if len(frames) <= n:
        return list(frames)
    if n == 1:
        return [frames[0]]
    return [frames[round(i * (len(frames) - 1) / (n - 1))] for i in range(n)]
