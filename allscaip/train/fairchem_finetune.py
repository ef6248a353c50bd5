"""Fine-tuning a converted fairchem AllScAIP (``allscaip convert-fairchem``) with the trainer.

``run.init_from`` names the converted checkpoint; its model family tells the trainer to build
fairchem's network (:class:`~allscaip.model.fairchem_allscaip.FairchemAllScAIP`) from the file
instead of our AllScAIP from the ``model`` section, which must then be empty but for
``elements`` (it would be ignored otherwise). The run starts at the file's EMA weights; a
resumed run (``--resume``) rebuilds the same network from its own ``last.ckpt``.

Energy: the converted model's output is the total energy (network times fairchem's normaliser plus
the task's element references), compared with the labels as our models' is. The element
references and normalisers stay those of the file (they are not weights; labels must be total
energies on the task's reference, e.g. OMol25's ωB97M-V/def2-TZVPD in eV). The loss scales come
from the training data, as for our models. Charge and spin: per structure from ``atoms.info``
(defaults 0 and 1, fairchem's omol defaults). A direct-force model has no stress: its stress term
is off.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from ase.data import chemical_symbols

from allscaip.checkpoint import FAIRCHEM_FAMILY, load_checkpoint, model_family_of, model_from_payload
from allscaip.config import ModelConfig
from allscaip.config_schema import ConfigError
from allscaip.model.fairchem_allscaip import FairchemAllScAIP
from allscaip.train.config import TrainConfig
from allscaip.train.fitting import data_references_and_scales


def converted_start(cfg: TrainConfig, resumed: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The payload a converted fairchem model starts from: the resumed ``last.ckpt`` when it holds one,
    else ``run.init_from``'s when that holds one; None when the run trains our own model."""
    if resumed is not None:
        return resumed if model_family_of(resumed) == FAIRCHEM_FAMILY else None
    if not cfg.run.init_from:
        return None
    if not Path(cfg.run.init_from).is_file():
        raise ConfigError(f"run.init_from: {cfg.run.init_from} does not exist (give a training checkpoint .ckpt)")
    init = load_checkpoint(cfg.run.init_from)
    return init if model_family_of(init) == FAIRCHEM_FAMILY else None


def check_fairchem_config(cfg: TrainConfig, source: str) -> None:
    """The model section is the file's: only ``elements`` (which data to read) may be given; the
    density constraint is not available for converted models."""
    defaults = ModelConfig(elements=cfg.model.elements)
    given = sorted(k for k, v in dataclasses.asdict(cfg.model).items() if v != getattr(defaults, k))
    if cfg.model_preset:
        given = ["preset"] + given
    if given:
        raise ConfigError(
            f"{source} holds a converted fairchem AllScAIP, whose architecture comes from the file: remove "
            f"model.{', model.'.join(given)} from the config (only model.elements may be given)"
        )
    if cfg.optim.density_constraint:
        raise ConfigError(
            "optim.density_constraint is not available when fine-tuning a converted fairchem model; set it to false"
        )


def fairchem_training_model(
    payload: Dict[str, Any], cfg: TrainConfig, device: torch.device, dtype: torch.dtype, log: Callable[[str], None]
) -> Tuple[FairchemAllScAIP, TrainConfig]:
    """The converted model at the payload's EMA weights, and ``cfg`` with the stress term off for a
    direct-force model. The data's elements must lie in the model's tables."""
    model = model_from_payload(payload, use_ema=True, dtype=dtype, device=device)
    outside = sorted(set(cfg.model.elements) - set(model.known_elements()))
    if outside:
        raise ConfigError(
            f"the training data hold element(s) {[chemical_symbols[z] for z in outside]} outside the converted "
            f"fairchem model's tables (atomic numbers 1..{model.max_atomic_number}); remove them from the data"
        )
    if model.direct_forces and cfg.optim.stress_coef > 0:
        log("direct-force fairchem model: it has no stress, so the stress term is off (optim.stress_coef = 0)")
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, stress_coef=0.0))
    return model, cfg


def fairchem_loss_scales(
    model: FairchemAllScAIP, train_set: Any, elements: list[int], seed: int, log: Callable[[str], None]
) -> Tuple[Dict[int, float], Dict[str, float]]:
    """The model's own element references of the data's elements (kept, not refitted) and the loss
    scales of the training data (as for our models)."""
    _, loss_scales, e_rms = data_references_and_scales(train_set, elements, seed)
    references = {int(z): float(model.element_references[z]) for z in elements}
    log(
        "fairchem element references and normalisers kept from the converted checkpoint; loss scales from the "
        f"data: energy {loss_scales['energy'] * 1000:.2f} meV/atom, force {loss_scales['force']:.3f} eV/Å"
    )
    return references, loss_scales


def describe(model: FairchemAllScAIP, config: Dict[str, Any]) -> str:
    """One line for the trainer's log."""
    kind = "direct forces" if model.direct_forces else "conserving"
    return f"converted fairchem AllScAIP ({kind}, task {config['task']}), cutoff {model.cutoff} Å"
