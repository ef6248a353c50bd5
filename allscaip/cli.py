"""``allscaip``: the project's command line, one subcommand per workflow.

Each subcommand is a module with ``HELP`` (one line), optionally ``EPILOG``,
``add_arguments(parser)`` and ``run(args) -> int``; register it in :data:`SUBCOMMANDS`.
This module sits at the top of the layers (docs/architecture.md): it may import every workflow.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Dict, Optional, Sequence

from allscaip import __version__
from allscaip.train import constrain_density, convert_fairchem, core_radius
from allscaip.workflows.liquid import cli as liquid_cli
from allscaip.workflows.liquid import compare as liquid_compare

#: subcommand -> module
SUBCOMMANDS: Dict[str, ModuleType] = {
    "liquid": liquid_cli,
    "liquid-compare": liquid_compare,
    "constrain-density": constrain_density,
    "core-repulsion": core_radius,
    "convert-fairchem": convert_fairchem,
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps epilog line breaks and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allscaip", description="AllScAIP machine-learning interatomic potentials")
    parser.add_argument("--version", action="version", version=f"allscaip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
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
