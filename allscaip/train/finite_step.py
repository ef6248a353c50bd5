"""The trainer's guard against a non-finite step: a NaN or Inf loss or gradient stops training
before the optimizer touches the weights, naming the frames of the batch (docs/errors.md).

Nothing is written for that step, so ``last.ckpt`` / ``best.ckpt`` stay as they were: the last
good state, from which ``--resume`` continues once the cause is fixed.
"""

from __future__ import annotations

from typing import Sequence

import torch

NAMED_FRAMES = 12
"""Frames named in the message; the rest are counted."""


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient is NaN or Inf."""


def step_is_finite(loss_sum: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> bool:
    """Whether the loss and every gradient are finite: one sum (a NaN or Inf anywhere makes it
    non-finite) and one transfer to the host."""
    total = loss_sum.detach().double()
    grads = [p.grad.detach().sum() for p in params if p.grad is not None]
    if grads:
        total = total + torch.stack(grads).sum().double()
    return bool(torch.isfinite(total))


def non_finite_message(epoch: int, step: int, sources: Sequence[str], out_dir: str, world: int) -> str:
    """What happened, which frames the step read, and what to do."""
    shown = ", ".join(sources[:NAMED_FRAMES])
    if len(sources) > NAMED_FRAMES:
        shown += f" and {len(sources) - NAMED_FRAMES} more"
    ranks = f" (this process's part; {world} processes)" if world > 1 else ""
    return (
        f"the loss or its gradient is not finite (NaN or Inf) at epoch {epoch + 1}, optimizer step {step + 1}, "
        f"on the batch of frames{ranks}: {shown}. The weights were not updated and nothing was written: the "
        f"checkpoints in {out_dir} hold the last good state. Look at these frames (overlapping atoms, absurd "
        "energy or force labels) and remove them from the data, or lower optim.lr / set optim.grad_clip; then "
        "continue with --resume"
    )
