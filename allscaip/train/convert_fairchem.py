"""``allscaip convert-fairchem``: a fairchem AllScAIP inference checkpoint as our checkpoint.

The output is an allscaip checkpoint (:mod:`allscaip.checkpoint`) of model family
``fairchem_allscaip``: ``model_config`` holds fairchem's backbone settings, the task, its element
references and normalisers (:func:`allscaip.model.fairchem_load.fairchem_model_config`);
``ema_state`` the EMA weights fairchem evaluates and ``model_state`` the raw ones, both under our
parameter names. AllScAIPCalculator, allscaip-export and OpenMM read it like the fairchem file (same
numbers); ``allscaip-train`` fine-tunes it with ``run.init_from`` (docs/fairchem.md, "Fine-tuning").
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any, Dict

from allscaip.checkpoint import FAIRCHEM_FAMILY, save_checkpoint
from allscaip.checkpoint_fairchem import FairchemCheckpointError, read_fairchem_checkpoint
from allscaip.model.fairchem_load import (
    converted_weights,
    fairchem_model_config,
    fairchem_model_from_config,
    load_converted_weights,
)

HELP = "convert a fairchem AllScAIP inference checkpoint (.pt) into an allscaip checkpoint (.ckpt) for fine-tuning"

EPILOG = """\
example:
  allscaip convert-fairchem allscaip-md-conserving-all-omol.pt -o omol_md.ckpt
  allscaip-train finetune.yaml run.init_from=omol_md.ckpt

The checkpoint keeps fairchem's element references and normalisers of --task: the model's energy
is the total energy, as fairchem reports it. See docs/fairchem.md ("Fine-tuning").
"""

HASH_CHUNK = 1 << 20  # bytes read at a time for the source file's sha256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_payload(source: str | Path, task: str = "omol") -> Dict[str, Any]:
    """The checkpoint payload of fairchem file ``source`` for ``task`` (errors: FairchemCheckpointError)."""
    ckpt = read_fairchem_checkpoint(source)
    config = fairchem_model_config(ckpt, task)
    ema, raw = converted_weights(ckpt, use_ema=True), converted_weights(ckpt, use_ema=False)
    for weights in (ema, raw):  # both must rebuild the network; fail here, not at the first use
        load_converted_weights(fairchem_model_from_config(config), weights, str(source))
    references = config["element_references"]
    return {
        "model_family": FAIRCHEM_FAMILY,
        "model_config": config,
        "model_state": raw,
        "ema_state": ema,
        "element_references": {z: e for z, e in enumerate(references) if z > 0},
        "source_checkpoint": Path(source).name,
        "source_sha256": file_sha256(Path(source)),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="fairchem AllScAIP inference checkpoint (recognised by content)")
    p.add_argument("-o", "--output", required=True, help="allscaip checkpoint to write (.ckpt)")
    p.add_argument("--task", default="omol", help="fairchem task whose element references and normalisers apply")


def run(args: argparse.Namespace) -> int:
    source, out = Path(args.checkpoint), Path(args.output)
    where = "allscaip convert-fairchem"
    if out.resolve() == source.resolve():
        print(f"{where}: error: -o {out} is the input; give a new .ckpt file", file=sys.stderr)
        return 2
    try:
        payload = converted_payload(source, args.task)
    except (FairchemCheckpointError, FileNotFoundError) as err:
        print(f"{where}: error: {err}", file=sys.stderr)
        return 2
    save_checkpoint(out, payload)
    backbone = payload["model_config"]["backbone"]
    kind = "direct forces" if backbone["direct_forces"] else "conserving"
    print(
        f"wrote {out}: fairchem AllScAIP (hidden {backbone['hidden_size']}, {backbone['num_layers']} layers, {kind}), "
        f"task {args.task}, EMA and raw weights, from {source.name} (sha256 {payload['source_sha256'][:12]}...)"
    )
    return 0
