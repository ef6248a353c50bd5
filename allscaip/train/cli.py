"""``allscaip-train CONFIG.yaml [section.key=value ...] [--resume]``.

Multi-process data-parallel training: ``torchrun --nproc_per_node=N -m allscaip.train.cli CONFIG.yaml``
(gloo on CPU, NCCL on CUDA). Configuration, data and checkpoint errors print one line to
stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from allscaip.checkpoint import CheckpointError
from allscaip.config_schema import ConfigError
from allscaip.data import DataError
from allscaip.model import UnknownElementError
from allscaip.train.config import dump_config, load_config
from allscaip.train.finite_step import NonFiniteLossError
from allscaip.train.trainer import Trainer

USAGE_EPILOG = """\
overrides: section.key=value with value parsed as YAML, e.g.
  optim.lr=2e-3 optim.epochs=50 data.max_atoms=600 model.elements=[H,O] run.out_dir=runs/x
sections: model (ModelConfig keys + preset), data, optim, run.
outputs in run.out_dir: last.ckpt, best.ckpt (best validation force MAE), metrics.csv, config.yaml.
data-parallel: torchrun --nproc_per_node=N -m allscaip.train.cli CONFIG.yaml ...
fine-tune: run.init_from=CKPT (ours, or a fairchem checkpoint converted by allscaip convert-fairchem).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="allscaip-train",
        description="Train an AllScAIP interatomic potential.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML configuration file (sections model, data, optim, run)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="configuration overrides")
    p.add_argument("--resume", action="store_true", help="continue the run in run.out_dir from last.ckpt")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``allscaip-train`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    trainer = None
    finished = False
    try:
        cfg = load_config(args.config, list(args.overrides) + (["run.resume=true"] if args.resume else []))
        if rank0:
            print(f"allscaip-train: configuration (from {args.config})", flush=True)
            print("  " + dump_config(cfg).rstrip().replace("\n", "\n  "), flush=True)
            if cfg.elements_from_data:
                print("  (model.elements: taken from the training data)", flush=True)
        trainer = Trainer(cfg)
        trainer.fit()
        finished = True
    except (ConfigError, DataError, CheckpointError, UnknownElementError, FileNotFoundError, NonFiniteLossError) as err:
        print(f"allscaip-train: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("allscaip-train: interrupted; continue with --resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close(synchronise=finished)
    if rank0 and trainer is not None:
        print(f"allscaip-train: done; checkpoints in {trainer.out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
