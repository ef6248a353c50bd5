"""The exponential moving average (EMA) of the weights: the model that is validated and exported."""

from __future__ import annotations

import copy

import torch


def ema_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` to average into."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """Average ``model`` into ``ema`` after optimizer step ``step``, with decay
    ``min(decay, (1+step)/(10+step))`` (a short memory early on); buffers are copied."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
