"""A :class:`allscaip.model.fairchem_allscaip.FairchemAllScAIP` from a fairchem inference checkpoint.

The checkpoint is read by :mod:`allscaip.checkpoint_fairchem` (no fairchem needed). The weights
are fairchem's EMA average (what fairchem evaluates) unless ``use_ema=False``; backbone keys lose
their ``backbone.`` prefix, and the heads (whatever fairchem named them, wrapped or not) become
``energy_head`` and, for direct models, ``force_head``. The task (a fairchem dataset name such as
``omol``) selects the normalisers and element references.

A converted checkpoint (``allscaip convert-fairchem``, :mod:`allscaip.train.convert_fairchem`)
stores :func:`fairchem_model_config` (the backbone settings, task, element references and
normalisers: plain data) and the weights under our names (:func:`converted_weights`);
:func:`fairchem_model_from_config` rebuilds the network from it.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from allscaip.checkpoint_fairchem import FairchemCheckpoint, FairchemCheckpointError, read_fairchem_checkpoint
from allscaip.model.fairchem_allscaip import FairchemAllScAIP
from allscaip.model.fairchem_settings import settings_from_backbone

BACKBONE_PREFIX = "backbone."
HEADS_PREFIX = "output_heads."
WRAPPER_PREFIX = "head."  # DatasetSpecificSingleHeadWrapper keeps its head as ``head``
HEAD_OF_FFN = {"energy_ffn": "energy_head", "force_ffn": "force_head"}  # fairchem head FFN -> our head
OUR_HEAD_FFN = "ffn"  # both our heads call their feed-forward ``ffn``
CONFIG_KEYS = ("backbone", "task", "element_references", "normalizers")  # of fairchem_model_config


def _head_weights(path: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """fairchem's head weights under our names: each head is recognised by its FFN's name."""
    by_head: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(HEADS_PREFIX):
            name, _, rest = key[len(HEADS_PREFIX) :].partition(".")
            rest = rest[len(WRAPPER_PREFIX) :] if rest.startswith(WRAPPER_PREFIX) else rest
            by_head.setdefault(name, {})[rest] = value
    out: Dict[str, torch.Tensor] = {}
    for name, weights in by_head.items():
        kinds = {ffn for ffn in HEAD_OF_FFN if any(k.startswith(ffn + ".") for k in weights)}
        if len(kinds) != 1:
            raise FairchemCheckpointError(
                f"{path}: head {name!r} has neither or both of {sorted(HEAD_OF_FFN)}; this converter reads "
                "AllScAIP energy, direct-force and gradient energy-force-stress heads"
            )
        ffn = kinds.pop()
        ours = HEAD_OF_FFN[ffn]
        if any(k.startswith(ours + ".") for k in out):
            raise FairchemCheckpointError(f"{path} has two {ours.replace('_', ' ')}s; pass a single-task checkpoint")
        for key, value in weights.items():
            renamed = OUR_HEAD_FFN + key[len(ffn) :] if key.startswith(ffn + ".") else key
            out[f"{ours}.{renamed}"] = value
    return out


def converted_weights(ckpt: FairchemCheckpoint, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The weights of ``ckpt`` under :class:`FairchemAllScAIP`'s names (EMA by default, as fairchem evaluates)."""
    state = ckpt.weights(use_ema=use_ema)
    weights = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    weights.update(_head_weights(ckpt.path, state))
    return weights


def fairchem_model_config(ckpt: FairchemCheckpoint, task: str = "omol") -> Dict[str, Any]:
    """Everything but the weights that the converted model of ``ckpt`` for ``task`` depends on, as plain
    data: fairchem's backbone settings, the task, its element references (eV by atomic number) and its
    energy and force normalisers ``[mean, rmsd]``. An unknown task is an error listing the file's tasks."""
    return {
        "backbone": dict(ckpt.backbone),
        "task": task,
        "element_references": [float(e) for e in ckpt.element_references(task).tolist()],
        "normalizers": {prop: list(ckpt.normalizer(task, prop)) for prop in ("energy", "forces")},
    }


def fairchem_model_from_config(config: Dict[str, Any]) -> FairchemAllScAIP:
    """The network of a :func:`fairchem_model_config` dictionary, with fresh weights, in float32."""
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise FairchemCheckpointError(
            f"converted fairchem model config lacks {missing}; convert the fairchem file again "
            "(allscaip convert-fairchem)"
        )
    references = torch.as_tensor(config["element_references"], dtype=torch.float64)
    normalizers = {prop: tuple(float(v) for v in config["normalizers"][prop]) for prop in ("energy", "forces")}
    return FairchemAllScAIP(settings_from_backbone(config["backbone"]), references, normalizers)


def load_converted_weights(model: FairchemAllScAIP, weights: Dict[str, torch.Tensor], where: str) -> None:
    """Load ``weights`` into ``model``; a mismatch is an error naming the first keys (``where``: the file)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise FairchemCheckpointError(
            f"{where}: weights do not match the md_NeNo AllScAIP this converter builds "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def fairchem_model_from_checkpoint(
    ckpt: FairchemCheckpoint, task: str = "omol", dtype: torch.dtype = torch.float64, use_ema: bool = True
) -> FairchemAllScAIP:
    """The converted model of ``ckpt`` for fairchem task ``task``, in ``dtype``, in eval mode."""
    model = fairchem_model_from_config(fairchem_model_config(ckpt, task))
    load_converted_weights(model, converted_weights(ckpt, use_ema), ckpt.path)
    return model.to(dtype).eval()


def fairchem_model(path, task: str = "omol", dtype: torch.dtype = torch.float64, use_ema: bool = True):
    """Read a fairchem AllScAIP checkpoint file and convert it (see :func:`fairchem_model_from_checkpoint`)."""
    return fairchem_model_from_checkpoint(read_fairchem_checkpoint(path), task=task, dtype=dtype, use_ema=use_ema)
