"""``python -m allscaip.workflows.electrolyte``: see :mod:`allscaip.workflows.electrolyte.cli`."""

from allscaip.workflows.electrolyte.cli import main

raise SystemExit(main())
