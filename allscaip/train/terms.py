"""Loss terms beyond energy, forces and stress that plug into the trainer.

A term is called before each optimizer step (it may move the weights, or add to the gradient)
and before each validation (it may adjust the EMA weights, and returns values for the metrics
row). The trainer builds its terms from the configuration (:func:`terms_from_config`); a new
term implements :class:`TrainingTerm` and is added there.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import torch

from allscaip.train.config import OptimConfig
from allscaip.train.ensemble import DensityTerm

# the EMA weights drift off the density constraint as they average projected weights: before
# each validation they are projected again, by at most this many Newton steps, to this |m| (%)
EMA_PROJECTION_STEPS = 3
EMA_PROJECTION_TOL = 0.01


class TrainingTerm(Protocol):
    def before_step(
        self,
        step: int,
        model: torch.nn.Module,
        params: Sequence[torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """Called before optimizer step ``step`` (0-based) with the trained model and its parameters."""

    def before_validation(
        self, ema: torch.nn.Module, device: torch.device, dtype: torch.dtype
    ) -> Dict[str, Optional[float]]:
        """Called before the EMA model is validated; returns metrics-row values."""


class DensityConstraint(DensityTerm):
    """The ensemble density constraint (``optim.density_constraint``): a projection of the weights
    onto ``m = 0`` every ``every_steps`` optimizer steps, and of the EMA weights before each
    validation, whose density shift ``-m`` (%) goes into the metrics as ``density_shift_pct``."""

    every_steps: int = 100

    @classmethod
    def from_config(cls, train_set: Any, o: OptimConfig, rank: int, world: int) -> "DensityConstraint":
        term = cls.from_dataset(train_set, o.density_config_type, rank, world)
        term.every_steps = o.density_every_steps
        return term

    def before_step(
        self,
        step: int,
        model: torch.nn.Module,
        params: Sequence[torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        if step % self.every_steps == 0:
            self.project(model, params, device, dtype)

    def before_validation(
        self, ema: torch.nn.Module, device: torch.device, dtype: torch.dtype
    ) -> Dict[str, Optional[float]]:
        ema_params = [p for p in ema.parameters() if p.numel() > 0]
        self.project(ema, ema_params, device, dtype, max_iter=EMA_PROJECTION_STEPS, tol=EMA_PROJECTION_TOL)
        return {"density_shift_pct": -self.evaluate(ema, device, dtype)}


def terms_from_config(
    train_set: Any, o: OptimConfig, rank: int, world: int, log: Callable[[str], None]
) -> List[TrainingTerm]:
    """The loss terms ``o`` asks for."""
    terms: List[TrainingTerm] = []
    if o.density_constraint:
        density = DensityConstraint.from_config(train_set, o, rank, world)
        log(
            f"density constraint: {len(density.indices)} ensemble frames (config_type "
            f"{o.density_config_type!r}), a projection every {o.density_every_steps} steps"
        )
        terms.append(density)
    return terms
