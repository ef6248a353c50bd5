"""Moved: the long-range study is a workflow, :mod:`allscaip.workflows.longrange`."""
