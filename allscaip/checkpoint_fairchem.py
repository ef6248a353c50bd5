"""Reading fairchem AllScAIP inference checkpoints without fairchem installed.

A fairchem inference checkpoint (``allscaip-md-conserving-all-omol`` and the like) is a
``torch.save`` of one pickled ``fairchem.core.units.mlip_unit.api.inference.MLIPInferenceCheckpoint``
dataclass with four fields: ``model_config`` (the hydra config of a ``HydraModel``: ``backbone``
keyword arguments and ``heads``), ``model_state_dict`` (raw weights, keys ``backbone.*`` and
``output_heads.*``), ``ema_state_dict`` (the EMA average fairchem evaluates: the same keys behind
``module.``, plus ``n_averaged``) and ``tasks_config`` (a list of hydra task configs: name,
property, datasets, normaliser, element references).

:func:`read_fairchem_checkpoint` loads such a file with ``torch.load(weights_only=True)``: the one
fairchem class is mapped to a local stand-in dataclass, so no code from the file runs and fairchem
need not be installed. The result holds plain dicts, lists and tensors. Errors say what is wrong
and what is supported (:class:`FairchemCheckpointError`). Docs: docs/fairchem.md.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import torch

FAIRCHEM_CHECKPOINT_CLASS = "fairchem.core.units.mlip_unit.api.inference.MLIPInferenceCheckpoint"
CHECKPOINT_FIELDS = ("model_config", "model_state_dict", "ema_state_dict", "tasks_config")
ALLSCAIP_BACKBONES = ("fairchem.core.models.allscaip.AllScAIP.AllScAIPBackbone", "AllScAIP_backbone")
OTHER_FAMILIES = {  # backbone name fragment -> family, for the error message
    "escn_moe": "UMA (eSCN mixture of linear experts)",
    "escnmd_moe": "UMA (eSCN mixture of linear experts)",
    "escn_md": "eSEN",
    "escnmd": "eSEN",
    "escaip": "EScAIP",
}
REQUIRED_BACKBONE_KEYS = ("hidden_size", "num_layers", "atten_num_heads", "max_radius", "knn_k", "direct_forces")
EMA_PREFIX = "module."  # torch.optim.swa_utils.AveragedModel wraps the model as ``module``
EMA_COUNTER = "n_averaged"
SUPPORTED = (
    "fairchem AllScAIP inference checkpoints (backbone fairchem.core.models.allscaip.AllScAIP.AllScAIPBackbone, "
    "e.g. allscaip-md-conserving-all-omol, allscaip-md-direct-all-omol)"
)

PathLike = str | os.PathLike


class FairchemCheckpointError(ValueError):
    """A file cannot be read as a fairchem AllScAIP inference checkpoint (message says why)."""


@dataclasses.dataclass
class _InferenceCheckpointStandIn:
    """Stand-in for fairchem's ``MLIPInferenceCheckpoint`` while unpickling (fields set by pickle)."""

    model_config: Any = None
    model_state_dict: Any = None
    ema_state_dict: Any = None
    tasks_config: Any = None


@dataclasses.dataclass
class FairchemCheckpoint:
    """The content of a fairchem AllScAIP inference checkpoint, as plain data."""

    path: str
    model_config: Dict[str, Any]
    model_state_dict: Dict[str, torch.Tensor]
    ema_state_dict: Dict[str, torch.Tensor]
    tasks_config: List[Dict[str, Any]]

    @property
    def backbone(self) -> Dict[str, Any]:
        """The backbone keyword arguments (fairchem ``AllScAIPConfigs`` field names)."""
        return self.model_config["backbone"]

    @property
    def direct_forces(self) -> bool:
        """True when forces come from a force head, False when they are ``-dE/dx``."""
        return bool(self.backbone["direct_forces"])

    def weights(self, use_ema: bool = True) -> Dict[str, torch.Tensor]:
        """State dict with fairchem's model key names (``backbone.*``, ``output_heads.*``): the EMA
        weights (what fairchem evaluates) by default, else the raw ones."""
        if not use_ema:
            return dict(self.model_state_dict)
        return {k[len(EMA_PREFIX) :]: v for k, v in self.ema_state_dict.items() if k != EMA_COUNTER}

    def datasets(self) -> List[str]:
        """Datasets (fairchem task names such as ``omol``) that the tasks of this file serve."""
        names: List[str] = []
        for task in self.tasks_config:
            for name in task.get("datasets", []):
                if name not in names:
                    names.append(name)
        return names

    def task(self, dataset: str, prop: str) -> Dict[str, Any]:
        """The task config of property ``prop`` (``energy``, ``forces``) for ``dataset``."""
        if dataset not in self.datasets():
            raise FairchemCheckpointError(
                f"{self.path} has no task {dataset!r}; its tasks are {self.datasets()}: pass one of them"
            )
        for task in self.tasks_config:
            if task.get("property") == prop and dataset in task.get("datasets", []):
                return task
        raise FairchemCheckpointError(f"{self.path} has no {prop!r} task for {dataset!r}; the file is incomplete")

    def element_references(self, dataset: str) -> torch.Tensor:
        """Per-element reference energies (eV) indexed by atomic number (zeros when the file has none)."""
        refs = self.task(dataset, "energy").get("element_references")
        if refs is None:
            return torch.zeros(1, dtype=torch.float64)
        values = refs.get("element_references", {})
        args = values.get("_args_") if isinstance(values, dict) else values
        if not args:
            raise FairchemCheckpointError(f"{self.path}: the {dataset!r} energy task's element references are empty")
        return torch.as_tensor(args[0] if isinstance(values, dict) else args, dtype=torch.float64)

    def normalizer(self, dataset: str, prop: str) -> tuple[float, float]:
        """(mean, rmsd) of the normaliser of ``prop`` for ``dataset``: fairchem reports value * rmsd + mean."""
        norm = self.task(dataset, prop).get("normalizer") or {}
        return float(norm.get("mean", 0.0)), float(norm.get("rmsd", 1.0))


def is_fairchem_checkpoint(path: PathLike) -> bool:
    """True when ``path`` is a ``torch.save`` archive whose pickle names fairchem's inference checkpoint
    class (detection by content, without unpickling)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickles:
                return False
            head = archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False
    module, _, name = FAIRCHEM_CHECKPOINT_CLASS.rpartition(".")
    return module.encode() in head and name.encode() in head


def _load(path: Path) -> Any:
    with torch.serialization.safe_globals([(_InferenceCheckpointStandIn, FAIRCHEM_CHECKPOINT_CLASS)]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f"the Python object {found.group(1)}" if found else "objects"
            raise FairchemCheckpointError(
                f"{path} holds {what}, which this reader does not unpickle (it reads only plain data, tensors "
                f"and {FAIRCHEM_CHECKPOINT_CLASS}); supported: {SUPPORTED}"
            ) from err
        except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
            raise FairchemCheckpointError(f"{path} is not a readable torch checkpoint: {err}") from err


def _family(backbone_name: str) -> str:
    lowered = backbone_name.lower()
    for fragment, family in OTHER_FAMILIES.items():
        if fragment in lowered:
            return family
    return "unknown"


def _check_state_keys(path: Path, state: Dict[str, Any], layers: int, what: str) -> None:
    """The backbone keys every AllScAIP state dict has; the first missing one is named."""
    required = ["backbone.input_block.atomic_embedding.weight", "backbone.input_block.charge_spin_linear.0.weight"]
    for i in range(layers):
        block = f"backbone.transformer_blocks.{i}."
        required += [
            block + "neighborhood_attention.src_attn.attn_in_proj_q.weight",
            block + "neighborhood_attention.dst_attn.attn_in_proj_q.weight",
            block + "edge_ffn.ffn.0.0.weight",
            block + "node_ffn.ffn.0.0.weight",
        ]
    for key in required:
        if key not in state:
            raise FairchemCheckpointError(f"{path}: {what} lacks key {key!r}; the checkpoint is damaged or truncated")


def read_fairchem_checkpoint(path: PathLike) -> FairchemCheckpoint:
    """Read and validate a fairchem AllScAIP inference checkpoint (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fairchem checkpoint {path} does not exist")
    if not is_fairchem_checkpoint(path):
        raise FairchemCheckpointError(f"{path} is not a fairchem inference checkpoint; supported: {SUPPORTED}")
    data = _load(path)
    if not isinstance(data, _InferenceCheckpointStandIn):
        raise FairchemCheckpointError(f"{path} does not hold a {FAIRCHEM_CHECKPOINT_CLASS}; supported: {SUPPORTED}")
    fields = {name: getattr(data, name, None) for name in CHECKPOINT_FIELDS}
    for name, value in fields.items():
        if value is None:
            raise FairchemCheckpointError(
                f"{path} lacks {name!r}; a fairchem inference checkpoint has {CHECKPOINT_FIELDS}"
            )
    backbone = fields["model_config"].get("backbone")
    if not isinstance(backbone, dict) or "model" not in backbone:
        raise FairchemCheckpointError(f"{path}: model_config lacks 'backbone' with its 'model'; the file is damaged")
    name = str(backbone["model"])
    if name not in ALLSCAIP_BACKBONES:
        raise FairchemCheckpointError(
            f"{path} is a fairchem {_family(name)} checkpoint (backbone {name}); this reader supports only {SUPPORTED}"
        )
    for key in REQUIRED_BACKBONE_KEYS:
        if key not in backbone:
            raise FairchemCheckpointError(f"{path}: model_config['backbone'] lacks {key!r}; the file is damaged")
    checkpoint = FairchemCheckpoint(str(path), **fields)
    layers = int(backbone["num_layers"])
    _check_state_keys(path, checkpoint.weights(use_ema=True), layers, "ema_state_dict")
    _check_state_keys(path, checkpoint.weights(use_ema=False), layers, "model_state_dict")
    return checkpoint
