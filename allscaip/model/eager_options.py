"""How an eager inference call of :class:`allscaip.model.AllScAIP` runs: the attributes ``recompute``,
``block_precision`` and ``attention_kernel``, their valid values, and the one check of a value.

They change speed and memory, not the model: none is saved with the weights, the exports ignore
them (TorchScript never compiles the places that read them) and training keeps the defaults'
behaviour where it needs it (see each). docs/model.md, "Layout and speed" and "Precision"."""

from __future__ import annotations

from typing import Sequence

import torch

RECOMPUTE_CHOICES = ("none", "layers")
"""``AllScAIP.recompute``: "layers" runs each block's local stage in slices of centres that keep only
their inputs in the forward and run again in the force backward (activation checkpointing;
``AllScAIP.recomputing``)."""

ATTENTION_KERNEL_CHOICES = ("eager", "compiled")
"""``AllScAIP.attention_kernel``: "compiled" runs the neighbour attention's norms, Legendre logits,
softmax and values through Inductor (:func:`allscaip.model.layers.compiled_attention_core`), and the
neighbour stage's RMS norms (:func:`allscaip.model.layers.compiled_rms_norm`), in eager inference;
training and the exports keep the eager operators."""

BLOCK_PRECISION_CHOICES = ("float32", "bfloat16")
"""``AllScAIP.block_precision``: "bfloat16" runs the blocks' matrix products (eager, on a float32
model) in bfloat16 under autocast, with float32 accumulation; the geometry (edge vectors, angles,
envelope, radial basis, strain) and the readout stay in float32."""


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Refuse a ``value`` of option ``name`` that is not one of ``choices``, listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def bfloat16_products(nodes: torch.Tensor) -> torch.autocast:
    """The autocast context of ``block_precision = "bfloat16"``: matrix products in bfloat16 with
    float32 accumulation, for a float32 model (whose node states ``nodes`` it checks)."""
    if nodes.dtype != torch.float32:
        raise ValueError(
            f"block_precision 'bfloat16' needs a float32 model, got {nodes.dtype}: call model.float(), "
            "or set block_precision back to 'float32'"
        )
    return torch.autocast(nodes.device.type, dtype=torch.bfloat16)
