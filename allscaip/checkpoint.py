"""Training checkpoints: atomic writes, validated loads, and rebuilding the model.

A checkpoint is a ``torch.save`` of a plain dictionary (loadable with ``weights_only=True``):

* ``format`` = ``"allscaip-checkpoint"``, ``checkpoint_version`` (int, see
  :data:`CHECKPOINT_VERSION`), ``allscaip_version`` (the package version that wrote it);
* ``model_config`` (``dataclasses.asdict(ModelConfig)``), ``model_state``, ``ema_state``
  (state dicts of the raw and EMA-averaged model), ``element_references`` ``{Z: eV}``;
* training state: ``train_config`` (resolved config as a dict), ``optimizer_state``,
  ``scheduler_state``, ``epoch`` (epochs completed), ``step`` (optimizer steps taken),
  ``batch_in_epoch`` (sampler batches of epoch ``epoch`` already consumed), ``rng_state``
  (torch / numpy / python), ``best_val``, ``metrics`` (history, list of dicts) and a few
  trainer extras (``loss_scales``, ``epoch_sums``).

Everything needed to rebuild the model is in the file: no config file is required.

``model_family`` says which network the file holds: ``"allscaip"`` (ours; the default when the key
is absent, as in files written before it existed) or ``"fairchem_allscaip"`` (a fairchem AllScAIP
converted by ``allscaip convert-fairchem``: ``model_config`` is then
:func:`allscaip.model.fairchem_load.fairchem_model_config`'s dictionary, docs/fairchem.md).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
from pathlib import Path
from typing import Any, Dict

import torch

import allscaip
from allscaip.config import ModelConfig, from_dict
from allscaip.model import AllScAIP
from allscaip.model.fairchem_load import fairchem_model_from_config, load_converted_weights

CHECKPOINT_FORMAT = "allscaip-checkpoint"
CHECKPOINT_VERSION = 1  # bump on incompatible payload changes
OUR_FAMILY = "allscaip"  # our AllScAIP (allscaip.model.allscaip)
FAIRCHEM_FAMILY = "fairchem_allscaip"  # fairchem's AllScAIP, converted (allscaip.model.fairchem_allscaip)
MODEL_FAMILIES = (OUR_FAMILY, FAIRCHEM_FAMILY)

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A file cannot be used as an allscaip checkpoint (message says why)."""


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> Path:
    """Write ``payload`` atomically: ``<path>.tmp`` in the same directory, fsync, rename.

    A reader (or a crash) never sees a partially written ``path``. ``format``,
    ``checkpoint_version`` and ``allscaip_version`` are filled in when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(payload)
    data.setdefault("format", CHECKPOINT_FORMAT)
    data.setdefault("checkpoint_version", CHECKPOINT_VERSION)
    data.setdefault("allscaip_version", allscaip.__version__)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Read and validate a checkpoint; :class:`CheckpointError` / ``FileNotFoundError`` say why not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    not_ours = f"{path} is not an allscaip checkpoint (expected a file written by allscaip-train)"
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        struct.error,  # a file of a few bytes
    ) as err:
        raise CheckpointError(
            f"{not_ours}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(not_ours)
    version = data.get("checkpoint_version")
    if not isinstance(version, int) or version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r} (written by allscaip "
            f"{data.get('allscaip_version', 'unknown')}); this allscaip ({allscaip.__version__}) reads "
            f"checkpoint version {CHECKPOINT_VERSION}. Use the matching allscaip version to load or export it."
        )
    missing = [k for k in ("model_config", "model_state") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}; the file is damaged")
    if data.get("model_family", OUR_FAMILY) not in MODEL_FAMILIES:
        raise CheckpointError(
            f"{path} holds model family {data['model_family']!r}; this allscaip ({allscaip.__version__}) reads "
            f"{list(MODEL_FAMILIES)}. Use the allscaip version that wrote it."
        )
    return data


def model_family_of(payload: Dict[str, Any]) -> str:
    """The network a checkpoint payload holds: :data:`OUR_FAMILY` or :data:`FAIRCHEM_FAMILY`."""
    return str(payload.get("model_family", OUR_FAMILY))


def model_config_of(payload: Dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint payload of our own model."""
    if model_family_of(payload) != OUR_FAMILY:
        raise CheckpointError(
            f"the checkpoint holds a {model_family_of(payload)} model, which has no allscaip model config; "
            "this command takes checkpoints of our own AllScAIP"
        )
    return from_dict(ModelConfig, payload["model_config"], "model_config")


def model_from_payload(
    payload: Dict[str, Any],
    use_ema: bool = True,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
):
    """Rebuild the model of a loaded payload (EMA weights by default), in eval mode: an :class:`AllScAIP`,
    or a :class:`~allscaip.model.fairchem_allscaip.FairchemAllScAIP` for a converted fairchem checkpoint."""
    state = payload.get("ema_state") if use_ema else None
    state = state if state is not None else payload["model_state"]
    if model_family_of(payload) == FAIRCHEM_FAMILY:
        # in ``dtype`` before loading: fine-tuned float64 weights must not pass through float32
        model = fairchem_model_from_config(payload["model_config"]).to(device=device, dtype=dtype)
        load_converted_weights(model, state, "converted fairchem checkpoint")
        return model.eval()
    model = AllScAIP(model_config_of(payload)).to(device=device, dtype=dtype)
    model.load_state_dict(state)
    return model.eval()


def load_model(
    path: PathLike, use_ema: bool = True, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
):
    """Rebuild the model stored in checkpoint ``path`` with its EMA (default) or raw weights."""
    return model_from_payload(load_checkpoint(path), use_ema=use_ema, dtype=dtype, device=device)


def config_dict(cfg: Any) -> Dict[str, Any]:
    """``dataclasses.asdict`` for a config dataclass (helper for payloads)."""
    return dataclasses.asdict(cfg)
