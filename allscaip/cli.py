"""``allscaip``: the project's command line, one subcommand per workflow.

Each subcommand is a module with ``HELP`` (one line), optionally ``EPILOG``,
``add_arguments(parser)`` and ``run(args) -> int``; register it in :data:`SUBCOMMANDS`.
Subcommand modules are imported when the parser is built, so keep their top level light
(import torch, OpenMM, ... inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

#: subcommand -> module path
SUBCOMMANDS = {
    "liquid": "allscaip.workflows.liquid.cli",
    "liquid-compare": "allscaip.workflows.liquid.compare",
    "constrain-density": "allscaip.train.constrain_density",
    "core-repulsion": "allscaip.train.core_radius",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps epilog line breaks and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    from allscaip import __version__

    parser = argparse.ArgumentParser(prog="allscaip", description="AllScAIP machine-learning interatomic potentials")
    parser.add_argument("--version", action="version", version=f"allscaip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_path in SUBCOMMANDS.items():
        module = importlib.import_module(module_path)
        p = sub.add_parser(
            name,
            help=getattr(module, "HELP", None),
            description=getattr(module, "HELP", None),
            epilog=getattr(module, "EPILOG", None),
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
