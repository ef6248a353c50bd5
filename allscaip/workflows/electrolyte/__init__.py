"""Evaluation of the aqueous-NaCl models (issue 25): ``python -m allscaip.workflows.electrolyte``
writes docs/electrolyte.md (:mod:`.cli`). The teacher and its data are in
:mod:`allscaip.workflows.teacher.electrolyte`."""
