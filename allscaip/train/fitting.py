"""What a fresh training run fits from its data before the first step: the element energy
references with the loss scales, and the core-repulsion radii."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch
from ase.data import chemical_symbols

from allscaip.config import ModelConfig
from allscaip.data.references import fit_references_and_rms
from allscaip.train.core_radius import core_radius_from, describe, shortest_distances

# Loss scales never below these, so a training set without spread does not divide by ~0.
ENERGY_SCALE_FLOOR = 1e-4  # eV/atom
FORCE_SCALE_FLOOR = 1e-3  # eV/Å
STRESS_SCALE_FLOOR = 1e-5  # eV/Å^3
# Force and stress RMS from at most this many frames (a random sample of larger sets).
SCALE_SAMPLE_FRAMES = 2000


def data_references_and_scales(
    train_set: Any, elements: list[int], seed: int
) -> Tuple[Dict[int, float], Dict[str, float], float]:
    """Element references (eV, least squares on the training energies), loss scales (``energy``,
    ``force``, ``stress``) and the per-atom energy RMS after those references, of the training set."""
    refs, e_rms = fit_references_and_rms(train_set, elements)
    n = len(train_set)
    idx = (
        np.arange(n)
        if n <= SCALE_SAMPLE_FRAMES
        else np.sort(np.random.default_rng(seed).choice(n, SCALE_SAMPLE_FRAMES, replace=False))
    )
    f2 = fc = s2 = sc = 0.0
    for i in idx:
        res = train_set[int(i)].calc.results
        if res.get("forces") is not None:
            f = np.asarray(res["forces"], dtype=float)
            f2, fc = f2 + float((f**2).sum()), fc + f.size
        if res.get("stress") is not None:
            s = np.asarray(res["stress"], dtype=float)
            s2, sc = s2 + float((s**2).sum()), sc + s.size
    element_references = {int(z): float(refs[z]) for z in elements}
    loss_scales = {
        "energy": max(e_rms, ENERGY_SCALE_FLOOR),
        "force": max(math.sqrt(f2 / fc) if fc else 1.0, FORCE_SCALE_FLOOR),
        "stress": max(math.sqrt(s2 / sc) if sc else 1.0, STRESS_SCALE_FLOOR),
    }
    return element_references, loss_scales, e_rms


def output_scale(choice: float | str, loss_scales: Dict[str, float]) -> float:
    """The model's energy scale (eV per unit readout) for ``optim.energy_scale`` = ``choice``:
    ``force_rms`` is the force RMS times 1 Å (a unit readout gradient per Å then gives forces of
    the data's size), ``energy_rms`` the per-atom energy RMS, a number is taken as it is (eV)."""
    if choice == "force_rms":
        return loss_scales["force"] * 1.0  # eV/Å x 1 Å
    if choice == "energy_rms":
        return loss_scales["energy"]
    return float(choice)


def fit_references(
    model: torch.nn.Module,
    train_set: Any,
    elements: list[int],
    seed: int,
    log: Callable[[str], None],
    energy_scale: float | str = "force_rms",
) -> Tuple[Dict[int, float], Dict[str, float]]:
    """Element references (eV) and loss scales (``energy``, ``force``, ``stress``) of the training
    set, written into the model's ``element_energy``; its ``energy_scale``, which is also the
    loss's energy scale, from ``energy_scale`` (:func:`output_scale`)."""
    element_references, loss_scales, e_rms = data_references_and_scales(train_set, elements, seed)
    scale = output_scale(energy_scale, loss_scales)
    # the energy term of the loss is normalised by the same scale: with force_rms it weighs a
    # per-atom energy error of 1 eV like a force error of 1 eV/Å. The per-atom energy RMS of bulk
    # data (6.8 meV on NaCl(aq)) weighted it 127x more and held the forces at zero.
    loss_scales = {**loss_scales, "energy": scale}
    with torch.no_grad():
        model.element_energy.copy_(torch.tensor([element_references[z] for z in elements], dtype=torch.float64))
        model.energy_scale.fill_(scale)
    refs_txt = ", ".join(f"{chemical_symbols[z]} {e:.4f}" for z, e in element_references.items())
    log(
        f"element references (eV): {refs_txt}; RMS after references {e_rms * 1000:.2f} meV/atom, "
        f"force RMS {loss_scales['force']:.3f} eV/Å; output scale {scale:.4g} eV ({energy_scale})"
    )
    return element_references, loss_scales


def fit_core_radius_of_model(
    model: torch.nn.Module, train_set: Any, cfg: ModelConfig, log: Callable[[str], None]
) -> None:
    """Core-repulsion radii from the training set (``model.core_repulsion``): a wall below the
    shortest contact of each element pair, zero on every training frame. A fine-tune keeps
    the radii of its checkpoint when it has them; without the wall the radii are zero.
    Also records the shortest contact of any pair (``model.shortest_contact``, from which the
    engines' min_distance check follows), kept too when the checkpoint has one."""
    if not cfg.core_repulsion:
        with torch.no_grad():
            model.core_radius.zero_()
    need_radius = cfg.core_repulsion and not bool((model.core_radius > 0).any())
    if not need_radius and float(model.shortest_contact) > 0:
        return
    frames = (train_set[i] for i in range(len(train_set)))
    shortest = shortest_distances(frames, cfg.elements, cfg.cutoff)
    if np.isfinite(shortest).any():
        with torch.no_grad():
            model.shortest_contact.fill_(float(shortest[np.isfinite(shortest)].min()))
    if not need_radius:
        return
    radius = core_radius_from(shortest, cfg.elements, cfg.core_margin)
    with torch.no_grad():
        model.core_radius.copy_(torch.as_tensor(radius))
    log(
        "core repulsion (margin {}):\n  {}".format(
            cfg.core_margin, "\n  ".join(describe(radius, shortest, cfg.elements))
        )
    )
