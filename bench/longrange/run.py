"""Moved: ``python -m allscaip.workflows.longrange.run``. This forwards to it, for old scripts."""

import sys

from allscaip.workflows.longrange.run import main

if __name__ == "__main__":
    print("note: bench.longrange.run moved to allscaip.workflows.longrange.run", file=sys.stderr)
    sys.exit(main())
