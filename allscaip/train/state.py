"""The trainer's checkpoint payload: what ``last.ckpt`` holds, resuming from it, and starting a
fine-tune from another run's weights.

The payload's keys are documented in :mod:`allscaip.checkpoint`; the random-number states of
torch, numpy and Python are stored as tensors and plain values so that the file loads with
``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

import allscaip
from allscaip.checkpoint import OUR_FAMILY, load_checkpoint, model_config_of, model_family_of
from allscaip.config import ModelConfig
from allscaip.config_schema import ConfigError
from allscaip.train.config import TrainConfig
from allscaip.train.metrics import SUM_KEYS

# Model-config fields that shape the graph but no weight: a fine-tune (run.init_from) may change them.
FINE_TUNE_MUTABLE_FIELDS = ("max_neighbors", "core_repulsion", "core_margin")


def model_config_diff(stored: ModelConfig, now: ModelConfig, ignore_elements: bool) -> Dict[str, Tuple[Any, Any]]:
    """Model-config fields that differ between a checkpoint and this run: {field: (checkpoint, now)}.
    ``ignore_elements``: this run takes its elements from the data and has not read them yet."""
    return {
        k: (v, getattr(now, k))
        for k, v in dataclasses.asdict(stored).items()
        if getattr(now, k) != v and not (k == "elements" and ignore_elements)
    }


def resume_payload(cfg: TrainConfig, out_dir: Path) -> Tuple[TrainConfig, Optional[Dict[str, Any]]]:
    """With ``run.resume``: the payload of ``out_dir/last.ckpt`` and ``cfg`` with the checkpoint's
    model config (which must equal this run's). Without: ``(cfg, None)``, after checking that
    ``out_dir`` holds no run unless ``run.overwrite``."""
    ckpt_path = out_dir / "last.ckpt"
    if cfg.run.resume:
        if not ckpt_path.is_file():
            raise ConfigError(f"cannot resume: {ckpt_path} does not exist (run without --resume to start)")
        payload = load_checkpoint(ckpt_path)
        if model_family_of(payload) != OUR_FAMILY:  # its network comes from the file (train/fairchem_finetune.py)
            return cfg, payload
        stored = model_config_of(payload)
        diff = model_config_diff(stored, cfg.model, ignore_elements=cfg.elements_from_data)
        if diff:
            raise ConfigError(
                f"cannot resume: the model config differs from the checkpoint's (checkpoint, now): {diff}"
            )
        return dataclasses.replace(cfg, model=stored, elements_from_data=False), payload
    if ckpt_path.exists() and not cfg.run.overwrite:
        raise ConfigError(
            f"{out_dir} already holds a run ({ckpt_path}); use --resume to continue it, "
            f"run.overwrite=true to start over, or another run.out_dir"
        )
    return cfg, None


def load_initial_weights(
    model: torch.nn.Module, path: str, model_cfg: ModelConfig, device: torch.device, log: Callable[[str], None]
) -> None:
    """Fine-tuning: the (EMA) weights and energy references of checkpoint ``path`` into ``model``;
    the checkpoint's model config must equal ``model_cfg`` but for :data:`FINE_TUNE_MUTABLE_FIELDS`."""
    if not Path(path).is_file():
        raise ConfigError(f"run.init_from: {path} does not exist (give a training checkpoint .ckpt)")
    init = load_checkpoint(path)
    diff = model_config_diff(model_config_of(init), model_cfg, ignore_elements=False)
    changed = {k: diff.pop(k) for k in FINE_TUNE_MUTABLE_FIELDS if k in diff}
    if diff:
        raise ConfigError(
            f"run.init_from: the model config differs from {path}'s (checkpoint, now): {diff}; "
            f"use the checkpoint's model section (only {', '.join(FINE_TUNE_MUTABLE_FIELDS)} may change)"
        )
    for k, (old, new) in changed.items():
        log(f"fine-tune changes model.{k}: {old} -> {new} (no weight depends on it)")
    state = init.get("ema_state") or init["model_state"]
    model.load_state_dict({k: v.to(device=device) for k, v in state.items()})
    log(f"initialised from {path} ({'EMA' if init.get('ema_state') else 'raw'} weights)")


# ----------------------------------------------------------------------------- random-number states


def rng_state(device: torch.device) -> Dict[str, Any]:
    """The torch, numpy, Python (and CUDA on a CUDA device) random-number states."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": py_state[0],
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss": py_state[2],
        },
    }
    if torch.cuda.is_available() and device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return rng


def restore_rng_state(rng: Dict[str, Any], device: torch.device) -> None:
    """Set the random-number states saved by :func:`rng_state`."""
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


# ----------------------------------------------------------------------------- payload


def training_payload(trainer: Any) -> Dict[str, Any]:
    """Everything a checkpoint of ``trainer`` (an :class:`~allscaip.train.trainer.Trainer`) holds."""
    return {
        "allscaip_version": allscaip.__version__,
        "model_family": trainer.model_family,
        "model_config": trainer.model_config_payload(),
        "model_state": trainer.model.state_dict(),
        "ema_state": trainer.ema.state_dict(),
        "element_references": dict(trainer.element_references),
        "train_config": trainer.cfg.to_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "scheduler_state": trainer.scheduler.state_dict(),
        "epoch": trainer.epoch,
        "step": trainer.step,
        "batch_in_epoch": trainer.batch_in_epoch,
        "world_size": trainer.world,
        "accumulate": trainer.cfg.optim.accumulate,
        "rng_state": rng_state(trainer.device),
        "best_val": trainer.best_val,
        "metrics": list(trainer.history),
        "loss_scales": dict(trainer.loss_scales),
        "epoch_sums": {k: float(v) for k, v in zip(SUM_KEYS, trainer.sums.tolist())},
    }


def restore_training_state(trainer: Any, p: Dict[str, Any], per_step: int) -> None:
    """Put ``trainer`` back where payload ``p`` left it; ``per_step``: sampler batches per optimizer
    step now (processes x ``optim.accumulate``), which must divide the batches consumed."""
    trainer.model.load_state_dict(p["model_state"])
    trainer.ema.load_state_dict(p["ema_state"])
    trainer.optimizer.load_state_dict(p["optimizer_state"])
    trainer.scheduler.load_state_dict(p["scheduler_state"])
    trainer.epoch, trainer.step, trainer.batch_in_epoch = int(p["epoch"]), int(p["step"]), int(p["batch_in_epoch"])
    old = int(p.get("world_size", 1)) * int(p.get("accumulate", 1))
    if trainer.batch_in_epoch % per_step:
        raise ConfigError(
            f"cannot resume mid-epoch: the checkpoint consumed {trainer.batch_in_epoch} batches of epoch "
            f"{trainer.epoch} with a global batch of {old} batch(es); now it is {per_step} "
            f"(processes x optim.accumulate)"
        )
    trainer.best_val = float(p["best_val"])
    trainer.history = list(p["metrics"])
    trainer.element_references = {int(k): float(v) for k, v in p["element_references"].items()}
    trainer.loss_scales = dict(p["loss_scales"])
    if trainer.is_main:
        sums = p.get("epoch_sums", {})
        trainer.sums = torch.tensor([float(sums.get(k, 0.0)) for k in SUM_KEYS], dtype=torch.float64)
    restore_rng_state(p["rng_state"], trainer.device)
